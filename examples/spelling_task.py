"""A custom reward env with train and validation splits, trainable from the command line.

    fst train --env examples.spelling_task:myorg/Spelling-v0 --steps 6

The ``module:`` prefix makes ``fst`` import this file first, which registers the id. Problems are procedural:
each word gets a few deterministic misspellings (a swapped pair, a dropped letter, a doubled letter). Train and
validation use different words, so held-out accuracy measures spelling, not memory of the training words.
"""

from __future__ import annotations

import fst_env

TRAIN_WORDS = ("necessary", "separate", "rhythm", "weird", "receive", "believe", "definitely", "calendar",
               "embarrass", "environment", "government", "occurrence", "privilege", "tomorrow", "until",
               "beginning", "business", "colleague", "committee", "conscious", "existence", "foreign",
               "guarantee", "immediately", "library", "maintenance", "neighbour", "occasion", "possession",
               "recommend")
VALIDATION_WORDS = ("accommodate", "achieve", "address", "apparent", "argument", "basically", "category",
                    "cemetery", "changeable", "collectible", "discipline", "exhilarate", "familiar", "fluorescent",
                    "gauge", "harass", "humorous", "independent", "knowledge", "leisure")


def misspellings(word: str) -> list[str]:
    """Three deterministic misspellings of ``word``, each different from it."""
    middle = len(word) // 2
    swapped = word[:middle - 1] + word[middle] + word[middle - 1] + word[middle + 1:]
    dropped = word[:middle] + word[middle + 1:]
    doubled = word[:middle] + word[middle] + word[middle:]
    return [typo for typo in dict.fromkeys((swapped, dropped, doubled)) if typo != word]


def problems_for(words: tuple[str, ...]) -> list[dict[str, str]]:
    """One problem per misspelling: the prompt asks for the word, the answer is the correct spelling."""
    return [{"prompt": f"Correct the spelling of '{typo}'. Reply with the correctly spelled word only.",
             "answer": word} for word in words for typo in misspellings(word)]


def reward(response: str, problem: dict[str, str]) -> tuple[float, str]:
    """1 for the correct spelling (case and surrounding punctuation ignored), else 0, with feedback."""
    words = response.strip().strip(".'\"!").split()
    guess = words[-1].strip(".'\"!").lower() if words else ""
    if guess == problem["answer"]:
        return 1.0, "Correct spelling."
    return 0.0, f"Misspelled: {guess!r} should be {problem['answer']!r}."


ENV_ID = fst_env.register_task(
    "myorg/Spelling-v0",
    {"train": problems_for(TRAIN_WORDS), "validation": problems_for(VALIDATION_WORDS)},
    reward_fn=reward,
    summary="Correct a misspelled English word (train and validation use different words).",
)
