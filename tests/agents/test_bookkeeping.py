"""The one set of books both drivers keep: problem keys, the recent-episode buffer, budget counters, fast scoring."""

from __future__ import annotations

import json
import pickle

import pytest

from fst_env.agents.bookkeeping import (
    BudgetCounters,
    EpisodeBuffer,
    FeedbackBuffer,
    fast_round_rollouts,
    is_training_key,
    parse_problem_key,
    problem_key,
)
from fst_env.agents.episodes import Episode, Turn
from fst_env.agents.rollout import Rollout


def _episode(key: str, cid: int, reward: float, turns: int = 1) -> Episode:
    return Episode(group=key, context_id=cid, context={"notes": str(cid)}, terminated=True,
                   turns=[Turn(observation=f"obs {k}", completion=f"move {k}", reward=reward, verdict="correct")
                          for k in range(turns)])


def test_problem_keys_round_trip_and_refuse_other_text():
    key = problem_key("fst/MathReasoning-v0", "validation", 12)
    assert key == "fst/MathReasoning-v0/validation/12"
    assert parse_problem_key(key) == ("fst/MathReasoning-v0", "validation", 12)
    for bad in ("nokey", "fst/X-v0/dev/1", "fst/X-v0/train/one", "fst/X-v0/text/-3"):
        with pytest.raises(ValueError, match="not a problem key"):
            parse_problem_key(bad)
    assert is_training_key("a/b/train/3") and not is_training_key("a/test/3") and not is_training_key("a/text/9")


def test_episode_buffer_is_bounded_recent_first_and_restores():
    buffer = EpisodeBuffer(3)
    episodes = [_episode(f"e/train/{i % 2}", i, float(i)) for i in range(5)]
    buffer.extend(episodes)
    assert len(buffer) == 3 and buffer.total_added == 5 and list(buffer) == episodes[2:]  # oldest dropped
    assert buffer.problem_keys() == ["e/train/0", "e/train/1"] and buffer.problem_keys(1) == ["e/train/0"]
    assert buffer.get("e/train/0", 4) == [episodes[4]] and buffer.since(4) == [episodes[4]]
    with pytest.raises(TypeError):
        buffer.add(episodes[0].as_rollout())
    restored = EpisodeBuffer(3)
    restored.load_state_dict(json.loads(json.dumps(buffer.state_dict())))
    assert [e.to_dict() for e in restored] == [e.to_dict() for e in buffer] and restored.total_added == 5
    old = EpisodeBuffer(8)  # an agent checkpoint from before the buffer: a list of episode (or rollout) dicts
    old.load_state_dict([episodes[0].to_dict(), episodes[1].as_rollout().__dict__])
    assert [e.group for e in old] == ["e/train/0", "e/train/1"] and old.total_added == 2 and old.max_records == 8


def test_feedback_buffer_holds_rollouts_with_the_same_books():
    buffer = FeedbackBuffer(4)
    rollouts = [Rollout(group=f"e/train/{i}", problem="p", context_id=0, context={}, completion=str(i))
                for i in range(3)]
    buffer.extend(rollouts)
    restored = FeedbackBuffer(1)
    restored.load_state_dict(buffer.state_dict())
    assert restored.recent() == rollouts and restored.max_records == 4 and isinstance(restored, EpisodeBuffer)


def test_budget_counters_count_fast_rounds_and_restore_old_checkpoints():
    counters = BudgetCounters({"update": 0, "wall_time_s": 0.0})
    counters.count_fast_round({"metric_calls": 6, "rollouts_reused": 2, "reflection_calls": 1, "n_proposals": 2,
                               "n_accepted": 1})
    counters.count_fast_round({"metric_calls": 4, "n_proposals": 1})
    assert counters == {"update": 0, "wall_time_s": 0.0, "fast_rounds": 2, "fast_rollouts": 10,
                        "rollouts_reused": 2, "reflection_calls": 1, "fast_proposals": 3, "fast_accepted": 1}
    assert counters.as_metrics()["budget/fast_rollouts"] == 10
    counters.restore({"update": 3, "fast_rounds": 1})  # an older checkpoint without the other counters
    assert counters["update"] == 3 and counters["fast_rounds"] == 1 and counters["fast_rollouts"] == 0
    copy = pickle.loads(pickle.dumps(counters))
    copy.restore({})
    assert copy["update"] == 0 and json.loads(json.dumps(counters)) == counters


def test_fast_round_rollouts_plays_parsed_keys_and_converts_episodes():
    seen = []

    def play(problems, context):
        seen.append((problems, context))
        return [_episode(problem_key(*p), -1, 1.0, turns=2) for p in problems]

    keys = ["fst/A-v0/train/3", "fst/A-v0/validation/1"]
    rollouts = fast_round_rollouts({"notes": "n"}, keys, play, return_rule="last", env_id="fst/A-v0", step=7)
    assert seen == [([("fst/A-v0", "train", 3), ("fst/A-v0", "validation", 1)], {"notes": "n"})]
    assert [r.group for r in rollouts] == keys and all(r.reward == 1.0 and r.info["step"] == 7 for r in rollouts)
    assert "Turn 2 response" in rollouts[0].completion  # a two-turn episode carries its transcript
    with pytest.raises(ValueError, match="not from"):
        fast_round_rollouts({}, ["fst/B-v0/train/0"], play, env_id="fst/A-v0")
    with pytest.raises(ValueError, match="2 scored records for 1"):
        fast_round_rollouts({}, ["fst/A-v0/train/0"], lambda problems, context: play(problems * 2, context))
