"""fst envs as a TRL GRPO source, and FSTGRPOTrainer (CISPO + mixed contexts + fast rounds) on a tiny model (CPU)."""

import importlib.util
import json
import math
import re
import string
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import gymnasium as gym
import pytest
import torch
import trl
from gymnasium import spaces
from peft import LoraConfig
from transformers import TrainerState

import fst_env
from fst_env.agents.fast import NotesFastLearner, ReflectiveFastLearner, ScoreAcceptance
from fst_env.agents.population import ContextPopulation
from fst_env.agents.rollout import Rollout
from fst_env.cards import EnvCard, register_env
from fst_env.context import render_context
from fst_env.core import VERDICTS
from fst_env.integrations import trl as fst_trl
from fst_env.integrations.trl import (
    DEFAULT_EPSILON_HIGH,
    FST_STATE_NAME,
    NO_CONTEXT_ID,
    EnvReward,
    FeedbackBuffer,
    FSTGRPOTrainer,
    check_trl_version,
    completion_text,
    env_dataset,
    fst_grpo_config,
    parse_problem_key,
    problem_key,
    with_context,
)
from fst_env.models import tiny_policy

ENV_ID = "fsttest/TrlCharset-v0"
ADVICE = "Use only letters and digits in the answer."
G = 4  # num_generations
ROWS = 8  # per_device_train_batch_size: two problems per step


def _charset_reward(response: str, problem: dict) -> tuple[float, str]:
    """A graded reward, so groups of a random model's completions have non-zero reward variance."""
    text = response.strip()
    good = sum(ch.isascii() and ch.isalnum() for ch in text) / len(text)
    if good >= 1.0:
        return 1.0, "Correct: only letters and digits."
    return good, f"Only {good:.0%} of the characters are letters or digits. {ADVICE}"


fst_env.register_task(ENV_ID, {"train": [{"prompt": f"Name item {i}."} for i in range(6)],
                               "validation": [{"prompt": f"Name thing {i}."} for i in range(4)]},
                      _charset_reward, summary="test task: answer with letters and digits only")

SEED_CONTEXT = {"instructions": "Answer in one word."}
SECOND_CONTEXT = {"instructions": "Reply with letters only."}


def _config(output_dir: Path, **overrides) -> trl.GRPOConfig:
    settings = dict(max_steps=2, per_device_train_batch_size=ROWS, num_generations=G, max_completion_length=8,
                    report_to=[], bf16=False, gradient_checkpointing=False, logging_steps=1, use_cpu=True,
                    save_strategy="no", learning_rate=1e-3, seed=0)
    settings.update(overrides)
    return fst_grpo_config(str(output_dir), **settings)


def _population() -> ContextPopulation:
    population = ContextPopulation(dict(SEED_CONTEXT), max_size=4)
    population.add(dict(SECOND_CONTEXT), parent_id=0, scores={})
    return population


def _accept_all_notes() -> NotesFastLearner:
    # Accept every proposal: with a random tiny model a better minibatch score is luck, and this test is about the
    # plumbing (feedback -> notes -> population -> prompts), not about the notes helping.
    return NotesFastLearner(minibatch_size=2, proposals_per_round=1, seed=0,
                            acceptance=ScoreAcceptance(lambda before, after: True, "accept-all"))


def _trainer(tmp_path: Path, **kwargs) -> FSTGRPOTrainer:
    policy = tiny_policy(0)
    kwargs.setdefault("population", _population())
    return FSTGRPOTrainer(policy.model, ENV_ID, kwargs.pop("args", None) or _config(tmp_path),
                          processing_class=policy.tokenizer, **kwargs)


# ============================================================================================== version pin
def test_trl_version_check_accepts_only_the_tested_minor():
    check_trl_version("1.16.0")
    check_trl_version("1.16.4")
    for version in ("1.15.2", "1.17.0", "1.17.0.dev0", "2.0.0", "0.29.1"):
        with pytest.raises(ImportError, match=re.escape(version)) as err:
            check_trl_version(version)
        assert "trl>=1.16,<1.17" in str(err.value)


def test_the_trainer_keeps_the_agents_books():
    # One set of books (issue 14): the same key functions, buffer class and counters as FSTAgent's.
    from fst_env.agents import bookkeeping

    assert fst_trl.problem_key is bookkeeping.problem_key and fst_trl.parse_problem_key is bookkeeping.parse_problem_key
    assert fst_trl.FeedbackBuffer is bookkeeping.FeedbackBuffer and fst_trl.NO_CONTEXT_ID == bookkeeping.NO_CONTEXT_ID
    assert issubclass(fst_trl.FeedbackBuffer, bookkeeping.EpisodeBuffer)

