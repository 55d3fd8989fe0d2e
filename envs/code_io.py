"""``fst/CodeIO-v0``: read a small generated Python program and predict what it prints (or what input it needs).

``mode="output"``: the prompt shows a program with its input written in; the model predicts its stdout.
``mode="input"``: the program reads its input from stdin and the prompt shows what it printed; the model gives
an input that makes it print exactly that. Any such input is accepted: the answer is checked by running the
program on it in :mod:`fst_env.sandbox` (the model's input is untrusted; it can make the program loop or
fail, which the sandbox turns into a verdict).

Programs come from :mod:`fst_env.envs._codeio_programs` (templates with random parameters, deterministic in
the problem id; splits disjoint by prompt hash). Their reference outputs are computed in-process when the
problem is built: that code is ours, and bounded by construction.

Answers are read from the last ``<answer>...</answer>``, else the last fenced code block, else a final
``Output:`` / ``Input:`` line. Output mode compares printouts exactly: only trailing whitespace on each line
and blank lines around the answer are ignored, so ``20.0`` is not ``20`` and ``1`` is not ``True`` (a program
that prints one did not print the other); the feedback says where the two first differ and, when both parse
as the same Python value, that only the writing differs (e.g. float ``20.0`` vs int ``20``). Every outcome
carries a policy-visible ``hint`` that never holds the expected output or a working input.
``feedback_verbosity``: ``verdict`` (right or wrong only), ``expected``
(default: expected vs got) or ``trace`` (also the variables each line changed, on the reference input in
output mode and on the model's own input in input mode).
"""

from __future__ import annotations

import ast
import random
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from fst_env.cards import EnvCard, register_env
from fst_env.core import Outcome, Problem, TextEnv, Verdict
from fst_env.envs._codeio_programs import CONSTRUCTS, generate_program, trace_trusted, traced_program
from fst_env.envs._judging import marked_json
from fst_env.sandbox import SandboxResult, run_python
from fst_env.splits import ProceduralSplit

MODES: tuple[str, ...] = ("output", "input")
VERBOSITIES: tuple[str, ...] = ("verdict", "expected", "trace")
SPLIT_SIZES: dict[str, int] = {"train": 100_000, "validation": 1_000, "test": 1_000}

#: Difficulty presets: program length (steps) and constructs. Explicit knobs override them.
PRESETS: dict[str, dict[str, Any]] = {
    "easy": {"min_steps": 1, "max_steps": 2, "constructs": ("arithmetic", "conditionals", "lists", "strings")},
    "medium": {"min_steps": 2, "max_steps": 4, "constructs": CONSTRUCTS},
    "hard": {"min_steps": 4, "max_steps": 7, "constructs": CONSTRUCTS},
}

