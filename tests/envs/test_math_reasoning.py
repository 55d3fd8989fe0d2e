"""fst/MathReasoning-v0: config, determinism, splits, oracle scoring, feedback and bad input."""

import gymnasium as gym
import pytest

from fst_env.envs.math_reasoning import FAMILIES, FAMILY_CONFIGS, MathReasoningConfig, MathReasoningEnv
from fst_env.splits import split_of


def oracle(env) -> str:
    problem = env.unwrapped.problem
    answer = problem.answer.strip("$")
    return f"Let me work it out step by step.\nThe result is \\boxed{{{answer}}}."


@pytest.mark.parametrize(
    "kwargs",
    [dict(difficulty="extreme"), dict(families=()), dict(families=("calculus",)),
     dict(families=("gsm_symbolic",), difficulty="easy"), dict(data_seed="1")],
)
def test_config_validation(kwargs):
    with pytest.raises((ValueError, TypeError)):
        MathReasoningConfig(**kwargs).validate()
    with pytest.raises((ValueError, TypeError)):
        gym.make("fst/MathReasoning-v0", **kwargs)


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        gym.make("fst/MathReasoning-v0", split="dev")


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_answer_scores_one_for_every_family(family):
    for level in FAMILY_CONFIGS[family]:
        env = gym.make("fst/MathReasoning-v0", families=(family,), difficulty=level)
        for seed in range(15):
            env.reset(seed=seed)
            assert env.unwrapped.problem.metadata["family"] == family
            _, reward, terminated, _, info = env.step(oracle(env))
            assert (reward, info["verdict"], terminated) == (1.0, "correct", True), info["feedback"]


def test_wrong_answer_feedback_names_extracted_and_expected():
    env = gym.make("fst/MathReasoning-v0", families=("chain_sum",))
    env.reset(seed=4)
    expected = env.unwrapped.problem.answer
    wrong = str(int(expected) + 1)
    _, reward, _, _, info = env.step(f"I believe it is {wrong}")
    assert reward == 0.0 and info["verdict"] == "incorrect"
    assert wrong in info["feedback"] and expected in info["feedback"] and "last number" in info["feedback"]
    assert info["extracted"] == wrong and info["expected"] == expected


def test_format_error_says_the_expected_format():
    env = gym.make("fst/MathReasoning-v0")
    env.reset(seed=1)
    _, reward, _, _, info = env.step("I do not know.")
    assert reward == 0.0 and info["verdict"] == "format_error"
    assert "\\boxed{" in info["feedback"] and "Answer:" in info["feedback"]


def test_fraction_not_in_lowest_terms_is_explained():
    env = gym.make("fst/MathReasoning-v0", families=("fraction_simplification",), difficulty="easy")
    env.reset(seed=2)
    meta = env.unwrapped.problem.metadata["rg_metadata"]
    num, den = meta["simplified_numerator"], meta["simplified_denominator"]
    _, reward, _, _, info = env.step(f"\\boxed{{{num * 3}/{den * 3}}}")
    assert reward == 0.0 and "lowest terms" in info["feedback"]
    env.reset(seed=2)
    _, reward, _, _, info = env.step(f"\\boxed{{\\frac{{{num}}}{{{den}}}}}")
    assert reward == 1.0, info["feedback"]


def test_seed_and_problem_id_replay_the_same_problem():
    env = gym.make("fst/MathReasoning-v0")
    first, info = env.reset(seed=123)
    again, _ = env.reset(seed=123)
    by_id, _ = env.reset(options={"problem_id": info["problem_id"]})
    assert first == again == by_id
    others = {env.reset(seed=s)[0] for s in range(30)}
    assert len(others) > 20, "different seeds give different problems"


def test_reset_without_seed_continues_the_rng():
    env = gym.make("fst/MathReasoning-v0")
    env.reset(seed=5)
    seq_a = [env.reset()[0] for _ in range(5)]
    env.reset(seed=5)
    seq_b = [env.reset()[0] for _ in range(5)]
    assert seq_a == seq_b and len(set(seq_a)) > 1


