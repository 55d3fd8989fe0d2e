"""``fst/CodeGen-v0``: write a Python function from a generated spec; graded by unit tests run in the sandbox.

Specs come from :mod:`fst_env.envs._codegen_specs` (families ``list_transform``, ``string_manip``,
``sequences``, ``counting``; parameters drawn per problem, deterministic in the problem id; splits disjoint by
prompt hash). Each problem carries a reference solution (the oracle) and its test inputs; the expected outputs
are computed from the reference in-process and never enter the sandbox.

Grading is one sandbox run per response: a harness reads a random marker and the test inputs from stdin
*before* the model's code is loaded, runs each test under its own alarm, and prints one JSON record per test
behind the marker. The parent compares the returned values (type-tagged, so ``True`` is not ``1`` and a tuple
is not a list) with the expected ones. A program that forges marker lines gains nothing: it can only claim
return values, which are still compared against expectations it never sees.

Code is taken from the last ```python block (else the last plain ``` block, else the whole response). A
response without the required function is a ``format_error`` naming the signature; a syntax error, an
exception or a crash is ``error``; a test that does not finish is ``timeout``; wrong values are
``incorrect``. Feedback names the first failing test. For an example shown in the prompt it gives the call,
the expected and the actual values (or the exception and its line); for a hidden test it never gives the
expected value, the input or what the code returned on it (a function that echoes its argument would leak
the input): only which hidden test, the kind of failure (wrong value, the exception's type, timeout) and
how many hidden tests passed. Every outcome has a ``hint`` (what a policy may see later) with no expected
value and no hidden input. Reward: 1 only when every test passes (``reward_mode="all"``, default) or the
fraction passed (``reward_mode="fraction"``); feedback always reports the count.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from fst_env.cards import EnvCard, register_env
from fst_env.core import Outcome, Problem, TextEnv, Verdict
from fst_env.envs._codegen_specs import FAMILIES, LEVELS, Spec, draw_spec
from fst_env.envs._judging import marked_json
from fst_env.sandbox import SandboxResult, run_python
from fst_env.splits import ProceduralSplit

REWARD_MODES: tuple[str, ...] = ("all", "fraction")
SPLIT_SIZES: dict[str, int] = {"train": 100_000, "validation": 1_000, "test": 1_000}

_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_PLAIN_FENCE = re.compile(r"```[ \t]*\n(.*?)```", re.DOTALL)

# Shared by the harness (inside the sandbox) and the parent (for the expected values), so both tag values alike.
ENCODER_SOURCE = r'''
def _fst_encode(value, depth=0):
    kind = type(value)
    if depth > 30:
        return ["repr", repr(value)[:200]]
    if value is None or kind in (bool, int, float, str):
        if kind is int and value.bit_length() > 4000:
            return ["repr", repr(value)[:200]]
        return [kind.__name__, value]
    if kind in (list, tuple):
        return [kind.__name__, [_fst_encode(v, depth + 1) for v in value]]
    if kind is dict:
        return ["dict", [[_fst_encode(k, depth + 1), _fst_encode(v, depth + 1)] for k, v in value.items()]]
    if kind in (set, frozenset):
        return [kind.__name__, sorted((_fst_encode(v, depth + 1) for v in value), key=repr)]
    return ["repr", repr(value)[:200]]
'''

_HARNESS = r'''
import json as _json
import signal as _signal
import sys as _sys

_MARKER = _sys.stdin.readline().strip()
_CASES = _json.loads(_sys.stdin.readline())
_OUT = _sys.stdout
{encoder}

def _emit(record):
    _OUT.write("\n" + _MARKER + _json.dumps(record) + "\n")
    _OUT.flush()


def _line(tb):
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "solution.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class _TestTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _TestTimeout()


_ns = {{"__name__": "solution"}}
try:
    exec(compile({source!r}, "solution.py", "exec"), _ns)
except BaseException as _exc:
    _emit({{"load_error": (type(_exc).__name__ + ": " + str(_exc))[:300],
            "line": getattr(_exc, "lineno", None) if isinstance(_exc, SyntaxError) else _line(_exc.__traceback__)}})
    raise SystemExit(0)
_fn = _ns.get({name!r})
if not callable(_fn):
    _emit({{"missing": type(_fn).__name__}})
    raise SystemExit(0)
_signal.signal(_signal.SIGALRM, _alarm)
for _i, _args in enumerate(_CASES):
    try:
        _signal.setitimer(_signal.ITIMER_REAL, {per_test_s})
        _value = _fn(*_args)
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _emit({{"i": _i, "value": _fst_encode(_value)}})
    except _TestTimeout:
        _emit({{"i": _i, "timeout": True}})
    except BaseException as _exc:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _emit({{"i": _i, "error": (type(_exc).__name__ + ": " + str(_exc))[:300], "line": _line(_exc.__traceback__)}})
_emit({{"done": True}})
'''

_ENCODER_NS: dict[str, Any] = {}
exec(ENCODER_SOURCE, _ENCODER_NS)
encode_value = _ENCODER_NS["_fst_encode"]


def decode_value(tagged: Any) -> Any:
    """Turn a type-tagged value back into a Python value for display (``repr`` entries become their text)."""
    if not (isinstance(tagged, list) and len(tagged) == 2 and isinstance(tagged[0], str)):
        return tagged
    kind, value = tagged
    if kind in ("list", "tuple", "set", "frozenset") and isinstance(value, list):
        items = [decode_value(v) for v in value]
        if kind == "list":
            return items
        if kind == "tuple":
            return tuple(items)
        try:
            return set(items) if kind == "set" else frozenset(items)
        except TypeError:
            return items
    if kind == "dict" and isinstance(value, list):
        try:
            return {decode_value(k): decode_value(v) for k, v in value}
        except (TypeError, ValueError):
            return value
    if kind == "repr":
        return _Repr(str(value))
    return value


class _Repr(str):
    """A value the harness could only describe by its repr; shown as that text."""

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class CodeGenConfig:
    """Which specs CodeGen-v0 draws and how it grades: families, difficulty, tests, reward mode, sandbox limits.

    ``n_tests`` tests per problem, of which the first ``n_examples`` are shown in the prompt. ``timeout_s`` bounds
    the whole sandboxed run and ``per_test_timeout_s`` each test call; ``memory_mb`` is the sandbox's address
    space limit.
    """

    families: tuple[str, ...] = FAMILIES
    difficulty: str = "medium"
    n_tests: int = 8
    n_examples: int = 2
    reward_mode: str = "all"
    data_seed: int = 0
    timeout_s: float = 5.0
    per_test_timeout_s: float = 1.0
    memory_mb: int = 512
    split_sizes: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if isinstance(self.families, str) or not self.families:
            raise ValueError(f"CodeGen-v0: families must be a non-empty tuple from {list(FAMILIES)}, "
                             f"got {self.families!r}")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"CodeGen-v0: unknown families {unknown}; choose from {list(FAMILIES)}")
        if self.difficulty not in LEVELS:
            raise ValueError(f"CodeGen-v0: difficulty must be one of {list(LEVELS)}, got {self.difficulty!r}")
        for name, low, high in (("n_tests", 1, 50), ("n_examples", 0, 10), ("memory_mb", 64, 8192)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"CodeGen-v0: {name} must be an int in [{low}, {high}], got {value!r}")
        if self.n_examples > self.n_tests:
            raise ValueError(f"CodeGen-v0: n_examples ({self.n_examples}) must not exceed n_tests ({self.n_tests})")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"CodeGen-v0: reward_mode must be one of {list(REWARD_MODES)}, got {self.reward_mode!r}")
        if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int):
            raise ValueError(f"CodeGen-v0: data_seed must be an int, got {self.data_seed!r}")
        for name in ("timeout_s", "per_test_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= value <= 120:
                raise ValueError(f"CodeGen-v0: {name} must be in [0.05, 120] seconds, got {value!r}")
        for split, size in self.split_sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"CodeGen-v0: split_sizes[{split!r}] must be an int >= 1, got {size!r}")


def _call_text(name: str, args: tuple[Any, ...] | list[Any], limit: int = 160) -> str:
    text = f"{name}({', '.join(repr(a) for a in args)})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _short_repr(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _prompt(spec: Spec, n_examples: int) -> str:
    examples = "\n".join(f"    {_call_text(spec.name, args, 200)} == {_short_repr(out, 200)}"
                         for args, out in zip(spec.tests[:n_examples], spec.expected[:n_examples], strict=True))
    shown = f"\n\nExamples:\n{examples}" if examples else ""
    return (f"Write a Python function with this signature:\n\n```python\n{spec.signature}\n```\n\n"
            f"{spec.description}{shown}\n\n"
            f"It is graded on {len(spec.tests)} tests (the examples and hidden ones), run in a sandbox with only "
            f"the standard library and no network. Reply with the complete function in a ```python code block.")


def _build_problem(config: CodeGenConfig, index: int) -> Problem:
    rng = random.Random(f"codegen|{config.data_seed}|{index}")  # str seeds hash deterministically
    spec = draw_spec(rng, config.families, config.difficulty, config.n_tests)
    return Problem(prompt=_prompt(spec, config.n_examples), answer=spec.reference,
                   metadata={"family": spec.family, "variant": spec.variant, "name": spec.name,
                             "signature": spec.signature, "tests": [list(t) for t in spec.tests],
                             "expected": [encode_value(v) for v in spec.expected], "reference": spec.reference})


def extract_code(response: str) -> tuple[str, str]:
    """(code, where it came from): the last ```python block, else the last plain ``` block, else everything."""
    blocks = _PYTHON_FENCE.findall(response)
    if blocks:
        return blocks[-1], "```python block"
    blocks = _PLAIN_FENCE.findall(response)
    if blocks:
        return blocks[-1], "``` block"
    return response, "whole response"


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
            return True
        if isinstance(node, (ast.If, ast.Try, ast.With)) and name in {
                n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}:
            return True
    return False


class CodeGenEnv(TextEnv):
    """Single-turn code writing: implement a generated spec; the reward comes from unit tests run in the sandbox."""

    def __init__(self, split: str = "train", *, families: tuple[str, ...] | list[str] = FAMILIES,
                 difficulty: str = "medium", n_tests: int = 8, n_examples: int = 2, reward_mode: str = "all",
                 data_seed: int = 0, timeout_s: float = 5.0, per_test_timeout_s: float = 1.0, memory_mb: int = 512,
                 **kwargs: Any) -> None:
        self.config = CodeGenConfig(tuple(families) if not isinstance(families, str) else families, difficulty,
                                    n_tests, n_examples, reward_mode, data_seed, timeout_s, per_test_timeout_s,
                                    memory_mb)
        self.config.validate()
        super().__init__(split, **kwargs)
        self.problems = ProceduralSplit(lambda index: _build_problem(self.config, index), seed=data_seed,
                                         split=split, size=self.config.split_sizes[split])

    def oracle_response(self) -> str | None:
        """A response that scores 1 on the current problem (the reference solution in a python block)."""
        if self.problem is None:
            return None
        return f"```python\n{self.problem.answer}```"

    def harness(self, problem: Problem, code: str, per_test_s: float | None = None) -> str:
        """The program one grading run executes: the test harness around ``code`` (stdin: marker, then tests)."""
        return _HARNESS.format(encoder=ENCODER_SOURCE, source=code, name=problem.metadata["name"],
                               per_test_s=float(per_test_s or self.config.per_test_timeout_s))

    def judge(self, problem: Problem, response: str) -> Outcome:
        outcome = self._judge(problem, response)
        if outcome.hint is None:
            # Only the outcomes decided before any test ran (format, parse and load errors) come without a hint;
            # their feedback is about the response alone, so it is the hint. Test outcomes set their own.
            outcome = dataclasses.replace(outcome, hint=outcome.feedback)
        return outcome

    def _judge(self, problem: Problem, response: str) -> Outcome:
        meta = problem.metadata
        signature = meta["signature"]
        if not response.strip():
            return Outcome(0.0, Verdict.FORMAT_ERROR, f"Format error: the response is empty. Reply with "
                                                      f"`{signature}` and its body in a ```python block.")
        code, origin = extract_code(response)
        info: dict[str, Any] = {"code_source": origin, "tests_total": len(meta["tests"])}
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:
            if origin == "whole response":
                return Outcome(0.0, Verdict.FORMAT_ERROR,
                               f"Format error: no ```python code block found, and the response as a whole is not "
                               f"Python (SyntaxError: {exc.msg}, line {exc.lineno}). Reply with `{signature}` and "
                               f"its body in a ```python block.", info=info)
            return Outcome(0.0, Verdict.ERROR, f"Error: your code (from the {origin}) does not parse: "
                                               f"SyntaxError: {exc.msg} (line {exc.lineno}).", info=info)
        except (ValueError, RecursionError, MemoryError) as exc:
            return Outcome(0.0, Verdict.FORMAT_ERROR, f"Format error: your code (from the {origin}) cannot be read "
                                                      f"as Python ({type(exc).__name__}: {str(exc)[:120]}).",
                           info=info)
        if not _defines(tree, meta["name"]):
            return Outcome(0.0, Verdict.FORMAT_ERROR,
                           f"Format error: no function `{meta['name']}` is defined in your code (taken from the "
                           f"{origin}). Define `{signature}` at the top level of a ```python block.", info=info)
        marker = "FST-RESULT-" + secrets.token_hex(16)
        stdin = marker + "\n" + json.dumps(meta["tests"]) + "\n"
        result = run_python(self.harness(problem, code), stdin=stdin, timeout_s=self.config.timeout_s,
                            memory_mb=self.config.memory_mb, max_output_bytes=4 << 20)
        info["sandbox_status"] = result.status
        info["sandbox_isolation"] = list(result.isolation)
        return self._grade(problem, result, _records(result.stdout, marker), info)

    def _grade(self, problem: Problem, result: SandboxResult, records: list[dict[str, Any]],
               info: dict[str, Any]) -> Outcome:
        meta = problem.metadata
        name, tests, expected = meta["name"], meta["tests"], meta["expected"]
        total = len(tests)
        for record in records:
            if "load_error" in record:
                line = f" (line {record['line']})" if record.get("line") else ""
                return Outcome(0.0, Verdict.ERROR, f"Error: loading your code failed before any test ran: "
                                                   f"{record['load_error']}{line}.", info=info)
            if "missing" in record:
                return Outcome(0.0, Verdict.FORMAT_ERROR, f"Format error: after running your code, `{name}` is "
                                                          f"{_a(record['missing'])}, not a function. Define "
                                                          f"`{meta['signature']}`.", info=info)
        outcomes: dict[int, dict[str, Any]] = {}
        for record in records:
            i = record.get("i")
            if isinstance(i, int) and 0 <= i < total and i not in outcomes:
                outcomes[i] = record
        good = {i for i, r in outcomes.items() if "value" in r and r["value"] == expected[i]}
        passed = len(good)
        shown = min(self.config.n_examples, total)  # tests[:shown] are the examples written in the prompt
        hidden_passed = len([i for i in good if i >= shown])
        info.update(tests_passed=passed, hidden_passed=hidden_passed, hidden_total=total - shown)
        finished = any(r.get("done") for r in records)
        if passed == total and finished:
            message = f"Correct: all {total} tests passed."
            return Outcome(1.0, Verdict.CORRECT, message, info=info, hint=message)
        reward = passed / total if self.config.reward_mode == "fraction" else 0.0
        tally = (f"{passed}/{total} tests passed ({len(good) - hidden_passed}/{shown} examples, "
                 f"{hidden_passed}/{total - shown} hidden).")
        for i in range(total):
            visible = i < shown
            call = _call_text(name, tests[i]) if visible else f"hidden test {i - shown + 1} of {total - shown}"
            label = f"test {i + 1}, {call}," if visible else f"{call},"
            record = outcomes.get(i)
            if record is None:
                return self._unfinished(result, call, i, tally, reward, info)
            if record.get("timeout"):
                message = (f"Timeout: {label} did not finish within {self.config.per_test_timeout_s:g} s. {tally}")
                return Outcome(reward, Verdict.TIMEOUT, message, info=info, hint=message)
            if "error" in record:
                line = f" at line {record['line']} of your code" if record.get("line") else ""
                if not visible:
                    # The exception's type only: its message may quote the hidden input.
                    kind = str(record["error"]).split(":", 1)[0][:80]
                    message = f"Error: {label} raised {kind}{line}. {tally}"
                    return Outcome(reward, Verdict.ERROR, message, info=info, hint=message)
                want = _short_repr(decode_value(expected[i]))
                hint = f"Error: {label} raised {record['error']}{line}. {tally}"
                return Outcome(reward, Verdict.ERROR, f"Error: {label} raised {record['error']}{line}; expected "
                                                      f"{want}. {tally}", info=info, hint=hint)
            if record.get("value") != expected[i]:
                if not visible:
                    message = f"Incorrect: {label} returned a wrong value. {tally}"
                    return Outcome(reward, Verdict.INCORRECT, message, info=info, hint=message)
                got, want = decode_value(record.get("value")), decode_value(expected[i])
                kinds = ""
                if type(got) is not type(want):
                    kinds = f" ({_a(type(got).__name__)}, but {_a(type(want).__name__)} is expected)"
                hint = f"Incorrect: {label} returned {_short_repr(got)}{kinds}, not the value the prompt gives. {tally}"
                return Outcome(reward, Verdict.INCORRECT, f"Incorrect: {label} returned "
                                                          f"{_short_repr(got)}{kinds}; expected {_short_repr(want)}. "
                                                          f"{tally}", info=info, hint=hint)
        return self._unfinished(result, f"{name}(...)", total, tally, reward, info)

    def _unfinished(self, result: SandboxResult, call: str, index: int, tally: str, reward: float,
                    info: dict[str, Any]) -> Outcome:
        """The run stopped before reporting test ``index``: say why, from the sandbox's status (no hidden input)."""
        where = f"during test {index + 1}, {call}" if index < info["tests_total"] else "after the last test"
        if call.startswith("hidden test"):
            where = f"during {call}"
        if result.status == "timeout":
            message = f"Timeout: the tests did not finish within {self.config.timeout_s:g} s (stuck {where}). {tally}"
            return Outcome(reward, Verdict.TIMEOUT, message, info=info, hint=message)
        if result.status == "memory":
            message = f"Error: your code ran out of memory {where} (limit {self.config.memory_mb} MB). {tally}"
            return Outcome(reward, Verdict.ERROR, message, info=info, hint=message)
        if result.status == "output_limit":
            message = f"Error: your code printed too much output {where}. {tally}"
            return Outcome(reward, Verdict.ERROR, message, info=info, hint=message)
        if result.status == "sandbox_error":
            return Outcome(0.0, Verdict.ERROR, f"Error: the sandbox could not run the tests ({result.error}).",
                           info=info, hint="Error: the sandbox could not run the tests (not a fault of your code).")
        # The sandbox's one-line error is the program's last stderr line, which could quote a hidden input.
        detail = result.error if index < min(self.config.n_examples, info["tests_total"]) else ""
        detail = detail or f"exit code {result.returncode}"
        message = f"Error: the program stopped {where} before reporting a result ({result.status}: {detail}). {tally}"
        return Outcome(reward, Verdict.ERROR, message, info=info, hint=message)


