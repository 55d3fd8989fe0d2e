"""Episodes: the runner plays G episodes of one problem with batched generation, formats the growing conversation
with the chat template, never shows feedback, and truncates at the turn and context guards."""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import pytest

from fst_env.agents.episodes import EnvPool, Episode, EpisodeLimits, EpisodeRunner, EpisodeStart, Turn
from fst_env.agents.rollout import Rollout
from fst_env.backends import make_backend
from fst_env.backends.base import SamplingParams
from fst_env.models import tiny_policy

SECRET = "SECRET-FEEDBACK"


class ThreeTurnEnv(gym.Env):
    """A scripted 3-turn text env: rewards 0, 0, then 1 when the last reply has even length; feedback carries a
    marker the policy must never see, the hint and the next observation do not."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, turns: int = 3) -> None:
        self.observation_space = gym.spaces.Text(10_000)
        self.action_space = gym.spaces.Text(10_000)
        self.turns = turns
        self.turn = 0
        self.problem_id = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.problem_id = int((options or {}).get("problem_id", 0))
        self.turn = 0
        return f"Problem {self.problem_id}: say something.", {"problem_id": self.problem_id, "split": "train"}

    def step(self, action):
        self.turn += 1
        last = self.turn >= self.turns
        reward = float(len(action) % 2 == 0) if last else 0.0
        info = {"feedback": f"{SECRET} turn {self.turn}", "hint": f"hint {self.turn}",
                "verdict": ("correct" if reward else "incorrect") if last else "incorrect",
                "problem_id": self.problem_id, "split": "train"}
        observation = info["feedback"] if last else f"Turn {self.turn + 1} of {self.turns}: go on (hint {self.turn})."
        return observation, reward, last, False, info


class RecordingBackend:
    """Wraps a real backend and records every batch of prompts it was asked for."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        return self.inner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def generate(self, prompts, params):
        self.calls.append(list(prompts))
        return self.inner.generate(prompts, params)


@pytest.fixture(scope="module")
def backend():
    policy = tiny_policy(0)
    return make_backend("hf", policy), policy