def test_problem_id_out_of_range_and_wrong_type():
    env = gym.make("fst/MathReasoning-v0", split="validation")
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        env.reset(options={"problem_id": 1000})
    with pytest.raises(TypeError, match="int"):
        env.reset(options={"problem_id": "3"})


def test_splits_are_disjoint():
    prompts = {}
    for split in ("train", "validation", "test"):
        env = MathReasoningEnv(split=split)
        prompts[split] = {env.reset(options={"problem_id": k})[0] for k in range(300)}
        assert all(split_of(p) == split for p in prompts[split])
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]


def test_data_seed_changes_the_problems():
    a = MathReasoningEnv(data_seed=0).reset(options={"problem_id": 0})[0]
    b = MathReasoningEnv(data_seed=1).reset(options={"problem_id": 0})[0]
    assert a != b


def test_vector_env_holds_a_grpo_group():
    envs = gym.make_vec("fst/MathReasoning-v0", num_envs=4, families=("chain_sum",))
    obs, _ = envs.reset(seed=0, options={"problem_id": 42})
    assert len(set(obs)) == 1
    answer = envs.envs[0].unwrapped.problem.answer
    _, rewards, _, _, infos = envs.step((f"\\boxed{{{answer}}}", "\\boxed{-99999}", "", "no idea"))
    assert list(rewards) == [1.0, 0.0, 0.0, 0.0]
    assert list(infos["verdict"]) == ["correct", "incorrect", "format_error", "format_error"]
    envs.close()


def test_step_after_termination_needs_reset():
    env = gym.make("fst/MathReasoning-v0").unwrapped
    env.reset(seed=0)
    env.step("\\boxed{1}")
    with pytest.raises(gym.error.ResetNeeded, match="ended"):
        env.step("\\boxed{1}")


def test_hostile_63kb_responses_are_judged_fast_and_without_crash():
    import time

    env = gym.make("fst/MathReasoning-v0")
    for text in ("\\boxed{" * 9000, "answer: " + " " * 63000 + "x", "\\boxed{}" * 8000):
        times = []
        for _ in range(3):  # the best of 3: this machine is shared, a single timing can include a stall
            env.reset(seed=0)
            start = time.perf_counter()
            _, reward, terminated, _, info = env.step(text)
            times.append(time.perf_counter() - start)
            assert reward == 0.0 and terminated and info["verdict"] != "correct"
        assert min(times) < 0.05, (text[:20], times)


def test_hints_name_the_policys_answer_and_format_never_the_expected_answer():
    for family in ("basic_arithmetic", "fraction_simplification"):
        env = gym.make("fst/MathReasoning-v0", families=(family,))
        for problem_id in range(5):
            env.reset(options={"problem_id": problem_id})
            expected = env.unwrapped.oracle_response().removeprefix("\\boxed{").removesuffix("}")
            for action, words in ((r"\boxed{-987654321}", "-987654321"), ("no idea", "No final answer"),
                                  ("", "empty"), (r"\boxed{6/4}", "6/4")):
                env.reset(options={"problem_id": problem_id})
                _, _, _, _, info = env.step(action)
                if info["verdict"] == "correct":
                    continue
                assert words in info["hint"] and info["hint"] != info["feedback"], (action, info["hint"])
                assert len(expected) <= 2 or expected not in info["hint"], (expected, info["hint"])


def test_families_given_as_one_string_or_plus_joined_names():
    """A CLI ``k=v`` value cannot hold a list (commas separate kwargs): one name, or names joined by '+', work."""
    one = gym.make("fst/MathReasoning-v0", families="chain_sum", difficulty="easy").unwrapped
    assert one.config.families == ("chain_sum",)
    two = gym.make("fst/MathReasoning-v0", families="chain_sum+basic_arithmetic", difficulty="easy").unwrapped
    assert two.config.families == ("chain_sum", "basic_arithmetic")
    with pytest.raises(ValueError, match="unknown families \\['chainsum'\\]"):
        gym.make("fst/MathReasoning-v0", families="chainsum", difficulty="easy")