def test_module_refuses_to_import_under_another_trl(monkeypatch):
    # Execute the module's source under a throwaway name with a faked trl version: the check runs at import.
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    spec = importlib.util.spec_from_file_location("fst_trl_version_probe", fst_trl.__file__)
    with pytest.raises(ImportError, match=re.escape("but trl 1.17.0 is installed")):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


# ============================================================================================== dataset
def test_env_dataset_rows_are_conversational_prompts_with_env_columns():
    context = {"instructions": "Be brief.", "notes": "- digits only"}
    data = env_dataset(ENV_ID, "train", 3, context, context_id=7)
    assert set(data.column_names) == {"prompt", "env_id", "split", "problem_id", "problem_key", "context_id",
                                      "context"}
    row = data[2]
    assert row["prompt"] == [{"role": "system", "content": render_context(context)},
                             {"role": "user", "content": "Name item 2."}]
    assert (row["env_id"], row["split"], row["problem_id"], row["context_id"]) == (ENV_ID, "train", 2, 7)
    assert row["problem_key"] == problem_key(ENV_ID, "train", 2) == f"{ENV_ID}/train/2"
    assert json.loads(row["context"]) == context
    plain = env_dataset(ENV_ID, "validation")
    assert len(plain) == 4  # the whole split by default
    assert plain[0]["prompt"] == [{"role": "user", "content": "Name thing 0."}]
    assert plain[0]["context_id"] == NO_CONTEXT_ID and json.loads(plain[0]["context"]) == {}
    assert env_dataset(ENV_ID, "train", 3, context).to_list() == env_dataset(ENV_ID, "train", 3, context).to_list()


def test_env_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="holds 6 problems"):
        env_dataset(ENV_ID, "train", 7)
    with pytest.raises(ValueError, match="num_problems"):
        env_dataset(ENV_ID, "train", 0)
    with pytest.raises(ValueError, match="split"):
        env_dataset(ENV_ID, "dev", 2)


def test_prompt_helpers():
    prompt = [{"role": "system", "content": "old"}, {"role": "user", "content": "Q"}]
    assert with_context(prompt, SEED_CONTEXT) == [{"role": "system", "content": "Answer in one word."},
                                                  {"role": "user", "content": "Q"}]
    assert with_context(prompt, {}) == [{"role": "user", "content": "Q"}]
    assert prompt[0]["content"] == "old"  # not modified in place
    assert with_context("Q", SEED_CONTEXT) == "Answer in one word.\n\nQ"
    with pytest.raises(TypeError):
        with_context(42, SEED_CONTEXT)
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]) == "ab"
    assert completion_text("raw") == "raw"
    with pytest.raises(TypeError, match="EnvReward"):
        completion_text(3.5)
    assert parse_problem_key("fst/MathReasoning-v0/validation/12") == ("fst/MathReasoning-v0", "validation", 12)
    for bad in ("nokey", "fst/X-v0/dev/1", "fst/X-v0/train/one"):
        with pytest.raises(ValueError, match="problem key"):
            parse_problem_key(bad)


# ============================================================================================== reward
def _columns(data, rows):
    return {name: [data[i][name] for i in rows] for name in data.column_names if name != "prompt"}


def test_env_reward_scores_like_the_env_and_records_feedback():
    data = env_dataset(ENV_ID, "train", 3, SEED_CONTEXT, context_id=0)
    buffer = FeedbackBuffer()
    reward = EnvReward(ENV_ID, buffer)
    completions = ["abc123", "a-b!", "", "x\ud800\x00" * 3]
    rows = [0, 1, 1, 2]
    logged: dict[str, list[float]] = {}
    state = TrainerState()
    state.global_step = 5
    rewards = reward(prompts=[data[i]["prompt"] for i in rows],
                     completions=[[{"role": "assistant", "content": c}] for c in completions],
                     completion_ids=[[1, 2], [3], [], [4]], trainer_state=state, log_extra=lambda *a: None,
                     log_metric=lambda name, value: logged.setdefault(name, []).append(value), **_columns(data, rows))
    assert rewards[0] == 1.0
    assert rewards[1] == pytest.approx(0.5)
    assert rewards[2] == 0.0  # empty: the env judges a format error without calling the reward
    assert rewards[3] == pytest.approx(1 / 3)  # a lone surrogate and NUL are just wrong characters
    records = buffer.recent()
    assert [r.group for r in records] == [f"{ENV_ID}/train/{i}" for i in rows]
    assert records[0].verdict == "correct" and records[1].verdict == "incorrect"
    assert records[2].verdict == "format_error" and "empty" in records[2].feedback
    assert ADVICE in records[1].feedback and ADVICE in records[3].feedback
    assert all(r.verdict in VERDICTS and r.feedback for r in records)
    assert all(r.context_id == 0 and r.context == SEED_CONTEXT for r in records)
    assert records[1].problem == "Name item 1." and records[1].completion == "a-b!"
    assert records[0].completion_ids == [1, 2] and records[0].info["step"] == 5
    assert buffer.get(f"{ENV_ID}/train/1", 0) == records[1:3]
    assert logged == {"fst/correct_frac": [0.25], "fst/format_error_frac": [0.25]}


