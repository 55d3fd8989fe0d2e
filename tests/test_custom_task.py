"""Custom reward envs (fst_env.register_task): validation, reward-function returns, inputs, splits, checker, README."""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.custom import RewardTaskEnv

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "stone", "cloud", "amber", "maple"]


def _problems(words: list[str] = WORDS) -> list[dict]:
    return [{"prompt": f"Repeat the word {w}.", "answer": w} for w in words]


def _exact(response: str, problem: dict) -> float:
    return float(response.strip() == problem["answer"])


def _step(env_id: str, action: str, problem_id: int = 0, **make_kwargs) -> tuple:
    env = gym.make(env_id, **make_kwargs)
    env.reset(options={"problem_id": problem_id})
    return env.step(action)


# ----------------------------------------------------------------------------- registration errors
@pytest.mark.parametrize("bad_id", ["Echo-v0", "test/Echo", "", "test/Echo-0"])
def test_bad_id_is_refused(bad_id: str) -> None:
    with pytest.raises(ValueError, match="namespace/Name-v0"):
        fst_env.register_task(bad_id, _problems(), _exact)


def test_non_callable_reward_or_feedback_fn_is_refused() -> None:
    with pytest.raises(TypeError, match="reward_fn must be callable"):
        fst_env.register_task("test/Bad-v0", _problems(), reward_fn=1.0)
    with pytest.raises(TypeError, match="feedback_fn must be callable"):
        fst_env.register_task("test/Bad-v0", _problems(), _exact, feedback_fn="nice")


def test_missing_prompt_key_is_refused_naming_problem_and_key() -> None:
    rows = [*_problems(), {"question": "What?", "answer": "x"}]
    with pytest.raises(ValueError, match=r"problem 6 of split 'train' must be a dict with a 'prompt' key"):
        fst_env.register_task("test/Bad-v0", rows, _exact)
    with pytest.raises(ValueError, match="'question' key"):
        fst_env.register_task("test/Bad-v0", _problems(), _exact, prompt_key="question")


def test_non_dict_rows_and_non_iterables_are_refused() -> None:
    with pytest.raises(ValueError, match="must be a dict"):
        fst_env.register_task("test/Bad-v0", ["just a string"], _exact)
    with pytest.raises(TypeError, match="list of dicts"):
        fst_env.register_task("test/Bad-v0", "Repeat the word apple.", _exact)
    with pytest.raises(TypeError, match="list of dicts"):
        fst_env.register_task("test/Bad-v0", 42, _exact)


def test_overlapping_splits_are_refused() -> None:
    with pytest.raises(ValueError, match=r"disjoint.*'Repeat the word stone\.'.*'train'.*'test'"):
        fst_env.register_task("test/Bad-v0", {"train": _problems(WORDS[:3]), "test": _problems(WORDS[2:])}, _exact)


def test_unknown_split_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown split names \['dev'\]"):
        fst_env.register_task("test/Bad-v0", {"train": _problems(), "dev": _problems(["zebra"])}, _exact)


def test_empty_split_is_refused() -> None:
    with pytest.raises(ValueError, match="split 'validation' has no problems"):
        fst_env.register_task("test/Bad-v0", {"train": _problems(), "validation": []}, _exact)


def test_failed_registration_registers_nothing() -> None:
    with pytest.raises(ValueError):
        fst_env.register_task("test/NeverThere-v0", [{"no_prompt": 1}], _exact)
    assert "test/NeverThere-v0" not in gym.registry


# ----------------------------------------------------------------------------- splits
def test_splits_card_and_selection() -> None:
    env_id = fst_env.register_task("test/Splits-v0", {"train": _problems(WORDS[:4]), "validation": _problems(
        WORDS[4:5]), "test": _problems(WORDS[5:])}, _exact, summary="Repeat a word.")
    card = gym.spec(env_id).card
    assert card is fst_env.card(env_id)
    assert dict(card.splits) == {"train": 4, "validation": 1, "test": 1}
    assert card.summary == "Repeat a word." and "error" in card.feedback_kinds
    prompts = {split: {gym.make(env_id, split=split).reset(options={"problem_id": k})[0]
                       for k in range(card.splits[split])} for split in ("train", "validation", "test")}
    assert prompts["validation"] == {"Repeat the word amber."} and prompts["test"] == {"Repeat the word maple."}
    assert not prompts["train"] & (prompts["validation"] | prompts["test"])


