"""MultiTurnRetry: a single-turn task becomes a multi-turn one with feedback between attempts."""

from __future__ import annotations

import re
import warnings

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.core import default_hint
from fst_env.wrappers import MultiTurnRetry, TextEpisodeStatistics
from fst_env.wrappers.multi_turn_retry import retry_prompt

ENV_ID = "test/EchoRetry-v0"
WORDS = ["apple", "river", "stone", "cloud"]


def _reward(response: str, problem: dict) -> tuple[float, str] | float:
    """1 for the exact word, 0.5 (with a hint) for the right word in the wrong case, else 0 (default feedback)."""
    if response.strip() == problem["answer"]:
        return 1.0
    if response.strip().lower() == problem["answer"]:
        return 0.5, "Right word, wrong case: use lower case"
    return 0.0


@pytest.fixture(autouse=True)
def _echo_env() -> None:
    fst_env.register_task(ENV_ID, problems=[{"prompt": f"Repeat the word {w}.", "answer": w} for w in WORDS],
                          reward_fn=_reward, hint_fn=_hint)


def _hint(response: str, problem: dict, reward: float) -> str:
    return "Right word, wrong case: use lower case" if reward == 0.5 else "Not that word"


def _episode(env: gym.Env, actions: list[str], problem_id: int = 0) -> list[tuple]:
    env.reset(options={"problem_id": problem_id})
    steps = []
    for action in actions:
        steps.append(env.step(action))
        if steps[-1][2] or steps[-1][3]:
            break
    return steps


def test_retry_observation_carries_prompt_feedback_and_attempt() -> None:
    env = MultiTurnRetry(gym.make(ENV_ID), max_attempts=3)
    obs, info = env.reset(options={"problem_id": 1})
    assert obs == "Repeat the word river." and info["attempt"] == 1 and info["attempt_rewards"] == []
    obs, reward, terminated, truncated, info = env.step("RIVER")
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["verdict"] == "incorrect" and info["attempt"] == 1 and info["attempt_rewards"] == [0.5]
    assert obs == ("Repeat the word river.\n\nYour previous answer was judged: Right word, wrong case: use lower "
                   "case. Try again. (Attempt 2 of 3.)")
    obs, reward, terminated, _, info = env.step("pebble")
    assert "The expected answer is 'river'" in info["feedback"]  # the learner's text names it ...
    assert obs == ("Repeat the word river.\n\nYour previous answer was judged: Not that word. Try again. "
                   "(Attempt 3 of 3.)")
    assert info["attempt"] == 2 and info["problem_id"] == 1
    obs, reward, terminated, _, info = env.step("river")
    assert terminated and reward == 1.0 and info["verdict"] == "correct"
    assert info["attempt"] == 3 and info["attempt_rewards"] == [0.5, 0.0, 1.0]
    assert obs == info["feedback"]


def test_correct_first_attempt_ends_episode() -> None:
    steps = _episode(MultiTurnRetry(gym.make(ENV_ID), max_attempts=5), ["apple"])
    assert len(steps) == 1
    _, reward, terminated, _, info = steps[0]
    assert terminated and reward == 1.0 and info["attempt"] == 1


def test_out_of_attempts_terminates_with_rule_reward() -> None:
    steps = _episode(MultiTurnRetry(gym.make(ENV_ID), max_attempts=2), ["pear", "plum", "apple"])
    assert len(steps) == 2 and steps[-1][2]
    assert [s[1] for s in steps] == [0.0, 0.0]
    assert steps[-1][4]["verdict"] == "incorrect"


