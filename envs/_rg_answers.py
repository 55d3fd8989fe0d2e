"""Which reasoning-gym scorers evaluate the answer text, and the input filters that keep code from them.

Private to ``fst_env.envs`` (the underscore keeps env discovery from taking it for a task family); the names are
re-exported by :mod:`fst_env.envs.reasoning_gym`, whose docstring gives the security model. Every rg task is
classified in :data:`SCORER_CLASSES` by what its scorer does with the answer (read from reasoning-gym's
source; reasons in :data:`SCORER_CLASS_REASONS`); :func:`answer_filter_error` rejects an answer that could carry
code or an expression bomb before it reaches a scorer that evaluates it. Pure Python: no rg import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: What each class of scorer does with the answer text, and so how it is guarded.
SCORER_CLASS_REASONS: dict[str, str] = {
    "arithmetic": "sympy parse_expr (eval) of an arithmetic expression: digits/operators filter, isolated worker",
    "symbolic": "sympy parse_expr (eval) of a formula: problem variables/functions, bounded powers, isolated worker",
    "sympy": "sympy imported and used on answers (numeric answers): numeric filter, isolated worker",
    "eval": "Python eval() of the answer text: list-literal characters only, isolated worker",
    "isolated": "exec of generated code, delegated scorers (composite) or a recursive parser: isolated worker",
    "plain": "string / number comparison in pure Python, linear in the (capped) answer: in-process",
}

#: Scorer classes scored in the isolated worker of :mod:`fst_env.judging`.
ISOLATED_CLASSES = frozenset({"arithmetic", "symbolic", "sympy", "eval", "isolated"})

#: Every reasoning_gym.factory.DATASETS task and its scorer class (see SCORER_CLASS_REASONS).
SCORER_CLASSES: dict[str, str] = {
    **dict.fromkeys(("countdown", "puzzle24"), "arithmetic"),
    **dict.fromkeys(("polynomial_multiplication", "simple_integration", "intermediate_integration"), "symbolic"),
    **dict.fromkeys(("polynomial_equations", "simple_equations", "advanced_geometry"), "sympy"),
    **dict.fromkeys(("n_queens", "string_insertion", "spiral_matrix", "binary_matrix"), "eval"),
    **dict.fromkeys(("codeio", "composite", "propositional_logic"), "isolated"),
    **dict.fromkeys((
        "ab", "acre", "aiw", "arc_1d", "arc_agi", "base_conversion", "basic_arithmetic", "bf", "binary_alternation",
        "bitwise_arithmetic", "boxnet", "caesar_cipher", "calendar_arithmetic", "chain_sum", "circuit_logic",
        "coin_flip", "color_cube_rotation", "complex_arithmetic", "count_bits", "count_primes", "course_schedule",
        "cryptarithm", "decimal_arithmetic", "decimal_chain_sum", "dice", "emoji_mystery", "family_relationships",
        "figlet_font", "fraction_simplification", "futoshiki", "game_of_life", "game_of_life_halting", "gcd",
        "graph_color", "group_anagrams", "gsm_symbolic", "isomorphic_strings", "jugs", "kakurasu", "knight_swap",
        "knights_knaves", "largest_island", "lcm", "leg_counting", "letter_counting", "letter_jumble",
        "list_functions", "mahjong_puzzle", "manipulate_matrix", "maze", "mini_sudoku", "modulo_grid",
        "needle_haystack", "number_filtering", "number_format", "number_sequence", "number_sorting",
        "palindrome_generation", "palindrome_partitioning", "path_star", "pool_matrix", "power_function",
        "prime_factorization", "products", "quantum_lock", "ransom_note", "rearc", "rectangle_count",
        "rotate_matrix", "rotten_oranges", "rubiks_cube", "rush_hour", "self_reference", "sentence_reordering",
        "shortest_path", "simple_geometry", "sokoban", "spell_backward", "string_manipulation", "string_splitting",
        "string_synthesis", "sudoku", "survo", "syllogism", "time_intervals", "tower_of_hanoi", "tsumego",
        "word_ladder", "word_sequence_reversal", "word_sorting", "zebra_puzzles"), "plain"),
}

#: Tasks whose scorer calls eval() on the answer text (kept for callers of the old name).
EVAL_SCORERS: frozenset[str] = frozenset(t for t, c in SCORER_CLASSES.items() if c == "eval")
_EVAL_SAFE = re.compile(r"[A-Za-z0-9_\s\[\],'\"-]*")
_ARITHMETIC_SAFE = re.compile(r"[0-9+\-*/()\s]*")
_NUMERIC_SAFE = re.compile(r"[0-9.,+\-/\s()\[\]eE=a-zA-Z_°√π]*")
_SYMBOL_TOKEN = re.compile(r"\s+|\d+(?:\.\d+)?|[A-Za-z_][A-Za-z_0-9]*|\*\*|[-+*/(),]")
#: Function and constant names an integration answer may use (sympy names that evaluate nothing dangerous).
_SYMBOLIC_NAMES = frozenset({"C", "E", "pi", "exp", "log", "ln", "sqrt", "sin", "cos", "tan", "cot", "sec", "csc",
                             "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "Abs",
                             "Integral"})  # rg stores some unsolved integrals as Integral(f, x) + C
_MAX_EXPRESSION_CHARS = 1000
_MAX_DIGITS = 12
_MAX_NESTING = 12


def scorer_class(task: str) -> str:
    """The scorer class of an rg task (a key of SCORER_CLASS_REASONS); unknown tasks are treated as isolated."""
    return SCORER_CLASSES.get(task, "isolated")


def answer_filter_error(task: str, answer: str, entry: Mapping[str, Any]) -> str | None:
    """Why ``answer`` may not reach ``task``'s scorer (it could carry code or an expression bomb), or None.

    Only tasks whose scorer evaluates the text are filtered; the rules admit every well-formed real answer.
    """
    kind = scorer_class(task)
    if task == "composite":  # a composite entry is scored by the sub-task it came from: apply that task's rule
        source = (entry.get("metadata") or {}).get("source_dataset")
        if isinstance(source, str) and source != "composite" and source in SCORER_CLASSES:
            return answer_filter_error(source, answer, entry)
        return None
    if kind == "eval":
        if not _EVAL_SAFE.fullmatch(answer):
            return ("holds characters that answers to this task never contain (only letters, digits, spaces, "
                    "brackets, commas, quotes and '-')")
        return None
    if kind not in ("arithmetic", "symbolic", "sympy"):
        return None
    if len(answer) > _MAX_EXPRESSION_CHARS:
        return f"is longer than {_MAX_EXPRESSION_CHARS} characters"
    if re.search(rf"\d{{{_MAX_DIGITS + 1},}}", answer):
        return f"holds a number with more than {_MAX_DIGITS} digits"
    if kind == "arithmetic":
        if not _ARITHMETIC_SAFE.fullmatch(answer) or "**" in answer:
            return "may use only digits, + - * / and parentheses"
        return _nesting_error(answer)
    if kind == "sympy":
        if not _NUMERIC_SAFE.fullmatch(answer) or "**" in answer or "__" in answer:
            return "may hold only numbers, letters, commas, signs, '/', '=' and brackets"
        if re.search(r"[A-Za-z_]\s*\(", answer):
            return "may not call functions"
        return _nesting_error(answer)
    metadata = entry.get("metadata") or {}
    names = set(_SYMBOLIC_NAMES)
    names.update(str(v) for v in metadata.get("variables") or ())
    if metadata.get("variable"):
        names.add(str(metadata["variable"]))
    tokens = []
    position = 0
    for match in _SYMBOL_TOKEN.finditer(answer):
        if match.start() != position:
            break
        position = match.end()
        if not match.group().isspace():
            tokens.append(match.group())
    if position != len(answer):
        return "may use only the problem's variables, digits, + - * / ** and parentheses"
    for i, token in enumerate(tokens):
        if (token[0].isalpha() or token[0] == "_") and token not in names:
            return f"uses the name {token[:40]!r}, which is not a variable or function of this problem"
        if token == "**":
            exponent = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not (exponent.isdigit() and len(exponent) <= 2):
                return "may raise only to a whole-number power below 100"
            if i + 2 < len(tokens) and tokens[i + 2] == "**":
                return "may not chain powers"
    return _nesting_error(answer)


def _nesting_error(answer: str) -> str | None:
    depth = 0
    for char in answer:
        depth += char == "("
        depth -= char == ")"
        if depth > _MAX_NESTING:
            return f"nests parentheses more than {_MAX_NESTING} deep"
    return None