def test_selecting_a_missing_split_gives_a_clear_error() -> None:
    env_id = fst_env.register_task("test/TrainOnly-v0", _problems(), _exact)
    with pytest.raises(ValueError, match=r"has no 'validation' split \(it has \['train'\]\)"):
        gym.make(env_id, split="validation")
    with pytest.raises(ValueError, match="split must be one of"):
        gym.make(env_id, split="dev")


def test_problem_id_out_of_range_is_a_clear_error() -> None:
    env = gym.make(fst_env.register_task("test/Range-v0", _problems(), _exact))
    with pytest.raises(ValueError, match=r"problem_id must be in \[0, 6\)"):
        env.reset(options={"problem_id": 6})


# ----------------------------------------------------------------------------- what reward_fn returns
def test_float_reward_and_default_feedback_naming_expected_answer() -> None:
    env_id = fst_env.register_task("test/Float-v0", _problems(), _exact)
    obs, reward, terminated, truncated, info = _step(env_id, "pear", problem_id=1)
    assert (reward, terminated, truncated, info["verdict"]) == (0.0, True, False, "incorrect")
    assert "'river'" in info["feedback"] and "expected" in info["feedback"] and obs == info["feedback"]
    _, reward, _, _, info = _step(env_id, " river\n", problem_id=1)
    assert reward == 1.0 and info["verdict"] == "correct" and "'river'" in info["feedback"]


def test_default_feedback_without_answer_key_still_says_why() -> None:
    env_id = fst_env.register_task("test/NoAnswer-v0", [{"prompt": "Say hi."}], lambda r, p: float(r == "hi"))
    _, _, _, _, info = _step(env_id, "hello")
    assert info["verdict"] == "incorrect" and info["feedback"].startswith("Incorrect (reward 0 of 1)")


def test_float_and_feedback_pair() -> None:
    def pair(response: str, problem: dict) -> tuple[float, str]:
        if response == problem["answer"]:
            return 1.0, "Exactly right."
        return 0.25, f"{len(response)} letters, want {len(problem['answer'])}"

    env_id = fst_env.register_task("test/Pair-v0", _problems(), pair)
    _, reward, _, _, info = _step(env_id, "appl")
    assert reward == 0.25 and info["verdict"] == "incorrect" and info["feedback"] == "4 letters, want 5"
    _, reward, _, _, info = _step(env_id, "apple")
    assert reward == 1.0 and info["verdict"] == "correct" and info["feedback"] == "Exactly right."


def test_feedback_fn_is_used_when_reward_fn_gives_none() -> None:
    env_id = fst_env.register_task("test/FeedbackFn-v0", _problems(), _exact,
                                   feedback_fn=lambda r, p, reward: f"{r!r} scored {reward:g} on {p['answer']}")
    _, _, _, _, info = _step(env_id, "pear", problem_id=2)
    assert info["feedback"] == "'pear' scored 0 on stone"


def test_custom_reward_range_correct_only_at_top_and_clipped() -> None:
    env_id = fst_env.register_task("test/Range10-v0", _problems(), lambda r, p: 10.0 * (r == p["answer"]) + len(r),
                                   reward_range=(0.0, 10.0))
    assert gym.make(env_id).unwrapped.reward_range == (0.0, 10.0)
    _, reward, _, _, info = _step(env_id, "xyz")
    assert reward == 3.0 and info["verdict"] == "incorrect"
    _, reward, _, _, info = _step(env_id, "apple")
    assert reward == 10.0 and info["verdict"] == "correct"


@pytest.mark.parametrize("garbage", [None, "1.0", [1.0], (1.0,), (1.0, 2.0), (1.0, "ok", "extra"), math.nan,
                                     math.inf, True, {"reward": 1}])
def test_garbage_return_is_an_error_verdict_not_a_crash(garbage: object) -> None:
    env_id = fst_env.register_task("test/Garbage-v0", _problems(), lambda r, p: garbage)
    obs, reward, terminated, _, info = _step(env_id, "apple")
    assert (reward, terminated, info["verdict"]) == (0.0, True, "error")
    assert "reward function must return" in info["feedback"] and obs == info["feedback"]


