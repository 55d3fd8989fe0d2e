"""FSTGRPOTrainer in two processes: ``accelerate launch`` on CPU (gloo) of ``_trl_multiprocess_script.py``.

Launch: ``accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend
no --main_process_port <free port>``; the script's ``use_cpu=True`` makes accelerate use gloo (checked below).
``--cpu --num_processes 2`` is not used because accelerate 1.x runs several CPU processes only through ``mpirun``
(``--mpirun_hostfile``); without it that command silently starts one process.

Runs (tiny random Llama with LoRA, 6 or 48 problems, G=4, 6 rows per process: a group straddles the two processes):

- ``reflective``: 2 processes, 4 steps, a fast round after steps 2 and 4 with a ReflectiveFastLearner whose
  reflection LM is scripted (deterministic), generating with the model on the main process; a checkpoint each step;
  6 problems, so an epoch is 2 steps;
- ``resume@2`` / ``resume@3``: 2 processes resuming ``reflective`` from checkpoint-2 (an epoch boundary) and from
  checkpoint-3 (inside the second epoch);
- ``notes x2`` / ``notes x1``: a NotesFastLearner, 2 steps with a fast round after each, fast-round generation
  scripted, in 2 processes (6 rows each) and in 1 process (12 rows): the same global batch.
- ``fail``: 2 processes whose fast learner raises on the main process.

What must match, and why:

- across the ranks of one run: the population, learner state and counters after every round (the main process
  broadcasts them), the logged losses (TRL logs the global mean);
- resumed vs uninterrupted run (same number of processes): everything after the checkpoint, sampled texts and
  losses included: the adapter, optimizer, per-rank RNG states, fst state and the sampler's epoch order are all
  restored, and CPU fp32 with gloo is deterministic;
- 1 vs 2 processes with the same global batch: the problems of every step and their order, each row's context
  (assigned from the seed, generation round and global group index only), the problem keys and (problem, context)
  records the fast learner gets, and the population after each round (a deterministic learner fed identical
  feedback: this env's feedback depends on the problem only, and fast-round generation is scripted). Not the
  sampled texts, rewards or losses: each rank samples with its own RNG stream, so the texts differ.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fst_env.integrations.trl import FST_STATE_NAME
from fst_env.models import tiny_policy

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("_trl_multiprocess_script.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")
G = 4
INITIAL_IDS = {0, 1}  # the script's population: seed context + one more
LAUNCH_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root: Path, name: str, processes: int, *args: str, expect_ok: bool = True):
    """Run the script in ``processes`` processes (1: in this process); returns ({rank: report}, completed process)."""
    script_args = ["--model", str(root / "tiny"), "--output-dir", str(root / name / "out"),
                   "--report-dir", str(root / name / "report"), *args]
    if processes == 1:
        # In this process (saves a Python start and the torch/TRL imports): the script's main is a plain function.
        spec = importlib.util.spec_from_file_location("_trl_multiprocess_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(script_args)
        return _reports(root / name / "report"), None
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(SCRIPT), *script_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    if expect_ok:
        assert proc.returncode == 0, (f"{name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                      f"{proc.stderr[-6000:]}")
    return _reports(root / name / "report"), proc


def _reports(folder: Path) -> dict[int, dict]:
    reports = {}
    for path in sorted(folder.glob("rank*.json")):
        report = json.loads(path.read_text())
        reports[report["rank"]] = report
    return reports


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trl_multiprocess")
    tiny_policy(0).save(root / "tiny")
    reflective = ["--learner", "reflective", "--num-problems", "6", "--max-steps", "4", "--fast-every", "2"]
    notes = ["--learner", "notes", "--max-steps", "2", "--fast-every", "1", "--scripted-generation"]
    out = {"root": root}
    out["reflective"], _ = _launch(root, "reflective", 2, *reflective, "--save-steps", "1")
    for step in (2, 3):
        out[f"resume@{step}"], _ = _launch(root, f"resume{step}", 2, *reflective, "--resume",
                                           str(root / "reflective" / "out" / f"checkpoint-{step}"))
    out["notes x2"], _ = _launch(root, "notes2", 2, *notes, "--rows", "6")
    out["notes x1"], _ = _launch(root, "notes1", 1, *notes, "--rows", "12")
    out["fail"] = _launch(root, "fail", 2, *notes, "--fail-in-fast-round", expect_ok=False)[1]
    return out


def _global_batches(reports: dict[int, dict]) -> list[list[list]]:
    """Per generation batch, the rows of every rank in global row order (rank 0's first)."""
    ranks = [reports[r]["batches"] for r in sorted(reports)]
    assert len({len(b) for b in ranks}) == 1
    return [[row for rank in ranks for row in rank[i]["rows"]] for i in range(len(ranks[0]))]


def _population_ids_before(report: dict, step: int) -> set[int]:
    """Ids of the population that generated the batch at global step ``step`` (the last round at or before it)."""
    earlier = [r for r in report["rounds"] if r["step"] <= step]
    return {c["id"] for c in earlier[-1]["population"]["candidates"]} if earlier else INITIAL_IDS


@pytest.mark.parametrize("name", ["reflective", "resume@2", "resume@3", "notes x2"])
def test_two_processes_ran_on_gloo_and_losses_are_finite(runs, name):
    reports = runs[name]
    assert sorted(reports) == [0, 1]
    for report in reports.values():
        assert report["num_processes"] == 2 and report["backend"] == "gloo"
        assert report["losses_finite"] and len(report["losses"]) == report["global_step"]
        assert all(math.isfinite(x) for x in report["losses"])
    assert reports[0]["losses"] == pytest.approx(reports[1]["losses"], rel=1e-6)  # the global mean on every rank


@pytest.mark.parametrize("name", ["reflective", "notes x2"])
def test_both_ranks_hold_the_same_population_after_every_round(runs, name):
    main, other = runs[name][0], runs[name][1]
    assert len(main["rounds"]) == 2
    for mine, theirs in zip(main["rounds"], other["rounds"], strict=True):
        assert mine == theirs  # population (contexts, scores, lineage), learner rng state, counters
    assert main["population"] == other["population"] and main["counters"] == other["counters"]
    first = main["rounds"][0]["population"]["candidates"]
    assert len(first) == 3 and first[-1]["parent_id"] is not None  # the first round added a child
    assert main["counters"]["fast_rounds"] == 2


@pytest.mark.parametrize("name", ["reflective", "notes x2"])
def test_every_rank_draws_contexts_from_the_same_population(runs, name):
    reports = runs[name]
    batches = _global_batches(reports)
    rows_per_rank = len(reports[0]["batches"][0]["rows"])
    assert rows_per_rank % G != 0  # a group straddles the two processes
    for i, rows in enumerate(batches):
        step = reports[0]["batches"][i]["step"]
        ids = _population_ids_before(reports[0], step)
        assert _population_ids_before(reports[1], step) == ids
        for start in range(0, len(rows), G):
            group = rows[start:start + G]
            assert len({r[0] for r in group}) == 1  # one problem per group, whichever rank holds the rows
            counts = Counter(r[1] for r in group)
            assert set(counts) <= ids
            base, extra = divmod(G, len(ids))
            assert sorted(counts.values()) == sorted([base + 1] * extra + [base] * (len(ids) - extra))


@pytest.mark.parametrize("name", ["reflective", "notes x2"])
def test_rollouts_from_every_rank_reach_the_fast_learner(runs, name):
    main, other = runs[name][0], runs[name][1]
    assert other["learner_calls"] == []  # the fast learner runs on the main process only
    for call, round_ in zip(main["learner_calls"], main["rounds"], strict=True):
        seen = {tuple(r) for r in call["rollouts"]}
        for report in (main, other):
            rows = [(r[0], r[1], r[2], r[4]) for b in report["batches"] if b["step"] < round_["step"]
                    for r in b["rows"]]
            assert rows and set(rows) <= seen
        assert len(call["rollouts"]) == sum(len(b["rows"]) for rep in (main, other) for b in rep["batches"]
                                            if b["step"] < round_["step"])
        # The problems: the fast_problems (3) most recent distinct keys in global row order, the last ones rank 1's.
        keys = [r[0] for b in _global_batches(runs[name]) for r in b][:len(call["rollouts"])]
        assert call["problem_keys"] == list(dict.fromkeys(reversed(keys)))[:3]
        last_batch = [b for b in other["batches"] if b["step"] < round_["step"]][-1]
        assert call["problem_keys"][0] == last_batch["rows"][-1][0]


def test_checkpoint_is_written_by_the_main_process_with_every_ranks_rollouts(runs):
    main, other = runs["reflective"][0], runs["reflective"][1]
    state = json.loads((runs["root"] / "reflective" / "out" / "checkpoint-2" / FST_STATE_NAME).read_text())
    assert state["population"] == main["rounds"][0]["population"]
    assert state["counters"] == main["rounds"][0]["counters"]
    saved = {(r["group"], r["context_id"], r["completion"]) for r in state["buffer"]["records"]}
    for report in (main, other):
        assert {(r[0], r[1], r[2]) for b in report["batches"][:2] for r in b["rows"]} <= saved


@pytest.mark.parametrize("step", [2, 3])
def test_a_resumed_two_process_run_continues_like_the_uninterrupted_one(runs, step):
    full, resumed = runs["reflective"], runs[f"resume@{step}"]
    for rank in (0, 1):
        done = [b for b in full[rank]["batches"] if b["step"] >= step]
        assert resumed[rank]["batches"] == done  # problems, contexts, sampled texts and rewards
        assert resumed[rank]["rounds"] == full[rank]["rounds"][-1:]  # the round after step 4
        assert resumed[rank]["population"] == full[rank]["population"]
        assert resumed[rank]["losses"] == pytest.approx(full[rank]["losses"], rel=1e-6)
    assert resumed[0]["learner_calls"] == full[0]["learner_calls"][-1:]


def test_one_and_two_processes_agree_on_problems_contexts_and_population(runs):
    two, one = runs["notes x2"], runs["notes x1"]
    assert one[0]["num_processes"] == 1
    batches_two, batches_one = _global_batches(two), _global_batches(one)
    assert [[r[:2] for r in b] for b in batches_two] == [[r[:2] for r in b] for b in batches_one]
    calls_two, calls_one = two[0]["learner_calls"], one[0]["learner_calls"]
    assert [c["problem_keys"] for c in calls_two] == [c["problem_keys"] for c in calls_one]
    assert [[r[:2] for r in c["rollouts"]] for c in calls_two] == [[r[:2] for r in c["rollouts"]] for c in calls_one]
    assert [r["population"] for r in two[0]["rounds"]] == [r["population"] for r in one[0]["rounds"]]
    # Sampled texts differ (per-rank RNG streams), which is why they are not compared.
    assert [r[2] for b in batches_two for r in b] != [r[2] for b in batches_one for r in b]


def test_a_failing_fast_round_stops_every_process(runs):
    proc = runs["fail"]
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "scripted failure in the fast learner" in output  # the main process's own error
    assert "the fast round failed on the main process" in output  # what the other process raised instead of hanging


def test_the_docs_accelerate_configs_parse_and_use_only_launch_options(tmp_path):
    """docs/multi_gpu.md's DDP / ZeRO-2 / ZeRO-3 / FSDP files load with accelerate's config parser, and every nested
    key is an ``accelerate launch`` option (what accelerate maps them to); none of them has run on GPUs."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    doc = (Path(__file__).resolve().parents[2] / "docs" / "multi_gpu.md").read_text()
    configs = dict(re.findall(r"`(\w+\.yaml)`:\n\n```yaml\n(.*?)```", doc, re.DOTALL))
    assert set(configs) == {"ddp.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml"}
    options = {action.dest for action in launch_command_parser()._actions}
    loaded = {}
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
        config = ClusterConfig.from_yaml_file(str(tmp_path / name))
        assert set(config.deepspeed_config) <= options and set(config.fsdp_config) <= options, name
        loaded[name] = config
    assert {n: c.distributed_type.value for n, c in loaded.items()} == {
        "ddp.yaml": "MULTI_GPU", "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED", "fsdp.yaml": "FSDP"}
    assert loaded["zero2.yaml"].deepspeed_config["zero_stage"] == 2
    assert loaded["zero3.yaml"].deepspeed_config["zero_stage"] == 3
    assert loaded["fsdp.yaml"].fsdp_config["fsdp_version"] == 2
