"""Answer extraction and verification on tricky model outputs."""

import threading

import pytest

from fst_env.answers import answers_match, clean_answer, extract_answer, to_fraction

# (response, expected extracted text, extraction method)
EXTRACTION_CASES = [
    ("The answer is \\boxed{42}.", "42", "boxed"),
    ("\\boxed{1} first try, then \\boxed{2}", "2", "boxed"),
    ("so \\boxed{\\frac{3}{4}}", "\\frac{3}{4}", "boxed"),
    ("nested \\boxed{\\dfrac{1}{\\sqrt{2}}} ok", "\\dfrac{1}{\\sqrt{2}}", "boxed"),
    ("\\fbox{7}", "7", "boxed"),
    ("unclosed \\boxed{12 and then Answer: 13", "13", "answer_line"),
    ("empty \\boxed{} but Answer: 5", "5", "answer_line"),
    ("Answer: 1,234", "1,234", "answer_line"),
    ("answer: -17.", "-17", "answer_line"),
    ("The final answer is $\\frac{5}{6}$.", "\\frac{5}{6}", "answer_line"),
    ("**Answer:** 99", "99", "answer_line"),
    ("Answer: x = 4", "4", "answer_line"),
    ("Answer: 3\n\nAnswer: 8", "8", "answer_line"),
    # Seen from the embedded model on chain_sum, all correct answers once judged wrong:
    ("At 6 + 1 = 7, the answer is actually 7.", "7", "answer_line"),
    ("So, the answer is: 7", "7", "answer_line"),
    ("The answer is 7, which is the sum of 6 and 1.", "7", "answer_line"),
    ("the answer is 12 apples", "12", "answer_line"),
    ("The final answer is = 9", "9", "answer_line"),
    # ... and what must stay as it is: an expression is not cut down to its first number.
    ("Answer: 2x + 3", "2x + 3", "answer_line"),
    ("Answer: 3.5.1", "3.5.1", "answer_line"),
    ("Answer: seven", "seven", "answer_line"),
    ("I computed 3 + 4 and got 7", "7", "last_number"),
    ("Result is 1,000,000!", "1,000,000", "last_number"),
    ("it is −5", "−5", "last_number"),
    ("about 0.25 or so", "0.25", "last_number"),
    ("roughly 3/8", "3/8", "last_number"),
    ("growth of 12%", "12%", "last_number"),
    ("no numbers here", None, "none"),
    ("", None, "none"),
    ("x2 and y3", None, "none"),
]


@pytest.mark.parametrize(("response", "text", "method"), EXTRACTION_CASES)
def test_extract_answer(response, text, method):
    found = extract_answer(response)
    assert (found.text, found.method) == (text, method)


# (given answer, expected answer, match?)
MATCH_CASES = [
    ("42", "42", True),
    ("42.0", "42", True),
    ("42.000", "42", True),
    ("1,234", "1234", True),
    ("1,23,4", "1234", False),
    ("-4", "-4", True),
    ("−4", "-4", True),
    ("+4", "4", True),
    ("3/4", "0.75", True),
    ("\\frac{3}{4}", "3/4", True),
    ("\\dfrac{6}{8}", "3/4", True),
    ("75%", "0.75", True),
    ("0.3333", "1/3", False),
    ("5", "-5", False),
    ("$7$", "7", True),
    ("\\text{7}", "7", True),
    ("7 apples", "7", True),  # units are tolerated, as math-verify does
    ("7 apples", "8", False),
    ("\\sqrt{4}", "2", True),
    ("2^{10}", "1024", True),
    ("\\pi", "3.14", False),
    ("1/0", "1", False),
    ("x", "5", False),
    ("12", "$12$", True),
]


@pytest.mark.parametrize(("answer", "expected", "match"), MATCH_CASES)
def test_answers_match(answer, expected, match):
    assert answers_match(clean_answer(answer), expected) is match


def test_to_fraction_rejects_non_numbers():
    for text in ["", "abc", "1,2", "1.2.3", "--3", "3/", "/3", "\\frac{1}{0}"]:
        assert to_fraction(text) is None, text


def test_verification_off_the_main_thread():
    """math-verify's SIGALRM timeout fails in threads; our wrapper must still judge there without raising."""
    results = {}

    def work():
        results["sqrt"] = answers_match("\\sqrt{4}", "2")
        results["huge_power"] = answers_match("9^{9^{9^{9}}}", "2")
        results["plain"] = answers_match("3/4", "0.75")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results == {"sqrt": True, "huge_power": False, "plain": True}


def test_oversized_symbolic_answer_is_refused_quickly():
    assert answers_match("1+" * 500 + "1", "501") is False


# ----------------------------------------------------------------------------- hostile text: bounded and eval-free
@pytest.mark.parametrize("text", ["\\boxed{" * 9000, "\\boxed{" * 9000 + "7" + "}" * 9000, "\\boxed{}" * 8000,
                                  "\\boxed{" + "{}" * 31000, "answer: " + " " * 63000 + "x", "answer:\n" * 8000,
                                  "answer:" + " " * 63000, "1," * 31000])
def test_extraction_of_63kb_hostile_text_is_fast(text: str) -> None:
    import time

    extract_answer(text[:100])  # warm the regexes
    times = []
    for _ in range(3):  # the best of 3: this machine is shared, a single timing can include a stall
        start = time.perf_counter()
        extract_answer(text)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.05, (len(text), times)


def test_nested_and_repeated_boxed_pick_the_last_closed_non_empty_one() -> None:
    assert extract_answer("\\boxed{" * 500 + "7" + "}" * 500).text == "7"
    assert extract_answer("\\boxed{1} then \\boxed{2} and \\boxed{}").text == "2"
    assert extract_answer("\\boxed{\\frac{1}{2}} \\boxed{3").text == "\\frac{1}{2}"  # the unclosed one is skipped
    assert extract_answer("\\boxed{" * 300 + "The answer is **42**.").text == "42"


def test_math_verify_never_evals_model_text(monkeypatch) -> None:
    """sympy's parse_expr evals its string. math-verify's expression target would hand it the model's text; the
    LaTeX path only hands it NUMBER tokens from latex2sympy's lexer (via sympy.Number), so only digits get there."""
    import re

    import math_verify.parser
    import sympy.parsing.sympy_parser

    real = sympy.parsing.sympy_parser.parse_expr
    seen: list[str] = []

    def record(text, *args, **kwargs):
        seen.append(str(text))
        if not re.fullmatch(r"[\d.]+", str(text)):
            raise AssertionError(f"parse_expr (eval) reached with {text!r}")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(sympy.parsing.sympy_parser, "parse_expr", record)
    monkeypatch.setattr(math_verify.parser, "parse_expr", record)
    math_verify.parser.parse_expr_cached.cache_clear()
    assert answers_match("x^2+1", "1+x^2") and answers_match("\\sqrt{2}", "2^{1/2}")
    for hostile in ("__import__('os').system('true')", "().__class__.__bases__[0]", "lambda: 1", "x.__class__",
                    "1e__import__", "0x1f + 1j", "1_000", "eval('1')", "(1).real", "\\text{__import__('os')}"):
        assert answers_match(hostile, "x") is False
    assert seen and all(re.fullmatch(r"[\d.]+", text) for text in seen)