def test_env_reward_other_envs_stale_prompts_and_bad_input():
    reward = EnvReward(ENV_ID)
    data = env_dataset(ENV_ID, "train", 2)
    columns = _columns(data, [0, 1])
    columns["env_id"] = ["fst/Other-v0", ENV_ID]
    out = reward(prompts=[data[0]["prompt"], data[1]["prompt"]], completions=["abc", "abc"], **columns)
    assert out == [None, 1.0]  # TRL turns None into NaN: the other env's reward function scores that row
    assert len(reward.feedback_buffer) == 1
    with pytest.raises(ValueError, match="does not show that problem"):
        reward(prompts=[[{"role": "user", "content": "Name item 5."}]], completions=["abc"],
               **_columns(data, [0]))
    assert EnvReward(ENV_ID, check_prompts=False)(prompts=[[{"role": "user", "content": "reworded"}]],
                                                  completions=["abc"], **_columns(data, [0])) == [1.0]
    with pytest.raises(KeyError, match="problem_id"):
        reward(prompts=["x"], completions=["abc"])
    with pytest.raises(TypeError, match="EnvReward"):
        reward(prompts=None, completions=[123], problem_id=[0])
    with pytest.raises(ValueError, match="multi-turn"):
        EnvReward("fst/WordGuess-v0")
    reward.recording = False
    reward(prompts=None, completions=["abc"], problem_id=[0])
    assert len(reward.feedback_buffer) == 1


def test_feedback_buffer_keys_order_capacity_and_state():
    buffer = FeedbackBuffer(max_records=3)
    rollouts = [Rollout(group=f"e/train/{i % 2}", problem="p", context_id=i % 3, context={}, completion=str(i),
                        reward=i / 10, feedback="f", verdict="incorrect") for i in range(5)]
    buffer.extend(rollouts[:2])
    mark = buffer.total_added
    buffer.extend(rollouts[2:])
    assert len(buffer) == 3 and buffer.total_added == 5
    assert buffer.recent() == rollouts[2:] and buffer.recent(2) == rollouts[3:]
    assert buffer.since(mark) == rollouts[2:]
    assert buffer.problem_keys() == ["e/train/0", "e/train/1"]  # most recent first
    assert buffer.get("e/train/0", 1) == [rollouts[4]]
    assert set(buffer.by_key()) == {("e/train/0", 2), ("e/train/1", 0), ("e/train/0", 1)}
    copy = FeedbackBuffer()
    copy.load_state_dict(json.loads(json.dumps(buffer.state_dict())))
    assert copy.recent() == buffer.recent() and copy.total_added == 5 and copy.max_records == 3
    with pytest.raises(TypeError):
        buffer.add("not a rollout")
    with pytest.raises(ValueError):
        FeedbackBuffer(0)


# ============================================================================================== objective
def test_fst_config_defaults_to_cispo_with_tau(tmp_path):
    args = fst_grpo_config(str(tmp_path), report_to=[], bf16=False, use_cpu=True)
    assert (args.loss_type, args.epsilon_high, args.beta, args.scale_rewards) == ("cispo", DEFAULT_EPSILON_HIGH,
                                                                                  0.0, "group")
    assert fst_grpo_config(str(tmp_path), epsilon_high=5.0, bf16=False, use_cpu=True).epsilon_high == 5.0


def test_trainer_refuses_cispo_without_cap_other_losses_and_server_mixing(tmp_path):
    cases = [(dict(loss_type="cispo", epsilon_high=None), "explicit epsilon_high"),
             (dict(loss_type="dapo"), "CISPO"),
             (dict(use_vllm=True, vllm_mode="server"), "server mode")]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            _trainer(tmp_path, args=_config(tmp_path, **overrides))


