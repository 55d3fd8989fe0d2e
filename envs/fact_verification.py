"""Multi-hop fact verification over a procedurally generated world (a HoVer-like task without copied data).

Each problem is a small invented world: people, companies, universities, cities and countries, linked by
functional relations (born_in, works_for, studied_at, founded_by, headquartered_in, based_in, located_in).
Every person, company, university and city has one short numbered document stating its facts. A claim chains
``min_hops`` to ``max_hops`` relations (2 to 4 in the presets) from one entity, e.g. "The birthplace of the
founder of Korvax Labs is located in Veloria". Half the claims are true; a false claim swaps one hop's object
for another entity of the same type and states where *that* chain would end, so it contradicts the documents.
Documents not on the chain are distractors.

The model ends with ``Verdict: SUPPORTED`` or ``Verdict: REFUTED`` and ``Evidence: [3, 7]`` (document ids).
Reward 1 needs the right label and, with ``require_evidence`` (default), a citation of every document the
chain passes through, with at most ``max_extra_evidence`` uncalled-for ids. ``partial_credit`` gives 0.5 for
the label plus 0.5 times the fraction of chain documents cited. Feedback names each missing document and, for a
wrong label, the document that settles it ("doc 9 says Ana Ruiz was born in Lima, not Oslo").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from fst_env.cards import EnvCard, register_env
from fst_env.core import DEFAULT_MAX_RESPONSE_CHARS, Outcome, Problem, TextEnv, Verdict
from fst_env.presets import preset_config
from fst_env.splits import ProceduralSplit

SPLIT_SIZES: dict[str, int] = {"train": 100_000, "validation": 1_000, "test": 1_000}

PERSON, COMPANY, UNIVERSITY, CITY, COUNTRY = "person", "company", "university", "city", "country"
DOC_TYPES: tuple[str, ...] = (PERSON, COMPANY, UNIVERSITY, CITY)  # countries are only names, with no document


@dataclass(frozen=True)
class Relation:
    """One functional relation and the phrases that render it."""

    subject: str
    object: str
    fact: str  # a document sentence: {s}, {o}
    noun_phrase: str  # "the X of {s}", used to nest hops inside a claim
    predicate: str  # the claim's last hop: {np}, {o}
    ask: str  # what the document answers, for feedback: {s}


RELATIONS: dict[str, Relation] = {
    "born_in": Relation(PERSON, CITY, "{s} was born in {o}.", "the birthplace of {s}",
                        "{np} was born in {o}", "where {s} was born"),
    "works_for": Relation(PERSON, COMPANY, "{s} works for {o}.", "the employer of {s}",
                          "{np} works for {o}", "who {s} works for"),
    "studied_at": Relation(PERSON, UNIVERSITY, "{s} studied at {o}.", "the university attended by {s}",
                           "{np} studied at {o}", "where {s} studied"),
    "founded_by": Relation(COMPANY, PERSON, "{s} was founded by {o}.", "the founder of {s}",
                           "{np} was founded by {o}", "who founded {s}"),
    "headquartered_in": Relation(COMPANY, CITY, "{s} is headquartered in {o}.",
                                 "the headquarters city of {s}", "{np} is headquartered in {o}",
                                 "where {s} is headquartered"),
    "based_in": Relation(UNIVERSITY, CITY, "{s} is based in {o}.", "the home city of {s}",
                         "{np} is based in {o}", "where {s} is based"),
    "located_in": Relation(CITY, COUNTRY, "{s} is a city in {o}.", "the country containing {s}",
                           "{np} is located in {o}", "which country {s} is in"),
}
RELATIONS_FROM: dict[str, list[str]] = {t: [r for r, rel in RELATIONS.items() if rel.subject == t]
                                        for t in (*DOC_TYPES, COUNTRY)}

# "Verdict:" and "Evidence:" may open a line or follow other text ("Verdict: REFUTED, Evidence: [4, 9]").
_VERDICT_LINE = re.compile(r"\bverdict[ \t]*(?:\*\*)?[ \t]*:[ \t*`\"']*([^\s*`\"'.,;]*)", re.IGNORECASE)
_EVIDENCE_LINE = re.compile(r"\bevidence[ \t]*(?:\*\*)?[ \t]*:([^\n]*)", re.IGNORECASE)
_MAX_CITED = 200  # more ids than this on the Evidence line are not read (they cannot be a precise citation)


@dataclass
class FactVerificationConfig:
    """Claim length (hops), world size (distractor documents) and how evidence is scored."""

    min_hops: int = 2
    max_hops: int = 3
    num_distractors: int = 8
    num_countries: int = 4
    require_evidence: bool = True
    partial_credit: bool = False
    max_extra_evidence: int = 1

    def validate(self) -> None:
        for name in ("min_hops", "max_hops", "num_distractors", "num_countries", "max_extra_evidence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"FactVerificationConfig.{name} must be an int, got {type(value).__name__}")
        for name in ("require_evidence", "partial_credit"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"FactVerificationConfig.{name} must be a bool")
        if not 1 <= self.min_hops <= self.max_hops <= 6:
            raise ValueError(f"FactVerificationConfig needs 1 <= min_hops <= max_hops <= 6, got "
                             f"min_hops={self.min_hops}, max_hops={self.max_hops}")
        if not 4 <= self.num_distractors <= 200:
            raise ValueError(f"FactVerificationConfig.num_distractors must be in [4, 200] (the world needs an "
                             f"entity of every type), got {self.num_distractors}")
        if not 2 <= self.num_countries <= 50:
            raise ValueError(f"FactVerificationConfig.num_countries must be in [2, 50], got {self.num_countries}")
        if self.max_extra_evidence < 0:
            raise ValueError(f"FactVerificationConfig.max_extra_evidence must be >= 0, got {self.max_extra_evidence}")


PRESETS: dict[str, FactVerificationConfig] = {
    "easy": FactVerificationConfig(min_hops=2, max_hops=2, num_distractors=4),
    "medium": FactVerificationConfig(min_hops=2, max_hops=3, num_distractors=8),
    "hard": FactVerificationConfig(min_hops=3, max_hops=4, num_distractors=14),
}


def make_config(difficulty: str | None = None, **overrides: Any) -> FactVerificationConfig:
    """A validated config: the ``difficulty`` preset (default: medium) with ``overrides`` applied."""
    return preset_config("fst/FactVerification-v0", PRESETS, difficulty, overrides)


# ----------------------------------------------------------------------------- names
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io")
_CODAS = ("", "", "", "n", "r", "s", "l", "k", "th", "m")
_SUFFIX = {
    COMPANY: ("Labs", "Systems", "Works", "Foods", "Motors", "Media", "Energy", "Logistics", "Textiles"),
    UNIVERSITY: ("Institute", "University", "College", "Academy"),
    CITY: ("", "", "ford", "mar", "vik", "ona", "haven", "burg"),
    COUNTRY: ("ia", "land", "ora", "istan", "ova"),
}


def _word(rng: random.Random, syllables: int) -> str:
    text = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return text.capitalize()


def _name(rng: random.Random, kind: str) -> str:
    if kind == PERSON:
        return f"{_word(rng, rng.randint(1, 2))} {_word(rng, 2)}"
    if kind == CITY:
        return _word(rng, rng.randint(1, 2)) + rng.choice(_SUFFIX[CITY])
    if kind == COUNTRY:
        return _word(rng, 2).rstrip("aeiou") + rng.choice(_SUFFIX[COUNTRY])
    return f"{_word(rng, 2)} {rng.choice(_SUFFIX[kind])}"


# ----------------------------------------------------------------------------- generation
def _can_walk(kind: str, hops: int) -> bool:
    """Whether ``hops`` more relations can chain from an entity of ``kind`` (cities lead only to countries)."""
    return hops == 0 or any(_can_walk(RELATIONS[r].object, hops - 1) for r in RELATIONS_FROM[kind])


def _relation_walk(rng: random.Random, hops: int) -> tuple[str, list[str]]:
    """A start type and ``hops`` relations that chain, drawn uniformly among the feasible choices at each step."""
    start = rng.choice([t for t in DOC_TYPES if _can_walk(t, hops)])
    current, rels = start, []
    for i in range(hops):
        rel = rng.choice([r for r in RELATIONS_FROM[current] if _can_walk(RELATIONS[r].object, hops - i - 1)])
        rels.append(rel)
        current = RELATIONS[rel].object
    return start, rels


def generate_problem(config: FactVerificationConfig, index: int) -> Problem:
    """World, claim and answer number ``index`` for ``config`` (deterministic in both)."""
    rng = random.Random(f"fact-verification:{index}")
    hops = rng.randint(config.min_hops, config.max_hops)
    start, rels = _relation_walk(rng, hops)
    supported = rng.random() < 0.5

    used: set[str] = set()

    def new_entity(kind: str) -> str:
        while True:
            name = _name(rng, kind)
            if name not in used:
                used.add(name)
                return name

    kinds: dict[str, str] = {}
    chain = [new_entity(start)]
    kinds[chain[0]] = start
    for rel in rels:
        kind = RELATIONS[rel].object
        chain.append(new_entity(kind))
        kinds[chain[-1]] = kind
    countries = [e for e in chain if kinds[e] == COUNTRY]
    while len(countries) < config.num_countries:
        countries.append(new_entity(COUNTRY))
        kinds[countries[-1]] = COUNTRY

    # Distractors: first whatever the world lacks (an entity of every type to fill relations, and a second
    # entity of the final hop's type so a false claim can always swap the last hop), then a second entity of
    # every type while room remains (so facts do not all point at one entity), then random types.
    doc_entities = [e for e in chain if kinds[e] != COUNTRY]
    needed = [t for t in DOC_TYPES if not any(kinds[e] == t for e in doc_entities)]
    final_kind = kinds[chain[-1]]
    if final_kind != COUNTRY and sum(kinds[e] == final_kind for e in doc_entities) + needed.count(final_kind) < 2:
        needed.append(final_kind)
    extra_docs = config.num_distractors - (1 if final_kind != COUNTRY else 0)
    for kind in DOC_TYPES:
        if sum(kinds[e] == kind for e in doc_entities) + needed.count(kind) < 2 and len(needed) < extra_docs:
            needed.append(kind)
    distractor_kinds = needed + [rng.choice(DOC_TYPES) for _ in range(extra_docs - len(needed))]
    for kind in distractor_kinds:
        doc_entities.append(new_entity(kind))
        kinds[doc_entities[-1]] = kind
    by_kind = {t: [e for e in doc_entities if kinds[e] == t] for t in DOC_TYPES}
    by_kind[COUNTRY] = countries

    # Facts: the chain's hops are fixed; every other relation of every entity points at a random entity.
    facts: dict[str, dict[str, str]] = {e: {} for e in doc_entities}
    for subject, rel, obj in zip(chain, rels, chain[1:], strict=False):
        facts[subject][rel] = obj
    for entity in doc_entities:
        for rel in RELATIONS_FROM[kinds[entity]]:
            if rel not in facts[entity]:
                facts[entity][rel] = rng.choice([o for o in by_kind[RELATIONS[rel].object] if o != entity])

    def follow(entity: str, relations: list[str]) -> str:
        for rel in relations:
            entity = facts[entity][rel]
        return entity

    true_end = chain[-1]
    claimed_end, swapped_hop = true_end, None
    if not supported:
        # Swap hop k's object for another entity of its type and state where that chain ends instead.
        hop = rng.randint(1, hops)
        for k in (hop, hops):
            alternatives = [e for e in by_kind[kinds[chain[k]]] if e != chain[k]]
            rng.shuffle(alternatives)
            ends = [follow(alt, rels[k:]) for alt in alternatives]
            ends = [end for end in ends if end != true_end]
            if ends:
                claimed_end, swapped_hop = ends[0], k
                break
        if swapped_hop is None:  # cannot happen: the world always holds two entities of the final type
            raise RuntimeError("fact verification: no false claim could be built")

    doc_order = list(doc_entities)
    rng.shuffle(doc_order)
    doc_id = {entity: i + 1 for i, entity in enumerate(doc_order)}
    documents = []
    for entity in doc_order:
        sentences = " ".join(RELATIONS[rel].fact.format(s=entity, o=obj) for rel, obj in facts[entity].items())
        documents.append(f"[{doc_id[entity]}] {entity}: {sentences}")

    noun_phrase = chain[0]
    for rel in rels[:-1]:
        noun_phrase = RELATIONS[rel].noun_phrase.format(s=noun_phrase)
    claim = RELATIONS[rels[-1]].predicate.format(np=noun_phrase, o=claimed_end)
    claim = claim[0].upper() + claim[1:] + "."

    evidence_instruction = ("In the Evidence line list the id of every document the chain of facts passes "
                            "through, e.g. Evidence: [3, 7]." if config.require_evidence
                            else "The Evidence line is optional: the ids of the documents you used.")
    prompt = (
        "Documents:\n" + "\n".join(documents) + f"\n\nClaim: {claim}\n\n"
        "Using only the documents, decide whether the claim is SUPPORTED or REFUTED: follow the chain of facts "
        "from document to document. End your response with two lines:\n"
        f"Verdict: SUPPORTED or REFUTED\nEvidence: [document ids]\n{evidence_instruction}"
    )
    chain_hops = [{"subject": s, "relation": r, "object": o, "doc": doc_id[s],
                   "fact": RELATIONS[r].fact.format(s=s, o=o), "ask": RELATIONS[r].ask.format(s=s)}
                  for s, r, o in zip(chain, rels, chain[1:], strict=False)]
    label = "SUPPORTED" if supported else "REFUTED"
    evidence = [h["doc"] for h in chain_hops]
    return Problem(
        prompt=prompt,
        answer=f"Verdict: {label}\nEvidence: [{', '.join(map(str, evidence))}]",
        metadata={"label": label, "evidence": evidence, "hops": chain_hops, "claim": claim,
                  "claimed_end": claimed_end, "true_end": true_end, "swapped_hop": swapped_hop,
                  "num_documents": len(doc_order)},
    )


# ----------------------------------------------------------------------------- parsing
def parse_response(response: str) -> tuple[str | None, list[int] | None, str]:
    """``(label, cited ids, problem)``: label SUPPORTED/REFUTED or None, ids or None if no Evidence line, and a
    description of what could not be read ("" when the verdict parsed)."""
    verdicts = _VERDICT_LINE.findall(response)
    label, problem = None, ""
    if not verdicts:
        problem = "no 'Verdict:' line found"
    else:
        word = verdicts[-1].upper()
        if word.startswith("SUPPORT"):
            label = "SUPPORTED"
        elif word.startswith("REFUT"):
            label = "REFUTED"
        else:
            shown = repr(verdicts[-1][:40])
            problem = f"the Verdict line says {shown}, which is neither SUPPORTED nor REFUTED"
    evidence_lines = _EVIDENCE_LINE.findall(response)
    cited = None
    if evidence_lines:
        cited = [int(n) for n in re.findall(r"\d{1,6}", evidence_lines[-1])[:_MAX_CITED]]
    return label, cited, problem


def _ids(ids: list[int] | set[int]) -> str:
    ids = sorted(ids)
    return f"doc {ids[0]}" if len(ids) == 1 else "docs " + ", ".join(map(str, ids))


class FactVerificationEnv(TextEnv):
    """Verify a multi-hop claim against numbered documents; single turn, label plus cited evidence.

    ``FactVerificationEnv(split, difficulty=None, seed=0, **config)`` with the fields of
    :class:`FactVerificationConfig` (``difficulty`` picks a preset, default medium). Verdicts: ``correct``
    (right label and, if required, the chain's documents cited), ``incorrect`` (feedback says which label is
    right and why, which documents are missing or superfluous) and ``format_error`` (no readable Verdict line,
    or no Evidence line when evidence is required).
    """

    card = EnvCard(
        summary="Multi-hop fact verification: SUPPORTED/REFUTED plus cited documents, in a generated world.",
        feedback_kinds=("correct", "incorrect", "format_error"),
        difficulty_knobs={"difficulty": "easy (2 hops, 4 distractors) / medium (2-3, 8) / hard (3-4, 14)",
                          "min_hops / max_hops": "relations chained in a claim (1..6)",
                          "num_distractors": "documents not on the chain",
                          "require_evidence": "reward needs the chain's documents cited",
                          "partial_credit": "0.5 for the label + 0.5 x fraction of chain documents cited",
                          "max_extra_evidence": "uncalled-for document ids tolerated"},
        splits=dict(SPLIT_SIZES),
        data_source="procedural (invented names and facts; HoVer-like claims, no HoVer data)",
        licence="Apache-2.0 (generated by fst-env)",
    )

    def __init__(self, split: str = "train", *, difficulty: str | None = None, seed: int = 0,
                 max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, render_mode: str | None = None,
                 **config: Any) -> None:
        super().__init__(split, max_response_chars=max_response_chars, render_mode=render_mode)
        self.config = make_config(difficulty, **config)
        self.problems = ProceduralSplit(lambda index: generate_problem(self.config, index), seed=seed,
                                         split=split, size=SPLIT_SIZES[split])

    def oracle_response(self) -> str | None:
        return None if self.problem is None else self.problem.answer

    def judge(self, problem: Problem, response: str) -> Outcome:
        meta, config = problem.metadata, self.config
        fmt = "End with two lines: 'Verdict: SUPPORTED' or 'Verdict: REFUTED', then 'Evidence: [ids]'."
        label, cited, unreadable = parse_response(response)
        if label is None:
            return Outcome(0.0, Verdict.FORMAT_ERROR, f"Format error: {unreadable}. {fmt}",
                           hint=f"Your answer could not be read: {unreadable}. {fmt}")
        if cited is None and config.require_evidence:
            feedback = (f"Format error: no 'Evidence:' line found; this task needs the ids of the documents "
                        f"the chain passes through. {fmt}")
            return Outcome(0.0, Verdict.FORMAT_ERROR, feedback, hint=feedback)
        cited_set = set(cited or [])
        required = meta["evidence"]
        missing = [h for h in meta["hops"] if h["doc"] not in cited_set]
        extra = cited_set - set(required)
        nonexistent = {i for i in extra if not 1 <= i <= meta["num_documents"]}
        label_ok = label == meta["label"]
        evidence_ok = not missing and len(extra) <= config.max_extra_evidence

        notes = [self._label_feedback(meta, label)]
        if config.require_evidence or cited is not None:
            for hop in missing:
                notes.append(f"You did not cite the document saying {hop['ask']} (doc {hop['doc']}).")
            if nonexistent:
                notes.append(f"{_ids(nonexistent).capitalize()} {'does' if len(nonexistent) == 1 else 'do'} not "
                             f"exist (the documents are numbered 1 to {meta['num_documents']}).")
            if len(extra) > config.max_extra_evidence:
                notes.append(f"You cited {len(extra)} document{'s' if len(extra) > 1 else ''} the chain does not "
                             f"pass through ({_ids(extra)}); cite only the chain's documents (at most "
                             f"{config.max_extra_evidence} extra).")
        evidence_text = ", ".join(map(str, required))
        if label_ok and (evidence_ok or not config.require_evidence):
            cited_note = f", and you cited the chain's documents ({evidence_text})" if evidence_ok else ""
            return Outcome(1.0, Verdict.CORRECT, f"Correct: the claim is {meta['label']}{cited_note}. " + " ".join(
                notes[1:]), info={"label": label, "cited": sorted(cited_set)})
        reward = 0.0
        if label_ok and config.partial_credit:
            recall = 1 - len(missing) / len(required)
            reward = 0.5 + (0.5 * recall if len(extra) <= config.max_extra_evidence else 0.0)
        head = "Incorrect" if reward == 0.0 else f"Partly correct (reward {reward:.2f})"
        return Outcome(reward, Verdict.INCORRECT,
                       f"{head}: " + " ".join(notes) + f" The chain's documents are {evidence_text}.",
                       info={"label": label, "cited": sorted(cited_set)},
                       hint=self._hint(label_ok, len(missing), nonexistent, extra, cited is not None))

    def _hint(self, label_ok: bool, missing: int, nonexistent: set[int], extra: set[int], cited: bool) -> str:
        """What a retry may show the policy: which part of its own answer failed; never the label or the ids."""
        parts = [] if label_ok else ["the verdict or the evidence is wrong"]
        if label_ok and (self.config.require_evidence or cited):
            if missing:
                parts.append(f"your evidence misses {missing} of the chain's documents")
            if len(extra) > self.config.max_extra_evidence:
                parts.append(f"you cited {len(extra)} document{'s' if len(extra) > 1 else ''} the chain does not "
                             f"pass through")
        if nonexistent:
            parts.append(f"{_ids(nonexistent)} {'does' if len(nonexistent) == 1 else 'do'} not exist")
        return "Incorrect: " + "; ".join(parts or ["the verdict or the evidence is wrong"]) + "."

    @staticmethod
    def _label_feedback(meta: dict[str, Any], label: str) -> str:
        if label == meta["label"]:
            return f"Label right ({label})."
        steps = [f"doc {h['doc']} says {h['fact'][:-1]}" for h in meta["hops"]]
        if meta["label"] == "REFUTED":
            steps[-1] += f", not {meta['claimed_end']}"
            return f"Label wrong: the claim is REFUTED, not SUPPORTED. Following the documents: {'; '.join(steps)}."
        return (f"Label wrong: the claim is SUPPORTED, not REFUTED. Following the documents: {'; '.join(steps)}, "
                f"as the claim says.")


register_env("fst/FactVerification-v0", FactVerificationEnv, FactVerificationEnv.card)
