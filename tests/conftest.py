"""Shared fixtures: the registry of fst/ ids, so per-id tests cover new envs automatically."""

import os

import pytest

import fst_env

FST_IDS = fst_env.registered_ids("fst")

# Unit tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests run tiny models, whose ops are too small to gain from threads; with several threads, OpenMP spin-waits
# make them tens of times slower whenever the machine is busy (measured: 25 s vs 0.9 s for one generate call).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(params=FST_IDS)
def fst_id(request):
    return request.param
