"""Procedural small Python programs for ``fst/CodeIO-v0``, plus the line tracer used for trace feedback.

A program is a chain of *steps* over one value: it starts from a parameter (an int ``n``, a list ``xs`` of
ints or a string ``s``) and each step computes a new variable from the previous one. Each step template has
an input type, an output type and the constructs it uses (``arithmetic``, ``loops``, ``conditionals``,
``lists``, ``strings``, ``functions``); a program only uses templates whose constructs are all enabled.
Templates keep values bounded (``%``, ``//``, bounded ranges), so every program finishes at once on its own
input; ``generate_program`` still runs the result (trusted code, in-process) and redraws anything that
raises or prints an unreadably long answer.

Two renderings share one chain: the *output* form sets the parameter to a literal and prints the result;
the *input* form reads the parameter from stdin (``int(input())``, ``input().split()``, ``input()``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

CONSTRUCTS: tuple[str, ...] = ("arithmetic", "loops", "conditionals", "lists", "strings", "functions")

# Disjoint from each other, from the helper names and from the templates' own loop variables (i, v, ch, ...).
_NAMES = {"int": ["a", "b", "c", "d", "e", "k", "m", "p", "j", "f"],
          "list": ["ys", "zs", "us", "vs", "ws", "qs", "rs", "ts", "ps", "ns"],
          "str": ["t", "u", "w", "r", "q", "x", "y", "z", "o", "word"]}
_PARAM = {"int": "n", "list": "xs", "str": "s"}
_WORDS = ("banana", "rocket", "puzzle", "garden", "kitten", "orange", "silver", "window", "planet", "marble",
          "python", "lemon", "tiger", "cactus", "meadow", "violet")


@dataclass(frozen=True)
class _Template:
    name: str
    in_type: str
    out_type: str
    constructs: frozenset[str]
    render: Callable[[random.Random, str, str, _Context], list[str]]


class _Context:
    """Per-program state shared by the templates: helper functions defined so far."""

    def __init__(self) -> None:
        self.helpers: list[list[str]] = []
        self.helper_names = iter(["g", "h", "step", "mix", "fold", "twist", "bump", "shift"])

    def helper(self, body: Callable[[str], list[str]]) -> str:
        name = next(self.helper_names)
        self.helpers.append(body(name))
        return name


def _t(name: str, in_type: str, out_type: str, constructs: str,
       render: Callable[[random.Random, str, str, _Context], list[str]]) -> _Template:
    return _Template(name, in_type, out_type, frozenset(constructs.split()), render)


def _k(rng: random.Random, low: int = 2, high: int = 9) -> int:
    return rng.randint(low, high)


# Each render function returns the step's lines (top level, no indentation); ``cur`` is the variable read,
# ``new`` the variable the step defines.
_TEMPLATES: list[_Template] = [
    # ----- int -> int
    _t("affine", "int", "int", "arithmetic",
       lambda r, cur, new, cx: [f"{new} = ({cur} * {_k(r)} + {_k(r, 1, 20)}) % {_k(r, 11, 97)}"]),
    _t("divmod", "int", "int", "arithmetic",
       lambda r, cur, new, cx: [f"{new} = {cur} // {_k(r, 2, 5)} + {cur} % {_k(r, 3, 7)}"]),
    _t("square_mod", "int", "int", "arithmetic",
       lambda r, cur, new, cx: [f"{new} = ({cur} * {cur} - {_k(r, 1, 9)}) % {_k(r, 13, 50)}"]),
    _t("parity_branch", "int", "int", "arithmetic conditionals",
       lambda r, cur, new, cx: [f"if {cur} % {(d := _k(r, 2, 4))} == 0:",
                                f"    {new} = {cur} // {d}",
                                "else:",
                                f"    {new} = {cur} * {_k(r, 2, 3)} + {_k(r, 1, 5)}"]),
    _t("threshold", "int", "int", "arithmetic conditionals",
       lambda r, cur, new, cx: [f"{new} = {cur} - {_k(r, 3, 9)} if {cur} > {_k(r, 5, 25)} "
                                f"else {cur} + {_k(r, 2, 8)}"]),
    _t("clamp", "int", "int", "conditionals",
       lambda r, cur, new, cx: [f"{new} = {cur}",
                                f"if {new} > {(hi := _k(r, 10, 40))}:",
                                f"    {new} = {hi}",
                                f"elif {new} < {(lo := _k(r, 0, 5))}:",
                                f"    {new} = {lo}"]),
    _t("accumulate", "int", "int", "arithmetic loops",
       lambda r, cur, new, cx: [f"{new} = {cur} % {_k(r, 5, 12)}",
                                f"for i in range({_k(r, 2, 5)}):",
                                f"    {new} = ({new} * {_k(r, 2, 4)} + i) % {_k(r, 17, 101)}"]),
    _t("sum_range", "int", "int", "arithmetic loops",
       lambda r, cur, new, cx: [f"{new} = 0",
                                f"for i in range(1, {cur} % {_k(r, 5, 9)} + 2):",
                                f"    {new} += i * {_k(r, 1, 4)}"]),
    _t("halve_loop", "int", "int", "arithmetic loops",
       lambda r, cur, new, cx: [f"{new} = {cur}",
                                "steps = 0",
                                f"while {new} > {_k(r, 1, 6)}:",
                                f"    {new} = {new} // 2",
                                "    steps += 1",
                                f"{new} = {new} + steps * {_k(r, 2, 5)}"]),
    _t("odd_even_loop", "int", "int", "arithmetic loops conditionals",
       lambda r, cur, new, cx: [f"{new} = 0",
                                f"for i in range({cur} % {_k(r, 4, 8)} + 2):",
                                "    if i % 2 == 0:",
                                f"        {new} += i + {_k(r, 1, 5)}",
                                "    else:",
                                f"        {new} -= {_k(r, 1, 3)}"]),
    _t("helper_affine", "int", "int", "functions arithmetic",
       lambda r, cur, new, cx: [f"{new} = {cx.helper(lambda g: _helper_affine(r, g))}({cur}) % {_k(r, 20, 99)}"]),
    _t("helper_recursive", "int", "int", "functions conditionals arithmetic",
       lambda r, cur, new, cx: [f"{new} = {cx.helper(lambda g: _helper_recursive(r, g))}({cur} % {_k(r, 30, 200)})"]),
    # ----- int -> list
    _t("range_list", "int", "list", "lists",
       lambda r, cur, new, cx: [f"{new} = list(range({cur} % {_k(r, 3, 6)}, {cur} % {_k(r, 3, 6)} + {_k(r, 3, 6)}))"]),
    _t("comprehension_from_int", "int", "list", "lists loops",
       lambda r, cur, new, cx: [f"{new} = [({cur} + i * {_k(r, 2, 7)}) % {_k(r, 7, 13)} "
                                f"for i in range({_k(r, 3, 6)})]"]),
    _t("digits", "int", "list", "lists strings",
       lambda r, cur, new, cx: [f"{new} = [int(ch) for ch in str({cur} * {_k(r, 3, 99)})]"]),
    # ----- list -> list
    _t("sorted", "list", "list", "lists", lambda r, cur, new, cx: [f"{new} = sorted({cur})"]),
    _t("reverse_slice", "list", "list", "lists", lambda r, cur, new, cx: [f"{new} = {cur}[::-1]"]),
    _t("every_other", "list", "list", "lists",
       lambda r, cur, new, cx: [f"{new} = {cur}[{_k(r, 0, 1)}::2] + [{_k(r, 0, 9)}]"]),
    _t("rotate", "list", "list", "lists",
       lambda r, cur, new, cx: [f"{new} = {cur}[{(i := _k(r, 1, 3))}:] + {cur}[:{i}]"]),
    _t("map_list", "list", "list", "lists loops arithmetic",
       lambda r, cur, new, cx: [f"{new} = [v * {_k(r, 2, 5)} % {_k(r, 7, 11)} for v in {cur}]"]),
    _t("filter_list", "list", "list", "lists loops conditionals",
       lambda r, cur, new, cx: [f"{new} = [v for v in {cur} if v % {_k(r, 2, 3)} != 0] + [{_k(r, 0, 9)}]"]),
    _t("append_loop", "list", "list", "lists loops",
       lambda r, cur, new, cx: [f"{new} = []",
                                f"for v in {cur}:",
                                f"    {new}.append(v + len({new}) * {_k(r, 1, 3)})"]),
    _t("prefix_sums", "list", "list", "lists loops arithmetic",
       lambda r, cur, new, cx: [f"{new} = []",
                                "total = 0",
                                f"for v in {cur}:",
                                "    total += v",
                                f"    {new}.append(total % {_k(r, 10, 30)})"]),
    _t("swap_loop", "list", "list", "lists loops conditionals",
       lambda r, cur, new, cx: [f"{new} = list({cur})",
                                f"for i in range(len({new}) - 1):",
                                f"    if {new}[i] > {new}[i + 1]:",
                                f"        {new}[i], {new}[i + 1] = {new}[i + 1], {new}[i]"]),
    _t("helper_map", "list", "list", "functions lists loops",
       lambda r, cur, new, cx: [f"{new} = [{cx.helper(lambda g: _helper_affine(r, g))}(v) % {_k(r, 10, 50)} "
                                f"for v in {cur}]"]),
    # ----- list -> int
    _t("sum", "list", "int", "lists", lambda r, cur, new, cx: [f"{new} = sum({cur}) + len({cur})"]),
    _t("max_min", "list", "int", "lists arithmetic",
       lambda r, cur, new, cx: [f"{new} = max({cur} + [0]) - min({cur} + [{_k(r, 0, 3)}])"]),
    _t("count_value", "list", "int", "lists",
       lambda r, cur, new, cx: [f"{new} = {cur}.count({_k(r, 0, 9)}) * {_k(r, 2, 9)} + len({cur})"]),
    _t("cond_sum_loop", "list", "int", "lists loops conditionals",
       lambda r, cur, new, cx: [f"{new} = 0",
                                f"for v in {cur}:",
                                f"    if v > {_k(r, 1, 6)}:",
                                f"        {new} += v",
                                "    else:",
                                f"        {new} -= {_k(r, 1, 2)}"]),
    _t("index_weighted", "list", "int", "lists loops arithmetic",
       lambda r, cur, new, cx: [f"{new} = sum(i * v for i, v in enumerate({cur})) % {_k(r, 50, 150)}"]),
    # ----- int -> str
    _t("repeat_word", "int", "str", "strings arithmetic",
       lambda r, cur, new, cx: [f"{new} = \"{r.choice(_WORDS)[:4]}\" * ({cur} % 3 + 1)"]),
    _t("slice_word", "int", "str", "strings",
       lambda r, cur, new, cx: [f"{new} = \"{r.choice(_WORDS)}\"[{cur} % 4:]"]),
    _t("int_to_str", "int", "str", "strings", lambda r, cur, new, cx: [f"{new} = str({cur}) + \"{r.choice('xyz')}\""]),
    # ----- str -> str
    _t("reverse_str", "str", "str", "strings", lambda r, cur, new, cx: [f"{new} = {cur}[::-1]"]),
    _t("upper_slice", "str", "str", "strings",
       lambda r, cur, new, cx: [f"{new} = {cur}[:{(i := _k(r, 1, 3))}].upper() + {cur}[{i}:]"]),
    _t("replace", "str", "str", "strings",
       lambda r, cur, new, cx: [f"{new} = {cur}.replace(\"{r.choice('aeiou')}\", \"{r.choice('xyz-')}\")"]),
    _t("sort_chars", "str", "str", "strings", lambda r, cur, new, cx: [f"{new} = \"\".join(sorted({cur}))"]),
    _t("vowel_loop", "str", "str", "strings loops conditionals",
       lambda r, cur, new, cx: [f"{new} = \"\"",
                                f"for ch in {cur}:",
                                "    if ch in \"aeiou\":",
                                f"        {new} += ch.upper()",
                                "    else:",
                                f"        {new} = ch + {new}"]),
    _t("join_every_other", "str", "str", "strings loops",
       lambda r, cur, new, cx: [f"{new} = \"{r.choice('-.:')}\".join(ch for ch in {cur}[::2])"]),
    _t("helper_wrap", "str", "str", "functions strings",
       lambda r, cur, new, cx: [f"{new} = {cx.helper(lambda g: _helper_wrap(r, g))}({cur})"]),
    # ----- str -> int
    _t("str_len", "str", "int", "strings", lambda r, cur, new, cx: [f"{new} = len({cur}) * {_k(r, 2, 5)}"]),
    _t("count_char", "str", "int", "strings",
       lambda r, cur, new, cx: [f"{new} = {cur}.count(\"{r.choice('aeino')}\") + {_k(r, 1, 5)}"]),
    _t("ord_sum", "str", "int", "strings loops arithmetic",
       lambda r, cur, new, cx: [f"{new} = sum(ord(ch) % {_k(r, 5, 11)} for ch in {cur})"]),
    _t("find_char", "str", "int", "strings",
       lambda r, cur, new, cx: [f"{new} = {cur}.find(\"{r.choice('aeiou')}\") + {_k(r, 1, 4)}"]),
    # ----- str -> list, list -> str
    _t("letter_values", "str", "list", "strings lists loops",
       lambda r, cur, new, cx: [f"{new} = [ord(ch) - ord(\"a\") + 1 for ch in {cur} if ch.isalpha()]"]),
    _t("letters_of", "list", "str", "strings lists loops",
       lambda r, cur, new, cx: [f"{new} = \"\".join(\"abcdefghij\"[v % 10] for v in {cur})"]),
    _t("csv", "list", "str", "strings lists loops",
       lambda r, cur, new, cx: [f"{new} = \",\".join(str(v) for v in {cur})"]),
]


def _helper_affine(rng: random.Random, name: str) -> list[str]:
    return [f"def {name}(v):", f"    return v * {_k(rng, 2, 7)} + {_k(rng, 1, 9)}"]


def _helper_recursive(rng: random.Random, name: str) -> list[str]:
    return [f"def {name}(v):",
            f"    if v < {(base := _k(rng, 2, 6))}:",
            "        return v",
            f"    return {name}(v // {_k(rng, 2, 3)}) + v % {base}"]


def _helper_wrap(rng: random.Random, name: str) -> list[str]:
    left, right = rng.choice(["<>", "[]", "()", "{}"])
    return [f"def {name}(text):", f"    return \"{left}\" + text[{_k(rng, 0, 2)}:] + \"{right}\""]


@dataclass(frozen=True)
class GeneratedProgram:
    """One generated program in both renderings, with its input and its (trusted, precomputed) output."""

    source: str  # output mode: sets the parameter to a literal and prints the result
    stdin_source: str  # input mode: reads the parameter from stdin
    stdin: str  # the input the program was generated with, as typed on stdin (no trailing newline)
    output: str  # what both renderings print on that input (trailing newline stripped)
    param_type: str
    constructs: tuple[str, ...]
    steps: int


def _literal(param_type: str, rng: random.Random) -> tuple[str, str]:
    """A parameter value as (Python literal, stdin text)."""
    if param_type == "int":
        value = rng.randint(0, 40)
        return str(value), str(value)
    if param_type == "list":
        values = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
        return repr(values), " ".join(map(str, values))
    word = rng.choice(_WORDS)[: rng.randint(4, 6)]
    return repr(word), word


def _reader(param_type: str) -> str:
    return {"int": "int(input())", "list": "[int(t) for t in input().split()]", "str": "input().strip()"}[param_type]


def generate_program(rng: random.Random, constructs: frozenset[str], min_steps: int, max_steps: int,
                     use_function: bool | None = None, max_output_chars: int = 80) -> GeneratedProgram:
    """Draw one program using only ``constructs`` with ``min_steps..max_steps`` steps (deterministic in ``rng``)."""
    usable = [t for t in _TEMPLATES if t.constructs <= constructs]
    if not usable:
        raise ValueError(f"no program template uses only the constructs {sorted(constructs)}; choose from "
                         f"{list(CONSTRUCTS)} (e.g. add 'arithmetic', 'lists' or 'strings')")
    starts = sorted({t.in_type for t in usable})
    for _ in range(200):
        program = _draw(rng, usable, starts, constructs, min_steps, max_steps, use_function)
        if program is not None and len(program.output) <= max_output_chars and program.output.strip():
            return program
    raise RuntimeError(f"could not draw a program for constructs {sorted(constructs)} with {min_steps}.."
                       f"{max_steps} steps in 200 tries")


def _draw(rng: random.Random, usable: list[_Template], starts: list[str], constructs: frozenset[str],
          min_steps: int, max_steps: int, use_function: bool | None) -> GeneratedProgram | None:
    param_type = rng.choice(starts)
    n_steps = rng.randint(min_steps, max_steps)
    ctx = _Context()
    counters = {kind: 0 for kind in _NAMES}
    cur, cur_type = _PARAM[param_type], param_type
    body: list[str] = []
    used: set[str] = set()
    for _ in range(n_steps):
        options = [t for t in usable if t.in_type == cur_type]
        if not options:
            break
        template = rng.choice(options)
        new_type = template.out_type
        new = _NAMES[new_type][counters[new_type] % len(_NAMES[new_type])]
        counters[new_type] += 1
        body += template.render(rng, cur, new, ctx)
        used |= template.constructs
        cur, cur_type = new, new_type
    if len(used) == 0 or cur == _PARAM[param_type]:
        return None
    wrap = use_function if use_function is not None else ("functions" in constructs and rng.random() < 0.5)
    literal, stdin_text = _literal(param_type, rng)
    param = _PARAM[param_type]
    helpers = [line for helper in ctx.helpers for line in [*helper, ""]]
    if wrap:
        used.add("functions")
        func = [f"def solve({param}):", *("    " + line for line in body), f"    return {cur}", ""]
        source = [*helpers, *func, f"print(solve({literal}))"]
        stdin_source = [*helpers, *func, f"{param} = {_reader(param_type)}", f"print(solve({param}))"]
    else:
        source = [*helpers, f"{param} = {literal}", *body, f"print({cur})"]
        stdin_source = [*helpers, f"{param} = {_reader(param_type)}", *body, f"print({cur})"]
    text = "\n".join(source) + "\n"
    try:
        output = run_trusted(text)
    except Exception:  # a drawn chain can divide by zero or index an empty list: draw another
        return None
    return GeneratedProgram(text, "\n".join(stdin_source) + "\n", stdin_text, output, param_type,
                            tuple(c for c in CONSTRUCTS if c in used), n_steps)


def run_trusted(source: str, stdin: str = "") -> str:
    """Run a program *we generated* in-process and return its stdout without the trailing newline."""
    lines = iter(stdin.splitlines())
    printed: list[str] = []

    def fake_print(*args: object, sep: str = " ", end: str = "\n") -> None:
        printed.append(sep.join(str(a) for a in args) + end)

    def fake_input(prompt: str = "") -> str:
        return next(lines)

    exec(compile(source, "<program>", "exec"), {"__name__": "__main__", "print": fake_print, "input": fake_input})
    return "".join(printed).rstrip("\n")


# The tracer runs both in-process (on our own input) and inside the sandbox (on a model's input), so it is kept
# as source text. It records, after each executed line of the program, the variables that line changed.
TRACER_SOURCE = r'''
def _fst_trace(source, namespace, max_events=400):
    import sys
    _SKIP = ("<listcomp>", "<genexpr>", "<setcomp>", "<dictcomp>", "<lambda>")  # one-line loops: too noisy
    events = []
    state = {}

    def snapshot(frame):
        out = {}
        for key, value in frame.f_locals.items():
            if key.startswith("_") or callable(value) or type(value).__name__ == "module":
                continue
            text = repr(value)
            out[key] = text if len(text) <= 60 else text[:57] + "..."
        return out

    def record(frame):
        line, before = state.get(id(frame), (None, {}))
        now = snapshot(frame)
        changed = [k + " = " + v for k, v in now.items() if before.get(k) != v]
        if changed and line is not None and len(events) < max_events:
            scope = "" if frame.f_code.co_name == "<module>" else " (in " + frame.f_code.co_name + ")"
            events.append("after line " + str(line) + scope + ": " + ", ".join(changed))
        state[id(frame)] = (frame.f_lineno, now)

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != "<program>" or frame.f_code.co_name in _SKIP:
            return None
        if event == "call":
            state[id(frame)] = (None, snapshot(frame))
        elif event in ("line", "return"):
            record(frame)
            if event == "return":
                state.pop(id(frame), None)
        return tracer

    code = compile(source, "<program>", "exec")
    sys.settrace(tracer)
    try:
        exec(code, namespace)
    finally:
        sys.settrace(None)
    return events
'''

_TRACER_NS: dict = {}
exec(TRACER_SOURCE, _TRACER_NS)


def trace_trusted(source: str, stdin: str = "") -> list[str]:
    """Line-by-line variable changes of a program *we generated*, run in-process on trusted input."""
    lines = iter(stdin.splitlines())
    namespace = {"__name__": "__main__", "print": lambda *args, **kwargs: None,
                 "input": lambda prompt="": next(lines)}
    return _TRACER_NS["_fst_trace"](source, namespace)


def traced_program(source: str, marker: str) -> str:
    """A program that runs ``source`` (reading the real stdin) and then writes its trace to stderr after
    ``marker``: how the sandbox shows a model what the program did with the model's own input."""
    return (f"{TRACER_SOURCE}\n"
            "import json as _json, sys as _sys\n"
            "_events = []\n"
            "try:\n"
            f"    _events = _fst_trace({source!r}, {{'__name__': '__main__'}})\n"
            "finally:\n"
            "    _sys.stdout.flush()\n"
            f"    _sys.stderr.write('\\n' + {marker!r} + _json.dumps(_events[:40]) + '\\n')\n")
