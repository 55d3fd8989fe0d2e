"""reasoning-gym tasks as fst envs: any of its procedural generators, scored by the task's own scorer.

``gym.make("fst/ReasoningGym-v0", task="knights_knaves", n_people=3)`` builds an env for any name in
``reasoning_gym.factory.DATASETS``; extra keyword arguments are that task's config fields. A curated dozen
with exact scorers and fast generators is also registered under its own ids (``fst/KnightsKnaves-v0``, ...),
each with an ``difficulty="easy" | "medium" | "hard"`` preset.

How problems map onto reasoning-gym items: rg datasets derive item ``idx`` from ``Random(config.seed + idx)``,
so we build the dataset with ``seed=0`` and ask :class:`~fst_env.splits.ProceduralSplit` for item ``index``:
the item seed *is* the index, and the split is decided by a hash of the prompt. A few tasks draw items from a
finite pool precomputed at construction (``acre``, ``list_functions``, ``gsm_symbolic``, ``word_ladder``);
they raise ``IndexError`` past their ``size``, and we then take item ``index % size`` (pass ``size=`` to
enlarge that pool).

One dataset object (and one split of problems) is built per (task, config) per process and shared by every
env instance: some rg datasets load word lists or precompute pools when built, and rebuilding them per env
instance is a known bottleneck (``benchmarks/rg_dataset_build.py`` measures the difference).

``import reasoning_gym`` costs ~1.5 s (it imports sympy and more), so it is deferred to the first env built.

Security (model output is hostile): every task is classified in :data:`SCORER_CLASSES` by what its scorer does
with the answer text (read from reasoning-gym's source; reasons in :data:`SCORER_CLASS_REASONS`). Tasks whose
scorer evaluates the answer (``eval``, ``sympy.parse_expr``/``sympify``, ``exec``, or an unbounded parser) get an
input filter that lets no code through (:func:`answer_filter_error`) *and* are scored in the isolated,
deadline-bounded worker of :mod:`fst_env.judging`; ``plain`` tasks compare strings or numbers in-process,
bounded by the answer-length cap, and an overrun of the step deadline still scores ``timeout``.
The classes and filters live in ``envs/_rg_answers.py`` and are re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fst_env import judging
from fst_env.cards import EnvCard, register_env
from fst_env.core import (
    DEFAULT_MAX_RESPONSE_CHARS,
    DEFAULT_STEP_DEADLINE_S,
    Outcome,
    Problem,
    TextEnv,
    Verdict,
    timeout_outcome,
)
from fst_env.envs._rg_answers import EVAL_SCORERS as EVAL_SCORERS
from fst_env.envs._rg_answers import ISOLATED_CLASSES, answer_filter_error, scorer_class
from fst_env.envs._rg_answers import SCORER_CLASS_REASONS as SCORER_CLASS_REASONS
from fst_env.envs._rg_answers import SCORER_CLASSES as SCORER_CLASSES
from fst_env.splits import ProceduralSplit, _hash64

#: Problem ids per split (problem ``k`` of a split is drawn by ProceduralSplit; sizes are virtual).
SPLIT_SIZES: dict[str, int] = {"train": 100_000, "validation": 1_000, "test": 1_000}

#: Appended to every rg question: rg's own system prompts ask for the answer inside <answer> tags.
ANSWER_INSTRUCTION = ("\n\nWhen you have worked it out, give only your final answer, in the format the question "
                      "asks for, between <answer> and </answer> tags.")

REQUIRED_FORMAT = ("Required format: only the final answer, written as the question asks, between <answer> and "
                   "</answer> tags (a final line 'Answer: ...' is also accepted).")

_ANSWER_LINE = re.compile(r"^[ \t>*#]*(?:final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE)

#: Difficulty presets for the curated ids: rg config fields per level. ``medium`` is close to rg's defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "knights_knaves": {
        "easy": {"n_people": 2, "depth_constraint": 2, "width_constraint": 2},
        "medium": {"n_people": 3, "depth_constraint": 2, "width_constraint": 2},
        "hard": {"n_people": 4, "depth_constraint": 3, "width_constraint": 3},
    },
    "syllogism": {
        "easy": {"allow_no": False, "allow_some": False, "allow_some_not": False},
        "medium": {"allow_some_not": False},
        "hard": {"inversion_probability": 0.5},
    },
    "circuit_logic": {
        "easy": {"min_terms": 2, "max_terms": 3, "min_inputs": 2, "max_inputs": 3},
        "medium": {"min_terms": 3, "max_terms": 5, "min_inputs": 2, "max_inputs": 4},
        "hard": {"min_terms": 6, "max_terms": 10, "min_inputs": 4, "max_inputs": 6},
    },
    "cryptarithm": {
        "easy": {"min_words": 2, "max_words": 2},
        "medium": {"min_words": 2, "max_words": 3},
        "hard": {"min_words": 3, "max_words": 5},
    },
    "word_sorting": {
        "easy": {"min_words": 3, "max_words": 5},
        "medium": {"min_words": 5, "max_words": 10},
        "hard": {"min_words": 15, "max_words": 25},
    },
    "binary_alternation": {
        "easy": {"min_n": 5, "max_n": 10},
        "medium": {"min_n": 10, "max_n": 30},
        "hard": {"min_n": 30, "max_n": 60},
    },
    "mini_sudoku": {
        "easy": {"min_empty": 4, "max_empty": 6},
        "medium": {"min_empty": 8, "max_empty": 10},
        "hard": {"min_empty": 10, "max_empty": 12},
    },
    "tower_of_hanoi": {
        "easy": {"min_disks": 3, "max_disks": 3, "min_pegs": 3, "max_pegs": 3},
        "medium": {"min_disks": 3, "max_disks": 5, "min_pegs": 3, "max_pegs": 3},
        "hard": {"min_disks": 5, "max_disks": 7, "min_pegs": 3, "max_pegs": 4},
    },
    "maze": {
        "easy": {"min_dist": 3, "max_dist": 5, "min_grid_size": 5, "max_grid_size": 7},
        "medium": {"min_dist": 5, "max_dist": 10, "min_grid_size": 5, "max_grid_size": 10},
        "hard": {"min_dist": 10, "max_dist": 20, "min_grid_size": 10, "max_grid_size": 15},
    },
    "shortest_path": {
        "easy": {"min_rows": 4, "max_rows": 5, "min_cols": 4, "max_cols": 5},
        "medium": {"min_rows": 5, "max_rows": 8, "min_cols": 5, "max_cols": 8},
        "hard": {"min_rows": 8, "max_rows": 12, "min_cols": 8, "max_cols": 12},
    },
    "course_schedule": {
        "easy": {"min_num_courses": 3, "max_num_courses": 5, "min_num_prerequisites": 1,
                 "max_num_prerequisites": 1, "min_cycle_length": 3, "max_cycle_length": 3},
        "medium": {"min_num_courses": 5, "max_num_courses": 10},
        "hard": {"min_num_courses": 10, "max_num_courses": 20, "min_num_prerequisites": 2,
                 "max_num_prerequisites": 3, "min_cycle_length": 3, "max_cycle_length": 6},
    },
    "largest_island": {
        "easy": {"min_rows": 4, "max_rows": 5, "min_cols": 4, "max_cols": 5, "min_num_islands": 1,
                 "max_num_islands": 3, "min_island_size": 1, "max_island_size": 5},
        "medium": {"min_rows": 5, "max_rows": 10, "min_cols": 5, "max_cols": 10},
        "hard": {"min_rows": 10, "max_rows": 15, "min_cols": 10, "max_cols": 15, "min_num_islands": 3,
                 "max_num_islands": 8, "min_island_size": 3, "max_island_size": 20},
    },
}
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")

#: What ``gym.make("fst/ReasoningGym-v0")`` builds when no ``task`` is given.
DEFAULT_TASK = "knights_knaves"

#: The curated ids: env id -> (rg task, area, one-line summary).
CURATED: dict[str, tuple[str, str, str]] = {
    "fst/KnightsKnaves-v0": ("knights_knaves", "logic",
                             "Knights-and-knaves puzzles: decide which speakers always tell the truth and which lie."),
    "fst/Syllogism-v0": ("syllogism", "logic", "Syllogisms: does a conclusion follow from two quantified premises?"),
    "fst/CircuitLogic-v0": ("circuit_logic", "logic",
                            "Evaluate a drawn boolean circuit (AND/OR/XOR/NAND/NOR/NOT gates) on given inputs."),
    "fst/Cryptarithm-v0": ("cryptarithm", "algorithmic",
                           "Cryptarithms: map letters to distinct digits so that a word addition holds."),
    "fst/WordSorting-v0": ("word_sorting", "algorithmic",
                           "Sort words by ASCII/Unicode order, ascending or descending."),
    "fst/BinaryAlternation-v0": ("binary_alternation", "algorithmic",
                                 "Fewest swaps that make a binary string alternate (or -1 if impossible)."),
    "fst/MiniSudoku-v0": ("mini_sudoku", "games", "Solve a 4x4 Sudoku."),
    "fst/TowerOfHanoi-v0": ("tower_of_hanoi", "games",
                            "Tower of Hanoi with 3-4 pegs: list an optimal sequence of legal moves."),
    "fst/Maze-v0": ("maze", "games", "Fewest steps from start to goal in a drawn grid maze."),
    "fst/ShortestPath-v0": ("shortest_path", "graphs",
                            "Shortest path through a grid with blocked cells, as a list of moves (or infeasible)."),
    "fst/CourseSchedule-v0": ("course_schedule", "graphs",
                              "Can all courses be finished given their prerequisites (cycle detection)?"),
    "fst/LargestIsland-v0": ("largest_island", "graphs", "Area of the largest 4-connected island in a 0/1 grid."),
}


# ----------------------------------------------------------------------------- dataset cache
_CACHE_LOCK = threading.Lock()
_DATASETS: dict[tuple[str, str], Any] = {}
_SPLITS: dict[tuple[str, str, str, int], Sequence[Problem]] = {}


def clear_dataset_cache() -> None:
    """Forget every cached rg dataset and problem split (benchmarks use this to measure cold construction)."""
    with _CACHE_LOCK:
        _DATASETS.clear()
        _SPLITS.clear()


def dataset_cache_size() -> int:
    """How many rg dataset objects this process holds."""
    return len(_DATASETS)


def _registry() -> dict[str, tuple[type, type]]:
    from reasoning_gym.factory import DATASETS  # deferred: importing reasoning_gym costs ~1.5 s

    return DATASETS


def task_names() -> list[str]:
    """Every reasoning-gym task name this env accepts."""
    return sorted(_registry())


def _describe_fields(config_cls: type) -> str:
    parts = []
    for f in dataclasses.fields(config_cls):
        if f.name == "seed":
            continue  # fixed by the env (item seed = index)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<required>"
        text = repr(default)
        parts.append(f"{f.name}={text if len(text) <= 40 else text[:37] + '...'}")
    return ", ".join(parts)


def build_config(task: str, difficulty: str | None = None, **overrides: Any) -> Any:
    """The validated rg config dataclass for ``task``: preset (if any), then ``overrides``, with ``seed=0``.

    Raises ValueError for an unknown task (listing close matches), an unknown difficulty or invalid values, and
    TypeError for config fields the task does not have (listing its fields).
    """
    registry = _registry()
    if not isinstance(task, str) or task not in registry:
        close = difflib.get_close_matches(str(task), list(registry), n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown reasoning-gym task {task!r}.{hint} Known tasks ({len(registry)}): "
                         f"{', '.join(sorted(registry))}")
    _, config_cls = registry[task]
    field_names = {f.name for f in dataclasses.fields(config_cls)}
    values: dict[str, Any] = {}
    if difficulty is not None:
        if task not in PRESETS:
            raise ValueError(f"reasoning-gym task {task!r} has no difficulty presets (tasks with presets: "
                             f"{', '.join(sorted(PRESETS))}); set its config fields instead: "
                             f"{_describe_fields(config_cls)}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)} or None, got {difficulty!r}")
        values.update(PRESETS[task][difficulty])
    values.update(overrides)
    unknown = sorted(set(values) - field_names)
    if unknown:
        close = {u: difflib.get_close_matches(u, list(field_names), n=1) for u in unknown}
        hints = "; ".join(f"{u!r} (did you mean {c[0]!r}?)" if c else repr(u) for u, c in close.items())
        raise TypeError(f"reasoning-gym task {task!r} has no config field {hints}. Its fields: "
                        f"{_describe_fields(config_cls)}")
    if task == "composite" and isinstance(values.get("datasets"), list):
        from reasoning_gym.composite import DatasetSpec

        values["datasets"] = [DatasetSpec(**d) if isinstance(d, Mapping) else d for d in values["datasets"]]
    if "seed" in field_names:
        values["seed"] = 0  # item idx is then generated from Random(idx): the item seed is the index
    try:
        config = config_cls(**values)
        if callable(getattr(config, "validate", None)):
            config.validate()
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"invalid config for reasoning-gym task {task!r}: {exc or type(exc).__name__}. "
                         f"Its fields: {_describe_fields(config_cls)}") from exc
    return config


def get_dataset(task: str, config: Any) -> Any:
    """The process-wide rg dataset object for ``(task, config)``, built on first use."""
    key = (task, repr(config))
    with _CACHE_LOCK:
        dataset = _DATASETS.get(key)
        if dataset is None:
            dataset_cls, _ = _registry()[task]
            dataset = dataset_cls(config=copy.deepcopy(config))
            _DATASETS[key] = dataset
    return dataset


class _FiniteSplit(Sequence):
    """One split of a problem space too small for :class:`ProceduralSplit`'s hash-disjoint splits.

    Every distinct prompt is listed once, ordered by a stable hash, and dealt out round-robin (1 in 10 to
    validation, 1 in 10 to test, the rest to train), so the splits stay disjoint and ``len`` is honest.
    """

    def __init__(self, problems: list[Problem], split: str) -> None:
        ordered = sorted(problems, key=lambda p: _hash64("finite", p.prompt))
        slot = {"validation": 0, "test": 1}.get(split)
        self.split = split
        self._problems = [p for i, p in enumerate(ordered)
                          if (i % 10 == slot if slot is not None else i % 10 >= 2)]

    def __len__(self) -> int:
        return len(self._problems)

    def __getitem__(self, problem_id: int) -> Problem:  # type: ignore[override]
        return self._problems[problem_id]


#: Probes per curated task for a tiny problem space, and how many distinct prompts make a space "tiny".
_SPACE_PROBES = 64
_TINY_SPACE = 40
_ENUMERATE_LIMIT = 4000


def _get_split(task: str, config: Any, split: str, seed: int) -> Sequence[Problem]:
    key = (task, repr(config), split, seed)
    with _CACHE_LOCK:
        found = _SPLITS.get(key)
    if found is not None:
        return found
    dataset = get_dataset(task, config)
    pool = int(getattr(config, "size", 0) or len(dataset))

    def generate(index: int) -> Problem:
        for retry in range(16):
            # rg's maze generator raises RuntimeError when its random grid has no passage cell at all (small
            # grids at easy); such an item does not exist, so take the next index of a fixed sequence instead.
            item = index if retry == 0 else _hash64("retry", index, retry) % (1 << 31)
            try:
                try:
                    entry = dataset[item]
                except IndexError:  # a finite precomputed pool: wrap around it, deterministically
                    entry = dataset[item % pool]
                break
            except RuntimeError:
                if retry == 15:
                    raise
        return Problem(prompt=str(entry["question"]) + ANSWER_INSTRUCTION, answer=entry["answer"],
                       metadata={"entry": entry, "task": task, "index": item})

    made: Sequence[Problem] = ProceduralSplit(generate, seed=seed, split=split, size=SPLIT_SIZES[split])
    if task in PRESETS:  # curated generators are fast: check that the space is big enough for disjoint splits
        probes = {generate(i).prompt for i in range(_SPACE_PROBES)}
        if len(probes) < _TINY_SPACE:
            seen: dict[str, Problem] = {}
            stale = 0
            for index in range(_ENUMERATE_LIMIT):
                problem = generate(index)
                stale = stale + 1 if problem.prompt in seen else 0
                seen.setdefault(problem.prompt, problem)
                if stale >= 500:
                    break
            made = _FiniteSplit(list(seen.values()), split)
    with _CACHE_LOCK:
        return _SPLITS.setdefault(key, made)


# ----------------------------------------------------------------------------- answers
def extract_answer(response: str) -> tuple[str | None, str]:
    """The answer in a response and where it came from: ``("...", "tag")``, ``("...", "answer_line")``,
    or ``(None, "none")``. The last ``<answer>...</answer>`` wins; else everything after the last line that
    starts with ``Answer:`` (so multi-line answers such as grids work)."""
    from reasoning_gym.utils import extract_answer as rg_extract

    tagged = rg_extract(response, tag_name="answer", strip=True)
    if tagged is not None:
        return tagged, "tag"
    matches = list(_ANSWER_LINE.finditer(response))
    if matches:
        text = response[matches[-1].end():].strip()
        if text.startswith("**"):
            text = text[2:].strip()
        if text.endswith("**"):
            text = text[:-2].strip()
        return text, "answer_line"
    return None, "none"


def _show(value: Any, limit: int = 300) -> str:
    """A quoted, escaped, bounded rendering of a value for feedback (repr escapes surrogates and controls)."""
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= limit else text[: limit - 5] + "...'"


# ----------------------------------------------------------------------------- env
class ReasoningGymEnv(TextEnv):
    """A reasoning-gym task as a single-turn text env with the task's own scorer and explanatory feedback.

    ``ReasoningGymEnv(task, split, difficulty=None, seed=0, **task_config)``: ``task`` is any
    ``reasoning_gym.factory.DATASETS`` name and ``task_config`` its config fields (``seed`` is fixed to 0 so
    the item seed is the problem index; the env's ``seed`` picks a different stream of problems). The answer is
    read from the last ``<answer>...</answer>``, else from a final ``Answer: ...`` line; no answer is a
    ``format_error``. The reward is ``dataset.score_answer(answer, entry)`` (rg gives partial credit on some
    tasks); ``correct`` means a score of 1. Feedback names the expected answer and the required format.
    """

    card = EnvCard(
        summary="Any reasoning-gym task (task=name, plus its config fields), scored by the task's own scorer.",
        feedback_kinds=("correct", "incorrect", "format_error", "timeout", "error"),
        difficulty_knobs={"task": f"any reasoning_gym.factory.DATASETS name (default {DEFAULT_TASK})",
                          "**task_config": "that task's config fields",
                          "difficulty": "easy / medium / hard preset (curated tasks only)"},
        splits=dict(SPLIT_SIZES),
        data_source="reasoning-gym procedural generators (open-thought/reasoning-gym), generated on the fly",
        licence="Apache-2.0 (reasoning-gym)",
        notes="One dataset object per (task, config) per process, shared by all instances.",
    )

    def __init__(self, task: str | None = None, split: str = "train", *, difficulty: str | None = None,
                 seed: int = 0, max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS,
                 render_mode: str | None = None, step_deadline_s: float = DEFAULT_STEP_DEADLINE_S,
                 **task_config: Any) -> None:
        if task is None:
            raise ValueError("fst/ReasoningGym-v0 needs task=<name>, one of: " + ", ".join(task_names()))
        super().__init__(split, max_response_chars=max_response_chars, render_mode=render_mode,
                         step_deadline_s=step_deadline_s)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{self._name()}: seed must be an int, got {type(seed).__name__}")
        self.task = task
        self.difficulty = difficulty
        self.config = build_config(task, difficulty, **task_config)
        self.dataset = get_dataset(task, self.config)
        self._split = _get_split(task, self.config, split, seed)
        #: Whether answers are scored in the isolated worker (tasks whose scorer evaluates the answer).
        self.isolated = scorer_class(task) in ISOLATED_CLASSES
        if self.isolated:
            judging.warm()  # start-up (~1-2 s, once per process) here, not inside the first step's deadline

    def num_problems(self) -> int:
        return len(self._split)

    def load_problem(self, problem_id: int) -> Problem:
        return self._split[problem_id]

    def oracle_response(self) -> str | None:
        """The stored answer in tags, if the task's own scorer gives it 1 (some tasks store no usable answer)."""
        if self.problem is None or self.problem.answer is None:
            return None
        response = f"<answer>{self.problem.answer}</answer>"
        try:
            score = float(self.dataset.score_answer(str(self.problem.answer), self.problem.metadata["entry"]))
        except Exception:  # a scorer that cannot read its own answer knows no oracle
            return None
        return response if score >= 1.0 else None

    def judge(self, problem: Problem, response: str) -> Outcome:
        entry = problem.metadata["entry"]
        expected = entry.get("answer")
        if expected is None:
            expected_text = "This task accepts any valid solution (it stores no single reference answer)."
        else:
            expected_text = f"The expected answer is {_show(expected)}."
        answer, source = extract_answer(response)
        if answer is None:
            return Outcome(0.0, Verdict.FORMAT_ERROR,
                           f"Format error: no answer found (no <answer>...</answer> tags and no 'Answer:' line). "
                           f"{expected_text} {REQUIRED_FORMAT}",
                           hint=f"No answer found in your response. {REQUIRED_FORMAT}")
        if not answer:
            return Outcome(0.0, Verdict.FORMAT_ERROR,
                           f"Format error: the answer is empty. {expected_text} {REQUIRED_FORMAT}",
                           hint=f"Your answer was empty. {REQUIRED_FORMAT}")
        where = "inside <answer> tags" if source == "tag" else "on the 'Answer:' line"
        limit = max(4096, 4 * len(str(expected or "")))
        if len(answer) > limit:
            return Outcome(0.0, Verdict.INCORRECT,
                           f"Incorrect: the answer {where} is {len(answer):,} characters long, far longer than "
                           f"any answer to this question. {expected_text} {REQUIRED_FORMAT}",
                           hint=f"Your answer was far too long to be right. {REQUIRED_FORMAT}")
        rejected = answer_filter_error(self.task, answer, entry)
        if rejected is not None:
            return Outcome(0.0, Verdict.INCORRECT,
                           f"Incorrect: your answer {_show(answer)} {rejected}, so it was not scored. "
                           f"{expected_text} {REQUIRED_FORMAT}",
                           hint=f"Your answer was not accepted: it {rejected}. {REQUIRED_FORMAT}")
        try:
            score = self._score(answer, entry)
        except judging.JudgeTimeout:
            return timeout_outcome(self.step_deadline_s, "the task's scorer was stopped")
        except judging.JudgeError as exc:
            return Outcome(0.0, Verdict.INCORRECT,
                           f"Incorrect: the task's scorer could not read your answer {_show(answer)} "
                           f"({_show(str(exc), 120)}). {expected_text} {REQUIRED_FORMAT}",
                           hint=f"Your answer could not be read by the scorer. {REQUIRED_FORMAT}")
        except Exception as exc:  # rg scorers raise on some malformed answers (e.g. int('abc'))
            return Outcome(0.0, Verdict.INCORRECT,
                           f"Incorrect: the task's scorer could not read your answer {_show(answer)} "
                           f"({type(exc).__name__}: {_show(str(exc), 120)}). {expected_text} {REQUIRED_FORMAT}",
                           hint=f"Your answer could not be read by the scorer. {REQUIRED_FORMAT}")
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or not 0.0 <= score <= 1.0:
            return Outcome(0.0, Verdict.ERROR, f"Error: the task's scorer returned an invalid score {_show(score)}.",
                           hint=f"Your answer could not be scored. {REQUIRED_FORMAT}")
        score = min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0
        if score >= 1.0:
            return Outcome(1.0, Verdict.CORRECT, f"Correct: your answer {_show(answer)} scores 1.",
                           info={"score": score, "answer": answer}, hint="Your answer was correct.")
        if score > 0.0:
            head = (f"Partly correct (score {score:.2f} of 1): your answer {_show(answer)} is not fully right "
                    f"(the task gives partial credit for near misses).")
        else:
            head = f"Incorrect (score 0): your answer {_show(answer)} is wrong."
        verdict_hint = (f"Your answer was partly correct (score {score:.2f} of 1)." if score > 0.0
                        else "Your answer was incorrect.")
        return Outcome(score, Verdict.INCORRECT, f"{head} {expected_text} {REQUIRED_FORMAT}",
                       info={"score": score, "answer": answer}, hint=f"{verdict_hint} {REQUIRED_FORMAT}")

    def _score(self, answer: str, entry: dict[str, Any]) -> float:
        """The task's score for ``answer``: in the isolated worker for evaluating scorers, else in-process."""
        if not self.isolated:
            return float(self.dataset.score_answer(answer, entry))
        return judging.isolated_call("fst_env.judging:call_method", self.dataset, "score_answer", answer, entry,
                                     deadline_s=self.step_deadline_s, pickled=True)


def _curated_card(task: str, area: str, summary: str) -> EnvCard:
    knobs = {"difficulty": "preset easy / medium / hard (default: reasoning-gym's own defaults)"}
    for name in PRESETS[task]["easy"] | PRESETS[task]["medium"] | PRESETS[task]["hard"]:
        knobs[name] = f"reasoning-gym config field (hard preset: {PRESETS[task]['hard'].get(name, 'default')})"
    return EnvCard(
        summary=summary,
        feedback_kinds=("correct", "incorrect", "format_error", "timeout", "error"),
        difficulty_knobs=knobs,
        splits=dict(SPLIT_SIZES),
        data_source=f"reasoning-gym procedural generator '{task}' ({area}), generated on the fly",
        licence="Apache-2.0 (reasoning-gym)",
        notes=f"Same as fst/ReasoningGym-v0 with task={task!r}; any other config field of the task may be passed.",
    )


# The registered default task keeps `gym.make("fst/ReasoningGym-v0")` working for registry-wide tooling;
# constructing the class directly still requires a task.
register_env("fst/ReasoningGym-v0", ReasoningGymEnv, ReasoningGymEnv.card, kwargs={"task": DEFAULT_TASK})
for _env_id, (_task, _area, _summary) in CURATED.items():
    register_env(_env_id, ReasoningGymEnv, _curated_card(_task, _area, _summary), kwargs={"task": _task})
