"""Agents: the policy plus its slow (weights) and fast (context) learners."""