_TRACE_SHOWN = 12
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True)
class CodeIOConfig:
    """What CodeIO-v0 asks and how it answers: mode, difficulty knobs, feedback detail and checking limits.

    ``min_steps``/``max_steps``/``constructs`` default to the ``difficulty`` preset. ``timeout_s`` bounds each
    sandboxed run in input mode; ``max_answer_chars`` bounds the extracted answer.
    """

    mode: str = "output"
    difficulty: str = "medium"
    constructs: tuple[str, ...] | None = None
    min_steps: int | None = None
    max_steps: int | None = None
    feedback_verbosity: str = "expected"
    data_seed: int = 0
    timeout_s: float = 2.0
    max_answer_chars: int = 2000
    split_sizes: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))

    def resolved(self) -> tuple[frozenset[str], int, int]:
        """The constructs and step range actually used (preset values filled in)."""
        preset = PRESETS[self.difficulty]
        constructs = frozenset(self.constructs if self.constructs is not None else preset["constructs"])
        low = self.min_steps if self.min_steps is not None else preset["min_steps"]
        high = self.max_steps if self.max_steps is not None else max(preset["max_steps"], low)
        return constructs, low, high

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.mode not in MODES:
            raise ValueError(f"CodeIO-v0: mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.difficulty not in PRESETS:
            raise ValueError(f"CodeIO-v0: difficulty must be one of {list(PRESETS)}, got {self.difficulty!r}")
        if self.feedback_verbosity not in VERBOSITIES:
            raise ValueError(f"CodeIO-v0: feedback_verbosity must be one of {list(VERBOSITIES)}, "
                             f"got {self.feedback_verbosity!r}")
        if self.constructs is not None:
            if isinstance(self.constructs, str) or not self.constructs:
                raise ValueError(f"CodeIO-v0: constructs must be a non-empty tuple of names from {list(CONSTRUCTS)}, "
                                 f"got {self.constructs!r}")
            unknown = sorted(set(self.constructs) - set(CONSTRUCTS))
            if unknown:
                raise ValueError(f"CodeIO-v0: unknown constructs {unknown}; choose from {list(CONSTRUCTS)}")
        for name in ("min_steps", "max_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12):
                raise ValueError(f"CodeIO-v0: {name} must be an int in [1, 12], got {value!r}")
        constructs, low, high = self.resolved()
        if low > high:
            raise ValueError(f"CodeIO-v0: min_steps ({low}) must not exceed max_steps ({high})")
        if isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int):
            raise ValueError(f"CodeIO-v0: data_seed must be an int, got {self.data_seed!r}")
        if not isinstance(self.timeout_s, (int, float)) or not 0.1 <= self.timeout_s <= 60:
            raise ValueError(f"CodeIO-v0: timeout_s must be in [0.1, 60], got {self.timeout_s!r}")
        if isinstance(self.max_answer_chars, bool) or not isinstance(self.max_answer_chars, int) \
                or self.max_answer_chars < 16:
            raise ValueError(f"CodeIO-v0: max_answer_chars must be an int >= 16, got {self.max_answer_chars!r}")
        for split, size in self.split_sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"CodeIO-v0: split_sizes[{split!r}] must be an int >= 1, got {size!r}")
        generate_program(random.Random(0), constructs, low, high)  # raises if no template fits the constructs


def _prompt(mode: str, program: str, output: str) -> str:
    fence = "```python\n" + program + "```"
    if mode == "output":
        return ("What does this Python program print?\n\n" + fence + "\n\n"
                "Work it out, then give exactly what it prints between <answer> and </answer> tags, for example "
                "<answer>42</answer>. (A final line 'Output: ...' is also accepted.)")
    return ("This Python program reads one line from standard input:\n\n" + fence + "\n\n"
            "Find an input for which it prints exactly:\n\n```\n" + output + "\n```\n\n"
            "Give the input line (exactly what you would type on stdin, e.g. 7, or 3 1 4, or hello) between "
            "<answer> and </answer> tags. Any input that produces this output is accepted. (A final line "
            "'Input: ...' is also accepted.)")


def _build_problem(config: CodeIOConfig, index: int) -> Problem:
    constructs, low, high = config.resolved()
    rng = random.Random(f"codeio|{config.data_seed}|{index}")  # str seeds hash deterministically (not by hash())
    program = generate_program(rng, constructs, low, high)
    source = program.source if config.mode == "output" else program.stdin_source
    answer = program.output if config.mode == "output" else program.stdin
    return Problem(prompt=_prompt(config.mode, source, program.output), answer=answer,
                   metadata={"mode": config.mode, "program": source, "output": program.output,
                             "reference_input": program.stdin, "param_type": program.param_type,
                             "constructs": list(program.constructs), "steps": program.steps})


@dataclass(frozen=True)
class _Extracted:
    text: str | None
    method: str


