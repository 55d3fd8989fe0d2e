"""Star-graph path finding: the FST paper's zero-reward-start task (after Bachmann & Nagarajan's star graph).

A star graph has a centre node and ``degree`` arms, each a chain of ``arm_length`` nodes leading away from the
centre. Nodes carry random integer labels and the directed edges (parent -> child) are listed in random
order. The task is the path from the centre to the leaf at the end of one arm. Choosing the first step needs
look-ahead (every arm starts the same way), so small models start at zero reward; tracing the target's parents
backwards solves it.

Answer format: a final line ``Path: 12,5,33,7`` (labels separated by commas; ``->`` and spaces also work).
Reward 1 only for the exact path; feedback names the first thing that goes wrong.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Any

from fst_env.cards import EnvCard, register_env
from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, Outcome, Problem, TextEnv, Verdict
from fst_env.presets import preset_config
from fst_env.splits import ProceduralSplit

SPLIT_SIZES: dict[str, int] = {"train": 100_000, "validation": 1_000, "test": 1_000}

_PATH_LINE = re.compile(r"\bpath[ \t]*(?:\*\*)?[ \t]*:([^\n]*)", re.IGNORECASE)  # the last one counts
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_SEPARATORS = re.compile(r"\s*(?:,|->|→|\s)\s*")


@dataclass
class StarGraphConfig:
    """Shape of the star graphs: ``degree`` arms of ``arm_length`` nodes, labels drawn from ``range(node_range)``."""

    degree: int = 3
    arm_length: int = 5
    node_range: int = 100

    def validate(self) -> None:
        for name in ("degree", "arm_length", "node_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"StarGraphConfig.{name} must be an int, got {type(value).__name__}")
        if self.degree < 2:
            raise ValueError(f"StarGraphConfig.degree must be >= 2 (one arm is a plain chain), got {self.degree}")
        if self.arm_length < 1:
            raise ValueError(f"StarGraphConfig.arm_length must be >= 1, got {self.arm_length}")
        nodes = 1 + self.degree * self.arm_length
        if nodes > 5000:
            raise ValueError(f"StarGraphConfig: degree * arm_length must be < 5000 (prompt size), got "
                             f"{self.degree} * {self.arm_length}")
        if self.node_range < nodes:
            raise ValueError(f"StarGraphConfig.node_range must be >= 1 + degree * arm_length = {nodes} so that "
                             f"labels are distinct, got {self.node_range}")


PRESETS: dict[str, StarGraphConfig] = {
    "easy": StarGraphConfig(degree=2, arm_length=3, node_range=50),
    "medium": StarGraphConfig(degree=3, arm_length=5, node_range=100),
    "hard": StarGraphConfig(degree=5, arm_length=8, node_range=200),
}


def make_config(difficulty: str | None = None, **overrides: Any) -> StarGraphConfig:
    """A validated config: the ``difficulty`` preset (default: medium) with ``overrides`` applied."""
    return preset_config("fst/StarGraph-v0", PRESETS, difficulty, overrides)


def generate_problem(config: StarGraphConfig, index: int) -> Problem:
    """Star graph ``index`` for ``config`` (deterministic in both)."""
    rng = random.Random(f"star-graph:{index}")
    labels = rng.sample(range(config.node_range), 1 + config.degree * config.arm_length)
    centre = labels[0]
    arms = [labels[1 + i * config.arm_length: 1 + (i + 1) * config.arm_length] for i in range(config.degree)]
    edges = [(centre, arm[0]) for arm in arms] + [(a, b) for arm in arms for a, b in itertools.pairwise(arm)]
    rng.shuffle(edges)
    target_arm = rng.randrange(config.degree)
    target = arms[target_arm][-1]
    path = [centre, *arms[target_arm]]
    edge_text = ", ".join(f"{a}->{b}" for a, b in edges)
    prompt = (
        f"Below are the directed edges of a star graph: a centre node with {config.degree} arms, each a chain of "
        f"{config.arm_length} node{'s' if config.arm_length > 1 else ''} leading away from the centre. Edges are "
        f"written parent->child, in random order:\n{edge_text}\n\n"
        f"Find the path from the centre node {centre} to the leaf node {target}. End your response with one line "
        f"of the form\nPath: {centre},...,{target}\nlisting every node on the path in order, separated by commas."
    )
    return Problem(prompt=prompt, answer=",".join(map(str, path)),
                   metadata={"centre": centre, "target": target, "path": path, "arms": arms, "edges": edges})


def parse_path(response: str) -> tuple[list[int] | None, str]:
    """The node labels on the last ``Path:`` line (else in the last ``<answer>`` tag), or ``(None, why)``."""
    lines = _PATH_LINE.findall(response)
    if lines:
        text = lines[-1]
    else:
        tags = _ANSWER_TAG.findall(response)
        if not tags:
            return None, "no 'Path:' line found"
        text = tags[-1]
    text = text.strip().strip("*`[]().").strip()
    if not text:
        return None, "the 'Path:' line is empty"
    tokens = [t for t in _SEPARATORS.split(text) if t]
    bad = [t for t in tokens if not re.fullmatch(r"[0-9]{1,9}", t)]
    if bad:
        shown = repr(bad[0]) if len(bad[0]) <= 40 else repr(bad[0][:40]) + "..."
        return None, f"{shown} on the 'Path:' line is not a node label (labels are whole numbers)"
    return [int(t) for t in tokens], ""


class StarGraphEnv(TextEnv):
    """Path from the centre of a random star graph to a given leaf; single turn, reward 1 for the exact path.

    ``StarGraphEnv(split, difficulty=None, seed=0, **config)`` with config fields ``degree``, ``arm_length``
    and ``node_range`` (see :class:`StarGraphConfig`; ``difficulty`` picks a preset, default medium). Verdicts:
    ``correct``, ``incorrect`` (a parsed path that is wrong: feedback names the first wrong step, a wrong start,
    a dead end or an early stop) and ``format_error`` (no parsable ``Path:`` line).
    """

    card = EnvCard(
        summary="Star-graph search: the path from the centre to a leaf, given shuffled edges (zero-reward start).",
        feedback_kinds=("correct", "incorrect", "format_error"),
        difficulty_knobs={"difficulty": "easy (2 arms x 3) / medium (3 x 5) / hard (5 x 8)",
                          "degree": "number of arms", "arm_length": "nodes per arm",
                          "node_range": "labels are drawn from range(node_range)"},
        splits=dict(SPLIT_SIZES),
        data_source="procedural (random labels and edge order per problem)",
        licence="Apache-2.0 (generated by fst-env)",
        notes="After Bachmann & Nagarajan (2024); used in the FST paper's zero-reward-start study.",
    )

    def __init__(self, split: str = "train", *, difficulty: str | None = None, seed: int = 0,
                 max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, render_mode: str | None = None,
                 **config: Any) -> None:
        super().__init__(split, max_response_chars=max_response_chars, render_mode=render_mode)
        self.config = make_config(difficulty, **config)
        self.problems = ProceduralSplit(lambda index: generate_problem(self.config, index), seed=seed,
                                         split=split, size=SPLIT_SIZES[split])

    def oracle_response(self) -> str | None:
        return None if self.problem is None else f"Path: {self.problem.answer}"

    def judge(self, problem: Problem, response: str) -> Outcome:
        meta = problem.metadata
        centre, target, solution = meta["centre"], meta["target"], meta["path"]
        example = f"Path: {centre},...,{target}"
        path, why = parse_path(response)
        if path is None:
            feedback = (f"Format error: {why}. End your response with a line like '{example}' listing every "
                        f"node from the centre {centre} to the target {target}, separated by commas.")
            return Outcome(0.0, Verdict.FORMAT_ERROR, feedback, hint=feedback)  # names no node of the path
        if path == solution:
            return Outcome(1.0, Verdict.CORRECT, f"Correct: {','.join(map(str, path))} is the path from the centre "
                                                 f"{centre} to {target}.")
        mistake = self._first_mistake(path, meta)
        tip = f"(Tip: trace the edges backwards from {target} to the centre, then write the path forwards.)"
        # The hint is the first mistake (about the policy's own path and edges the prompt lists), not the path.
        return Outcome(0.0, Verdict.INCORRECT, f"Incorrect: {mistake} The correct path is {problem.answer}. {tip}",
                       info={"path": path}, hint=f"Incorrect: {mistake} {tip}")

    @staticmethod
    def _first_mistake(path: list[int], meta: dict[str, Any]) -> str:
        centre, target, arms = meta["centre"], meta["target"], meta["arms"]
        parent = {b: a for a, b in meta["edges"]}
        children: dict[int, list[int]] = {}
        for a, b in meta["edges"]:
            children.setdefault(a, []).append(b)
        arm_of = {node: arm for arm in arms for node in arm}
        if path == list(reversed(meta["path"])):
            return f"the path is reversed: it must start at the centre {centre} and end at the target {target}."
        if path[0] != centre:
            return f"the path starts at {path[0]} but must start at the centre {centre}."
        for a, b in itertools.pairwise(path):
            if b not in parent and b != centre:
                return f"node {b} is not in the graph (after {a})."
            if parent.get(a) == b:
                return f"the step {a}->{b} goes back towards the centre; every edge leads away from it."
            if parent.get(b) != a:
                if a not in children:
                    return f"edge {a}->{b} does not exist: {a} is a leaf, no edge leaves it."
                outs = ", ".join(map(str, sorted(children[a])))
                return f"edge {a}->{b} does not exist (the edges out of {a} go to {outs})."
        last = path[-1]
        if last == centre:
            return f"the path stops at the centre {centre} without reaching the target {target}."
        if arm_of[last] is not arm_of[target]:
            arm = arm_of[last]
            if last == arm[-1]:
                return (f"you reached {last}, which is a dead end at the end of another arm (the arm "
                        f"{centre}->{arm[0]}); the target {target} is on a different arm.")
            return f"the path stops at {last}, on the arm {centre}->{arm[0]}, which does not lead to {target}."
        remaining = len(arm_of[target]) - 1 - arm_of[target].index(last)
        return (f"the path stops at {last} before reaching the target {target} ({remaining} more "
                f"step{'s' if remaining > 1 else ''} needed).")


register_env("fst/StarGraph-v0", StarGraphEnv, StarGraphEnv.card)
