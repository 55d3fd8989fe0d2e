"""Episodes: the runner plays G episodes of one problem with batched generation, formats the growing conversation
with the chat template, never shows feedback, and truncates at the turn and context guards."""

from __future__ import annotations

import json
import string
from typing import ClassVar

import gymnasium as gym
import pytest

import fst_env
from fst_env.agents.episodes import EnvPool, Episode, EpisodeLimits, EpisodeRunner, EpisodeStart, Turn
from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.agents.rollout import Rollout
from fst_env.agents.slow import TokenBatch
from fst_env.backends import make_backend
from fst_env.backends.base import SamplingParams
from fst_env.models import tiny_policy
from fst_env.wrappers import MultiTurnRetry

SECRET = "SECRET-FEEDBACK"


class ThreeTurnEnv(gym.Env):
    """A scripted 3-turn text env: rewards 0, 0, then 1 when the last reply has even length; feedback carries a
    marker the policy must never see, the hint and the next observation do not."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, turns: int = 3, split: str = "train") -> None:
        self.observation_space = gym.spaces.Text(10_000, charset=string.printable)
        self.action_space = gym.spaces.Text(10_000, charset=string.printable)
        self.turns = turns
        self.turn = 0
        self.problem_id = 0

    def num_problems(self) -> int:
        return 10

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


# ----------------------------------------------------------------------------- the slow learner on episodes
def _even_or_secret(response: str, problem: dict) -> tuple[float, str]:
    if len(response) % 2 == 0:
        return 1.0, "Correct: even length."
    return 0.0, f"{SECRET}: the length {len(response)} is odd."


fst_env.register_task("test/EpisodesEven-v0", [{"prompt": f"Write word {i}."} for i in range(12)],
                      reward_fn=_even_or_secret, summary="test task: reward for an even-length answer")
gym.register("test/EpisodesRetry-v0", entry_point=lambda **kw: MultiTurnRetry(gym.make("test/EpisodesEven-v0", **kw),
                                                                                max_attempts=2))
gym.register("test/EpisodesThreeTurn-v0", entry_point=ThreeTurnEnv)


def _with_signal(episodes: list[Episode]) -> list[Episode]:
    """Make every group's rewards differ (the first episode of a group wins at its last turn): signal to train."""
    first: dict[str, Episode] = {}
    for episode in episodes:
        first.setdefault(episode.group, episode)
    for episode in episodes:
        episode.turns[-1].reward = 1.0 if first[episode.group] is episode else 0.0
    return episodes


def test_a_three_turn_episode_trains_every_turn_under_its_own_prompt_with_env_text_never_a_target():
    # The reference backend samples in the learner's float32, so the first step's ratio is exactly checkable.
    agent = FSTAgent(tiny_policy(0), "test/EpisodesThreeTurn-v0", FSTConfig(group_size=4, groups_per_step=2,
                                                                           fast=False, max_new_tokens=6, backend="hf"))
    episodes = agent.collect([1, 2])
    assert all(len(e.turns) == 3 and e.terminated for e in episodes)
    assert all(t.reward == 0.0 for e in episodes for t in e.turns[:2])  # the reward comes only at the end
    plan = agent.slow.plan(_with_signal(episodes))
    assert plan.trained == list(range(8))
    # Every turn of every trained episode is one piece, the turn object itself: its sampler's prompt and tokens.
    assert [id(p) for p in plan.pieces] == [id(t) for e in episodes for t in e.turns]
    tokenizer = agent.policy.tokenizer
    for piece in plan.pieces:
        prompt = tokenizer.decode(piece.prompt_ids)
        assert piece.observation in prompt and SECRET not in prompt  # env text is prompt (never a target)
        batch = TokenBatch.collate([piece.prompt_ids], [piece.completion_ids], 0, "cpu")
        assert batch.targets[0].tolist() == piece.completion_ids and batch.mask.sum() == len(piece.completion_ids)
        assert tokenizer.decode(piece.completion_ids, skip_special_tokens=True) == piece.completion
    # One advantage per episode, shared by its turns; each episode's token weights add up to 1 / episodes.
    for k in range(len(episodes)):
        mine = [i for i, e in enumerate(plan.episode_of) if e == k]
        assert len({plan.advantages[i] for i in mine}) == 1
        total = sum(plan.weights[i] * len(plan.pieces[i].completion_ids) for i in mine)
        assert total == pytest.approx(1 / 8)
    metrics = agent.slow.step(episodes)
    assert metrics["n_pieces"] == 24 and metrics["n_turns"] == 24 and metrics["n_trained"] == 8
    assert metrics["n_tokens"] == sum(len(t.completion_ids) for e in episodes for t in e.turns)
    # The learner scores each turn's tokens exactly as the sampler did under the same prompt: ratio 1.
    assert metrics["ratio_min"] == pytest.approx(1.0, abs=1e-4) and metrics["ratio_max"] == pytest.approx(1.0, abs=1e-4)