def extract_answer(response: str, mode: str) -> _Extracted:
    """The answer text: last <answer> tag, else last fenced block, else a final 'Output:'/'Input:' line."""
    tags = _ANSWER_TAG.findall(response)
    if tags:
        return _Extracted(_strip_block(tags[-1]), "answer tag")
    fences = _FENCE.findall(response)
    if fences:
        return _Extracted(_strip_block(fences[-1]), "fenced block")
    label = "output" if mode == "output" else "input"
    lines = re.findall(rf"^[ \t*>#-]*{label}[ \t*]*:[ \t]*(.*)$", response, re.IGNORECASE | re.MULTILINE)
    if lines:
        return _Extracted(_strip_block(lines[-1]), f"'{label.title()}:' line")
    return _Extracted(None, "none")


def _strip_block(text: str) -> str:
    text = text.strip("\n")
    inner = _FENCE.fullmatch(text.strip())
    if inner:  # an answer tag that wraps a fenced block
        text = inner.group(1)
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip()


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))


def first_difference(got: str, expected: str) -> tuple[int, int]:
    """Where two printouts first differ: ``(line, column)``, both 1-based (column = 1 + common prefix length)."""
    got_lines, expected_lines = got.split("\n"), expected.split("\n")
    for number, (a, b) in enumerate(zip(got_lines, expected_lines, strict=False), start=1):
        if a != b:
            column = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            return number, column + 1
    return min(len(got_lines), len(expected_lines)) + 1, 1


def _where(got: str, expected: str, whose: str) -> str:
    """The policy-safe account of where ``got`` leaves ``expected`` (positions and line counts only)."""
    line, column = first_difference(got, expected)
    got_n, expected_n = got.count("\n") + 1, expected.count("\n") + 1
    if line > min(got_n, expected_n):
        more = "more" if got_n > expected_n else "fewer"
        return f"{whose} has {more} lines than the real output (the first {line - 1} match)"
    return f"{whose} differs from the real output at line {line}, character {column}"


def _kind(text: str) -> str | None:
    """The Python type name of a printout that is one literal (``int``, ``float``, ``bool``...), else None."""
    if len(text) > 2000:
        return None  # never hand a huge answer to the parser
    try:
        return type(ast.literal_eval(text)).__name__
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _written_differently(got: str, expected: str) -> str:
    """For the learner: a note when both printouts parse as equal values that are written or typed differently."""
    got_kind, expected_kind = _kind(got), _kind(expected)
    if got_kind is None or expected_kind is None:
        return ""
    try:
        same = ast.literal_eval(got) == ast.literal_eval(expected)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ""
    if not same:
        return f" (you wrote a {got_kind}, the program prints a {expected_kind})" if got_kind != expected_kind else ""
    if got_kind != expected_kind:
        return (f" The values are equal but of different types: your {got_kind} is printed differently from the "
                f"program's {expected_kind}; the printout must match exactly.")
    return " The values are equal but written differently (spacing, quotes or form); the printout must match exactly."


def _show(text: str, limit: int = 200) -> str:
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return "`" + text.replace("\n", "\\n") + "`"


def _trace_text(events: list[str]) -> str:
    if not events:
        return ""
    shown = events[:_TRACE_SHOWN]
    more = f" ... ({len(events) - _TRACE_SHOWN} more steps)" if len(events) > _TRACE_SHOWN else ""
    return " Trace (variables each line changed): " + "; ".join(shown) + more + "."


