"""Bridges from fst-env to other training libraries.

Each integration lives in its own module and is imported explicitly (``from fst_env.integrations.trl import
FSTGRPOTrainer``), so importing :mod:`fst_env` never pulls in a heavy optional library.

- :mod:`fst_env.integrations.trl`: any fst env as a TRL ``GRPOTrainer`` data source and reward function, and
  ``FSTGRPOTrainer`` (CISPO on TRL plus context-population fast rounds) for multi-GPU runs.
"""
