"""Answer extraction from free model text and bounded-time verification of math answers.

Extraction order (the first that finds something wins): the last ``\\boxed{...}`` / ``\\fbox{...}``; the last
``Answer: ...`` / ``final answer is ...`` line (``is:`` too; when that line is words around one number, as in "the
answer is actually 7, which ...", the number); the last number in the text. Numbers may carry thousands
separators, signs (ASCII or Unicode minus), decimals, percent signs, ``a/b`` or LaTeX ``\\frac{a}{b}``.

Verification first compares exact rationals (fast, no sympy); anything else goes to ``math-verify``. Its
timeout uses ``SIGALRM``, which only works on the main thread, so off the main thread (vector envs in threads,
data loaders) we bound the work by refusing oversized or exponent-heavy expressions instead.

Model text is untrusted: extraction is linear in the text (one brace-matching pass however many ``\\boxed{``
it holds), and math-verify is run with LaTeX extraction only. Its other target, ``ExprExtractionConfig``,
hands the text to sympy's ``parse_expr``, which evals it; the LaTeX path (latex2sympy2_extended) builds
sympy objects from a grammar and never parses strings as Python.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from fractions import Fraction

#: Expressions longer than this are not handed to sympy (bounds the time off the main thread).
MAX_SYMBOLIC_CHARS = 200
_VERIFY_TIMEOUT_S = 2

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
# The rest of the line after "answer:"; bold and spaces are stripped in Python, since a lazy group followed by
# optional whitespace before "$" backtracks quadratically on long runs of spaces.
_ANSWER_LINE = re.compile(r"(?:final\s+answer|answer)\s*(?:is\s*[:=]?|[:=])\s*([^\n]+)", re.IGNORECASE)

_NUMBER = re.compile(
    r"(?<![\w.])[-−–]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+)?%?|(?<![\w.])[-−–]?\.\d+"
)
# The first number of an answer line whose text is words around one value ("actually 7, which ...", "12 apples"):
# only words may come before it, and it must end there (not "2x + 3", "3.5.1", "7-2").
_WORDY_NUMBER = re.compile(r"^[A-Za-z\s,:'\"]*?(" + _NUMBER.pattern + r")(?=$|[\s,;:!?)]|\.(?!\d))")
_FRAC = re.compile(r"^\\[dt]?frac\s*\{\s*([-−]?[\d,.]+)\s*\}\s*\{\s*([-−]?[\d,.]+)\s*\}$")
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


@dataclass(frozen=True)
class Extraction:
    """What was taken from a response as its answer, and how (``boxed``, ``answer_line``, ``last_number``)."""

    text: str | None
    method: str

    def describe(self) -> str:
        where = {"boxed": "from \\boxed{}", "answer_line": "from the 'Answer:' line",
                 "last_number": "the last number in the response"}.get(self.method, self.method)
        return where


def _balanced_from(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start - 1] == '{'``, or None if it never closes."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _closing_braces(text: str, first: int) -> dict[int, int]:
    """Index of the matching ``}`` for every ``{`` at or after ``first`` that closes: one linear pass."""
    closes: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text, first):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closes[stack.pop()] = m.start()
    return closes


def _last_boxed(text: str) -> str | None:
    """The content of the last non-empty, closed ``\\boxed{...}`` (or ``\\fbox``), in time linear in the text."""
    boxed = [m.end() for m in _BOXED.finditer(text)]
    if len(boxed) == 1:  # the usual case: one scan from the brace
        content = _balanced_from(text, boxed[0])
        return content if content is not None and content.strip() else None
    if not boxed:
        return None
    # Scanning from every start would be quadratic on nested or repeated \boxed{ (model text can hold thousands).
    closes = _closing_braces(text, boxed[0] - 1)
    for start in reversed(boxed):
        end = closes.get(start - 1)
        if end is not None and text[start:end].strip():
            return text[start:end]
    return None


def extract_answer(text: str) -> Extraction:
    """The answer a model gave in free text (see module docstring for the order)."""
    content = _last_boxed(text)
    if content is not None:
        return Extraction(clean_answer(content), "boxed")
    lines = _ANSWER_LINE.findall(text)
    for candidate in reversed(lines):
        cleaned = clean_answer(candidate)
        if cleaned.startswith("*") or cleaned.endswith("*"):  # bold marks left over on one side
            cleaned = clean_answer(cleaned.strip("*"))
        if cleaned and to_fraction(cleaned) is None:
            wordy = _WORDY_NUMBER.match(cleaned)
            if wordy:  # "the answer is actually 7." -> "7", not "actually 7" (a correct answer judged wrong)
                cleaned = clean_answer(wordy.group(1))
        if cleaned:
            return Extraction(cleaned, "answer_line")
    numbers = _NUMBER.findall(text)
    if numbers:
        return Extraction(clean_answer(numbers[-1]), "last_number")
    return Extraction(None, "none")


def clean_answer(text: str) -> str:
    """Strip the wrapping a model puts around an answer: math delimiters, bold, trailing punctuation."""
    s = text.strip().rstrip(" .,;:!")
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("`", "`")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left): len(s) - len(right)].strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", " ")
    s = s.replace("\\left", "").replace("\\right", "")
    if "=" in s and not s.startswith("="):
        s = s.rsplit("=", 1)[1].strip()  # "x = 5" -> "5"
    return s.rstrip(" .,;:!").strip()


def to_fraction(text: str) -> Fraction | None:
    """The exact rational value of a plain numeric answer (``-1,234.5``, ``3/4``, ``\\frac{3}{4}``, ``40%``)."""
    s = text.strip().replace("−", "-").replace("–", "-").replace(" ", "").strip("$")
    if s.startswith("+"):
        s = s[1:]
    m = _FRAC.match(s)
    if m:
        num, den = to_fraction(m.group(1)), to_fraction(m.group(2))
        return num / den if num is not None and den not in (None, 0) else None
    percent = s.endswith("%") or s.endswith("\\%")
    s = s.removesuffix("\\%").removesuffix("%")
    negative = s.startswith("-")
    body = s[1:] if negative else s
    if "/" in body:
        num_text, _, den_text = body.partition("/")
        num, den = to_fraction(num_text), to_fraction(den_text)
        if num is None or den in (None, 0):
            return None
        value = num / den
    else:
        if "," in body:
            if not _THOUSANDS.match(body):
                return None
            body = body.replace(",", "")
        if not re.fullmatch(r"\d+(?:\.\d+)?|\.\d+", body):
            return None
        value = Fraction(body)
    if percent:
        value /= 100
    return -value if negative else value


def _as_latex(text: str) -> str:
    return text if text.startswith("$") else f"${text}$"


def _symbolic_verify(gold: str, answer: str) -> bool | None:
    """math-verify's judgement, or None when the expression is too large to check safely here."""
    on_main = threading.current_thread() is threading.main_thread()
    if len(answer) > MAX_SYMBOLIC_CHARS or len(gold) > MAX_SYMBOLIC_CHARS:
        return None
    if not on_main and re.search(r"\^|\*\*|!", answer):
        return None  # exponents / factorials can take sympy unbounded time without the signal timeout
    import math_verify  # deferred: importing sympy costs ~1 s

    timeout = _VERIFY_TIMEOUT_S if on_main else None
    # LaTeX extraction only: math-verify's ExprExtractionConfig would eval the text through sympy's parse_expr.
    latex_only = [math_verify.LatexExtractionConfig()]
    gold_parsed = math_verify.parse(_as_latex(gold), extraction_config=latex_only, parsing_timeout=timeout)
    answer_parsed = math_verify.parse(_as_latex(answer), extraction_config=latex_only, parsing_timeout=timeout)
    if not gold_parsed or not answer_parsed:
        return None
    return bool(math_verify.verify(gold_parsed, answer_parsed, timeout_seconds=timeout))


def answers_match(answer: str, expected: str) -> bool:
    """Whether ``answer`` equals ``expected`` mathematically (exact rationals, else math-verify)."""
    a, e = to_fraction(answer), to_fraction(clean_answer(expected))
    if a is not None and e is not None:
        return a == e
    if answer.strip() == expected.strip():
        return True
    try:
        verdict = _symbolic_verify(clean_answer(expected), answer)
    except Exception:  # math-verify raises on pathological input; treat as "cannot confirm"
        return False
    return bool(verdict)