class CodeIOEnv(TextEnv):
    """Single-turn code reasoning: predict a generated program's output, or an input that yields an output."""

    def __init__(self, split: str = "train", *, mode: str = "output", difficulty: str = "medium",
                 constructs: tuple[str, ...] | list[str] | None = None, min_steps: int | None = None,
                 max_steps: int | None = None, feedback_verbosity: str = "expected", data_seed: int = 0,
                 timeout_s: float = 2.0, max_answer_chars: int = 2000, **kwargs: Any) -> None:
        self.config = CodeIOConfig(mode, difficulty, tuple(constructs) if constructs is not None else None,
                                   min_steps, max_steps, feedback_verbosity, data_seed, timeout_s, max_answer_chars)
        self.config.validate()
        super().__init__(split, **kwargs)
        self.problems = ProceduralSplit(lambda index: _build_problem(self.config, index),
                                         seed=data_seed, split=split, size=self.config.split_sizes[split])

    def oracle_response(self) -> str | None:
        """A response that scores 1 on the current problem (the reference output or input)."""
        if self.problem is None:
            return None
        return f"<answer>{self.problem.answer}</answer>"

    def judge(self, problem: Problem, response: str) -> Outcome:
        mode = problem.metadata["mode"]
        what = "output" if mode == "output" else "input"
        if not response.strip():
            message = f"Format error: the response is empty. Give the {what} between <answer> and </answer> tags."
            return Outcome(0.0, Verdict.FORMAT_ERROR, message, hint=message)
        found = extract_answer(response, mode)
        if found.text is None:
            message = (f"Format error: no answer found (no <answer>...</answer> tags, no fenced block and no "
                       f"'{what.title()}:' line). Give the {what} between <answer> and </answer> tags.")
            return Outcome(0.0, Verdict.FORMAT_ERROR, message, info={"extracted": None}, hint=message)
        if len(found.text) > self.config.max_answer_chars:
            message = (f"Format error: the extracted {what} has {len(found.text):,} characters, over the limit "
                       f"of {self.config.max_answer_chars:,}; the expected {what} is short.")
            return Outcome(0.0, Verdict.FORMAT_ERROR, message, info={"extracted": found.text[:200]}, hint=message)
        if mode == "output":
            return self._judge_output(problem, found)
        return self._judge_input(problem, found)

    def _judge_output(self, problem: Problem, found: _Extracted) -> Outcome:
        expected = problem.metadata["output"]
        got = _normalise(found.text or "")
        info = {"extracted": got, "extraction": found.method, "expected": expected}
        if got == expected:  # exact: a different printout is a different output, whatever value it parses to
            return Outcome(1.0, Verdict.CORRECT, f"Correct: the program prints {_show(expected)}.", info=info,
                           hint="Correct: your predicted output matches the program's exactly.")
        where = _where(got, expected, "Your predicted output")
        hint = f"Incorrect: {where[0].lower() + where[1:]}."
        info["first_difference"] = first_difference(got, expected)
        verbosity = self.config.feedback_verbosity
        if verbosity == "verdict":
            return Outcome(0.0, Verdict.INCORRECT, f"Incorrect: the program does not print {_show(got)}.",
                           info=info, hint=hint)
        feedback = (f"Incorrect: you predicted {_show(got)} but the program prints {_show(expected)}; "
                    f"{where[0].lower()}{where[1:]}.{_written_differently(got, expected)}")
        if verbosity == "trace":
            feedback += _trace_text(trace_trusted(problem.metadata["program"]))
        return Outcome(0.0, Verdict.INCORRECT, feedback, info=info, hint=hint)

    def _judge_input(self, problem: Problem, found: _Extracted) -> Outcome:
        target = problem.metadata["output"]
        given = (found.text or "").split("\n")[0]
        info: dict[str, Any] = {"extracted": given, "extraction": found.method, "expected": target}
        verbosity = self.config.feedback_verbosity
        marker = "FST-TRACE-" + secrets.token_hex(8)
        program = problem.metadata["program"]
        source = traced_program(program, marker) if verbosity == "trace" else program
        result = run_python(source, stdin=given + "\n", timeout_s=self.config.timeout_s, memory_mb=256,
                            max_output_bytes=64 << 10)
        info["sandbox_status"] = result.status
        info["sandbox_isolation"] = list(result.isolation)
        trace = _trace_text(_read_trace(result, marker)) if verbosity == "trace" else ""
        reference = problem.metadata["reference_input"]
        goal = "" if verbosity == "verdict" else (f" The target output is {_show(target)}; one input that works is "
                                                   f"{_show(reference)}.")
        if result.status in ("timeout", "memory", "output_limit"):
            verdict = Verdict.TIMEOUT if result.status == "timeout" else Verdict.INCORRECT
            return Outcome(0.0, verdict, f"Incorrect: with input {_show(given)} the program does not finish "
                                         f"normally ({result.error}).{goal}{trace}", info=info,
                           hint=f"Incorrect: with your input the program does not finish normally ({result.status}).")
        if result.status == "sandbox_error":
            return Outcome(0.0, Verdict.ERROR, f"Error: the input could not be checked ({result.error}).", info=info,
                           hint="Error: your input could not be checked (a fault of the checker, not of the input).")
        if result.status != "ok":
            return Outcome(0.0, Verdict.INCORRECT, f"Incorrect: with input {_show(given)} the program fails: "
                                                   f"{_program_error(result)}.{goal}{trace}", info=info,
                           hint=f"Incorrect: with your input the program fails: {_program_error(result)[:200]}.")
        printed = _normalise(result.stdout)
        info["printed"] = printed
        if printed == target:
            return Outcome(1.0, Verdict.CORRECT, f"Correct: with input {_show(given)} the program prints "
                                                 f"{_show(target)}.", info=info,
                           hint="Correct: with your input the program prints the target output.")
        # The target is in the prompt, so positions in it reveal nothing new; the reference input stays out.
        hint = f"Incorrect: with your input the program's output {_where(printed, target, 'it')[3:]}"
        hint = hint.replace("the real output", "the target") + "."
        if verbosity == "verdict":
            return Outcome(0.0, Verdict.INCORRECT, f"Incorrect: with input {_show(given)} the program does not "
                                                   f"print the target output.", info=info, hint=hint)
        return Outcome(0.0, Verdict.INCORRECT, f"Incorrect: with input {_show(given)} the program prints "
                                               f"{_show(printed)}, not the target {_show(target)}. (One input that "
                                               f"works: {_show(reference)}.){trace}", info=info, hint=hint)


