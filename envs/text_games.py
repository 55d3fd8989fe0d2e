"""Multi-agent text games on PettingZoo's AEC API, and their single-seat Gymnasium ids.

- :class:`WordGuessGame` (cooperative): a describer sees a secret word from a procedurally drawn list of
  candidates of one category and gives one clue per round without using the word or any run of its letters;
  the guesser guesses. Both get reward 1 when the guess is right within ``max_rounds`` rounds.
- :class:`BargainGame` (competitive): two players split a pool of items they value privately, by alternating
  offers under a deadline. Each player's payoff is the worth of its share to it, in [0, 1]; no deal pays 0.

Scripted players (:class:`ScriptedDescriber`, :class:`ScriptedGuesser`, :class:`ConcedingBargainer` and the
role-dispatching :func:`scripted_player`) read nothing but their observation, so any seat can be played by a
script, an LLM or a person. The gym ids put the learner in one seat against a scripted partner through
:class:`fst_env.wrappers.single_seat.SingleSeat`: ``fst/WordGuess-v0`` (guesser), ``fst/WordDescribe-v0``
(describer) and ``fst/Bargain-v0`` (player_0).
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, TypeVar

from fst_env.cards import EnvCard, register_env
from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, Problem, Verdict
from fst_env.multiagent import MoveResult, TextAECEnv
from fst_env.splits import ProceduralSplit
from fst_env.wrappers.single_seat import SingleSeat

SPLIT_SIZES = {"train": 50_000, "validation": 1_000, "test": 1_000}

# Everyday nouns grouped by category, written for this module (single lowercase ASCII words, no word in two
# categories). The describer's clue rules and the scripted players work on their letters.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "orange", "peach", "pear",
              "plum", "kiwi", "lime", "papaya", "apricot", "coconut"),
    "animal": ("tiger", "horse", "rabbit", "zebra", "camel", "donkey", "monkey", "otter", "panda", "sheep",
               "whale", "eagle", "shark", "mouse", "snake", "turtle"),
    "vegetable": ("carrot", "potato", "onion", "garlic", "celery", "pepper", "cabbage", "spinach", "radish",
                  "pumpkin", "lettuce", "turnip", "leek", "pea", "bean", "corn"),
    "tool": ("hammer", "wrench", "drill", "chisel", "pliers", "shovel", "ladder", "rake", "axe", "clamp",
             "trowel", "mallet", "scissors", "hoe", "spanner", "crowbar"),
    "musical instrument": ("piano", "guitar", "violin", "flute", "drum", "trumpet", "harp", "cello", "banjo",
                           "oboe", "organ", "tuba", "clarinet", "ukulele", "trombone", "harmonica"),
    "vehicle": ("bicycle", "truck", "train", "tractor", "scooter", "canoe", "yacht", "taxi", "bus", "tram",
                "van", "ferry", "glider", "rocket", "sled", "wagon"),
    "clothing": ("shirt", "jacket", "scarf", "glove", "sock", "boot", "sweater", "skirt", "hat", "coat", "belt",
                 "vest", "apron", "sandal", "hoodie", "tie"),
    "sport": ("tennis", "soccer", "rugby", "golf", "hockey", "boxing", "rowing", "judo", "karate", "cricket",
              "skiing", "surfing", "archery", "fencing", "cycling", "diving"),
}

ITEM_TYPES: tuple[str, ...] = ("book", "hat", "ball", "apple", "coin", "lamp", "pen", "cup", "shell", "key",
                               "card", "kite")

VOWELS = frozenset("aeiou")
_NUMBER_WORDS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine", "ten", "eleven", "twelve"))}


# ----------------------------------------------------------------------------------------------- text helpers
def fold(text: str) -> str:
    """Case- and accent-insensitive form of ``text`` (NFKD, combining marks dropped, casefolded)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe to echo in feedback: one line, control characters and lone surrogates escaped, capped."""
    out = []
    for ch in " ".join(text.split()):
        category = unicodedata.category(ch)
        out.append(ch.encode("unicode_escape").decode("ascii") if category in ("Cc", "Cs", "Cf") else ch)
    flat = "".join(out)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", fold(text))


def leaked_piece(clue: str, secret: str, min_len: int) -> str | None:
    """The part of ``secret`` that ``clue`` gives away, or None when the clue is clean.

    A clue leaks when a word of it (its letters, ignoring case, accents and punctuation inside the word)
    contains the secret or any run of ``min(min_len, len(secret))`` of its letters, or when single letters
    separated by spaces spell the secret out ("b a n a n a").
    """
    word = fold(secret)
    n = min(min_len, len(word))
    pieces = [word[i:i + n] for i in range(len(word) - n + 1)]
    chunks = ["".join(ch for ch in chunk if ch.isalpha()) for chunk in fold(clue).split()]
    for chunk in chunks:
        for piece in pieces:
            if piece in chunk:
                return f"{piece!r} (in {chunk!r})" if piece != chunk else repr(piece)
    spelled, runs = "", []
    for chunk in chunks:
        if len(chunk) == 1:
            spelled += chunk
        elif chunk:  # a longer word ends a run of single letters; punctuation alone ("-") does not
            runs.append(spelled)
            spelled = ""
    runs.append(spelled)
    if any(word in run for run in runs):
        return f"{word!r} spelled out letter by letter"
    return None


# ----------------------------------------------------------------------------------------------- clue features
# A feature is (kind, value): ("length", 5), ("first", "b"), ("last", "a"), ("contains", "n"), ("lacks", "o"),
# ("vowels", 3). Scripted describers state features; scripted guessers parse them back out of any clue text.
Feature = tuple[str, Any]

CLUE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "length": ("It has {} letters.", "The word is {} characters long."),
    "first": ("It starts with the letter '{}'.", "Its first character is '{}'."),
    "last": ("It ends with the letter '{}'.", "Its final character is '{}'."),
    "contains": ("It contains the letter '{}'.", "One of its characters is '{}'."),
    "lacks": ("It does not contain the letter '{}'.", "None of its characters is '{}'."),
    "vowels": ("It has {} vowels.", "The count of vowels in it is {}."),
}

_Q = "['\"‘’“”`]?"
_NUM = r"(\d+|" + "|".join(_NUMBER_WORDS) + r")"
_LETTER = rf"(?:the |an? )?(?:letter |character )?{_Q}([a-z]){_Q}(?![a-z])"
_FEATURE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("lacks", re.compile(rf"(?:does not|doesn't|does n't|do not|don't) (?:contain|have|include|use) {_LETTER}")),
    ("lacks", re.compile(rf"none of its (?:letters|characters) is {_Q}([a-z]){_Q}(?![a-z])")),
    ("length", re.compile(rf"\b{_NUM}[ -]?(?:letters?|characters?|chars)\b")),
    ("first", re.compile(rf"(?:starts|begins|starting|beginning) with {_LETTER}")),
    ("first", re.compile(rf"first (?:letter|character) is {_Q}([a-z]){_Q}(?![a-z])")),
    ("last", re.compile(rf"(?:ends|ending) with {_LETTER}")),
    ("last", re.compile(rf"(?:last|final) (?:letter|character) is {_Q}([a-z]){_Q}(?![a-z])")),
    ("contains", re.compile(r"(?:contains|has|includes|uses) (?:the |an? )?(?:letter|character) "
                            rf"{_Q}([a-z]){_Q}(?![a-z])")),
    ("contains", re.compile(rf"(?:contains|includes) {_Q}([a-z]){_Q}(?![a-z])")),
    ("contains", re.compile(rf"one of its (?:letters|characters) is {_Q}([a-z]){_Q}(?![a-z])")),
    ("vowels", re.compile(rf"\b{_NUM} vowels?\b")),
    ("vowels", re.compile(rf"vowels in it is {_NUM}\b")),
)


def word_features(word: str) -> list[Feature]:
    """Every feature true of ``word``, in a fixed order."""
    feats: list[Feature] = [("length", len(word)), ("first", word[0]), ("last", word[-1]),
                            ("vowels", sum(ch in VOWELS for ch in word))]
    feats += [("contains", ch) for ch in sorted(set(word))]
    feats += [("lacks", ch) for ch in "abcdefghijklmnopqrstuvwxyz" if ch not in word]
    return feats


def feature_holds(word: str, feature: Feature) -> bool:
    """Whether ``word`` has ``feature``."""
    kind, value = feature
    if kind == "length":
        return len(word) == value
    if kind == "first":
        return word[:1] == value
    if kind == "last":
        return word[-1:] == value
    if kind == "contains":
        return value in word
    if kind == "lacks":
        return value not in word
    if kind == "vowels":
        return sum(ch in VOWELS for ch in word) == value
    raise ValueError(f"unknown clue feature kind {kind!r}")


def parse_features(clue: str) -> list[Feature]:
    """The features a clue states, as far as the fixed phrasings of :data:`CLUE_TEMPLATES` and close variants go."""
    text = fold(clue).replace("’", "'")
    found: list[Feature] = []
    for kind, pattern in _FEATURE_PATTERNS:
        for match in pattern.finditer(text):
            raw = match.group(1)
            value: Any = int(raw) if raw.isdigit() else _NUMBER_WORDS.get(raw, raw)
            found.append((kind, value))
        if kind == "lacks":
            text = pattern.sub(" ", text)  # so "does not contain 'x'" is not read again as "contains 'x'"
    return list(dict.fromkeys(found))


# ============================================================================================== WordGuess
@dataclass
class WordGuessConfig:
    """Which word-guessing games are drawn and their rules (the difficulty knobs of fst/WordGuess-v0)."""

    num_candidates: int = 6
    max_rounds: int = 3
    min_leak_len: int = 4
    max_clue_chars: int = 300
    show_candidates: bool = True
    categories: tuple[str, ...] = tuple(CATEGORIES)
    data_seed: int = 0
    split_sizes: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        self.categories = tuple(self.categories)
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if not self.categories or unknown:
            raise ValueError(f"WordGuessConfig.categories must be a non-empty subset of {list(CATEGORIES)}, "
                             f"got unknown {unknown or 'none (empty)'}")
        smallest = min(len(CATEGORIES[c]) for c in self.categories)
        if not 2 <= self.num_candidates <= smallest:
            raise ValueError(f"WordGuessConfig.num_candidates must be in [2, {smallest}], got {self.num_candidates}")
        if not 1 <= self.max_rounds <= 20:
            raise ValueError(f"WordGuessConfig.max_rounds must be in [1, 20], got {self.max_rounds}")
        if self.min_leak_len < 2:
            raise ValueError(f"WordGuessConfig.min_leak_len must be >= 2, got {self.min_leak_len}")
        if self.max_clue_chars < 20:
            raise ValueError(f"WordGuessConfig.max_clue_chars must be >= 20, got {self.max_clue_chars}")
        _validate_sizes("WordGuessConfig", self.split_sizes)


def _validate_sizes(name: str, sizes: dict[str, int]) -> None:
    for split in ("train", "validation", "test"):
        if not isinstance(sizes.get(split), int) or sizes[split] < 1:
            raise ValueError(f"{name}.split_sizes[{split!r}] must be a positive int, got {sizes.get(split)!r}")


def _config(cls: type, config: Any, overrides: dict[str, Any]) -> Any:
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    if overrides:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"{cls.__name__} has no fields {unknown}; its fields are {sorted(names)}")
        config = cls(**{**{f.name: getattr(config, f.name) for f in fields(cls)}, **overrides})
    config.validate()
    return config


_ConfigT = TypeVar("_ConfigT")


class _DrawnGame(TextAECEnv, Generic[_ConfigT]):
    """A game whose problems are drawn from its config: the constructor and problem hooks every game here shares.

    ``Game(config=None, *, split, max_response_chars, render_mode, **overrides)``: ``config`` (default:
    ``config_class()``) with ``overrides`` applied, validated, becomes :attr:`config`; its ``data_seed`` and
    ``split_sizes`` lay out the split. Subclasses set :attr:`roles` and :attr:`config_class` and implement
    :meth:`_generate`.
    """

    roles: ClassVar[tuple[str, ...]]
    config_class: ClassVar[type]

    def __init__(self, config: _ConfigT | None = None, *, split: str = "train",
                 max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, render_mode: str | None = None,
                 **overrides: Any) -> None:
        super().__init__(self.roles, split, max_response_chars=max_response_chars, render_mode=render_mode)
        self.config: _ConfigT = _config(self.config_class, config, overrides)
        self._problems = ProceduralSplit(self._generate, seed=self.config.data_seed, split=split,
                                         size=self.config.split_sizes[split])

    def num_problems(self) -> int:
        return len(self._problems)

    def load_problem(self, problem_id: int) -> Problem:
        return self._problems[problem_id]

    def _generate(self, index: int) -> Problem:
        """The problem for generator index ``index``, deterministic in it (the split picks which indices it uses)."""
        raise NotImplementedError


class WordGuessGame(_DrawnGame[WordGuessConfig]):
    """Cooperative word game: the describer clues a secret word, the guesser names it within a few rounds.

    Each round the describer moves (a clue) and then the guesser (a guess). A clue is withheld, with feedback
    saying why, when it is empty, longer than ``max_clue_chars`` or leaks the word (:func:`leaked_piece`); the
    guesser then guesses without it. A guess is the last candidate word in the reply (the last word when none
    is a candidate). A right guess ends the game with reward 1 for both; running out of rounds ends it with 0.
    Verdicts: an accepted clue is ``correct``, a leaking clue ``incorrect``, an empty or oversized move
    ``format_error``; a wrong guess ``incorrect``, and the describer's clue that led to it turns ``incorrect``
    too, with feedback naming the guess; at the end both get ``correct`` (found) or ``incorrect``.
    """

    metadata: ClassVar[dict[str, Any]] = {**TextAECEnv.metadata, "name": "word_guess_v0"}
    roles = ("describer", "guesser")
    config_class = WordGuessConfig

    # ----------------------------------------------------------------- problems
    def _generate(self, index: int) -> Problem:
        rng = random.Random(index)
        category = rng.choice(self.config.categories)
        candidates = rng.sample(CATEGORIES[category], self.config.num_candidates)
        secret = rng.choice(candidates)
        # The hashed text names the whole instance, so no instance appears in two splits.
        prompt = f"word_guess | category={category} | candidates={','.join(candidates)} | secret={secret}"
        return Problem(prompt=prompt, answer=secret, metadata={"category": category, "candidates": candidates})

    # ----------------------------------------------------------------- game
    def start_game(self, problem: Problem) -> None:
        self.secret: str = problem.answer
        self.category: str = problem.metadata["category"]
        self.candidates: list[str] = list(problem.metadata["candidates"])
        self.round = 1
        self.clues: list[str | None] = []  # per round: the clue shown, or None when it was withheld
        self.guesses: list[str | None] = []  # per round: the guess, or None when no word was given
        self.feedback: dict[str, str] = {}
        self.clue_result: tuple[Verdict, str] = (Verdict.CORRECT, "")  # verdict and feedback of the last clue
        self.outcome: str | None = None

    def play(self, agent: str, action: str) -> MoveResult:
        if agent == "describer":
            clue = " ".join(action.split())
            if not clue:
                return self.wasted_move(agent, Verdict.FORMAT_ERROR, "Format error: the clue is empty. Reply "
                                        "with a short clue that describes the secret word without naming it.")
            if len(clue) > self.config.max_clue_chars:
                return self.wasted_move(agent, Verdict.FORMAT_ERROR,
                                        f"Format error: the clue has {len(clue)} characters, over the limit of "
                                        f"{self.config.max_clue_chars}. The clue was withheld.")
            leak = leaked_piece(clue, self.secret, self.config.min_leak_len)
            if leak is not None:
                return self.wasted_move(agent, Verdict.INCORRECT,
                                        f"Clue rejected: it contains {leak}, part of the secret word "
                                        f"{self.secret!r}; clues may not contain the word or any "
                                        f"{self._leak_len()} of its letters in a row. The guesser was told the "
                                        "clue was withheld.")
            self.clues.append(clue)
            return self._note(agent, Verdict.CORRECT, f"Clue accepted and shown to the guesser: {printable(clue)!r}.")
        words = _words(action)
        pool = {fold(w) for w in self._guess_pool()}
        guess = next((w for w in reversed(words) if w in pool), words[-1] if words else None)
        if guess is None:
            return self.wasted_move(agent, Verdict.FORMAT_ERROR, "Format error: the reply holds no word to take "
                                    "as a guess. Reply with one word, the secret word you guess.")
        self.guesses.append(guess)
        if guess == fold(self.secret):
            return self._finish(found=True)
        listed = "" if guess in pool else " It is not one of the candidate words."
        return self._end_round(agent, Verdict.INCORRECT, f"Your guess {guess!r} is not the secret word.{listed}")

    def wasted_move(self, agent: str, verdict: Verdict, reason: str) -> MoveResult:
        if agent == "describer":
            self.clues.append(None)
            return self._note(agent, verdict, reason)
        self.guesses.append(None)
        return self._end_round(agent, verdict, reason)

    def _note(self, agent: str, verdict: Verdict, feedback: str) -> MoveResult:
        self.feedback[agent] = feedback
        if agent == "describer":
            self.clue_result = (verdict, feedback)
        return MoveResult({agent: feedback}, {agent: verdict})

    def _end_round(self, agent: str, verdict: Verdict, feedback: str) -> MoveResult:
        if self.round >= self.config.max_rounds:
            return self._finish(found=False, last=feedback)
        self.round += 1
        left = self.config.max_rounds - self.round + 1
        rounds_left = f"{left} round{'s' * (left > 1)} left"
        # The describer learns what its clue led to: a clue that did not get the word found is not a success.
        clue_verdict, clue_feedback = self.clue_result
        guess = self.guesses[-1]
        led_to = f"the guesser guessed {guess!r}, which is wrong" if guess else "the guesser gave no usable guess"
        feedback = {agent: f"{feedback} {rounds_left.capitalize()}.",
                    "describer": f"{clue_feedback} Then {led_to}; {rounds_left}."}
        self.feedback.update(feedback)
        verdicts = {agent: verdict,
                    "describer": Verdict.INCORRECT if clue_verdict is Verdict.CORRECT else clue_verdict}
        return MoveResult(feedback, verdicts)

    def _finish(self, *, found: bool, last: str = "") -> MoveResult:
        tried = ", ".join(g for g in self.guesses if g) or "none"
        if found:
            self.outcome = f"found {self.secret!r} in round {self.round} of {self.config.max_rounds}"
            feedback = {"guesser": f"Correct: {self.secret!r} is the secret word, found in round {self.round} "
                                   f"of {self.config.max_rounds}. Both players get reward 1.",
                        "describer": f"The guesser found {self.secret!r} in round {self.round} from your clues. "
                                     "Both players get reward 1."}
        else:
            self.outcome = f"did not find {self.secret!r} in {self.config.max_rounds} rounds"
            feedback = {"guesser": f"{last} Out of rounds: the secret word was {self.secret!r} (your guesses: "
                                   f"{tried}). Both players get reward 0.",
                        "describer": f"The guesser did not find {self.secret!r} in {self.config.max_rounds} "
                                     f"rounds (guesses: {tried}). Both players get reward 0."}
            if self.clue_result[0] is not Verdict.CORRECT:  # keep the reason the last clue was withheld
                feedback["describer"] = f"{self.clue_result[1]} {feedback['describer']}"
        verdict = Verdict.CORRECT if found else Verdict.INCORRECT
        self.feedback.update(feedback)
        reward = 1.0 if found else 0.0
        return MoveResult(feedback, dict.fromkeys(self.roles, verdict), dict.fromkeys(self.roles, reward),
                          game_over=True)

    def oracle_move(self, agent: str) -> str | None:
        """The guesser's oracle is the secret word; the describer's is the strong scripted clue, which the
        scripted guesser always solves in one round (tests check this over many problems)."""
        if self.outcome is not None or agent != self.agent_selection:
            return None
        if agent == "guesser":
            return self.secret
        return ScriptedDescriber("strong", self.config.min_leak_len)(self.view(agent))

    def _guess_pool(self) -> tuple[str, ...]:
        return tuple(self.candidates) if self.config.show_candidates else CATEGORIES[self.category]

    def _leak_len(self) -> int:
        return min(self.config.min_leak_len, len(self.secret))

    # ----------------------------------------------------------------- views
    def _history(self) -> list[str]:
        lines = []
        for i, clue in enumerate(self.clues):
            shown = printable(clue) if clue is not None else "none (the describer's clue broke the rules and " \
                                                             "was withheld)"
            lines.append(f"- Round {i + 1} clue: {shown}")
            if i < len(self.guesses):
                guess = self.guesses[i]
                verdict = "right" if guess == fold(self.secret) else "wrong"
                lines.append(f"- Round {i + 1} guess: {guess} ({verdict})" if guess is not None
                             else f"- Round {i + 1} guess: none (no word given)")
        return lines

    def view(self, agent: str) -> str:
        c = self.config
        rounds = f"{c.max_rounds} round{'s' * (c.max_rounds > 1)}"
        lines = [f"Game: word_guess. Role: {agent}."]
        if agent == "describer":
            lines += [f"You are the describer in a cooperative word game. You know the secret word; the guesser "
                      f"does not. Each round you give one clue, then the guesser guesses. You both get reward 1 "
                      f"if the guesser names the secret word within {rounds}.",
                      f"Secret word: {self.secret}",
                      f"Category: {self.category}",
                      (f"Candidates shown to the guesser: {', '.join(self.candidates)}" if c.show_candidates
                       else "The guesser sees only the category, not a list of candidates."),
                      f"Rules for clues: a clue may not contain the secret word or any {self._leak_len()} of its "
                      f"letters in a row (case and accents are ignored), and may be at most {c.max_clue_chars} "
                      "characters long. A clue that breaks a rule is withheld from the guesser."]
        else:
            lines += [f"You are the guesser in a cooperative word game. Your partner, the describer, knows a "
                      f"secret word and gives one clue per round without saying it. You both get reward 1 if you "
                      f"name the secret word within {rounds}.",
                      f"Category: {self.category}"]
            if c.show_candidates:
                lines.append(f"Candidates: {', '.join(self.candidates)} (the secret word is one of these)")
        history = self._history()
        lines += ["History:", *history] if history else ["History: none yet."]
        if agent in self.feedback:
            lines.append(f"Feedback on your last move: {self.feedback[agent]}")
        if self.outcome is not None:
            lines.append(f"The game is over: the guesser {self.outcome}.")
        elif self.agent_selection != agent:
            lines.append(f"Waiting for the {self.agent_selection}.")
        elif agent == "describer":
            lines.append(f"Round {self.round} of {c.max_rounds}: give your clue. Reply with the clue only.")
        else:
            lines.append(f"Round {self.round} of {c.max_rounds}: the describer's clue is above. Reply with one "
                         "word: your guess.")
        return "\n".join(lines)

    def transcript(self) -> str:
        head = f"word_guess: secret {self.secret!r} ({self.category}), candidates {', '.join(self.candidates)}"
        tail = [f"Result: the guesser {self.outcome}."] if self.outcome else []
        return "\n".join([head, *self._history(), *tail])


# ============================================================================================== Bargain
@dataclass
class BargainConfig:
    """Which bargaining games are drawn and their rules (the difficulty knobs of fst/Bargain-v0)."""

    num_item_types: int = 3
    max_count: int = 3
    total_value: int = 10
    max_turns: int = 6
    data_seed: int = 0
    split_sizes: dict[str, int] = field(default_factory=lambda: dict(SPLIT_SIZES))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if not 2 <= self.num_item_types <= len(ITEM_TYPES):
            raise ValueError(f"BargainConfig.num_item_types must be in [2, {len(ITEM_TYPES)}], "
                             f"got {self.num_item_types}")
        if not 1 <= self.max_count <= 9:
            raise ValueError(f"BargainConfig.max_count must be in [1, 9], got {self.max_count}")
        if not 4 <= self.total_value <= 100:
            raise ValueError(f"BargainConfig.total_value must be in [4, 100], got {self.total_value}")
        if not 2 <= self.max_turns <= 40:
            raise ValueError(f"BargainConfig.max_turns must be in [2, 40], got {self.max_turns}")
        _validate_sizes("BargainConfig", self.split_sizes)


def _counts_text(items: list[str], counts: list[int] | tuple[int, ...]) -> str:
    return " ".join(f"{item}={n}" for item, n in zip(items, counts, strict=True))


class BargainGame(_DrawnGame[BargainConfig]):
    """Competitive bargaining: two players split items they value privately by alternating offers.

    ``player_0`` moves first; there are at most ``max_turns`` moves. A move is the reply's last non-empty line:
    ``propose book=2 hat=0 ball=1`` (the counts the proposer keeps; the other player gets the rest) or
    ``accept`` (take the other player's standing offer, which ends the game with a deal). A player's payoff is
    the worth of its share under its own values divided by ``total_value`` (every player's values add up to
    ``total_value`` over all items), so payoffs lie in [0, 1]; no deal by the last move pays both 0. An
    unreadable move is a ``format_error`` and an impossible one (bad counts, unknown items, nothing to accept)
    is ``incorrect``: either way the turn is lost and the standing offer stays. A legal proposal is
    ``correct`` until the other player answers it with a proposal of its own, which rejects it: then its
    proposer gets ``incorrect`` and feedback naming the counter-offer. At the end both get ``correct`` (deal) or
    ``timeout`` (no deal).
    """

    metadata: ClassVar[dict[str, Any]] = {**TextAECEnv.metadata, "name": "bargain_v0"}
    roles = ("player_0", "player_1")
    config_class = BargainConfig

    # ----------------------------------------------------------------- problems
    def _generate(self, index: int) -> Problem:
        c = self.config
        rng = random.Random(index)
        for _ in range(2_000):
            items = rng.sample(ITEM_TYPES, c.num_item_types)
            counts = [rng.randint(1, c.max_count) for _ in items]
            values = [self._valuation(rng, counts) for _ in self.roles]
            # Rejection sampling: both valuations must exist and differ, or there is nothing to trade.
            if values[0] is not None and values[1] is not None and values[0] != values[1]:
                break
        else:
            raise RuntimeError(f"BargainGame: no valuation found for problem index {index} under {c}")
        valuations = dict(zip(self.roles, values, strict=True))
        prompt = (f"bargain | items: {_counts_text(items, counts)} | "
                  + " | ".join(f"{r} values: {_counts_text(items, v)}" for r, v in valuations.items()))
        return Problem(prompt=prompt, answer=None, metadata={"items": items, "counts": counts, "values": valuations})

    def _valuation(self, rng: random.Random, counts: list[int]) -> list[int] | None:
        total = self.config.total_value
        for _ in range(200):
            values = [rng.randint(0, total // n) for n in counts]
            if sum(v * n for v, n in zip(values, counts, strict=True)) == total and sum(v > 0 for v in values) >= 2:
                return values
        return None

    # ----------------------------------------------------------------- game
    def start_game(self, problem: Problem) -> None:
        self.items: list[str] = list(problem.metadata["items"])
        self.counts: list[int] = list(problem.metadata["counts"])
        self.values: dict[str, list[int]] = {r: list(v) for r, v in problem.metadata["values"].items()}
        self.offer: tuple[str, tuple[int, ...]] | None = None  # (proposer, counts the proposer keeps)
        self.log: list[str] = []
        self.feedback: dict[str, str] = {}
        self.outcome: str | None = None

    def other(self, agent: str) -> str:
        """The opponent of ``agent``."""
        return self.roles[1 - self.roles.index(agent)]

    def worth(self, agent: str, share: tuple[int, ...] | list[int]) -> int:
        """What ``share`` (counts per item) is worth to ``agent``."""
        return sum(v * n for v, n in zip(self.values[agent], share, strict=True))

    def play(self, agent: str, action: str) -> MoveResult:
        lines = [line for line in action.splitlines() if line.strip()]
        last = fold(lines[-1]) if lines else ""
        match = re.search(r"\b(accept|propose)\b", last)
        if match is None:
            return self.wasted_move(agent, Verdict.FORMAT_ERROR,
                                    f"Format error: the last line of your reply ({printable(last, 80)!r}) is "
                                    f"neither 'accept' nor 'propose {self._template()}'. Put exactly one move on "
                                    "the last line.")
        if match.group(1) == "accept":
            if self.offer is None:
                return self.wasted_move(agent, Verdict.INCORRECT, "Invalid move: there is no standing offer to "
                                        f"accept yet. Propose a split instead: propose {self._template()}.")
            if self.offer[0] == agent:
                return self.wasted_move(agent, Verdict.INCORRECT, "Invalid move: the standing offer is your own, "
                                        f"so only {self.other(agent)} can accept it. Propose again or wait.")
            return self._deal(agent)
        keep, problem = self._parse_offer(last[match.end():])
        if keep is None:
            return self.wasted_move(agent, Verdict.INCORRECT,
                                    f"Invalid offer {printable(last, 80)!r}: {problem}. Write the counts you keep "
                                    f"for every item, e.g. propose {self._template()}.")
        rejected = self.offer if self.offer is not None and self.offer[0] != agent else None
        self.offer = (agent, keep)
        rest = tuple(n - k for n, k in zip(self.counts, keep, strict=True))
        self.log.append(f"- Move {self.moves + 1}, {agent}: proposed to keep {_counts_text(self.items, keep)}, "
                        f"leaving {_counts_text(self.items, rest)} to {self.other(agent)}")
        feedback = (f"Offer recorded: you keep {_counts_text(self.items, keep)} (worth {self.worth(agent, keep)} "
                    f"of your {self.config.total_value} points) and {self.other(agent)} would get "
                    f"{_counts_text(self.items, rest)}.")
        if self.moves + 1 >= self.config.max_turns:
            return self._no_deal(agent, feedback + " But this was the last move, so nobody can "
                                 "accept it.")
        notes, verdicts = {agent: feedback}, {agent: Verdict.CORRECT}
        if rejected is not None:
            # Proposing instead of accepting rejects the standing offer; its proposer hears how.
            other = self.other(agent)
            notes[other] = (f"{agent} rejected your offer (you keep {_counts_text(self.items, rejected[1])}) and "
                            f"proposed that you get {_counts_text(self.items, rest)}, worth "
                            f"{self.worth(other, rest)} of your {self.config.total_value} points.")
            verdicts[other] = Verdict.INCORRECT
        self.feedback.update(notes)
        return MoveResult(notes, verdicts)

    def _parse_offer(self, text: str) -> tuple[tuple[int, ...] | None, str]:
        given: dict[str, int] = {}
        for name, number in re.findall(r"([^\W\d_]+)\s*[=:]\s*(\d+)", text):
            item = name if name in self.items else name[:-1] if name.endswith("s") and name[:-1] in self.items \
                else None
            if item is None:
                return None, f"there is no item {name!r} (items: {', '.join(self.items)})"
            if item in given:
                return None, f"{item!r} is given twice"
            given[item] = int(number)
        missing = [i for i in self.items if i not in given]
        if missing:
            return None, f"no count for {', '.join(missing)}"
        for item, n in zip(self.items, self.counts, strict=True):
            if given[item] > n:
                return None, f"you keep {given[item]} {item}, but there {'is' if n == 1 else 'are'} only {n}"
        return tuple(given[i] for i in self.items), ""

    def wasted_move(self, agent: str, verdict: Verdict, reason: str) -> MoveResult:
        self.log.append(f"- Move {self.moves + 1}, {agent}: invalid move, turn lost")
        if self.moves + 1 >= self.config.max_turns:
            return self._no_deal(agent, reason)
        self.feedback[agent] = reason
        return MoveResult({agent: reason}, {agent: verdict})

    def _deal(self, agent: str) -> MoveResult:
        proposer, keep = self.offer
        rest = tuple(n - k for n, k in zip(self.counts, keep, strict=True))
        shares = {proposer: keep, agent: rest}
        self.log.append(f"- Move {self.moves + 1}, {agent}: accepted")
        total = self.config.total_value
        rewards = {r: self.worth(r, shares[r]) / total for r in self.roles}
        self.outcome = (f"deal: {proposer} keeps {_counts_text(self.items, keep)}, {agent} gets "
                        f"{_counts_text(self.items, rest)}")
        feedback = {r: (f"Deal: {agent} accepted {proposer}'s offer. You get {_counts_text(self.items, shares[r])}, "
                        f"worth {self.worth(r, shares[r])} of your {total} points: reward {rewards[r]:.2f}.")
                    for r in self.roles}
        self.feedback.update(feedback)
        return MoveResult(feedback, dict.fromkeys(self.roles, Verdict.CORRECT), rewards, game_over=True)

    def _no_deal(self, agent: str, move_feedback: str) -> MoveResult:
        self.outcome = f"no deal after {self.config.max_turns} moves"
        end = f"No deal after {self.config.max_turns} moves: both players get reward 0."
        feedback = {r: end for r in self.roles}
        feedback[agent] = f"{move_feedback} {end}"
        self.feedback.update(feedback)
        return MoveResult(feedback, dict.fromkeys(self.roles, Verdict.TIMEOUT), dict.fromkeys(self.roles, 0.0),
                          game_over=True)

    def _template(self) -> str:
        return " ".join(f"{item}=<n>" for item in self.items)

    # ----------------------------------------------------------------- views
    def view(self, agent: str) -> str:
        c, other = self.config, self.other(agent)
        lines = [f"Game: bargain. Role: {agent}.",
                 f"You are {agent} in a two-player bargaining game against {other}. You split the items below by "
                 f"alternating moves ({self.roles[0]} moves first, at most {c.max_turns} moves in all). A deal "
                 "happens only when a player accepts the other's standing offer; with no deal by the last move, "
                 "both players get 0.",
                 f"Items: {_counts_text(self.items, self.counts)}",
                 f"Your values: {_counts_text(self.items, self.values[agent])} (all items together are worth "
                 f"{c.total_value} points to you; {other} values them differently and you cannot see how)",
                 f"Your reward is the worth of the items you get divided by {c.total_value}."]
        lines += ["Moves so far:", *self.log] if self.log else ["Moves so far: none."]
        if self.offer is None:
            lines.append("Standing offer: none")
        else:
            proposer, keep = self.offer
            mine = keep if proposer == agent else tuple(n - k for n, k in zip(self.counts, keep, strict=True))
            lines.append(f"Standing offer: from {proposer}: you get {_counts_text(self.items, mine)} (worth "
                         f"{self.worth(agent, mine)} points to you)")
        if agent in self.feedback:
            lines.append(f"Feedback on your last move: {self.feedback[agent]}")
        if self.outcome is not None:
            lines.append(f"The game is over: {self.outcome}.")
        elif self.agent_selection != agent:
            lines.append(f"Waiting for {other}.")
        else:
            lines += [f"Move {self.moves + 1} of {c.max_turns} is yours. End your reply with one line, either",
                      f"propose {self._template()}   (the numbers of each item YOU keep; {other} gets the rest)",
                      f"or\naccept   (take {other}'s standing offer)"]
        return "\n".join(lines)

    def transcript(self) -> str:
        head = (f"bargain: items {_counts_text(self.items, self.counts)}; "
                + "; ".join(f"{r} values {_counts_text(self.items, self.values[r])}" for r in self.roles))
        tail = [f"Result: {self.outcome}."] if self.outcome else []
        return "\n".join([head, *self.log, *tail])


# ============================================================================================== scripted players
def _line(observation: str, prefix: str) -> str | None:
    for line in observation.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def _role(observation: str) -> tuple[str, str]:
    match = re.match(r"Game: (\w+)\. Role: (\w+)\.", observation)
    if match is None:
        raise ValueError(f"not an observation of a text game (no 'Game: ... Role: ...' header): "
                         f"{printable(observation, 80)!r}")
    return match.group(1), match.group(2)


def _word_state(observation: str) -> tuple[str, list[str], list[str], list[str]]:
    """Category, candidate words, accepted clues and past guesses as a word-game observation shows them."""
    category = _line(observation, "Category: ") or ""
    listed = _line(observation, "Candidates: ") or _line(observation, "Candidates shown to the guesser: ")
    if listed is not None:
        candidates = [w.strip() for w in listed.split(" (")[0].split(",") if w.strip()]
    elif category in CATEGORIES:
        candidates = list(CATEGORIES[category])
    else:
        raise ValueError(f"word-game observation names neither candidates nor a known category: {category!r}")
    clues = re.findall(r"^- Round \d+ clue: (.*)$", observation, flags=re.M)
    clues = [c for c in clues if not c.startswith("none (")]
    guesses = re.findall(r"^- Round \d+ guess: (\S+) \(", observation, flags=re.M)
    return category, candidates, clues, guesses


class ScriptedDescriber:
    """A describer bot: states letter features of the secret word that single it out among the candidates.

    ``style="strong"`` states up to two features per clue, ``"terse"`` one, both chosen greedily to leave the
    fewest candidates consistent with every clue so far (past wrong guesses excluded); ``"weak"`` only names
    the category, which tells the guesser nothing new. Clues are phrased so they never leak the word.
    """

    STYLES = ("strong", "terse", "weak")

    def __init__(self, style: str = "strong", min_leak_len: int = 4) -> None:
        if style not in self.STYLES:
            raise ValueError(f"ScriptedDescriber style must be one of {self.STYLES}, got {style!r}")
        self.style = style
        self.min_leak_len = min_leak_len

    def __call__(self, observation: str) -> str:
        secret = _line(observation, "Secret word: ")
        if secret is None:
            raise ValueError("ScriptedDescriber needs a describer's observation (no 'Secret word:' line)")
        category, candidates, clues, guesses = _word_state(observation)
        if self.style == "weak":
            return self._phrase([f"It is a kind of {category}.", "It belongs to the category you were shown."],
                                secret) or "Think about the category."
        known = [f for clue in clues for f in parse_features(clue)]
        remaining = [w for w in candidates if w not in guesses and all(feature_holds(w, f) for f in known)]
        if secret not in remaining:
            remaining.append(secret)
        feats = [f for f in word_features(secret) if f not in known]
        options = [(f,) for f in feats]
        if self.style == "strong":
            options += [(a, b) for i, a in enumerate(feats) for b in feats[i + 1:]]
        scored = sorted(range(len(options)), key=lambda i: (
            sum(all(feature_holds(w, f) for f in options[i]) for w in remaining), len(options[i]), i))
        for i in scored:
            for variant in range(2):
                text = self._phrase([" ".join(CLUE_TEMPLATES[k][variant].format(v) for k, v in options[i])], secret)
                if text is not None:
                    return text
        return "Think about the category."

    def _phrase(self, texts: list[str], secret: str) -> str | None:
        return next((t for t in texts if leaked_piece(t, secret, self.min_leak_len) is None), None)


class ScriptedGuesser:
    """A guesser bot that guesses only on evidence: the first unguessed candidate consistent with every clue.

    It reads clues with :func:`parse_features` (the phrasings of :data:`CLUE_TEMPLATES` and close variants).
    It guesses only when the features rule out at least one candidate and at least one unguessed candidate
    fits them all; otherwise it replies with no word (no guess this round). So a clue that carries no
    information (empty, garbage, off-topic, or true of every candidate) never wins: its win rate is 0, not
    the ``max_rounds / num_candidates`` that guessing the candidates in turn would give for free. A clue that
    contradicts itself or the secret leaves no fitting candidate and gets no guess either.
    """

    #: The reply when the clues do not single out anything: no word, so the game records no guess.
    NO_GUESS = ""

    def __call__(self, observation: str) -> str:
        _, candidates, clues, guesses = _word_state(observation)
        known = [f for clue in clues for f in parse_features(clue)]
        if not known:
            return self.NO_GUESS
        fits = [w for w in candidates if all(feature_holds(w, f) for f in known)]
        fitting = [w for w in fits if w not in guesses]
        if len(fits) == len(candidates) or not fitting:
            return self.NO_GUESS  # the clues rule nothing out (or everything): guessing would be luck
        return fitting[0]


def _pairs(text: str | None) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text or "")}


class ConcedingBargainer:
    """A bargaining bot that asks for ``start`` of its total value and concedes linearly to ``floor``.

    It accepts a standing offer worth at least its current target (on the last move, any offer worth more than
    nothing), and otherwise proposes to keep its most valuable items until the target is met, giving away
    everything it does not value. Presets: ``tough`` (0.9 -> 0.6), ``fair`` (0.7 -> 0.5), ``soft`` (0.6 -> 0.3).
    """

    PRESETS: ClassVar[dict[str, tuple[float, float]]] = {"tough": (0.9, 0.6), "fair": (0.7, 0.5),
                                                         "soft": (0.6, 0.3)}

    def __init__(self, start: float = 0.7, floor: float = 0.5) -> None:
        if not 0.0 <= floor <= start <= 1.0:
            raise ValueError(f"ConcedingBargainer needs 0 <= floor <= start <= 1, got start={start}, floor={floor}")
        self.start, self.floor = start, floor

    @classmethod
    def preset(cls, name: str) -> ConcedingBargainer:
        """One of :attr:`PRESETS` by name."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown bargainer preset {name!r}; choose from {list(cls.PRESETS)}")
        return cls(*cls.PRESETS[name])

    def __call__(self, observation: str) -> str:
        counts = _pairs(_line(observation, "Items: "))
        values = _pairs((_line(observation, "Your values: ") or "").split(" (")[0])
        move = re.search(r"^Move (\d+) of (\d+) is yours", observation, flags=re.M)
        if not counts or set(values) != set(counts):
            raise ValueError("ConcedingBargainer needs a bargain observation (with 'Items:' and 'Your values:' "
                             f"lines), got {printable(observation, 80)!r}")
        if move is None:
            return "accept"  # not its move (the game is over, as vector envs show before autoreset): any text does
        k, n = int(move.group(1)), int(move.group(2))
        total = sum(values[i] * counts[i] for i in counts)
        target = self.start + (self.floor - self.start) * ((k - 1) / max(n - 1, 1))
        offered = _line(observation, "Standing offer: from ")
        if offered is not None:
            proposer, _, rest = offered.partition(": you get ")
            if proposer and not observation.startswith(f"Game: bargain. Role: {proposer}."):
                got = _pairs(rest.split(" (")[0])
                worth = sum(values[i] * got.get(i, 0) for i in counts)
                if worth >= target * total or (k == n and worth > 0):
                    return "accept"
        keep = dict.fromkeys(counts, 0)
        need = math.ceil(target * total - 1e-9)
        have = 0
        for item in sorted(counts, key=lambda i: (-values[i], list(counts).index(i))):
            while values[item] > 0 and keep[item] < counts[item] and have < need:
                keep[item] += 1
                have += values[item]
        return "propose " + " ".join(f"{i}={keep[i]}" for i in counts)