@pytest.mark.parametrize(("rule", "actions", "expected"), [
    ("last", ["APPLE", "pear", "plum"], 0.0),
    ("max", ["APPLE", "pear", "plum"], 0.5),
    ("last", ["pear", "APPLE", "apple"], 1.0),
    ("discounted", ["pear", "APPLE", "apple"], 1.0 * 0.5 ** 2),
    ("discounted", ["apple"], 1.0),
    (lambda rewards: sum(rewards) / len(rewards), ["pear", "APPLE", "apple"], 0.5),
])
def test_reward_rules_and_intermediate_zero(rule, actions: list[str], expected: float) -> None:
    env = MultiTurnRetry(gym.make(ENV_ID), max_attempts=3, reward_rule=rule, gamma=0.5)
    steps = _episode(env, actions)
    assert all(s[1] == 0.0 for s in steps[:-1]), "intermediate attempts give reward 0"
    assert steps[-1][1] == pytest.approx(expected)
    assert sum(s[1] for s in steps) == pytest.approx(expected), "the episode return equals the rule"


def test_episode_statistics_see_the_rule_as_return() -> None:
    env = TextEpisodeStatistics(MultiTurnRetry(gym.make(ENV_ID), max_attempts=3, reward_rule="max"))
    steps = _episode(env, ["APPLE", "pear", "plum"])
    stats = steps[-1][4]["episode"]
    assert stats["r"] == pytest.approx(0.5) and stats["l"] == 3
    assert stats["verdicts"]["incorrect"] == 3


def test_step_after_episode_end_raises_reset_needed() -> None:
    env = MultiTurnRetry(gym.make(ENV_ID).unwrapped, max_attempts=2)
    _episode(env, ["apple"])
    with pytest.raises(ResetNeeded, match="MultiTurnRetry"):
        env.step("apple")


def test_non_str_action_raises_type_error_naming_env() -> None:
    env = MultiTurnRetry(gym.make(ENV_ID))
    env.reset(seed=0)
    with pytest.raises(TypeError, match=ENV_ID):
        env.step(1.5)


def test_no_state_across_resets() -> None:
    env = MultiTurnRetry(gym.make(ENV_ID), max_attempts=3)
    env.reset(options={"problem_id": 0})
    env.step("pear")  # leave an episode half way, on another problem
    obs, info = env.reset(options={"problem_id": 2})
    assert obs == "Repeat the word stone." and info["attempt_rewards"] == []
    obs, _, terminated, _, info = env.step("pear")
    assert not terminated and info["attempt"] == 1 and "Not that word" in obs and "(Attempt 2 of 3.)" in obs
    assert env.reset(seed=7) == env.reset(seed=7)


def test_other_reset_options_survive_the_re_reset() -> None:
    seen: list[dict] = []

    class Spy(gym.Wrapper):
        def reset(self, *, seed=None, options=None):
            seen.append(dict(options or {}))
            return self.env.reset(seed=seed, options=options)

    env = MultiTurnRetry(Spy(gym.make(ENV_ID)), max_attempts=2)
    env.reset(options={"problem_id": 3, "note": "kept"})
    env.step("nope")
    assert seen == [{"problem_id": 3, "note": "kept"}, {"problem_id": 3, "note": "kept"}]


def test_inner_env_without_problem_id_is_refused_clearly() -> None:
    env = MultiTurnRetry(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="problem_id"):
        env.reset(seed=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": True}, "max_attempts"),
    ({"max_attempts": 2.0}, "max_attempts"),
    ({"reward_rule": "mean"}, "reward_rule"),
    ({"gamma": 0.0}, "gamma"),
    ({"gamma": 1.5}, "gamma"),
])
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiTurnRetry(gym.make(ENV_ID), **kwargs)


def test_retry_prompt_does_not_double_the_full_stop() -> None:
    expected = "P\n\nYour previous answer was judged: Wrong. Try again. (Attempt 2 of 3.)"
    assert retry_prompt("P", "Wrong.", 2, 3) == expected
    assert retry_prompt("P", " no ", 3, 3).endswith("judged: no. Try again. (Attempt 3 of 3.)")


def test_adversarial_actions_never_raise() -> None:
    env = MultiTurnRetry(gym.make(ENV_ID), max_attempts=4)
    env.reset(options={"problem_id": 0})
    for action in ["", "\x00\x1b[2J", "\ud800", "x" * 1_000_000]:
        obs, reward, terminated, _, info = env.step(action)
        assert isinstance(obs, str) and info["feedback"] and reward == 0.0
    assert terminated and info["attempt"] == 4
    assert info["attempt_rewards"] == [0.0] * 4