# ============================================================================================== a short run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two CISPO steps of a LoRA tiny model with two contexts, a fast round after each, TensorBoard on."""
    out = tmp_path_factory.mktemp("fst_grpo")
    broadcasts = []
    real_broadcast = fst_trl.broadcast_object_list

    def recording_broadcast(objects, from_process=0):
        broadcasts.append(json.dumps(objects[0]["population"], sort_keys=True))
        return real_broadcast(objects, from_process=from_process)

    fst_trl.broadcast_object_list = recording_broadcast
    try:
        trainer = _trainer(out, args=_config(out, report_to=["tensorboard"], save_strategy="steps", save_steps=2),
                           fast_learner=_accept_all_notes(), fast_every=1, fast_problems=2,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        trainer.train()
    finally:
        fst_trl.broadcast_object_list = real_broadcast
    return {"trainer": trainer, "out": out, "broadcasts": broadcasts}


def test_run_uses_cispo_with_the_requested_cap(run):
    trainer = run["trainer"]
    assert trainer.args.loss_type == trainer.loss_type == "cispo"
    assert trainer.args.epsilon_high == trainer.epsilon_high == DEFAULT_EPSILON_HIGH
    step_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in step_logs] == [1, 2]
    # cispo_clip_ratio is only logged by the cispo branch of GRPOTrainer._compute_loss.
    assert all("cispo_clip_ratio" in e and math.isfinite(e["loss"]) for e in step_logs)
    assert any(e["grad_norm"] > 0 for e in step_logs)


def test_contexts_are_mixed_within_each_group(run):
    trainer = run["trainer"]
    first = trainer.feedback_buffer.recent()[:ROWS]  # step 1's batch, generated before any fast round
    for start in range(0, ROWS, G):
        group = first[start:start + G]
        assert len({r.group for r in group}) == 1
        ids = sorted(r.context_id for r in group)
        assert ids == [0, 0, 1, 1]  # G/K = 2 rollouts per context
        assert {r.context_id: r.context for r in group} == {0: SEED_CONTEXT, 1: SECOND_CONTEXT}
    # The prompts TRL generated from in the last step: one user message per group, several system messages.
    prompts = list(trainer._logs["prompt"])
    assert len(prompts) == ROWS
    for start in range(0, ROWS, G):
        group = prompts[start:start + G]
        assert len({p[-1]["content"] for p in group}) == 1
        assert len({p[0]["content"] for p in group}) >= 2 and all(p[0]["role"] == "system" for p in group)


def test_one_advantage_per_problem_across_its_contexts(run):
    trainer = run["trainer"]
    last = trainer.feedback_buffer.recent(ROWS)  # the last batch, in TRL's row order
    rewards = torch.tensor([r.reward for r in last]).view(-1, G)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # Bessel-corrected, as TRL's nanstd
    expected = ((rewards - mean) / (std + 1e-4)).flatten()
    assert torch.allclose(torch.tensor(list(trainer._logs["advantages"])), expected, atol=1e-5)
    assert (std > 0).any(), "the graded reward should give at least one group reward variance"
    for start in range(0, ROWS, G):
        assert len({r.context_id for r in last[start:start + G]}) >= 2


def test_rewards_and_feedback_land_in_the_buffer(run):
    trainer = run["trainer"]
    records = trainer.feedback_buffer.recent()
    assert len(records) == 2 * ROWS and trainer.feedback_buffer.total_added == 2 * ROWS
    check = EnvReward(ENV_ID)
    for r in records:
        env_id, split, pid = parse_problem_key(r.group)
        assert (env_id, split) == (ENV_ID, "train")
        assert r.verdict in VERDICTS and r.feedback
        assert r.reward == check.judge(split, pid, r.completion).reward
        assert r.info["step"] in (0, 1)
    assert {r.info["step"] for r in records} == {0, 1}


def test_fast_rounds_change_the_population_reuse_rollouts_and_reach_the_next_prompts(run):
    trainer = run["trainer"]
    assert trainer.fst_counters["fast_rounds"] == 2 and len(trainer.fast_history) == 2
    assert all(h["rollouts_reused"] > 0 for h in trainer.fast_history)  # RL rollouts reused, not regenerated
    assert trainer.fst_counters["rollouts_reused"] == sum(h["rollouts_reused"] for h in trainer.fast_history)
    noted = [c for c in trainer.population if ADVICE in c.context.get("notes", "")]
    assert noted and all(c.parent_id in (0, 1) and c.changed == ["notes"] for c in noted)
    first_child = min(c.id for c in noted)
    # The round after step 1 added a context; step 2's groups were generated with it.
    second_batch = trainer.feedback_buffer.recent(ROWS)
    assert first_child in {r.context_id for r in second_batch}
    assert any(ADVICE in p[0]["content"] for p in trainer._logs["prompt"])