def test_the_return_rule_is_the_summed_rewards_unless_configured():
    turns = [Turn("o", "c", [1], [2], [], 0.5), Turn("o", "c", [1], [2], [], 1.0)]
    assert Episode("g", 0, {}, turns).episode_return() == 1.5
    assert Episode("g", 0, {}, turns).episode_return("last") == 1.0
    agent = FSTAgent(tiny_policy(0), "test/EpisodesThreeTurn-v0", FSTConfig(group_size=2, fast=False,
                                                                           return_rule="last"))
    assert agent.slow.settings.return_rule == "last"
    with pytest.raises(ValueError, match="return_rule"):
        FSTConfig(return_rule="mean").validate()


def test_a_retry_envs_second_attempt_is_trained_and_its_prompt_shows_the_hint_not_the_feedback():
    agent = FSTAgent(tiny_policy(0), "test/EpisodesRetry-v0", FSTConfig(group_size=8, groups_per_step=2,
                                                                       fast=False, max_new_tokens=7))
    episodes = agent.collect([3, 4])
    retried = [e for e in episodes if len(e.turns) == 2]
    assert retried, "some first attempts were odd-length, so they were retried"
    for episode in retried:
        second = episode.turns[1]
        assert "Your previous answer was judged" in second.observation and SECRET not in second.observation
        assert SECRET in episode.turns[0].feedback
    plan = agent.slow.plan(_with_signal(episodes))
    trained = {id(p) for p in plan.pieces}
    assert any(id(e.turns[1]) in trained for e in retried)
    assert agent.slow.step(episodes)["n_pieces"] == sum(len(e.turns) for e in episodes)


def test_g_episodes_of_one_problem_form_one_group_normalised_together():
    agent = FSTAgent(tiny_policy(0), "test/EpisodesThreeTurn-v0", FSTConfig(group_size=4, groups_per_step=2,
                                                                           fast=False, max_new_tokens=4))
    episodes = _with_signal(agent.collect([5, 6]))
    groups: dict[str, list[Episode]] = {}
    for episode in episodes:
        groups.setdefault(episode.group, []).append(episode)
    assert sorted(groups) == ["test/EpisodesThreeTurn-v0/train/5", "test/EpisodesThreeTurn-v0/train/6"]
    assert all(len(members) == 4 and len({m.problem for m in members}) == 1 for members in groups.values())
    plan = agent.slow.plan(episodes)
    for key in groups:
        advantages = {plan.episode_of[i]: plan.advantages[i] for i in range(len(plan.pieces))
                      if episodes[plan.episode_of[i]].group == key}
        assert sum(advantages.values()) == pytest.approx(0.0, abs=1e-5) and len(advantages) == 4


def test_evaluation_scores_whole_episodes_and_does_not_depend_on_how_they_are_batched(monkeypatch):
    import fst_env.agents.fst_agent as fst_agent_module

    agent = FSTAgent(tiny_policy(0), "test/EpisodesThreeTurn-v0", FSTConfig(group_size=2, fast=False,
                                                                           max_new_tokens=5))
    result = agent.evaluate(split="train", problems=4, k=4)
    # Only the third turn can be correct (and only it rewards), so a first-move score would be 0 every time.
    assert result["accuracy"] > 0 and result["reward_mean"] == result["accuracy"]
    monkeypatch.setattr(fst_agent_module, "EVAL_CHUNK", 3)
    assert agent.evaluate(split="train", problems=4, k=4) == result  # per-row, per-turn seeds: batching is moot
    greedy = agent.evaluate(split="train", problems=4, greedy=True)
    monkeypatch.setattr(agent.backend, "supports_row_seeds", False, raising=False)
    fallback = agent.evaluate(split="train", problems=2, k=2)  # one call per sample and turn, seeded the same way
    assert fallback["n"] == 2 and greedy["k"] == 1


def test_a_multi_turn_agent_resumes_to_the_same_next_update(tmp_path):
    from fst_env.loop import update

    config = FSTConfig(group_size=4, groups_per_step=2, fast_every=2, fast_learner="notes", max_new_tokens=5,
                       fast_problems=2, fast_budget=8, proposals_per_round=1, population_size=2)
    agent = FSTAgent(tiny_policy(0), "test/EpisodesThreeTurn-v0", config)
    update(agent, [1, 2], 1)
    agent.save(tmp_path / "ckpt")
    assert all(len(e.turns) == 3 and not e.turns[0].prompt_ids for e in agent.recent)  # kept as text only
    expected, _ = update(agent, [3, 4], 2)  # with a fast round on whole episodes
    resumed = FSTAgent(tiny_policy(0), "test/EpisodesThreeTurn-v0", config)
    resumed.load(tmp_path / "ckpt")
    got, _ = update(resumed, [3, 4], 2)
    keep = [k for k in expected if "time" not in k and "wall" not in k and k != "budget/elapsed_s"]
    same = [json.dumps({k: m[k] for k in keep}, sort_keys=True) for m in (got, expected)]  # NaN == NaN here
    assert same[0] == same[1] and "fast/n_proposals" in got and got["slow/skipped"] == 0.0  # it trained
    assert [e.to_dict() for e in resumed.recent] == [e.to_dict() for e in agent.recent]