_SELF_PLAY_BARGAINER = ConcedingBargainer.preset("fair")
_SELF_PLAY_DESCRIBER = ScriptedDescriber("strong")
_SELF_PLAY_GUESSER = ScriptedGuesser()


def scripted_player(observation: str) -> str:
    """One scripted policy for every seat of every game here: it reads the role from the observation header."""
    game, role = _role(observation)
    if game == "word_guess":
        return _SELF_PLAY_DESCRIBER(observation) if role == "describer" else _SELF_PLAY_GUESSER(observation)
    if game == "bargain":
        return _SELF_PLAY_BARGAINER(observation)
    raise ValueError(f"scripted_player does not know the game {game!r}")


# ============================================================================================== gym ids
def word_guess_env(split: str = "train", *, describer: str = "terse", render_mode: str | None = None,
                   max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, **config: Any) -> SingleSeat:
    """fst/WordGuess-v0: the learner is the guesser; a :class:`ScriptedDescriber` of ``describer`` style clues."""
    game = WordGuessGame(split=split, max_response_chars=max_response_chars, **config)
    partner = ScriptedDescriber(describer, min_leak_len=game.config.min_leak_len)
    return SingleSeat(game, "guesser", {"describer": partner}, render_mode=render_mode)


def word_describe_env(split: str = "train", *, render_mode: str | None = None,
                      max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, **config: Any) -> SingleSeat:
    """fst/WordDescribe-v0: the learner is the describer; a :class:`ScriptedGuesser` reads its clues.

    The guesser guesses only on evidence, so a clue without information wins with rate 0 (see the card).
    """
    game = WordGuessGame(split=split, max_response_chars=max_response_chars, **config)
    return SingleSeat(game, "describer", {"guesser": ScriptedGuesser()}, render_mode=render_mode)


