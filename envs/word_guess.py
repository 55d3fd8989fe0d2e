"""The cooperative word-guessing game on PettingZoo's AEC API, its scripted players and its single-seat gym ids.

:class:`WordGuessGame`: a describer sees a secret word from a procedurally drawn list of candidates of one
category and gives one clue per round without using the word or any run of its letters; the guesser guesses.
Both get reward 1 when the guess is right within ``max_rounds`` rounds.

The scripted players (:class:`ScriptedDescriber`, :class:`ScriptedGuesser`) read nothing but their observation,
so any seat can be played by a script, an LLM or a person. The gym ids put the learner in one seat against a
scripted partner through :class:`fst_env.wrappers.single_seat.SingleSeat`: ``fst/WordGuess-v0`` (guesser) and
``fst/WordDescribe-v0`` (describer).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fst_env.cards import EnvCard, register_env
from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, Problem, Verdict
from fst_env.envs._games import SPLIT_SIZES, DrawnGame, fold, observation_line, printable, validate_split_sizes
from fst_env.multiagent import MoveResult, TextAECEnv
from fst_env.wrappers.single_seat import SingleSeat

# Everyday nouns grouped by category, written for this game (single lowercase ASCII words, no word in two
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

VOWELS = frozenset("aeiou")
_NUMBER_WORDS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven",
                                             "eight", "nine", "ten", "eleven", "twelve"))}


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
        validate_split_sizes("WordGuessConfig", self.split_sizes)



class WordGuessGame(DrawnGame[WordGuessConfig]):
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



# ============================================================================================== scripted players
def _word_state(observation: str) -> tuple[str, list[str], list[str], list[str]]:
    """Category, candidate words, accepted clues and past guesses as a word-game observation shows them."""
    category = observation_line(observation, "Category: ") or ""
    listed = (observation_line(observation, "Candidates: ")
              or observation_line(observation, "Candidates shown to the guesser: "))
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
        secret = observation_line(observation, "Secret word: ")
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



_WORD_KNOBS = {"num_candidates": "candidate words shown (2-16, default 6)",
               "max_rounds": "clue/guess rounds (default 3)",
               "show_candidates": "whether the guesser sees the candidate list (default True)",
               "min_leak_len": "letters in a row a clue may not share with the word (default 4)",
               "categories": "word categories drawn from"}

register_env(
    "fst/WordGuess-v0", "fst_env.envs.word_guess:word_guess_env",
    EnvCard(summary="Cooperative word game, guesser seat: name the secret word from a scripted describer's "
                    "letter clues within a few rounds.",
            feedback_kinds=("correct", "incorrect", "format_error", "error"),
            difficulty_knobs={"describer": "scripted partner style: strong, terse (default) or weak", **_WORD_KNOBS},
            splits=dict(SPLIT_SIZES), data_source="procedural: word lists written for fst-env, drawn per seed",
            licence="Apache-2.0 (fst-env)", turns="multi",
            notes="PettingZoo AEC game fst_env.envs.word_guess.WordGuessGame seen from one seat (SingleSeat)."))

register_env(
    "fst/WordDescribe-v0", "fst_env.envs.word_guess:word_describe_env",
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