class ScriptedReflector:
    """Stands in for a reflection LM: records GEPA's prompt, answers with the current instruction plus a phrase."""

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        current = prompt.split("```")[1].strip()  # GEPA's template quotes the current instruction first
        return f"A better instruction:\n```\n{current} {self.phrase}\n```"


def test_reflective_learner_with_a_scripted_reflector_changes_the_population(tmp_path):
    reflector = ScriptedReflector(ADVICE)
    learner = ReflectiveFastLearner(reflector, minibatch_size=2, proposals_per_round=1, seed=0,
                                    acceptance=ScoreAcceptance(lambda before, after: True, "accept-all"))
    trainer = _trainer(tmp_path, args=_config(tmp_path, max_steps=1), fast_learner=learner, fast_every=1,
                       fast_problems=2)
    trainer.train()
    assert len(reflector.prompts) == 1 == trainer.fst_counters["reflection_calls"]
    # The reflector saw the env's feedback on the RL rollouts of step 1.
    assert "letters or digits" in reflector.prompts[0] and "## Feedback" in reflector.prompts[0]
    children = [c for c in trainer.population if c.parent_id is not None and c.id > 1]
    assert len(children) == 1 and children[0].changed == ["instructions"]
    parent = trainer.population.context(children[0].parent_id)
    assert children[0].context["instructions"] == f"{parent['instructions']} {ADVICE}"


def test_population_is_broadcast_every_round(run):
    trainer, broadcasts = run["trainer"], run["broadcasts"]
    assert len(broadcasts) == 2  # once per fast round (single process: a no-op that returns the same object)
    assert json.loads(broadcasts[-1]) == trainer.population.state_dict()


def test_fast_round_metrics_share_trl_tensorboard_run_and_steps(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, out = run["trainer"], run["out"]
    fast_logs = [e for e in trainer.state.log_history if "fast/n_proposals" in e]
    assert [e["step"] for e in fast_logs] == [1, 2]
    assert all(e["population/size"] >= 3 and e["budget/fast_rounds"] >= 1 for e in fast_logs)
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/fast/n_accepted", "train/fast/metric_calls", "train/population/size", "train/reward",
            "train/loss", "train/fst/contexts_per_group", "train/fst/correct_frac"} <= tags
    assert [s.step for s in events.Scalars("train/fast/n_accepted")] == [1, 2]