def bargain_env(split: str = "train", *, seat: str = "player_0", opponent: str = "fair",
                render_mode: str | None = None, max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS,
                **config: Any) -> SingleSeat:
    """fst/Bargain-v0: the learner holds ``seat``; a :class:`ConcedingBargainer` preset plays the other."""
    game = BargainGame(split=split, max_response_chars=max_response_chars, **config)
    if seat not in game.roles:
        raise ValueError(f"Bargain seat must be one of {game.roles}, got {seat!r}")
    other = game.other(seat)
    return SingleSeat(game, seat, {other: ConcedingBargainer.preset(opponent)}, render_mode=render_mode)


_WORD_KNOBS = {"num_candidates": "candidate words shown (2-16, default 6)",
               "max_rounds": "clue/guess rounds (default 3)",
               "show_candidates": "whether the guesser sees the candidate list (default True)",
               "min_leak_len": "letters in a row a clue may not share with the word (default 4)",
               "categories": "word categories drawn from"}

register_env(
    "fst/WordGuess-v0", "fst_env.envs.text_games:word_guess_env",
    EnvCard(summary="Cooperative word game, guesser seat: name the secret word from a scripted describer's "
                    "letter clues within a few rounds.",
            feedback_kinds=("correct", "incorrect", "format_error", "error"),
            difficulty_knobs={"describer": "scripted partner style: strong, terse (default) or weak", **_WORD_KNOBS},
            splits=dict(SPLIT_SIZES), data_source="procedural: word lists written for fst-env, drawn per seed",
            licence="Apache-2.0 (fst-env)", turns="multi",
            notes="PettingZoo AEC game fst_env.envs.text_games.WordGuessGame seen from one seat (SingleSeat)."))