def test_raising_reward_fn_is_an_error_verdict_naming_the_exception() -> None:
    def explode(response: str, problem: dict) -> float:
        raise KeyError("solution")

    env_id = fst_env.register_task("test/Raise-v0", _problems(), explode)
    _, reward, terminated, _, info = _step(env_id, "apple")
    assert (reward, terminated, info["verdict"]) == (0.0, True, "error")
    assert "KeyError" in info["feedback"] and "solution" in info["feedback"]


@pytest.mark.parametrize("action", ["", "   \n\t", "\ud800", "\x00\x07\x1b[31m", "é中文🙂" * 100, "x" * (1 << 20)])
def test_any_str_action_is_legal(action: str) -> None:
    env_id = fst_env.register_task("test/Adversarial-v0", _problems(), _exact)
    _, reward, terminated, _, info = _step(env_id, action)
    assert reward == 0.0 and terminated
    assert info["verdict"] in {"format_error", "incorrect"} and info["feedback"].strip()


def test_non_str_action_raises_type_error_naming_env_and_type() -> None:
    env = gym.make(fst_env.register_task("test/TypeErr-v0", _problems(), _exact))
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"test/TypeErr-v0.*got int"):
        env.step(5)


# ----------------------------------------------------------------------------- problem sources
def test_datasets_dataset_as_problems() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(_problems())
    env_id = fst_env.register_task("test/Dataset-v0", {"train": ds, "test": datasets.Dataset.from_list(
        _problems(["zebra"]))}, _exact)
    assert dict(gym.spec(env_id).card.splits) == {"train": 6, "test": 1}
    env = gym.make(env_id)
    obs, _ = env.reset(options={"problem_id": 3})
    assert obs == "Repeat the word cloud."
    assert env.step("cloud")[1] == 1.0
    assert gym.make(env_id, split="test").reset(options={"problem_id": 0})[0] == "Repeat the word zebra."


def test_generator_as_problems() -> None:
    env_id = fst_env.register_task("test/Generator-v0", ({"prompt": f"Add {a} and {a + 1}.", "answer": 2 * a + 1}
                                                         for a in range(10)),
                                   lambda r, p: float(r.strip() == str(p["answer"])))
    assert gym.spec(env_id).card.splits["train"] == 10
    env = gym.make(env_id)
    assert env.reset(options={"problem_id": 4})[0] == "Add 4 and 5."
    assert env.step("9")[1] == 1.0
    # a generator is consumed once at registration: a second env sees the same problems
    assert gym.make(env_id).reset(options={"problem_id": 9})[0] == "Add 9 and 10."


# ----------------------------------------------------------------------------- gymnasium contracts
def test_check_env_passes() -> None:
    env_id = fst_env.register_task("test/Checked-v0", _problems(), _exact)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped)
    assert not [str(w.message) for w in caught]
    assert isinstance(gym.make(env_id).unwrapped, RewardTaskEnv)


def test_determinism_same_seed_same_problem_same_action_same_result() -> None:
    env_id = fst_env.register_task("test/Determinism-v0", _problems(), _exact)
    a, b = gym.make(env_id), gym.make(env_id)
    for seed in range(5):
        assert a.reset(seed=seed) == b.reset(seed=seed)
        assert a.step("river") == b.step("river")
    seen = {gym.make(env_id).reset(seed=s)[0] for s in range(40)}
    assert len(seen) > 1, "different seeds must reach different problems"


def test_re_registration_replaces_the_task() -> None:
    env_id = fst_env.register_task("test/Replace-v0", _problems(), _exact)
    fst_env.register_task(env_id, _problems(["zebra"]), lambda r, p: 1.0)
    env = gym.make(env_id)
    assert env.reset(seed=0)[0] == "Repeat the word zebra."
    assert env.step("anything")[1] == 1.0


# ----------------------------------------------------------------------------- the README example
EXAMPLE = ROOT / "docs" / "custom_env_example.py"
MARKER = "<!-- custom-env-example -->"