def test_checkpoint_carries_the_population_and_resume_restores_it(run, tmp_path):
    trainer, out = run["trainer"], run["out"]
    saved = json.loads((out / "checkpoint-2" / FST_STATE_NAME).read_text())
    assert saved["population"] == trainer.population.state_dict()
    assert saved["counters"] == trainer.fst_counters and len(saved["buffer"]["records"]) == 2 * ROWS
    fresh = _trainer(tmp_path, population=ContextPopulation(dict(SEED_CONTEXT), max_size=4),
                     fast_learner=_accept_all_notes(), fast_every=1,
                     peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert len(fresh.population) == 1
    # What Trainer.train(resume_from_checkpoint=...) does before the first resumed step.
    fresh.create_optimizer_and_scheduler(num_training_steps=2)
    fresh._load_optimizer_and_scheduler(str(out / "checkpoint-2"))
    assert fresh.population.state_dict() == trainer.population.state_dict()
    assert fresh.fst_counters == trainer.fst_counters
    assert fresh.fast_learner.state_dict() == trainer.fast_learner.state_dict()
    assert fresh.feedback_buffer.recent() == trainer.feedback_buffer.recent()


# ============================================================================================== vLLM plumbing
FAKE_VLLM_TEXT = "ab!?"  # half letters: imperfect, so the fast round has failures to propose from


class _FakeVLLM:
    """Stands in for TRL's VLLMGeneration (vLLM cannot run here): records weight syncs and generations."""

    def __init__(self, trainer):
        self.trainer, self.calls = trainer, []

    def sync_weights(self):
        self.calls.append(("sync", self.trainer.state.global_step))

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append(("generate", len(prompts), num_generations))
        ids = self.trainer.processing_class(FAKE_VLLM_TEXT, add_special_tokens=False)["input_ids"]
        return prompts, [list(ids) for _ in prompts], [[[-0.1]] * len(ids) for _ in prompts], None


def test_fast_round_syncs_vllm_weights_first_and_generates_through_it(tmp_path):
    trainer = _trainer(tmp_path, fast_learner=_accept_all_notes(), fast_every=1)
    data = env_dataset(ENV_ID, "train", 2)
    trainer.env_reward(prompts=[data[i]["prompt"] for i in (0, 0, 1, 1)], completions=["a-b", "a!", "?", "x."],
                       context_id=[0, 1, 0, 1], context=[json.dumps(SEED_CONTEXT), json.dumps(SECOND_CONTEXT)] * 2,
                       **{k: v for k, v in _columns(data, [0, 0, 1, 1]).items() if k not in ("context_id", "context")})
    fake = _FakeVLLM(trainer)
    trainer.state.global_step = 3
    trainer.use_vllm, trainer.vllm_mode, trainer.vllm_generation = True, "colocate", fake
    scalars = trainer.fast_round()
    assert fake.calls[0] == ("sync", 3) and trainer._last_loaded_step == 3
    assert [c for c in fake.calls if c[0] == "sync"] == [("sync", 3)]  # fresh weights: no second push
    generations = [c for c in fake.calls if c[0] == "generate"]
    assert generations and all(n == 1 for _, _, n in generations)
    assert scalars["fast/metric_calls"] == sum(c[1] for c in generations)
    assert trainer.fast_history[0]["proposals"][0]["child_scores"] == [0.5, 0.5]  # scored on vLLM's completions
    # Fast-round rollouts are not RL rollouts: they stay out of the buffer.
    assert len(trainer.feedback_buffer) == 4 and all(r.completion != FAKE_VLLM_TEXT for r in trainer.feedback_buffer)


# ============================================================================================== several processes
def test_a_group_split_across_processes_gets_one_assignment(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fast_every=0)
    trainer.population.add({"instructions": "Third."}, parent_id=0, scores={})
    trainer.fst_counters["generation_rounds"] = 5
    whole = trainer.assign_contexts(12, G)  # one process holding 12 rows = 3 groups
    halves = []
    for rank in (0, 1):  # two processes holding 6 rows each: group 1 straddles them
        monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(process_index=rank))
        halves += trainer.assign_contexts(6, G)
    assert halves == whole
    for start in range(0, 12, G):
        assert sorted(Counter(whole[start:start + G]).values()) == [1, 1, 2]  # G // K each, one extra


def test_main_process_gathers_every_processes_rollouts(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fast_every=0)
    mine = [Rollout(group=f"{ENV_ID}/train/0", problem="p", context_id=0, context={}, completion="m")]
    theirs = [Rollout(group=f"{ENV_ID}/train/1", problem="p", context_id=1, context={}, completion="t")]
    mark = trainer.feedback_buffer.total_added
    trainer.feedback_buffer.extend(mine)
    gathered = []
    monkeypatch.setattr(fst_trl, "gather_object", lambda local: gathered.append(local) or [*local, *theirs])
    for is_main in (False, True):
        monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(num_processes=2, is_main_process=is_main))
        trainer._share_rollouts(mark)
    assert gathered == [mine, mine]
    assert trainer.feedback_buffer.recent() == [*mine, *theirs]  # added once, on the main process only


def test_fast_generation_set_ups_that_would_hang_are_refused(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fast_every=1)
    monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(num_processes=2))
    monkeypatch.setattr(trainer, "_dist", SimpleNamespace(is_zero3=True, is_fsdp=False))
    with pytest.raises(ValueError, match="ZeRO-3 or FSDP"):
        trainer._check_fast_generation()
    monkeypatch.setattr(trainer, "use_vllm", True)
    monkeypatch.setattr(trainer, "vllm_mode", "colocate")
    trainer._check_fast_generation()  # colocate, tensor_parallel_size=1: the main rank generates alone
    monkeypatch.setattr(trainer, "vllm_tensor_parallel_size", 2)
    with pytest.raises(ValueError, match="colocate TP>1"):
        trainer._check_fast_generation()
    monkeypatch.setattr(trainer, "fast_generate", lambda messages: ["x"] * len(messages))
    trainer._check_fast_generation()  # the user's own generator takes the responsibility