register_env(
    "fst/WordDescribe-v0", "fst_env.envs.text_games:word_describe_env",
    EnvCard(summary="Cooperative word game, describer seat: clue a secret word without using it or its letters "
                    "so that a scripted guesser names it.",
            feedback_kinds=("correct", "incorrect", "format_error", "error"),
            difficulty_knobs=dict(_WORD_KNOBS), splits=dict(SPLIT_SIZES),
            data_source="procedural: word lists written for fst-env, drawn per seed",
            licence="Apache-2.0 (fst-env)", turns="multi",
            notes="The scripted guesser understands letter features: length, first/last letter, letters it "
                  "contains or lacks, number of vowels. It guesses only when the clues rule out some candidates, "
                  "so a clue without information (empty, garbage, off-topic, true of every candidate) wins with "
                  "rate 0, never by luck over the candidates."))

register_env(
    "fst/Bargain-v0", "fst_env.envs.text_games:bargain_env",
    EnvCard(summary="Two-player bargaining over items with private values and a deadline, against a scripted "
                    "conceding opponent; reward is the share's worth to you (0 without a deal).",
            feedback_kinds=("correct", "incorrect", "format_error", "timeout", "error"),
            difficulty_knobs={"opponent": "tough, fair (default) or soft", "seat": "player_0 (first) or player_1",
                              "max_turns": "moves before the deadline (default 6)",
                              "num_item_types": "kinds of items (default 3)", "max_count": "most of one item "
                              "(default 3)"},
            splits=dict(SPLIT_SIZES), data_source="procedural: item counts and valuations drawn per seed",
            licence="Apache-2.0 (fst-env)", turns="multi",
            notes="PettingZoo AEC game fst_env.envs.text_games.BargainGame seen from one seat (SingleSeat)."))
