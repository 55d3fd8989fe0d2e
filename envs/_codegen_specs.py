"""Procedural function specs for ``fst/CodeGen-v0``: a spec text, a reference solution and test inputs.

Four families (``list_transform``, ``string_manip``, ``sequences``, ``counting``), each a handful of
variants with random parameters baked into the spec (a shift amount, a threshold, a modulus, ...). A variant
returns its function name, signature, description, reference solution *source* and an argument generator;
:func:`draw_spec` turns that into a :class:`Spec` with edge-case and random test inputs. The expected outputs
are computed by running the reference solution in-process (trusted code we wrote), never in the sandbox, so
the model's program never sees them.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAMILIES: tuple[str, ...] = ("list_transform", "string_manip", "sequences", "counting")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORDS = ("apple", "river", "stone", "cloud", "ember", "maple", "quiet", "tiger", "ocean", "pixel", "lunar", "frost",
          "amber", "zebra", "delta", "sonic", "kite", "moss", "orbit", "umbra", "ox", "sun", "cat", "harbor",
          "lantern", "avalanche", "lighthouse", "meadowlark", "tea", "granite")


@dataclass(frozen=True)
class Spec:
    """One CodeGen problem: what to write, a reference solution and the tests (inputs and expected outputs)."""

    family: str
    variant: str
    name: str
    signature: str
    description: str
    reference: str
    tests: tuple[tuple[Any, ...], ...]
    expected: tuple[Any, ...]


@dataclass(frozen=True)
class _Draft:
    name: str
    signature: str
    description: str
    reference: str
    random_args: Callable[[random.Random], tuple[Any, ...]]
    edge_args: tuple[tuple[Any, ...], ...]


def _ints(rng: random.Random, low: int = -5, high: int = 20, min_len: int = 0, max_len: int = 9) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(min_len, max_len))]


def _sentence(rng: random.Random, low: int = 1, high: int = 6) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


# ----------------------------------------------------------------------------------------------- list_transform
def _scale_filter(rng: random.Random) -> _Draft:
    k, c, t = rng.randint(2, 5), rng.randint(-3, 9), rng.randint(0, 10)
    keep, cond = rng.choice([(f"greater than {t}", f"x > {t}"), (f"at most {t}", f"x <= {t}"),
                             ("even", "x % 2 == 0"), ("odd", "x % 2 != 0")])
    return _Draft("scale_selected", "def scale_selected(xs: list[int]) -> list[int]:",
                  f"Return a new list with x * {k} + {c} for every element x of xs that is {keep}, in the original "
                  f"order; elements that are not {keep} are left out.",
                  f"def scale_selected(xs):\n    return [x * {k} + {c} for x in xs if {cond}]\n",
                  lambda r: (_ints(r),), (([],), ([t],), ([t + 1, t - 1, 0],)))


def _rotate(rng: random.Random) -> _Draft:
    k = rng.randint(1, 6)
    left = rng.random() < 0.5
    direction = "left" if left else "right"
    body = (f"    k = {k} % len(xs)\n    return xs[k:] + xs[:k]\n" if left
            else f"    k = {k} % len(xs)\n    return xs[len(xs) - k:] + xs[:len(xs) - k]\n")
    example = "[2, 3, 4, 1]" if left else "[4, 1, 2, 3]"
    return _Draft(f"rotate_{direction}", f"def rotate_{direction}(xs: list[int]) -> list[int]:",
                  f"Return a new list: xs rotated {direction} by {k} position{'s' if k > 1 else ''}; elements that "
                  f"fall off one end come back at the other (rotating [1, 2, 3, 4] {direction} by 1 gives "
                  f"{example}). Lists shorter than {k} keep rotating around; an empty list gives an empty list.",
                  f"def rotate_{direction}(xs):\n    if not xs:\n        return []\n{body}",
                  lambda r: (_ints(r, max_len=8),), (([],), ([7],), (list(range(1, k + 2)),)))


def _running_totals(rng: random.Random) -> _Draft:
    m = rng.choice([None, 7, 10, 13])
    clause = "" if m is None else f", each taken modulo {m} (Python's % operator)"
    expr = "total" if m is None else f"total % {m}"
    return _Draft("running_totals", "def running_totals(xs: list[int]) -> list[int]:",
                  f"Return the running totals of xs: element i of the result is xs[0] + xs[1] + ... + xs[i]{clause}.",
                  "def running_totals(xs):\n    out = []\n    total = 0\n    for x in xs:\n        total += x\n"
                  f"        out.append({expr})\n    return out\n",
                  lambda r: (_ints(r),), (([],), ([5],), ([-3, 3, -3],)))


def _dedupe(rng: random.Random) -> _Draft:
    last = rng.random() < 0.4
    if last:
        return _Draft("dedupe_keep_last", "def dedupe_keep_last(xs: list[int]) -> list[int]:",
                      "Return xs with repeated values removed, keeping only the LAST occurrence of each value; the "
                      "kept elements stay in their original relative order (e.g. [1, 2, 1, 3] gives [2, 1, 3]).",
                      "def dedupe_keep_last(xs):\n    last = {x: i for i, x in enumerate(xs)}\n"
                      "    return [x for i, x in enumerate(xs) if last[x] == i]\n",
                      lambda r: (_ints(r, 0, 6, max_len=10),), (([],), ([4, 4, 4],), ([1, 2, 1, 3],)))
    return _Draft("dedupe", "def dedupe(xs: list[int]) -> list[int]:",
                  "Return xs with repeated values removed, keeping the FIRST occurrence of each value, in order "
                  "(e.g. [1, 2, 1, 3] gives [1, 2, 3]).",
                  "def dedupe(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n"
                  "            seen.add(x)\n            out.append(x)\n    return out\n",
                  lambda r: (_ints(r, 0, 6, max_len=10),), (([],), ([4, 4, 4],), ([1, 2, 1, 3],)))


def _chunk_sums(rng: random.Random) -> _Draft:
    k = rng.randint(2, 4)
    return _Draft("chunk_sums", "def chunk_sums(xs: list[int]) -> list[int]:",
                  f"Split xs into consecutive chunks of {k} elements (the last chunk may be shorter) and return the "
                  f"list of the chunks' sums. An empty list gives an empty list.",
                  f"def chunk_sums(xs):\n    return [sum(xs[i:i + {k}]) for i in range(0, len(xs), {k})]\n",
                  lambda r: (_ints(r, max_len=11),), (([],), ([1],), (list(range(k + 1)),)))


def _differences(rng: random.Random) -> _Draft:
    absolute = rng.random() < 0.5
    what = "absolute difference |xs[i + 1] - xs[i]|" if absolute else "difference xs[i + 1] - xs[i]"
    expr = "abs(xs[i + 1] - xs[i])" if absolute else "xs[i + 1] - xs[i]"
    return _Draft("step_differences", "def step_differences(xs: list[int]) -> list[int]:",
                  f"Return the list whose element i is the {what}, for every i from 0 to len(xs) - 2. Lists with "
                  f"fewer than two elements give an empty list.",
                  f"def step_differences(xs):\n    return [{expr} for i in range(len(xs) - 1)]\n",
                  lambda r: (_ints(r),), (([],), ([3],), ([5, 1],)))


def _clamp(rng: random.Random) -> _Draft:
    lo = rng.randint(-3, 4)
    hi = lo + rng.randint(3, 10)
    return _Draft("clamp_all", "def clamp_all(xs: list[int]) -> list[int]:",
                  f"Return a new list in which every element below {lo} is replaced by {lo}, every element above {hi} "
                  f"is replaced by {hi}, and every other element is kept.",
                  f"def clamp_all(xs):\n    return [min(max(x, {lo}), {hi}) for x in xs]\n",
                  lambda r: (_ints(r, -10, 25),), (([],), ([lo - 1, hi + 1],), ([lo, hi],)))


def _interleave(rng: random.Random) -> _Draft:
    return _Draft("interleave", "def interleave(a: list[int], b: list[int]) -> list[int]:",
                  "Return a list that alternates the elements of a and b: a[0], b[0], a[1], b[1], ... When one list "
                  "runs out, the rest of the other list follows in order.",
                  "def interleave(a, b):\n    out = []\n    for i in range(max(len(a), len(b))):\n"
                  "        if i < len(a):\n            out.append(a[i])\n        if i < len(b):\n"
                  "            out.append(b[i])\n    return out\n",
                  lambda r: (_ints(r, max_len=6), _ints(r, max_len=6)), (([], []), ([1, 2, 3], []), ([], [4]),
                                                                         ([1], [2, 3, 4])))


# ------------------------------------------------------------------------------------------------- string_manip
def _caesar(rng: random.Random) -> _Draft:
    k = rng.randint(1, 25)
    return _Draft("shift_letters", "def shift_letters(s: str) -> str:",
                  f"Shift every lowercase letter a-z of s forward by {k} places in the alphabet, wrapping around from "
                  f"z back to a; every other character (uppercase letters, digits, spaces, punctuation) is unchanged.",
                  "def shift_letters(s):\n    out = []\n    for ch in s:\n        if 'a' <= ch <= 'z':\n"
                  f"            out.append(chr((ord(ch) - 97 + {k}) % 26 + 97))\n        else:\n"
                  "            out.append(ch)\n    return ''.join(out)\n",
                  lambda r: (_sentence(r) + r.choice(["", "!", " 42", " Z"]),), (("",), ("xyz",), ("Hello, World",)))


def _reverse_words(rng: random.Random) -> _Draft:
    return _Draft("reverse_each_word", "def reverse_each_word(s: str) -> str:",
                  "s holds words separated by single spaces. Reverse the characters of each word and keep the words "
                  "in their places (e.g. 'ab cd' gives 'ba dc'). The empty string gives the empty string.",
                  "def reverse_each_word(s):\n    return ' '.join(w[::-1] for w in s.split(' '))\n",
                  lambda r: (_sentence(r),), (("",), ("a",), ("ab cd",)))


def _remove_chars(rng: random.Random) -> _Draft:
    what, chars = rng.choice([("vowel (a, e, i, o, u, in either case)", "aeiouAEIOU"), ("digit 0-9", "0123456789"),
                              ("space", " "), ("character that is one of 'xyz' (lowercase only)", "xyz")])
    return _Draft("strip_chars", "def strip_chars(s: str) -> str:",
                  f"Return s with every {what} removed; all other characters stay, in order.",
                  f"def strip_chars(s):\n    return ''.join(ch for ch in s if ch not in {chars!r})\n",
                  lambda r: (_sentence(r) + str(r.randint(0, 999)) + r.choice(["", " XYZ xyz", " AEIou"]),),
                  (("",), (chars,), ("bcd",)))


def _rle(rng: random.Random) -> _Draft:
    skip_one = rng.random() < 0.5
    rule = ("runs of length 1 are written as just the character" if skip_one
            else "every run is written with its count, even a run of length 1")
    example = "'aaabcc' gives '3ab2c'" if skip_one else "'aaabcc' gives '3a1b2c'"
    emit = "(str(n) if n > 1 else '') + ch" if skip_one else "str(n) + ch"
    return _Draft("run_length", "def run_length(s: str) -> str:",
                  f"Run-length encode s: each maximal run of n equal characters c becomes the count n followed by "
                  f"c; {rule} ({example}). The empty string gives the empty string.",
                  "def run_length(s):\n    out = []\n    i = 0\n    while i < len(s):\n        j = i\n"
                  "        while j < len(s) and s[j] == s[i]:\n            j += 1\n        n, ch = j - i, s[i]\n"
                  f"        out.append({emit})\n        i = j\n    return ''.join(out)\n",
                  lambda r: ("".join(r.choice("aab") * r.randint(1, 4) for _ in range(r.randint(0, 5))),),
                  (("",), ("a",), ("aaabcc",), ("abab",)))


def _alternate_case(rng: random.Random) -> _Draft:
    start_upper = rng.random() < 0.5
    first, second = ("upper", "lower") if start_upper else ("lower", "upper")
    return _Draft("alternate_case", "def alternate_case(s: str) -> str:",
                  f"Return s with the characters at even indices (0, 2, 4, ...) in {first}case and those at odd "
                  f"indices in {second}case; characters without case (digits, spaces) are unchanged but still count "
                  f"as positions.",
                  f"def alternate_case(s):\n    return ''.join(ch.{first}() if i % 2 == 0 else ch.{second}() "
                  "for i, ch in enumerate(s))\n",
                  lambda r: (_sentence(r, 1, 3) + r.choice(["", " 7x", "AB"]),), (("",), ("a",), ("Ab Cd",)))


def _every_kth(rng: random.Random) -> _Draft:
    k = rng.randint(2, 4)
    sep = rng.choice(["", "-", ","])
    join = f"joined with {sep!r} between them" if sep else "joined together"
    return _Draft("every_kth", "def every_kth(s: str) -> str:",
                  f"Return the characters of s at indices 0, {k}, {2 * k}, ... (every {k}th character starting with "
                  f"the first), {join}.",
                  f"def every_kth(s):\n    return {sep!r}.join(s[::{k}])\n",
                  lambda r: (_sentence(r, 1, 3),), (("",), ("a",), ("abcdefgh",)))


def _palindrome(rng: random.Random) -> _Draft:
    return _Draft("is_letter_palindrome", "def is_letter_palindrome(s: str) -> bool:",
                  "Return True if the letters of s, read with case ignored and every non-letter character skipped, "
                  "are the same forwards and backwards, else False. A string with no letters counts as a "
                  "palindrome.",
                  "def is_letter_palindrome(s):\n    letters = [ch.lower() for ch in s if ch.isalpha()]\n"
                  "    return letters == letters[::-1]\n",
                  lambda r: (r.choice([_sentence(r, 1, 2), "Never odd or even", "ab, Ba!", "abc cb a", "No lemon, "
                                       "no melon", r.choice(_WORDS) + r.choice(_WORDS)[::-1]]),),
                  (("",), ("a",), ("A man, a plan, a canal: Panama",), ("ab",)))


# ---------------------------------------------------------------------------------------------------- sequences
def _arithmetic_terms(rng: random.Random) -> _Draft:
    a, d = rng.randint(-10, 10), rng.choice([-3, -2, 2, 3, 4, 5, 7])
    return _Draft("first_terms", "def first_terms(n: int) -> list[int]:",
                  f"Return the list of the first n terms of the arithmetic sequence that starts at {a} and adds {d} "
                  f"at each step (n >= 0; n = 0 gives an empty list).",
                  f"def first_terms(n):\n    return [{a} + {d} * i for i in range(n)]\n",
                  lambda r: (r.randint(0, 12),), ((0,), (1,), (2,)))


def _recurrence(rng: random.Random) -> _Draft:
    a0, p, q, m = rng.randint(0, 9), rng.randint(2, 7), rng.randint(1, 9), rng.choice([11, 13, 17, 19, 23, 29])
    return _Draft("nth_term", "def nth_term(n: int) -> int:",
                  f"A sequence starts with a(0) = {a0}, and a(i + 1) = ({p} * a(i) + {q}) mod {m}. Return a(n) for "
                  f"n >= 0.",
                  f"def nth_term(n):\n    a = {a0}\n    for _ in range(n):\n        a = ({p} * a + {q}) % {m}\n"
                  "    return a\n",
                  lambda r: (r.randint(0, 40),), ((0,), (1,), (2,)))


def _geometric_sum(rng: random.Random) -> _Draft:
    a, ratio = rng.randint(1, 5), rng.choice([-2, 2, 3])
    return _Draft("geometric_sum", "def geometric_sum(n: int) -> int:",
                  f"Return the sum of the first n terms of the sequence that starts at {a} and multiplies by {ratio} "
                  f"at each step (n >= 0; the sum of zero terms is 0).",
                  f"def geometric_sum(n):\n    total, term = 0, {a}\n    for _ in range(n):\n        total += term\n"
                  f"        term *= {ratio}\n    return total\n",
                  lambda r: (r.randint(0, 15),), ((0,), (1,), (2,)))


def _hailstone(rng: random.Random) -> _Draft:
    k, c = rng.choice([3, 5]), rng.choice([1, 3])
    return _Draft("after_steps", "def after_steps(x: int, n: int) -> int:",
                  f"Start from x (x >= 1) and apply this rule n times (n >= 0): if the number is even, halve it; if "
                  f"it is odd, multiply it by {k} and add {c}. Return the number you end with.",
                  f"def after_steps(x, n):\n    for _ in range(n):\n"
                  f"        x = x // 2 if x % 2 == 0 else {k} * x + {c}\n"
                  "    return x\n",
                  lambda r: (r.randint(1, 60), r.randint(0, 12)), ((1, 0), (1, 1), (6, 2)))


def _lucas_like(rng: random.Random) -> _Draft:
    f0, f1, c = rng.randint(0, 3), rng.randint(1, 4), rng.randint(1, 3)
    return _Draft("fib_like", "def fib_like(n: int) -> int:",
                  f"f(0) = {f0}, f(1) = {f1}, and f(i) = f(i - 1) + {c} * f(i - 2) for i >= 2. Return f(n) for n >= 0.",
                  f"def fib_like(n):\n    a, b = {f0}, {f1}\n    for _ in range(n):\n        a, b = b, b + {c} * a\n"
                  "    return a\n",
                  lambda r: (r.randint(0, 30),), ((0,), (1,), (2,)))


# ----------------------------------------------------------------------------------------------------- counting
def _count_greater(rng: random.Random) -> _Draft:
    t = rng.randint(-2, 12)
    strict = rng.random() < 0.5
    word, op = ("greater than", ">") if strict else ("at least", ">=")
    return _Draft("count_above", "def count_above(xs: list[int]) -> int:",
                  f"Return how many elements of xs are {word} {t}.",
                  f"def count_above(xs):\n    return sum(1 for x in xs if x {op} {t})\n",
                  lambda r: (_ints(r),), (([],), ([t],), ([t - 1, t + 1],)))


def _count_chars(rng: random.Random) -> _Draft:
    what, chars = rng.choice([("vowels (a, e, i, o, u, in either case)", "aeiouAEIOU"),
                              ("lowercase consonants (lowercase letters other than a, e, i, o, u)",
                               "bcdfghjklmnpqrstvwxyz"), ("digits 0-9", "0123456789")])
    return _Draft("count_chars", "def count_chars(s: str) -> int:", f"Return the number of {what} in s.",
                  f"def count_chars(s):\n    return sum(1 for ch in s if ch in {chars!r})\n",
                  lambda r: (_sentence(r) + r.choice(["", " 2024", " AEIOU", "!"]),), (("",), ("xyz",), ("AEIOU",)))


def _count_pairs(rng: random.Random) -> _Draft:
    t = rng.randint(4, 14)
    return _Draft("count_pairs", "def count_pairs(xs: list[int]) -> int:",
                  f"Return the number of index pairs (i, j) with i < j and xs[i] + xs[j] == {t}.",
                  "def count_pairs(xs):\n    return sum(1 for i in range(len(xs)) for j in range(i + 1, len(xs)) "
                  f"if xs[i] + xs[j] == {t})\n",
                  lambda r: (_ints(r, 0, t, max_len=9),), (([],), ([t],), ([t // 2, t - t // 2, t // 2],)))


def _count_divisible(rng: random.Random) -> _Draft:
    a = rng.randint(2, 6)
    b = rng.choice([x for x in range(3, 10) if x != a])
    return _Draft("count_multiples", "def count_multiples(n: int) -> int:",
                  f"Return how many integers k with 1 <= k <= n are divisible by {a} or by {b} (or both). For "
                  f"n < 1 the answer is 0.",
                  f"def count_multiples(n):\n"
                  f"    return sum(1 for k in range(1, n + 1) if k % {a} == 0 or k % {b} == 0)\n",
                  lambda r: (r.randint(0, 200),), ((0,), (1,), (a * b,)))


def _count_long_words(rng: random.Random) -> _Draft:
    k = rng.randint(3, 5)
    return _Draft("count_long_words", "def count_long_words(s: str) -> int:",
                  f"Return the number of words in s that have more than {k} characters; words are the pieces "
                  f"s.split() gives (separated by any whitespace).",
                  f"def count_long_words(s):\n    return sum(1 for w in s.split() if len(w) > {k})\n",
                  lambda r: (_sentence(r, 0, 7),), (("",), ("   ",), ("a " + "b" * (k + 1),)))


def _count_distinct(rng: random.Random) -> _Draft:
    return _Draft("count_distinct", "def count_distinct(xs: list[int]) -> int:",
                  "Return the number of distinct values in xs.",
                  "def count_distinct(xs):\n    return len(set(xs))\n",
                  lambda r: (_ints(r, 0, 8, max_len=12),), (([],), ([1, 1],), ([1, 2, 3],)))


#: family -> [(variant builder, level)]; level 1 is easiest.
VARIANTS: dict[str, list[tuple[Callable[[random.Random], _Draft], int]]] = {
    "list_transform": [(_scale_filter, 1), (_clamp, 1), (_differences, 1), (_chunk_sums, 2), (_running_totals, 2),
                       (_rotate, 2), (_dedupe, 2), (_interleave, 3)],
    "string_manip": [(_every_kth, 1), (_reverse_words, 1), (_remove_chars, 1), (_alternate_case, 2),
                     (_caesar, 2), (_palindrome, 2), (_rle, 3)],
    "sequences": [(_arithmetic_terms, 1), (_geometric_sum, 2), (_recurrence, 2), (_lucas_like, 2), (_hailstone, 3)],
    "counting": [(_count_distinct, 1), (_count_greater, 1), (_count_chars, 1), (_count_long_words, 2),
                 (_count_divisible, 2), (_count_pairs, 3)],
}

LEVELS: dict[str, tuple[int, ...]] = {"easy": (1,), "medium": (1, 2), "hard": (2, 3)}


def run_reference(reference: str, name: str, args: tuple[Any, ...]) -> Any:
    """Call the reference solution (our own code, run in-process) on a copy of ``args``."""
    namespace: dict[str, Any] = {}
    exec(compile(reference, f"<reference {name}>", "exec"), namespace)
    return namespace[name](*copy.deepcopy(args))


def draw_spec(rng: random.Random, families: tuple[str, ...], difficulty: str, n_tests: int) -> Spec:
    """One spec from ``families`` at ``difficulty``, with ``n_tests`` distinct tests (an informative case first).

    Specs whose tests all expect the same value are redrawn: a constant function would pass them.
    """
    for _ in range(50):
        spec = _draw_once(rng, families, difficulty, n_tests)
        if n_tests < 3 or len({repr(v) for v in spec.expected}) > 1:
            return spec
    return spec


def _draw_once(rng: random.Random, families: tuple[str, ...], difficulty: str, n_tests: int) -> Spec:
    levels = LEVELS[difficulty]
    family = rng.choice(families)
    choices = [build for build, level in VARIANTS[family] if level in levels] or [b for b, _ in VARIANTS[family]]
    build = rng.choice(choices)
    draft = build(rng)
    tests: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    candidates = list(draft.edge_args)
    attempts = 0
    while len(tests) < n_tests and attempts < 50 * n_tests:
        args = candidates.pop(0) if candidates else draft.random_args(rng)
        attempts += 1
        key = repr(args)
        if key not in seen:
            seen.add(key)
            tests.append(args)
    # Shown examples are the first two tests: put an informative (random) case first, then an edge case.
    if len(tests) > len(draft.edge_args):
        first_random = tests.pop(len(draft.edge_args))
        tests.insert(0, first_random)
    namespace: dict[str, Any] = {}
    exec(compile(draft.reference, f"<reference {draft.name}>", "exec"), namespace)
    function = namespace[draft.name]
    expected = tuple(function(*copy.deepcopy(args)) for args in tests)
    return Spec(family, build.__name__.lstrip("_"), draft.name, draft.signature, draft.description, draft.reference,
                tuple(tests), expected)