# ============================================================================================== resumable sampler
def test_resumable_sampler_keeps_trls_order_and_replays_any_epoch_on_a_fresh_sampler():
    from trl.trainer.utils import RepeatSampler

    def make(cls):
        return cls(list(range(10)), mini_repeat_count=2, batch_size=3, repeat_count=1, seed=7)

    trl_sampler = make(RepeatSampler)
    trl_epochs = [list(trl_sampler) for _ in range(3)]
    assert len({tuple(e) for e in trl_epochs}) == 3
    assert list(make(RepeatSampler)) == trl_epochs[0]  # why: a fresh TRL sampler (a resumed run) replays epoch 0
    ours = make(fst_trl.ResumableRepeatSampler)
    assert [list(ours) for _ in range(3)] == trl_epochs  # no set_epoch: TRL's order, epoch after epoch
    for epoch in (2, 1, 0):
        fresh = make(fst_trl.ResumableRepeatSampler)
        fresh.set_epoch(epoch)
        assert list(fresh) == trl_epochs[epoch]
    unshuffled = fst_trl.ResumableRepeatSampler(list(range(4)), mini_repeat_count=2, batch_size=2, shuffle=False)
    unshuffled.set_epoch(3)
    assert list(unshuffled) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_trainer_trains_from_the_resumable_sampler_and_sets_its_epoch(tmp_path):
    trainer = _trainer(tmp_path, fast_every=0)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, fst_trl.ResumableRepeatSampler) and trainer.train_sampler is sampler
    assert (sampler.mini_repeat_count, sampler.seed) == (G, trainer.args.seed)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, fst_trl.FastRoundCallback))
    for progress, epoch in ((None, 0), (0.0, 0), (2.0, 2), (2.5, 2)):  # resumed mid-epoch 2: state.epoch = 2.5
        callback.on_epoch_begin(trainer.args, SimpleNamespace(epoch=progress), trainer.control)
        assert sampler.epoch == epoch


# ============================================================================================== multi-turn envs
MULTI_ID = "fsttest/TrlThreeTurns-v0"
MULTI_TURNS = 3


