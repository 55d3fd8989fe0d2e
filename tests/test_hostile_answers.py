"""Hostile answers against every registered env and every reasoning-gym task.

Payloads try to run code on the host (each would create a unique marker file under /tmp or the cwd, or leave a
tagged process behind), to stall the judge (expression bombs), or to break parsing (huge, control, surrogate and
deeply nested text). For every step: it returns within the step deadline + 1 s, the reward is in the declared
range, feedback and hint are non-empty, and the verdict is one of ``VERDICTS``; afterwards no marker file and no
tagged or stray child process exists. The full payload list runs on the registered ids and on every task whose
scorer evaluates the answer; a representative subset runs on the other (plain-comparison) rg tasks.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import time
import uuid
import warnings

import gymnasium as gym
import pytest

import fst_env  # noqa: F401  (registers the fst/ ids)
from fst_env import judging
from fst_env.core import DEFAULT_STEP_DEADLINE_S, VERDICTS
from fst_env.envs import reasoning_gym as rg

RUN = uuid.uuid4().hex[:12]
TAG = f"fsthostile{RUN}"
MARKER_DIRS = ("/tmp", os.getcwd())
RG_DEADLINE_S = 2.0  # short, so bombs that reach a scorer are stopped quickly; the default is 5 s


def _marker(i: int, base: str) -> str:
    return os.path.join(base, f"fst-hostile-{RUN}-{i}")


def _code_payloads() -> list[str]:
    """Code-execution attempts; each writes a marker under /tmp or the cwd if it ever runs."""
    out = []
    for i, base in enumerate(MARKER_DIRS):
        m = _marker(i, base)
        out += [
            f"__import__('os').system('touch {m}')",
            f"1 + __import__('os').system('touch {m}')",
            f"3*x + __import__('os').system('touch {m}')",
            f"__import__('subprocess').run(['touch', '{m}'])",
            f"open('{m}', 'w').write('x')",
            f"(lambda: open('{m}', 'w'))()",
            f"getattr(__builtins__, 'exec')(\"open('{m}', 'w')\")",
            f"exec(\"import os; os.system('touch {m}')\")",
            f"eval(\"__import__('os').system('touch {m}')\")",
            f"import os; os.system('touch {m}')",
            f"f\"{{__import__('os').system('touch {m}')}}\"",
            f"[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{m}'])",
            f"Symbol('x').__class__.__init__.__globals__['__builtins__']['__import__']('os').system('touch {m}')",
            f"x.__class__.__init__.__globals__['__builtins__']['open']('{m}', 'w')",
            f"sympify(\"__import__('os').system('touch {m}')\")",
            f"Function('f')(__import__('os').system('touch {m}'))",
            f"__\U0001d4be\U0001d4c2\U0001d4c5\u2134\U0001d4c7\U0001d4c9__('os').system('touch {m}')",  # NFKC: import
            f"[__import__('os').system('touch {m}')]",
            f"{{'a': __import__('os').system('touch {m}')}}",
        ]
    out += [f"__import__('os').system('sleep 300 {TAG} &')",
            f"__import__('subprocess').Popen(['sleep', '300', '{TAG}'], start_new_session=True)"]
    return out


BOMBS = [
    "9**9**9", "10**10**10", "1e999999", "-1e999999", "2**2**2**2**2**2", "9^9^9", "x**(10**9)", "(x+1)**999999",
    "expand((x+1)**100000)", "factorial(10**9)", "1/0", "0**-1", "(" * 5000 + "1" + ")" * 5000,
    "(" * 50 + "1" + ")" * 50, "9" * 100_000, "1" + "0" * 5000, "x" + "*x" * 20000, "+".join(["1"] * 30000),
    "[" * 3000 + "]" * 3000,
]

TEXT_ATTACKS = [
    "1" * 1_000_000, "A" * 2_000_000, "\x00\x01\x02\x1b[2J\r\x7f\x08", "\ud800\udfff\udc00", "\\boxed{" * 8600 + "1"
    + "}" * 8600, "<answer>" * 2000 + "1", "", "   ", "\u202e\u200b\ufeff1",
]

PAYLOADS = _code_payloads() + BOMBS + TEXT_ATTACKS
#: The subset for the plain-comparison rg tasks: one of each kind.
SUBSET = [_code_payloads()[0], _code_payloads()[-1], "9**9**9", "1e999999", "(" * 5000 + "1" + ")" * 5000,
          "9" * 100_000, "1" * 1_000_000, "\ud800\udfff", "\\boxed{" * 8600 + "1" + "}" * 8600]


def _wrap(payload: str) -> list[str]:
    return [f"<answer>{payload}</answer>", f"Let me think.\nAnswer: {payload}", payload]


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(pid))
    return found


def _tagged() -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if TAG.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _persistent_helpers() -> set[int]:
    """Long-lived helpers this process may own by design: the judging worker and the sandbox zygote."""
    from fst_env import sandbox

    helpers = {judging.worker_pid()}
    zygote = sandbox._Zygote._instance
    if zygote is not None:
        helpers.add(zygote.proc.pid)
    return {p for p in helpers if p is not None}


def _attack(env: gym.Env, payloads: list[str]) -> None:
    base = env.unwrapped
    deadline = getattr(base, "step_deadline_s", DEFAULT_STEP_DEADLINE_S)  # multi-agent seats: the default
    low, high = getattr(base, "reward_range", (-math.inf, math.inf))
    children_before = _children()
    env.reset(seed=0)
    for payload in payloads:
        for action in _wrap(payload):
            start = time.monotonic()
            _, reward, terminated, truncated, info = env.step(action)
            took = time.monotonic() - start
            where = f"{env.spec.id if env.spec else base} on {action[:60]!r}"
            assert took <= deadline + 1.0, f"{where}: step took {took:.1f} s"
            assert math.isfinite(reward) and low <= reward <= high, f"{where}: reward {reward}"
            assert info["verdict"] in VERDICTS, where
            assert isinstance(info["feedback"], str) and info["feedback"].strip(), where
            assert isinstance(info["hint"], str) and info["hint"].strip(), where
            if terminated or truncated:
                env.reset(seed=0)
    leftovers = [p for d in MARKER_DIRS for p in glob.glob(os.path.join(d, f"fst-hostile-{RUN}-*"))]
    for path in leftovers:
        os.remove(path)
    assert leftovers == [], f"hostile answers created files on the host: {leftovers}"
    time.sleep(0.05)
    assert _tagged() == [], "a hostile answer left a process running"
    stray = _children() - children_before - _persistent_helpers()
    assert stray == set(), f"stray child processes: {stray}"


ENV_IDS = sorted(k for k in gym.registry if k.startswith("fst/"))
DANGEROUS = sorted(t for t in rg.task_names() if rg.scorer_class(t) != "plain")
PLAIN = sorted(t for t in rg.task_names() if rg.scorer_class(t) == "plain")
# composite needs its sub-datasets named; give it an evaluating one so its delegation is exercised.
RG_CONFIG = {"composite": {"datasets": [{"name": "countdown", "weight": 1.0, "config": {}}], "size": 20}}


@pytest.fixture(scope="module", autouse=True)
def _quiet_and_warm():
    warnings.filterwarnings("ignore")
    judging.warm()  # the one-time worker start-up is not part of any step


def test_every_rg_task_is_classified():
    from reasoning_gym.factory import DATASETS

    assert set(rg.SCORER_CLASSES) == set(DATASETS)
    assert set(rg.SCORER_CLASSES.values()) <= set(rg.SCORER_CLASS_REASONS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_envs_survive_every_payload(env_id):
    kwargs = {"step_deadline_s": RG_DEADLINE_S} if env_id.startswith(("fst/ReasoningGym", *rg.CURATED)) else {}
    env = gym.make(env_id, **kwargs)
    try:
        _attack(env, PAYLOADS)
    finally:
        env.close()


@pytest.mark.parametrize("task", DANGEROUS)
def test_evaluating_rg_tasks_survive_every_payload(task):
    env = gym.make("fst/ReasoningGym-v0", task=task, step_deadline_s=RG_DEADLINE_S, **RG_CONFIG.get(task, {}))
    assert env.unwrapped.isolated
    _attack(env, PAYLOADS)


def test_plain_rg_tasks_survive_a_representative_subset():
    for task in PLAIN:
        env = gym.make("fst/ReasoningGym-v0", task=task, step_deadline_s=RG_DEADLINE_S)
        assert not env.unwrapped.isolated
        _attack(env, SUBSET)


def test_code_in_a_countdown_answer_never_runs_even_past_the_filter():
    """The worker alone (filter bypassed) keeps a code answer off the host and a patch out of later calls."""
    env = gym.make("fst/ReasoningGym-v0", task="countdown", step_deadline_s=RG_DEADLINE_S)
    env.reset(seed=0)
    entry = env.unwrapped.problem.metadata["entry"]
    marker = _marker(99, os.getcwd())
    attack = ("(setattr(__import__('reasoning_gym').games.countdown.CountdownDataset, 'score_answer', "
              f"lambda *a: 1.0), open('{marker}', 'w'), 1)[2]")
    assert rg.answer_filter_error("countdown", attack, entry) is not None  # the filter would have stopped it
    with contextlib.suppress(judging.JudgeError):  # countdown's scorer swallows the write's OSError: scores 0
        env.unwrapped._score(attack, entry)
    assert not os.path.exists(marker)
    assert env.unwrapped._score("1 + 1", entry) < 1.0  # the patch died with its child