def _readme_block() -> str | None:
    """The fenced python block after the marker line in README.md, or None when there is none."""
    readme = ROOT / "README.md"
    if not readme.exists():
        return None
    text = readme.read_text(encoding="utf-8")
    if MARKER not in text:
        return None
    found = re.search(r"```python\n(.*?)```", text.split(MARKER, 1)[1], flags=re.DOTALL)
    if found is None:
        raise AssertionError(f"README.md has {MARKER} but no ```python block after it")
    return found.group(1)


def test_readme_example() -> None:
    block = _readme_block()
    source = block if block is not None else EXAMPLE.read_text(encoding="utf-8")
    out = io.StringIO()
    namespace: dict = {"__name__": "__main__"}
    with contextlib.redirect_stdout(out):
        exec(compile(source, "README example" if block is not None else str(EXAMPLE), "exec"), namespace)
    printed = out.getvalue()
    info = namespace["info"]
    assert info["feedback"] in printed and info["verdict"] in printed, printed
    assert namespace["env"].spec.id in gym.registry


def test_example_file_is_short_and_matches_readme() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 15
    block = _readme_block()
    if block is not None:
        assert block.strip() == text.strip(), "README.md must include docs/custom_env_example.py verbatim"


# ----------------------------------------------------------------------------- reward_fn guard
@pytest.mark.parametrize("raw, reward", [(7.0, 1.0), (-3.0, 0.0)])
def test_out_of_range_reward_is_clipped_and_reported(raw: float, reward: float) -> None:
    env_id = fst_env.register_task("test/OutOfRange-v0", _problems(), lambda r, p: raw)
    env = gym.make(env_id)
    env.reset(options={"problem_id": 0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, got, _, _, info = env.step("apple")
    assert got == reward and info["reward_clipped"] is True and info["raw_reward"] == raw
    assert "clipped" in info["feedback"] and env.unwrapped.clipped_count == 1
    assert any("outside the declared reward_range" in str(w.message) for w in caught)
    _, _, _, _, info = _step(fst_env.register_task("test/InRange-v0", _problems(), lambda r, p: 0.5), "apple")
    assert "reward_clipped" not in info


def _numpy_and_torch_values() -> list:
    import numpy as np

    values = [np.float32(1.0), np.int64(1), np.float64(1.0), np.array(1.0), np.array(1, dtype=np.int32)]
    torch = pytest.importorskip("torch")
    return [*values, torch.tensor(1.0), torch.tensor(1, dtype=torch.int64)]


@pytest.mark.parametrize("value", _numpy_and_torch_values(), ids=repr)
def test_numpy_scalars_and_zero_d_tensors_are_numbers(value: object) -> None:
    env_id = fst_env.register_task("test/Numeric-v0", _problems(), lambda r, p: value)
    _, reward, _, _, info = _step(env_id, "apple")
    assert (reward, info["verdict"]) == (1.0, "correct")
    _, reward, _, _, info = _step(fst_env.register_task("test/NumericPair-v0", _problems(),
                                                        lambda r, p: (value * 0.5, "half")), "apple")
    assert (reward, info["verdict"], info["feedback"]) == (0.5, "incorrect", "half")


def test_non_scalar_arrays_complex_and_strings_are_errors() -> None:
    import numpy as np
    import torch

    for value in (np.array([1.0]), np.array([[1.0]]), torch.tensor([1.0]), torch.tensor(1 + 1j), 1 + 0j,
                  np.complex64(1), torch.tensor(True), np.bool_(True), "1.0", math.nan, np.float32("nan"),
                  torch.tensor(float("inf"))):
        env_id = fst_env.register_task("test/NotAReal-v0", _problems(), lambda r, p, v=value: v)
        _, reward, _, _, info = _step(env_id, "apple")
        assert (reward, info["verdict"]) == (0.0, "error"), value
        assert "finite real number" in info["feedback"] and info["error"], value


def test_importing_fst_env_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, fst_env, numpy as np; fst_env.register_task('t/N-v0', [{'prompt': 'p'}], "
            "lambda r, p: np.float32(1)); import gymnasium as gym; e = gym.make('t/N-v0'); e.reset(); "
            "print(e.step('x')[1], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["1.0", "False"]


def test_slow_reward_fn_times_out_within_the_deadline() -> None:
    import time

    def slow(response: str, problem: dict) -> float:
        time.sleep(30)
        return 1.0

    env_id = fst_env.register_task("test/Slow-v0", _problems(), slow, reward_timeout_s=0.5)
    start = time.perf_counter()
    _, reward, terminated, _, info = _step(env_id, "apple")
    assert time.perf_counter() - start < 0.5 + 1.0
    assert (reward, terminated, info["verdict"]) == (0.0, True, "timeout")
    assert "0.5 s deadline" in info["feedback"] and info["error"]


def test_stuck_calls_are_bounded() -> None:
    import threading
    import time

    from fst_env import custom

    release = threading.Event()
    calls = []

    def hang(response: str, problem: dict) -> float:
        calls.append(1)
        release.wait(30)
        return 1.0

    env_id = fst_env.register_task("test/Hang-v0", _problems(), hang, reward_timeout_s=0.05)
    before = custom._stuck_calls  # other tests' timed-out calls may still be running
    try:
        for _ in range(custom.MAX_STUCK_CALLS + 3):
            _, _, _, _, info = _step(env_id, "apple")
            assert info["verdict"] == "timeout"
        assert len(calls) <= custom.MAX_STUCK_CALLS - before  # no new thread once the bound is reached
        assert "still running" in info["feedback"]
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while custom._stuck_calls > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert custom._stuck_calls <= before  # released calls are no longer counted
    fast = fst_env.register_task("test/AfterHang-v0", _problems(), _exact, reward_timeout_s=0.5)
    assert _step(fast, "apple")[1] == 1.0


@pytest.mark.parametrize("exc", [SystemExit(3), GeneratorExit("gen"), ValueError("bad value")], ids=repr)
def test_base_exceptions_are_caught_into_info_error(exc: BaseException) -> None:
    def boom(response: str, problem: dict) -> float:
        raise exc

    for timeout in (5.0, None):  # in the worker thread and inline
        env_id = fst_env.register_task("test/Boom-v0", _problems(), boom, reward_timeout_s=timeout)
        _, reward, _, _, info = _step(env_id, "apple")
        assert (reward, info["verdict"]) == (0.0, "error")
        assert info["error"].startswith(type(exc).__name__) and type(exc).__name__ in info["feedback"]


def test_keyboard_interrupt_still_stops() -> None:
    def interrupt(response: str, problem: dict) -> float:
        raise KeyboardInterrupt

    for timeout in (5.0, None):
        env_id = fst_env.register_task("test/Interrupt-v0", _problems(), interrupt, reward_timeout_s=timeout)
        with pytest.raises(KeyboardInterrupt):
            _step(env_id, "apple")


def test_bad_timeout_and_range_are_refused() -> None:
    for bad in (0, -1, math.inf, "5", True):
        with pytest.raises(ValueError, match="reward_timeout_s"):
            fst_env.register_task("test/BadTimeout-v0", _problems(), _exact, reward_timeout_s=bad)
    with pytest.raises(ValueError, match="reward_range"):
        fst_env.register_task("test/BadRange-v0", _problems(), _exact, reward_range=(1.0, 0.0))


def test_default_hint_never_names_the_answer_and_hint_fn_is_used() -> None:
    env_id = fst_env.register_task("test/Hint-v0", _problems(), _exact)
    _, _, _, _, info = _step(env_id, "pear", problem_id=1)
    assert "river" in info["feedback"] and "river" not in info["hint"] and "reward 0 of 1" in info["hint"]
    env_id = fst_env.register_task("test/HintFn-v0", _problems(), _exact,
                                   hint_fn=lambda r, p, reward: f"{len(r)} letters is not it")
    _, _, _, _, info = _step(env_id, "pear", problem_id=1)
    assert info["hint"] == "4 letters is not it"


def test_reward_threads_do_not_pile_up_across_envs() -> None:
    import gc
    import threading
    import time

    def alive() -> int:
        return sum(t.name == "fst-reward-fn" for t in threading.enumerate())

    env_id = fst_env.register_task("test/Threads-v0", _problems(), _exact)
    before = alive()
    for i in range(20):
        env = gym.make(env_id)
        env.reset()
        env.step("apple")
        if i % 2:
            env.close()
        del env
    gc.collect()
    deadline = time.monotonic() + 5
    while alive() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alive() <= before