class ThreeTurnEnv(gym.Env):
    """Three replies per problem, each graded like the charset task; the next observation names the next turn."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, split: str = "train") -> None:
        self.observation_space = spaces.Text(max_length=256, min_length=0, charset=string.printable)
        self.action_space = spaces.Text(max_length=4096, charset=string.printable)
        self._problem = self._turn = 0

    def num_problems(self) -> int:
        return 6

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._problem, self._turn = int((options or {}).get("problem_id", 0)), 0
        return f"Name item {self._problem}, turn 1 of {MULTI_TURNS}.", {}

    def step(self, action):
        self._turn += 1
        text = action.strip()
        good = sum(ch.isascii() and ch.isalnum() for ch in text) / len(text) if text else 0.0
        done = self._turn == MULTI_TURNS
        observation = "" if done else f"Again for item {self._problem}, turn {self._turn + 1} of {MULTI_TURNS}."
        info = {"feedback": f"Turn {self._turn}: only {good:.0%} letters or digits. {ADVICE}",
                "verdict": "correct" if good == 1.0 else "incorrect"}
        return observation, good / MULTI_TURNS, done, False, info


register_env(MULTI_ID, ThreeTurnEnv, EnvCard(summary="test task: three graded replies", splits={"train": 6},
                                               turns="multi"))


def test_a_multi_turn_env_trains_for_two_steps_on_whole_episodes(tmp_path):
    trainer = FSTGRPOTrainer(tiny_policy(0).model, MULTI_ID, _config(tmp_path, max_completion_length=4),
                             processing_class=tiny_policy(0).tokenizer, population=_population(),
                             fast_learner=_accept_all_notes(), fast_every=1, fast_problems=2, max_episode_tokens=256,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainer.multi_turn and isinstance(trainer.env_reward, fst_trl.EpisodeReward)  # from the card
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.fst_counters["fast_rounds"] == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    records = trainer.feedback_buffer.recent()
    assert len(records) == 2 * ROWS
    for r in records:  # whole episodes: three turns (4 sampled tokens a turn stay under the 256-token cap)
        turns = r.info["turns"]
        assert len(turns) == MULTI_TURNS and r.reward == pytest.approx(sum(t["reward"] for t in turns))
        assert [t["observation"].split(", turn ")[-1] for t in turns] == ["1 of 3.", "2 of 3.", "3 of 3."]
        assert "Turn 3 response" in r.completion and r.feedback.count(ADVICE) == 3
    assert all(h["rollouts_reused"] > 0 for h in trainer.fast_history)
    assert any(ADVICE in c.context.get("notes", "") for c in trainer.population)  # notes from the episodes' feedback
    # TRL trained on the episode sequences: one advantage per problem over its G episode returns.
    rewards = torch.tensor([r.reward for r in records[-ROWS:]]).view(-1, G)
    expected = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).flatten()
    assert torch.allclose(torch.tensor(list(trainer._logs["advantages"])), expected, atol=1e-5)


def test_episode_sequences_are_token_exact_with_env_turns_masked(tmp_path):
    trainer = FSTGRPOTrainer(tiny_policy(0).model, MULTI_ID, _config(tmp_path, max_completion_length=4),
                             processing_class=tiny_policy(0).tokenizer, population=_population(), fast_every=0,
                             max_episode_tokens=256)
    [(episode, prompt_ids, completion_ids, mask, _)] = trainer.play_episodes([("train", 2, 1, SECOND_CONTEXT)])
    assert len(episode.turns) == MULTI_TURNS and episode.terminated and episode.group == f"{MULTI_ID}/train/2"
    assert len(mask) == len(completion_ids) and 0 in mask and mask[-1] == 1
    # What the policy wrote (mask 1) is exactly every turn's sampled ids; each turn saw the ids trained on.
    assert [t for t, m in zip(completion_ids, mask, strict=True) if m] == [i for t in episode.turns
                                                                          for i in t.completion_ids]
    full = prompt_ids + completion_ids
    for turn in episode.turns:
        assert full[:len(turn.prompt_ids)] == turn.prompt_ids
        assert full[len(turn.prompt_ids):len(turn.prompt_ids) + len(turn.completion_ids)] == turn.completion_ids
    tokenizer = trainer.processing_class
    env_text = tokenizer.decode([t for t, m in zip(completion_ids, mask, strict=True) if not m])
    assert "turn 2 of 3" in env_text and "turn 3 of 3" in env_text
    assert SECOND_CONTEXT["instructions"] in tokenizer.decode(prompt_ids)
    # A cap on the episode's tokens ends it early, truncated, with the last turn cut at the cap.
    trainer.max_episode_tokens = 3
    [(short, _, short_ids, _, _)] = trainer.play_episodes([("train", 2, 1, SECOND_CONTEXT)])
    assert short.truncated and short.info["stopped"] == "max_context"
    assert len(short.turns) == 1 and short_ids == short.turns[0].completion_ids and len(short_ids) == 3


def test_multi_turn_settings_that_cannot_work_are_refused(tmp_path):
    cases = [(dict(max_turns=0), "max_turns"), (dict(max_episode_tokens=0), "max_episode_tokens"),
             (dict(fast_generate=lambda m: ["x"] * len(m)), "fast_generate"),
             (dict(rollout_func=lambda prompts, trainer: {}), "rollout_func")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            _trainer(tmp_path, multi_turn=True, **kwargs)


# ============================================================================================== evaluation
def test_evaluation_uses_the_best_context_and_records_nothing(tmp_path):
    trainer = _trainer(tmp_path, eval_dataset=env_dataset(ENV_ID, "validation"), fast_every=0)
    trainer.population.set_scores(0, {"k": 0.2})
    trainer.population.set_scores(1, {"k": 0.9})
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics and len(trainer.feedback_buffer) == 0
    prompts = list(trainer._logs["prompt"])
    assert prompts and all(p[0]["content"] == SECOND_CONTEXT["instructions"] for p in prompts)


# ============================================================================================== the multi-GPU recipe
def test_multi_gpu_doc_script_runs_single_process_on_cpu(tmp_path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "multi_gpu.md").read_text()
    script = re.search(r"Save as `train_fst_trl.py`:\n\n```python\n(.*?)```", doc, re.DOTALL).group(1)
    path = tmp_path / "train_fst_trl.py"
    path.write_text(script)
    spec = importlib.util.spec_from_file_location("train_fst_trl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = tiny_policy(0).save(tmp_path / "tiny")
    trainer = module.main(["--model", str(model_dir), "--env", ENV_ID, "--cpu", "--output-dir", str(tmp_path / "out"),
                           "--max-steps", "1", "--num-generations", "4", "--per-device-batch-size", "4",
                           "--max-completion-length", "8", "--num-problems", "6", "--fast-every", "1",
                           "--fast-problems", "1", "--report-to", "none", "--lora-rank", "4"])
    assert trainer.state.global_step == 1 and trainer.fst_counters["fast_rounds"] == 1
    assert (trainer.loss_type, trainer.epsilon_high) == ("cispo", 4.0)
    assert any("loss" in e for e in trainer.state.log_history)
    assert (tmp_path / "out" / "adapter_config.json").exists()  # save_model wrote the LoRA adapter
