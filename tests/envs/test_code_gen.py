"""fst/CodeGen-v0: config, determinism, splits, reference solutions, sandboxed grading and its feedback."""

from __future__ import annotations

import random

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from fst_env.envs._codegen_specs import FAMILIES, VARIANTS, run_reference
from fst_env.envs.code_gen import CodeGenConfig, CodeGenEnv, decode_value, encode_value, extract_code
from fst_env.splits import split_of

ENV_ID = "fst/CodeGen-v0"


def _env_at(seed: int = 0, **kwargs) -> gym.Env:
    env = gym.make(ENV_ID, **kwargs)
    env.reset(seed=seed)
    return env


def _wrap(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


@pytest.mark.parametrize("kwargs", [
    dict(families=()), dict(families="counting"), dict(families=("sorting",)), dict(difficulty="expert"),
    dict(n_tests=0), dict(n_tests=2, n_examples=3), dict(reward_mode="partial"), dict(timeout_s=0),
    dict(per_test_timeout_s=500), dict(memory_mb=8), dict(data_seed=1.5),
])
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        CodeGenConfig(**kwargs).validate()
    with pytest.raises(ValueError):
        gym.make(ENV_ID, **kwargs)


def test_card_is_registered():
    card = gym.spec(ENV_ID).card
    assert card.reward_range == (0.0, 1.0)
    assert {"correct", "incorrect", "format_error", "error", "timeout"} <= set(card.feedback_kinds)
    assert "families" in card.difficulty_knobs and "sandbox" in card.notes


def test_same_seed_same_problem_and_same_judgement():
    a, b = _env_at(5), _env_at(5)
    assert a.unwrapped.problem.prompt == b.unwrapped.problem.prompt
    name = a.unwrapped.problem.metadata["name"]
    response = _wrap(f"def {name}(*args):\n    return 0")
    first, second = a.step(response), b.step(response)
    assert first[1:4] == second[1:4] and first[4]["feedback"] == second[4]["feedback"]


def test_splits_are_disjoint():
    prompts = {}
    for split in ("train", "test"):
        env = CodeGenEnv(split)
        prompts[split] = {env.load_problem(i).prompt for i in range(20)}
        assert all(split_of(p) == split for p in prompts[split])
    assert not prompts["train"] & prompts["test"]


@pytest.mark.parametrize("family", list(VARIANTS))
def test_every_variant_reference_runs_on_its_tests(family):
    # In-process (trusted reference code): every variant, several parameter draws, no exceptions.
    for build, _level in VARIANTS[family]:
        for seed in range(4):
            draft = build(random.Random(seed))
            for args in draft.edge_args + tuple(draft.random_args(random.Random(seed + i)) for i in range(5)):
                run_reference(draft.reference, draft.name, args)


def test_tests_are_not_degenerate():
    # A constant function must not pass: every problem's tests expect at least two different values.
    env = CodeGenEnv(difficulty="hard")
    for i in range(60):
        expected = env.load_problem(i).metadata["expected"]
        assert len({repr(v) for v in expected}) > 1, env.load_problem(i).prompt


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_oracle_scores_one_for_every_family(difficulty):
    for family in FAMILIES:
        env = _env_at(3, families=(family,), difficulty=difficulty)
        assert env.unwrapped.problem.metadata["family"] == family
        _, reward, terminated, _, info = env.step(env.unwrapped.oracle_response())
        assert (reward, info["verdict"], terminated) == (1.0, "correct", True), info["feedback"]
        assert info["tests_passed"] == info["tests_total"] == 8 and info["sandbox_isolation"]


def test_prompt_shows_signature_examples_and_format():
    env = _env_at(1, n_examples=2)
    problem = env.unwrapped.problem
    assert problem.metadata["signature"] in problem.prompt and "Examples:" in problem.prompt
    assert "```python" in problem.prompt
    assert gym.make(ENV_ID, n_examples=0).reset(seed=1)[0].count("==") == 0


def test_wrong_values_name_the_first_failing_test():
    env = _env_at(2)
    meta = env.unwrapped.problem.metadata
    _, reward, _, _, info = env.step(_wrap(f"def {meta['name']}(*args):\n    return 'nope'"))
    assert reward == 0.0 and info["verdict"] == "incorrect"
    first_call = f"{meta['name']}({', '.join(repr(a) for a in meta['tests'][0])})"
    assert "test 1" in info["feedback"] and first_call[:60] in info["feedback"]
    assert repr(decode_value(meta["expected"][0]))[:40] in info["feedback"]
    assert "'nope'" in info["feedback"] and "tests passed" in info["feedback"]


def _examples_only(meta: dict, n_examples: int, otherwise: str) -> str:
    """A solution that answers the prompt's examples from a table and does ``otherwise`` on hidden tests."""
    table = {repr(tuple(args)): decode_value(meta["expected"][i]) for i, args in enumerate(meta["tests"][:n_examples])}
    return f"_SEEN = {table!r}\ndef {meta['name']}(*args):\n    if repr(args) in _SEEN:\n" \
           f"        return _SEEN[repr(args)]\n    {otherwise}\n"


@pytest.mark.parametrize(("otherwise", "verdict", "kind"), [
    ("return args", "incorrect", "wrong value"),
    ("raise ValueError('leak ' + repr(args))", "error", "raised ValueError"),
    ("while True: pass", "timeout", "did not finish"),
])
def test_hidden_tests_never_reveal_expected_value_or_input(otherwise, verdict, kind):
    for seed in range(3):
        env = _env_at(seed, timeout_s=4, per_test_timeout_s=0.3)
        meta = env.unwrapped.problem.metadata
        shown = env.unwrapped.config.n_examples
        _, reward, _, _, info = env.step(_wrap(_examples_only(meta, shown, otherwise)))
        hidden = len(meta["tests"]) - shown
        assert (reward, info["verdict"]) == (0.0, verdict), info["feedback"]
        assert f"hidden test 1 of {hidden}" in info["feedback"] and kind in info["feedback"]
        assert f"{shown}/{shown} examples, 0/{hidden} hidden" in info["feedback"]
        assert info["hint"] == info["feedback"]
        for i in range(shown, len(meta["tests"])):
            secrets = [repr(decode_value(meta["expected"][i])), repr(tuple(meta["tests"][i]))]
            secrets += [repr(a) for a in meta["tests"][i]]
            for secret in secrets:
                if len(secret) >= 4:
                    assert secret not in info["feedback"], (secret, info["feedback"])
        assert "leak" not in info["feedback"]


def test_visible_example_failures_show_the_example_but_the_hint_omits_the_expected_value():
    env = _env_at(2)
    meta = env.unwrapped.problem.metadata
    info = env.step(_wrap(f"def {meta['name']}(*args):\n    return 'nope'"))[4]
    want = repr(decode_value(meta["expected"][0]))
    assert want[:40] in info["feedback"]
    assert "'nope'" in info["hint"] and "test 1" in info["hint"]
    if len(want) >= 4:
        assert want not in info["hint"]


def test_type_mismatch_is_spelled_out():
    env = _env_at(0, families=("list_transform",))
    meta = env.unwrapped.problem.metadata
    reference = env.unwrapped.problem.answer
    renamed = reference.replace(f"def {meta['name']}(", "def _ref(", 1)
    tuple_version = f"{renamed}\ndef {meta['name']}(*args):\n    return tuple(_ref(*args))\n"
    feedback = env.step(_wrap(tuple_version))[4]["feedback"]
    assert "a tuple, but a list is expected" in feedback


def test_exception_reports_line_and_timeout_reports_the_stuck_test():
    env = _env_at(4, timeout_s=1.5, per_test_timeout_s=0.4)
    name = env.unwrapped.problem.metadata["name"]
    _, reward, _, _, info = env.step(_wrap(f"def {name}(*args):\n    x = 1\n    return x // 0"))
    assert (reward, info["verdict"]) == (0.0, "error")
    assert "ZeroDivisionError" in info["feedback"] and "line 3" in info["feedback"]
    env.reset(seed=4)
    _, reward, _, _, info = env.step(_wrap(f"def {name}(*args):\n    while True:\n        pass"))
    assert (reward, info["verdict"]) == (0.0, "timeout") and "test 1" in info["feedback"]


def test_format_errors_name_the_signature():
    env = _env_at(6)
    meta = env.unwrapped.problem.metadata
    for response in ["", "I cannot do this.", _wrap("def something_else(x):\n    return x")]:
        env.reset(seed=6)
        _, reward, _, _, info = env.step(response)
        assert (reward, info["verdict"]) == (0.0, "format_error"), info["feedback"]
        assert meta["signature"] in info["feedback"]
    env.reset(seed=6)
    info = env.step(_wrap(f"{meta['name']} = 5"))[4]
    assert info["verdict"] == "format_error" and "an int, not a function" in info["feedback"]


def test_syntax_and_import_time_errors():
    env = _env_at(7)
    name = env.unwrapped.problem.metadata["name"]
    info = env.step(_wrap(f"def {name}(x):\n    return (x"))[4]
    assert info["verdict"] == "error" and "SyntaxError" in info["feedback"] and "line" in info["feedback"]
    env.reset(seed=7)
    info = env.step(_wrap(f"import no_such_module_xyz\ndef {name}(x):\n    return x"))[4]
    assert info["verdict"] == "error" and "ModuleNotFoundError" in info["feedback"] and "line 1" in info["feedback"]


def test_fraction_reward_mode_gives_partial_credit():
    env = _env_at(2, reward_mode="fraction", families=("counting",))
    meta = env.unwrapped.problem.metadata
    # Right on the first test only: answers with the first expected value for every call.
    constant = decode_value(meta["expected"][0])
    _, reward, _, _, info = env.step(_wrap(f"def {meta['name']}(*args):\n    return {constant!r}"))
    passed = sum(1 for e in meta["expected"] if e == meta["expected"][0])
    assert reward == pytest.approx(passed / len(meta["tests"]))
    assert info["verdict"] in ("incorrect", "correct")


def test_forged_marker_lines_cannot_fake_a_pass():
    env = _env_at(8, families=("sequences",))
    meta = env.unwrapped.problem.metadata
    # The program digs the marker out of the harness's globals and prints a forged full pass.
    forged = (
        "import sys, json\n"
        f"def {meta['name']}(*args):\n"
        "    g = sys._getframe(1).f_globals\n"
        "    marker = g['_MARKER']\n"
        "    for i in range(len(g['_CASES'])):\n"
        "        print(marker + json.dumps({'i': i, 'value': ['int', -123456789]}))\n"
        "    print(marker + json.dumps({'done': True}))\n"
        "    sys.stdout.flush()\n"
        "    import os\n"
        "    os._exit(0)\n")
    _, reward, _, _, info = env.step(_wrap(forged))
    assert reward == 0.0 and info["verdict"] != "correct"


def test_extract_code_prefers_the_last_python_block():
    text = "```python\ndef f():\n    return 1\n```\nthen\n```py\ndef f():\n    return 2\n```\n```text\nnote\n```"
    assert extract_code(text) == ("def f():\n    return 2\n", "```python block")
    assert extract_code("```\nx = 1\n```")[1] == "``` block"
    assert extract_code("def f(): pass") == ("def f(): pass", "whole response")


def test_value_encoding_is_type_strict():
    assert encode_value(True) != encode_value(1) and encode_value((1, 2)) != encode_value([1, 2])
    assert decode_value(encode_value({"a": [1, (2, 3)]})) == {"a": [1, (2, 3)]}
    assert encode_value(1.0) != encode_value(1)


@pytest.mark.parametrize("action", ["", "\ud800", "```python\n\ud800\n```", "\x00\x01 binary \xff",
                                    "```python\ndef f(:\n```", "```python\n" + "(" * 5000 + "\n```", "y" * 70_000])
def test_bad_input_never_raises(action):
    env = _env_at(0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert reward == 0.0 and terminated and not truncated and isinstance(obs, str)
    assert info["verdict"] in ("format_error", "error") and info["feedback"].strip()


def test_hostile_solution_is_contained():
    env = _env_at(9, timeout_s=2)
    name = env.unwrapped.problem.metadata["name"]
    bomb = (f"import os\ndef {name}(*args):\n    while True:\n        try:\n            os.fork()\n"
            "        except OSError:\n            pass\n")
    _, reward, _, _, info = env.step(_wrap(bomb))
    assert reward == 0.0 and info["verdict"] in ("timeout", "error")


def test_non_str_action_is_a_type_error():
    env = _env_at(0)
    with pytest.raises(TypeError, match="str"):
        env.step(None)


def test_check_env():
    check_env(gym.make(ENV_ID).unwrapped)