def runner(backend, **limits) -> tuple[EpisodeRunner, RecordingBackend]:
    inner, policy = backend
    recording = RecordingBackend(inner)
    count = lambda text: len(policy.tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    return EpisodeRunner(recording, EpisodeLimits(**limits), count, lambda obs, info: f"g/{info['problem_id']}"), \
        recording


def sampling() -> SamplingParams:
    return SamplingParams(max_new_tokens=6, seed=1)


def starts(n: int, problem_id: int = 4, turns: int = 3) -> list[EpisodeStart]:
    return [EpisodeStart(ThreeTurnEnv(turns), {"problem_id": problem_id}, context_id=0,
                         context={"instructions": "Be brief."}) for _ in range(n)]


def test_g_episodes_of_one_problem_are_one_group_played_with_one_generate_call_per_turn(backend):
    play, recording = runner(backend)
    episodes = play.play(starts(4), sampling)
    assert {e.group for e in episodes} == {"g/4"} and len(episodes) == 4
    assert all(len(e.turns) == 3 and e.terminated and not e.truncated for e in episodes)
    assert [len(c) for c in recording.calls] == [4, 4, 4]  # batched across the active episodes, once per turn
    # Rewards come only at the end: the return is the last turn's.
    assert all(e.turns[0].reward == e.turns[1].reward == 0.0 for e in episodes)
    assert all(e.episode_return() == e.turns[-1].reward == e.episode_return("last") for e in episodes)


def test_the_conversation_grows_in_the_chat_template_and_never_shows_feedback(backend):
    play, recording = runner(backend)
    episode = play.play(starts(1), sampling)[0]
    inner, policy = backend
    for k, prompt in enumerate(c[0] for c in recording.calls):
        messages = [{"role": "system", "content": "Be brief."}]
        for turn in episode.turns[:k]:
            messages += [{"role": "user", "content": turn.observation},
                         {"role": "assistant", "content": turn.completion}]
        messages.append({"role": "user", "content": episode.turns[k].observation})
        assert prompt == inner.apply_chat_template(messages)
        assert SECRET not in prompt
        # The sampler's prompt ids are exactly this prompt's tokens: the slow learner trains under them.
        assert episode.turns[k].prompt_ids == policy.tokenizer(prompt, add_special_tokens=False).input_ids
    assert episode.turns[1].observation.startswith("Turn 2 of 3") and "hint 1" in episode.turns[1].observation
    assert [t.hint for t in episode.turns] == ["hint 1", "hint 2", "hint 3"]
    assert all(SECRET in t.feedback for t in episode.turns)
    assert all(len(t.old_logprobs) == len(t.completion_ids) > 0 for t in episode.turns)


def test_max_turns_truncates(backend):
    play, _ = runner(backend, max_turns=2)
    episodes = play.play(starts(2, turns=5), sampling)
    assert all(len(e.turns) == 2 and e.truncated and not e.terminated for e in episodes)
    assert all(e.info["stopped"] == "max_turns" for e in episodes)


def test_max_context_truncates_before_a_too_long_prompt_but_never_the_first_turn(backend):
    play, recording = runner(backend, max_context_tokens=1)
    episodes = play.play(starts(2), sampling)
    assert all(len(e.turns) == 1 and e.truncated and e.info["stopped"] == "max_context" for e in episodes)
    assert len(recording.calls) == 1


def test_a_single_turn_env_is_the_one_turn_case(backend):
    play, recording = runner(backend)
    episodes = play.play(starts(3, turns=1), sampling)
    assert all(len(e.turns) == 1 and e.terminated for e in episodes) and len(recording.calls) == 1
    rollout = episodes[0].as_rollout()
    turn = episodes[0].turns[0]
    assert (rollout.completion, rollout.feedback, rollout.prompt_ids, rollout.info["hint"]) == \
        (turn.completion, turn.feedback, turn.prompt_ids, turn.hint)


def test_a_multi_turn_rollout_for_the_fast_learners_carries_the_transcript_and_every_feedback(backend):
    play, _ = runner(backend)
    episode = play.play(starts(1), sampling)[0]
    rollout = episode.as_rollout()
    assert rollout.problem == episode.turns[0].observation and rollout.reward == episode.episode_return()
    for k, turn in enumerate(episode.turns, start=1):
        assert f"Turn {k}: {turn.feedback}" in rollout.feedback
        assert turn.completion in rollout.completion and turn.observation in rollout.completion
    assert len(rollout.info["turns"]) == 3 and rollout.info["hint"] == "hint 3"


def test_episode_dicts_round_trip_and_old_rollout_dicts_load():
    episode = Episode("g/1", 2, {"instructions": "x"}, [Turn("o", "c", [1], [2], [-0.5], 1.0, "f", "correct", "h")],
                      terminated=True)
    assert Episode.from_dict(episode.to_dict()) == episode
    old = Rollout("g/1", "o", 2, {"instructions": "x"}, "c", 1.0, "f", "correct", [1], [2], [-0.5], {"hint": "h"})
    from dataclasses import asdict

    assert Episode.from_dict(asdict(old)) == episode


def test_env_pool_reuses_envs_and_limits_validate():
    pool = EnvPool()
    first = pool.take("fst/MathReasoning-v0", 2, difficulty="easy")
    assert pool.take("fst/MathReasoning-v0", 1, difficulty="easy")[0] is first[0]
    assert len(pool.take("fst/MathReasoning-v0", 3, difficulty="easy")) == 3
    pool.close()
    with pytest.raises(ValueError, match="max_turns"):
        EpisodeLimits(max_turns=0).validate()
    with pytest.raises(ValueError, match="rule"):
        Episode("g", 0, {}).episode_return("mean")