def test_check_env_passes_on_wrapped_env() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(MultiTurnRetry(gym.make(ENV_ID).unwrapped, max_attempts=3), skip_render_check=True)
    unexpected = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert not unexpected, unexpected


def test_make_vec_groups_retry_independently() -> None:
    envs = gym.make_vec(ENV_ID, num_envs=4, vectorization_mode="sync",
                        wrappers=[lambda e: MultiTurnRetry(e, max_attempts=2, reward_rule="max")])
    try:
        envs.reset(seed=0, options={"problem_id": 1})
        _, rewards, terminated, _, infos = envs.step(("river", "RIVER", "x", "x"))
        assert rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
        assert terminated.tolist() == [True, False, False, False]
        obs, rewards, terminated, _, infos = envs.step(("ignored", "x", "river", "y"))
        # env 0 autoresets (next-step mode); the others take their second and last attempt
        assert rewards.tolist()[1:] == [0.5, 1.0, 0.0] and terminated.tolist()[1:] == [True, True, True]
        assert list(infos["attempt"]) == [1, 2, 2, 2]
        assert obs[0].startswith("Repeat the word ") and "judged" not in obs[0]
    finally:
        envs.close()


MATH_ID = "fst/MathReasoning-v0"


@pytest.mark.skipif(MATH_ID not in gym.registry, reason=f"{MATH_ID} is not registered")
def test_full_stack_on_math_env_retries_to_the_oracle_answer() -> None:
    from fst_env.wrappers import ContextInjection

    env = TextEpisodeStatistics(MultiTurnRetry(ContextInjection(gym.make(MATH_ID), "Think step by step."),
                                               max_attempts=3, reward_rule="discounted", gamma=0.5))
    obs, _ = env.reset(seed=0)
    assert obs.startswith("Think step by step.\n\n")
    obs, reward, terminated, _, info = env.step(r"\boxed{-987654321}")
    assert (reward, terminated, info["verdict"]) == (0.0, False, "incorrect")
    expected = env.unwrapped.problem.answer
    assert f"expected answer {expected}" in info["feedback"] and f"expected answer {expected}" not in obs
    assert "Your answer -987654321 (from \\boxed{}) is incorrect." in obs and obs.startswith("Think step by step.\n\n")
    _, reward, terminated, _, info = env.step(rf"The answer is \boxed{{{expected}}}")
    assert terminated and info["verdict"] == "correct" and reward == pytest.approx(0.5)
    assert info["episode"]["r"] == pytest.approx(0.5)
    assert info["episode"]["verdicts"]["incorrect"] == 1 and info["episode"]["verdicts"]["correct"] == 1


@pytest.mark.skipif(MATH_ID not in gym.registry, reason=f"{MATH_ID} is not registered")
def test_make_vec_math_group_with_wrappers() -> None:
    envs = gym.make_vec(MATH_ID, num_envs=4, vectorization_mode="sync",
                        wrappers=[lambda e: MultiTurnRetry(e, max_attempts=2), TextEpisodeStatistics])
    try:
        obs, infos = envs.reset(seed=3, options={"problem_id": 5})
        assert len(set(obs)) == 1, "one problem id gives a GRPO group of identical prompts"
        _, rewards, terminated, _, _ = envs.step(("no idea",) * 4)
        assert not terminated.any() and not rewards.any()
        expected = envs.get_attr("unwrapped")[0].problem.answer
        _, rewards, terminated, _, infos = envs.step((rf"\boxed{{{expected}}}", "x", "y", "z"))
        assert terminated.all() and rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
        assert infos["episode"]["l"].tolist() == [2, 2, 2, 2]
    finally:
        envs.close()