def _records(stdout: str, marker: str) -> list[dict[str, Any]]:
    return [record for record in marked_json(stdout, marker) if isinstance(record, dict)]


register_env(
    "fst/CodeGen-v0",
    CodeGenEnv,
    EnvCard(
        summary="Write a Python function from a generated spec (list transforms, string manipulation, sequences, "
                "counting); graded by hidden unit tests run in the sandbox.",
        reward_range=(0.0, 1.0),
        feedback_kinds=("correct", "incorrect", "format_error", "error", "timeout"),
        difficulty_knobs={"difficulty": "easy | medium (default) | hard: which spec variants are drawn",
                          "families": ", ".join(FAMILIES), "n_tests": "tests per problem (default 8)",
                          "n_examples": "tests shown in the prompt (default 2)",
                          "reward_mode": "all (default: 1 only if every test passes) | fraction"},
        splits=dict(SPLIT_SIZES),
        data_source="procedural: spec variants with random parameters (envs/_codegen_specs.py); expected outputs "
                    "from reference solutions; splits disjoint by prompt hash",
        licence="Apache-2.0 (generated by fst-env)",
        notes="One sandbox run per response (fst_env.sandbox: separate process, rlimits, pids cgroup, no network, "
              "a fresh read-only nodev/nosuid root holding only the interpreter and its libraries, private /tmp, "
              "uid nobody where the machine allows; info['sandbox_isolation'] "
              "lists what was in force). Results come back behind a per-run random marker and are compared "
              "outside the sandbox.",
    ),
)
