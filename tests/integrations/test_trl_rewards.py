"""The TRL integration's data and reward side: version pin, shared books, dataset rows, prompt helpers, EnvReward."""

import importlib.util
import json
import re

import pytest
import trl
from _trl_helpers import ADVICE, ENV_ID, SEED_CONTEXT, _columns
from transformers import TrainerState

from fst_env.agents.rollout import Rollout
from fst_env.context import render_context
from fst_env.core import VERDICTS
from fst_env.integrations import trl as fst_trl
from fst_env.integrations.trl import (
    NO_CONTEXT_ID,
    EnvReward,
    FeedbackBuffer,
    check_trl_version,
    completion_text,
    env_dataset,
    parse_problem_key,
    problem_key,
    with_context,
)


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