# ----------------------------------------------------------------------------- no answer leaks into a retry
_QUOTED = re.compile(r"'([^'\n]{1,200})'|\"([^\"\n]{1,200})\"|`([^`\n]{1,200})`")
_NUMBERS = re.compile(r"-?\d+(?:[.,/]\d+)*")
_SLOT = "\x00"


def _copies(observation: str, template: str | None, limit: int = 80) -> list[str]:
    """What a copying policy could answer: the whole text, every line, quoted string and number, each also put
    in the task's answer format (``template``, the oracle response with its answer cut out)."""
    texts = [observation, *observation.splitlines()]
    texts += [next(g for g in m.groups() if g) for m in _QUOTED.finditer(observation)]
    texts += [*_NUMBERS.findall(observation), *(f"\\boxed{{{n}}}" for n in _NUMBERS.findall(observation))]
    texts = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if template is not None:
        texts += [template.replace(_SLOT, t) for t in texts if len(t) < 300]
    texts = list(dict.fromkeys(texts))
    return texts if len(texts) <= limit else [*texts[: limit // 2], *texts[-limit // 2:]]


def _single_turn_ids() -> list[tuple[str, dict]]:
    ids = []
    for env_id in fst_env.registered_ids("fst"):
        env = gym.make(env_id)
        env.reset(seed=0)
        if env.step("I do not know.")[2]:
            ids.append((env_id, {}))
        env.close()
    if ("fst/CodeIO-v0", {}) in ids:
        ids.append(("fst/CodeIO-v0", {"mode": "input"}))  # its other mode: the feedback names a working input
    return ids


@pytest.mark.parametrize("env_id, kwargs", _single_turn_ids(), ids=lambda v: str(v or ""))
def test_a_retry_cannot_be_won_by_copying_the_retry_observation(env_id: str, kwargs: dict) -> None:
    """Copying text from the retry observation wins no problem that copying from the first prompt (or from the
    retry's fixed frame) does not win: the retry adds no answer; and the hint never holds the expected answer.
    First answers: constants, and a well-formatted wrong answer (which makes most feedback name the answer)."""
    judge = gym.make(env_id, **kwargs)
    retry = MultiTurnRetry(gym.make(env_id, **kwargs), max_attempts=2)

    def correct(problem_id: int, action: str) -> bool:
        judge.reset(options={"problem_id": problem_id})
        return judge.step(action)[4]["verdict"] == "correct"

    won_first = won_retry = 0
    for problem_id in range(3):
        first, _ = retry.reset(options={"problem_id": problem_id})
        oracle = retry.unwrapped.oracle_response()
        problem = getattr(retry.unwrapped, "problem", None)  # a seat of a multi-agent game has none
        answer = str(problem.answer).strip() if problem is not None else None
        template = oracle.replace(answer, _SLOT, 1) if oracle and answer and answer in oracle else None
        first_wins = any(correct(problem_id, text) for text in _copies(first, template))
        first_answers = ["I do not know.", "0"] + ([template.replace(_SLOT, "0")] if template else [])
        for first_answer in first_answers:
            retry.reset(options={"problem_id": problem_id})
            observation, _, terminated, _, info = retry.step(first_answer)
            if terminated:
                continue  # the first answer happened to be right
            hint = info.get("hint") or default_hint(info["verdict"])  # a multi-agent seat passes no hint on
            for secret in (oracle, answer):
                if secret and len(secret.strip()) > 2:
                    assert secret.strip() not in hint, (env_id, problem_id, hint)
            assert observation.startswith(first) and hint in observation
            # Constants any retry holds (the frame "Attempt 2 of 2" and a generic hint) are the baseline too.
            frame = retry_prompt("", default_hint(info["verdict"]), 2, 2)
            baseline = first_wins or any(correct(problem_id, text) for text in _copies(frame, template))
            retry_wins = [text for text in _copies(observation.removeprefix(first), template)
                          if correct(problem_id, text)]
            assert not retry_wins or baseline, (env_id, problem_id, retry_wins[:3])
            won_first += baseline
            won_retry += bool(retry_wins) or baseline
    assert won_retry <= won_first
