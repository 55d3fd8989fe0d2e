"""fst/CodeIO-v0: config, determinism, splits, oracle answers, feedback (expected, verdict, trace) and bad input."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from fst_env.core import Problem
from fst_env.envs._codeio_programs import CONSTRUCTS, generate_program, run_trusted, trace_trusted
from fst_env.envs.code_io import CodeIOConfig, CodeIOEnv, extract_answer
from fst_env.sandbox import run_python
from fst_env.splits import split_of

ENV_ID = "fst/CodeIO-v0"


@pytest.mark.parametrize("kwargs", [
    dict(mode="both"), dict(difficulty="insane"), dict(feedback_verbosity="loud"), dict(constructs=()),
    dict(constructs="loops"), dict(constructs=("loops", "goto")), dict(min_steps=0), dict(max_steps=13),
    dict(min_steps=5, max_steps=2), dict(timeout_s=0), dict(max_answer_chars=3), dict(data_seed="7"),
    dict(constructs=("functions",)),  # no template uses functions alone
])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        CodeIOConfig(**kwargs).validate()
    with pytest.raises(ValueError):
        gym.make(ENV_ID, **kwargs)


def test_card_is_registered():
    card = gym.spec(ENV_ID).card
    assert card.reward_range == (0.0, 1.0) and "timeout" in card.feedback_kinds
    assert "constructs" in card.difficulty_knobs and "sandbox" in card.notes


def test_same_seed_same_problem_and_same_judgement():
    a, b = gym.make(ENV_ID), gym.make(ENV_ID)
    prompt_a, info_a = a.reset(seed=11)
    prompt_b, info_b = b.reset(seed=11)
    assert prompt_a == prompt_b and info_a["problem_id"] == info_b["problem_id"]
    assert a.reset(options={"problem_id": 5})[0] == b.reset(options={"problem_id": 5})[0]
    first = a.step("<answer>not it</answer>")
    second = b.step("<answer>not it</answer>")
    assert first[1:4] == second[1:4] and first[4]["feedback"] == second[4]["feedback"]


def test_splits_are_disjoint_and_seed_changes_problems():
    prompts = {}
    for split in ("train", "validation", "test"):
        env = CodeIOEnv(split)
        prompts[split] = {env.load_problem(i).prompt for i in range(25)}
        assert all(split_of(p) == split for p in prompts[split])
    assert not (prompts["train"] & prompts["validation"] or prompts["train"] & prompts["test"])
    other = CodeIOEnv("train", data_seed=1)
    assert {other.load_problem(i).prompt for i in range(25)} != prompts["train"]


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_oracle_scores_one_in_output_mode(difficulty):
    env = gym.make(ENV_ID, difficulty=difficulty)
    for seed in range(30):
        env.reset(seed=seed)
        _, reward, terminated, _, info = env.step(env.unwrapped.oracle_response())
        assert (reward, info["verdict"], terminated) == (1.0, "correct", True), info["feedback"]


def test_oracle_scores_one_in_input_mode_checked_in_the_sandbox():
    env = gym.make(ENV_ID, mode="input")
    for seed in range(6):
        env.reset(seed=seed)
        _, reward, _, _, info = env.step(env.unwrapped.oracle_response())
        assert (reward, info["verdict"]) == (1.0, "correct"), info["feedback"]
        assert info["sandbox_status"] == "ok" and info["sandbox_isolation"]


def test_generated_programs_print_the_same_in_process_and_in_the_sandbox():
    rng = random.Random(3)
    for _ in range(3):
        program = generate_program(rng, frozenset(CONSTRUCTS), 3, 6)
        assert run_trusted(program.stdin_source, program.stdin) == program.output
        result = run_python(program.source)
        assert result.status == "ok" and result.stdout.rstrip("\n") == program.output


@pytest.mark.parametrize("constructs", [("strings",), ("lists",), ("arithmetic", "loops"),
                                        ("arithmetic", "conditionals", "functions")])
def test_constructs_and_length_knobs_are_respected(constructs):
    env = CodeIOEnv(constructs=constructs, min_steps=2, max_steps=3)
    for i in range(15):
        meta = env.load_problem(i).metadata
        assert set(meta["constructs"]) <= set(constructs), meta
        assert 2 <= meta["steps"] <= 3


def test_wrong_output_feedback_names_expected_and_got():
    env = gym.make(ENV_ID)
    env.reset(seed=2)
    expected = env.unwrapped.problem.metadata["output"]
    _, reward, _, _, info = env.step("I think it prints\n<answer>definitely-wrong</answer>")
    assert reward == 0.0 and info["verdict"] == "incorrect"
    assert "definitely-wrong" in info["feedback"] and expected in info["feedback"]
    assert "Trace" not in info["feedback"]


def test_verbosity_levels():
    quiet = gym.make(ENV_ID, feedback_verbosity="verdict")
    quiet.reset(seed=2)
    expected = quiet.unwrapped.problem.metadata["output"]
    feedback = quiet.step("<answer>definitely-wrong</answer>")[4]["feedback"]
    assert "Incorrect" in feedback and f"`{expected}`" not in feedback
    traced = gym.make(ENV_ID, feedback_verbosity="trace")
    traced.reset(seed=2)
    feedback = traced.step("<answer>definitely-wrong</answer>")[4]["feedback"]
    assert "Trace" in feedback and "after line" in feedback and expected in feedback


def test_trace_lists_loop_iterations():
    events = trace_trusted("total = 0\nfor i in range(3):\n    total += i * 2\nprint(total)\n")
    assert events[0] == "after line 1: total = 0"
    assert "after line 3: total = 2" in events and "after line 3: total = 6" in events
    assert any(e.startswith("after line 2: i = 2") for e in events)


def test_input_mode_wrong_and_failing_inputs():
    env = gym.make(ENV_ID, mode="input", feedback_verbosity="trace")
    env.reset(seed=1)
    meta = env.unwrapped.problem.metadata
    _, reward, _, _, info = env.step("<answer>\x01\x02 not a valid input 999999</answer>")
    assert reward == 0.0 and info["verdict"] == "incorrect"
    assert "not a valid input" in info["feedback"]
    assert meta["output"] in info["feedback"]


def test_input_mode_loop_is_a_timeout_and_crash_names_line():
    env = CodeIOEnv(mode="input", timeout_s=0.5)
    looping = Problem("p", "0", {"mode": "input", "program": "n = int(input())\nwhile n:\n    pass\nprint(1)\n",
                                 "output": "1", "reference_input": "0"})
    outcome = env.judge(looping, "<answer>5</answer>")
    assert outcome.verdict == "timeout" and outcome.reward == 0.0 and "time limit" in outcome.feedback
    outcome = env.judge(looping, "<answer>five</answer>")
    assert outcome.verdict == "incorrect" and "ValueError" in outcome.feedback and "line 1" in outcome.feedback
    assert env.judge(looping, "<answer>0</answer>").reward == 1.0


@pytest.mark.parametrize(("response", "text", "method"), [
    ("blah <answer> 42 </answer>", "42", "answer tag"),
    ("<answer>1</answer> then <answer>2</answer>", "2", "answer tag"),
    ("It prints:\n```\n[1, 2]\nabc\n```", "[1, 2]\nabc", "fenced block"),
    ("reasoning...\nOutput: hello", "hello", "'Output:' line"),
    ("<answer>\n```\n7\n```\n</answer>", "7", "answer tag"),
    ("no answer here", None, "none"),
])
def test_answer_extraction(response, text, method):
    found = extract_answer(response, "output")
    assert (found.text, found.method) == (text, method)


def test_output_is_compared_exactly_not_as_a_value():
    env = CodeIOEnv()
    for printed, wrong, kinds in [("20", "20.0", "float"), ("True", "1", "int"), ("[1, 2]", "[1,2]", "written"),
                                  ("3", "3.0", "float")]:
        problem = Problem("p", printed, {"mode": "output", "program": f"print({printed})\n", "output": printed})
        outcome = env.judge(problem, f"<answer>{wrong}</answer>")
        assert (outcome.reward, outcome.verdict) == (0.0, "incorrect"), (printed, wrong)
        assert kinds in outcome.feedback and "line 1" in outcome.feedback
        assert printed not in outcome.hint.replace(wrong, "") and "line 1" in outcome.hint
        ok = env.judge(problem, f"<answer>{printed}  \n\n</answer>")  # trailing whitespace only is ignored
        assert ok.reward == 1.0 and ok.verdict == "correct"


def test_output_feedback_points_at_the_first_difference():
    env = CodeIOEnv()
    problem = Problem("p", "a\nbcd\ne", {"mode": "output", "program": "print('a\\nbcd\\ne')\n",
                                           "output": "a\nbcd\ne"})
    outcome = env.judge(problem, "<answer>a\nbxd\ne</answer>")
    assert outcome.reward == 0.0 and "line 2, character 2" in outcome.feedback and "line 2, character 2" in outcome.hint
    short = env.judge(problem, "<answer>a\nbcd</answer>")
    assert "fewer lines" in short.hint and "first 2 match" in short.hint


def test_hints_never_hold_the_expected_output_or_a_working_input():
    for mode in ("output", "input"):
        env = gym.make(ENV_ID, mode=mode, feedback_verbosity="trace")
        for seed in range(6):
            for action in ("<answer>zz-wrong</answer>", "no answer", "<answer>0</answer>"):
                env.reset(seed=seed)
                meta = env.unwrapped.problem.metadata
                secret = meta["output"] if mode == "output" else meta["reference_input"]
                info = env.step(action)[4]
                if info["verdict"] != "correct" and len(secret) >= 2:
                    assert f"`{secret}`" not in info["hint"] and secret not in info["hint"], (mode, seed, info["hint"])
                assert info["hint"]


@pytest.mark.parametrize("action", ["", "   \n", "\ud800", "<answer>\ud800\udfff</answer>", "\x00\xff\x7f junk",
                                    "<answer>" + "9" * 5000 + "</answer>", "x" * 70_000, "🙂" * 500])
@pytest.mark.parametrize("mode", ["output", "input"])
def test_bad_input_never_raises(mode, action):
    env = gym.make(ENV_ID, mode=mode)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward == 0.0 and terminated and not truncated
    assert info["verdict"] in ("format_error", "incorrect", "timeout", "error")
    assert isinstance(obs, str) and info["feedback"].strip()


def test_non_str_action_is_a_type_error():
    env = gym.make(ENV_ID)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="str"):
        env.step(42)


@pytest.mark.parametrize("mode", ["output", "input"])
def test_check_env(mode):
    check_env(gym.make(ENV_ID, mode=mode).unwrapped)