def _program_error(result: SandboxResult) -> str:
    line = ""
    for match in re.finditer(r'File "(?:<program>|[^"]*solution\.py)", line (\d+)', result.stderr):
        line = match.group(1)
    where = f" (line {line})" if line else ""
    return f"{result.error}{where}"


def _read_trace(result: SandboxResult, marker: str) -> list[str]:
    traces = marked_json(result.stderr, marker)
    events = traces[-1] if traces else None
    return [str(e) for e in events] if isinstance(events, list) else []


register_env(
    "fst/CodeIO-v0",
    CodeIOEnv,
    EnvCard(
        summary="Predict what a small generated Python program prints (mode='output'), or find an input that "
                "makes it print a given output (mode='input', checked by running it in the sandbox).",
        reward_range=(0.0, 1.0),
        feedback_kinds=("correct", "incorrect", "format_error", "timeout", "error"),
        difficulty_knobs={"difficulty": "easy | medium (default) | hard: presets for the knobs below",
                          "min_steps/max_steps": "program length in steps (1..12)",
                          "constructs": ", ".join(CONSTRUCTS),
                          "mode": "output (default) | input",
                          "feedback_verbosity": "verdict | expected (default) | trace"},
        splits=dict(SPLIT_SIZES),
        data_source="procedural: programs from templates with random parameters (envs/_codeio_programs.py); "
                    "splits disjoint by prompt hash",
        licence="Apache-2.0 (generated by fst-env)",
        notes="Input mode runs the program on the model's input in fst_env.sandbox: separate process, rlimits, "
              "pids cgroup, no network, a fresh read-only nodev/nosuid root holding only the interpreter and its "
              "libraries, private /tmp, uid nobody where the machine allows; each step's "
              "info['sandbox_isolation'] lists what was in force.",
    ),
)
