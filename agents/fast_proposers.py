"""Proposers for the fast round: new context component texts from a parent context and reflective records.

:class:`ReflectionProposer` asks a reflection LM through gepa's prompt and extractor; :class:`NotesProposer` is
LLM-free and curates rules from recurring env feedback. (The demonstrations proposer lives in
:mod:`fst_env.agents.demonstrations`.) Both follow :class:`~fst_env.agents.fast_bridge.Proposer` and also gepa's
``ReflectionLM.reflect``, so the round logs their prompts and rationale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gepa.proposer.reflective_mutation.reflection_lm import ReflectionProposal, StatelessReflectionLM

from fst_env.agents.fast_bridge import GepaLog, ReflectiveDataset, clean_text, parse_feedback
from fst_env.agents.reflection import ReflectionLM, as_reflection_lm, parse_reflection_output
from fst_env.context import Context

#: Verdicts that mark a rollout as failed even when its score is unknown.
_FAILED_VERDICTS = frozenset({"incorrect", "format_error", "error", "timeout"})


class ReflectionProposer:
    """A :class:`Proposer` that asks a reflection LM to rewrite a component, with gepa's prompt and extractor.

    The prompt is gepa's ``InstructionProposalSignature`` template (or ``prompt_template``, which must hold the
    ``<curr_param>`` and ``<side_info>`` placeholders), rendered and sent by gepa's ``StatelessReflectionLM``.
    Each reply then goes through :func:`parse_reflection_output`: an empty, echoed or degenerate reply proposes
    nothing for that component (the parent is kept, and no rollouts are spent on a child). ``lm_calls`` counts
    the reflection LM calls.

    A deterministic reflection LM (``deterministic``; default: the LM's own ``deterministic`` attribute, which
    :func:`~fst_env.agents.reflection.from_transformers` sets for greedy decoding) would answer a prompt it has
    answered before with the same rejected reply, so a rejected reply is remembered per prompt (up to
    ``cache_size`` prompts) and replayed instead of asking again; ``cache_hits`` counts the calls saved.
    """

    def __init__(self, reflection_lm: ReflectionLM, prompt_template: str | dict[str, str] | None = None, *,
                 min_chars: int = 8, max_chars: int = 20_000, deterministic: bool | None = None,
                 cache_size: int = 256) -> None:
        self.reflection_lm = as_reflection_lm(reflection_lm)
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.lm_calls = 0
        self.cache_hits = 0
        self.deterministic = bool(getattr(reflection_lm, "deterministic", False)) if deterministic is None \
            else bool(deterministic)
        self.cache_size = cache_size
        self._rejected: dict[str, str] = {}  # prompt -> the rejected reply a deterministic LM gave for it
        self._gepa = StatelessReflectionLM(self._call_lm, prompt_template, GepaLog())

    def _call_lm(self, prompt: Any) -> str:
        if self.deterministic and isinstance(prompt, str) and prompt in self._rejected:
            self.cache_hits += 1
            return self._rejected[prompt]
        self.lm_calls += 1
        reply = self.reflection_lm(prompt)
        if not isinstance(reply, str):
            raise TypeError(f"reflection LM must return str, got {type(reply).__name__}")
        return reply

    def reflect(self, candidate: dict[str, str], reflective_dataset: ReflectiveDataset,
                components_to_update: list[str]) -> tuple[ReflectionProposal, ReflectionProposer]:
        """gepa's ``ReflectionLM`` protocol: the proposal (new texts, prompts, raw replies) and this proposer."""
        proposal, _ = self._gepa.reflect(candidate, reflective_dataset, components_to_update)
        new_texts: dict[str, str] = {}
        rejected: dict[str, str] = {}
        for name, raw in proposal.raw_lm_outputs.items():
            text, reason = parse_reflection_output(raw, candidate.get(name, ""), min_chars=self.min_chars,
                                                   max_chars=self.max_chars)
            if text is None:
                rejected[name] = reason
                prompt = proposal.prompts.get(name)
                if self.deterministic and isinstance(prompt, str) and len(self._rejected) < self.cache_size:
                    self._rejected[prompt] = raw
            else:
                new_texts[name] = text
        metadata = {"rejected_replies": rejected} if rejected else {}
        return ReflectionProposal(new_texts=new_texts, prompts=dict(proposal.prompts),
                                  raw_lm_outputs=dict(proposal.raw_lm_outputs), metadata=metadata), self

    def __call__(self, candidate: Context, reflective_dataset: ReflectiveDataset,
                 components_to_update: list[str]) -> dict[str, str]:
        return self.reflect(dict(candidate), reflective_dataset, components_to_update)[0].new_texts


@dataclass(frozen=True)
class _NoteCandidate:
    """A note the notes proposer could add, with how often its trigger occurred and where it came from."""

    text: str
    count: int
    kind: str  # "format" or "recurring"
    order: int  # first appearance, for deterministic ties


# Sentences in format-error feedback that state a requirement ("put the answer in <answer> tags", ...).
_REQUIREMENT = re.compile(r"\b(must|should|required?|expected|format|put|wrap|enclose|use|write|provide|give|"
                          r"answer with|end with|start with|respond|reply|only|tags?|box(?:ed)?|exactly)\b",
                          re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?")
_QUOTED = re.compile(r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"|`[^`\n]{0,200}`|«[^»\n]{0,200}»")
_EXPECTED = re.compile(r"\b(expected|correct answer|should (?:be|have been)|the answer (?:is|was))\b", re.IGNORECASE)


def _mask_specifics(sentence: str) -> str:
    """A sentence with problem-specific values masked, so the same correction on different problems matches."""
    return _NUMBER.sub("<N>", _QUOTED.sub("<value>", sentence))



# A sentence that only judges the answer ("Your answer 12 ... is incorrect.") teaches nothing by itself: it counts
# toward the fixed re-check rule instead of becoming a note that quotes the verdict.
_ANSWER_VERDICT = re.compile(r"\banswer\b.*\b(?:is|was|are|were)\s+(?:incorrect|wrong|not correct)\b|"
                             r"\b(?:does|did)\s+not\s+match\b", re.IGNORECASE)
# The env's own advice in failure feedback ("Tip: end your response with ..."): kept as the env wrote it.
_TIP_LEAD = re.compile(r"^\s*\(?\s*(?:tip|hint)\s*:\s*", re.IGNORECASE)
_COUNT = re.compile(r"\(\s*\d+\s*x\s*\)|\b\d+\s*(?:x|times)\b", re.IGNORECASE)
_VERDICT_LEAD = re.compile(r"^\s*(?:incorrect|wrong|error|format error|invalid|failed)\s*[:.!-]\s*", re.IGNORECASE)
_RECHECK_RULE = "Final answers were often wrong: re-check each step and the final value before answering."


def note_meaning(text: str) -> str:
    """What a note says, for de-duplication: lower case, counts, numbers, quoted values, placeholders and
    punctuation removed, so "(4x) got '12'" and "(5x) got '7'" are the same lesson."""
    text = _COUNT.sub(" ", text)
    text = _mask_specifics(text).replace("<N>", " ").replace("<value>", " ")
    text = re.sub(r"\ba (?:number|value)\b", " ", text.lower())
    return " ".join(re.sub(r"[^\w<>/]+", " ", text).split())


def _as_rule(sentence: str) -> str:
    """A feedback sentence as a rule: verdict lead-in dropped, specific values written generically, no quotes."""
    text = _VERDICT_LEAD.sub("", _mask_specifics(sentence)).strip()
    text = text.replace("<N>", "a number").replace("<value>", "a value")
    return text[:1].upper() + text[1:] if text else ""


class NotesProposer:
    """An LLM-free :class:`Proposer`: curates a short bullet list of rules from recurring env feedback.

    From the failed rollouts in the reflective records (score below ``perfect_score`` or a failing verdict), the
    source text is the record's ``"Hint"`` when it has one (the env's answer-free ``info["hint"]`` channel), else
    its feedback with every sentence that names the expected answer removed (``expected``, ``correct answer``,
    ``should be``, ``the answer is``...): a training label never reaches a context. Then:
    - format errors give a rule stating the requirement sentence (``Format rule: Put the final answer inside
      <answer></answer> tags.``), once it occurs ``min_count_format`` times;
    - other sentences are compared with numbers and quoted values masked; one that recurs on ``min_count``
      failed rollouts gives a rule (``Avoid this recurring mistake: ...``, masked values written as "a number" /
      "a value", verdict words such as "Incorrect:" dropped), never the quoted error;
    - the env's own advice in failure feedback (a sentence led by ``Tip:`` or ``Hint:``) is kept as written
      (``Tip: End your response with ...``), once it occurs ``min_count_format`` times;
    - answers judged wrong (against an expected value, or by a sentence that only says the answer is incorrect)
      on ``min_count`` rollouts give one fixed rule to re-check the final value, never a note quoting the verdict.
    Notes carry no counts, and a note is new only if its *meaning* (lower-cased, numbers, quoted values and
    punctuation removed, see :func:`note_meaning`) differs from every kept note, so the same lesson is not
    re-proposed. At most ``max_new_notes`` notes are added per proposal (format rules first, then the most
    frequent); the list keeps ``max_notes`` notes, dropping the oldest. Pure and deterministic. No new note -> no
    proposal.
    """

    def __init__(self, max_notes: int = 6, *, max_new_notes: int = 2, min_count: int = 2,
                 min_count_format: int = 1, max_note_chars: int = 240, perfect_score: float = 1.0) -> None:
        if max_notes < 1 or max_new_notes < 1:
            raise ValueError(f"NotesProposer: max_notes and max_new_notes must be >= 1, got {max_notes}, "
                             f"{max_new_notes}")
        if min_count < 1 or min_count_format < 1:
            raise ValueError(f"NotesProposer: min_count and min_count_format must be >= 1, got {min_count}, "
                             f"{min_count_format}")
        if max_note_chars < 40:
            raise ValueError(f"NotesProposer: max_note_chars must be >= 40, got {max_note_chars}")
        self.max_notes = max_notes
        self.max_new_notes = max_new_notes
        self.min_count = min_count
        self.min_count_format = min_count_format
        self.max_note_chars = max_note_chars
        self.perfect_score = perfect_score

    # ---- note extraction
    def _failed(self, score: float | None, verdict: str) -> bool:
        return (score is not None and score < self.perfect_score) or verdict in _FAILED_VERDICTS

    def _shorten(self, text: str) -> str:
        text = " ".join(clean_text(text, 10 * self.max_note_chars).split())
        return text if len(text) <= self.max_note_chars else text[: self.max_note_chars - 1].rstrip() + "…"

    def derive_notes(self, records: Sequence[Mapping[str, Any]]) -> list[_NoteCandidate]:
        """Candidate notes from the records' hints / feedback, best first (format rules, then by frequency)."""
        format_hits: dict[str, list[Any]] = {}  # meaning -> [count, sentence, first order]
        recurring: dict[str, list[Any]] = {}  # meaning -> [count, rule text, first order]
        tip_hits: dict[str, list[Any]] = {}  # meaning -> [count, the env's tip, first order]
        wrong_answers = 0
        order = 0
        for record in records:
            score, verdict, body = parse_feedback(str(record.get("Feedback", "")))
            if not self._failed(score, verdict):
                continue
            hint = str(record.get("Hint") or "").strip()
            source = hint or body
            sentences = [s.strip() for s in _SENTENCE_SPLIT.split(clean_text(source, 4000)) if len(s.strip()) >= 8]
            named_expected = any(_EXPECTED.search(s) for s in sentences)
            # A sentence naming the expected answer could put a training label into the prompt: never used.
            sentences = [s for s in sentences if not _EXPECTED.search(s)]
            judged_wrong = named_expected and verdict != "format_error"
            seen_in_record: set[str] = set()  # one record counts once per lesson
            if verdict == "format_error":
                required = [s for s in sentences if _REQUIREMENT.search(s)] or sentences[:1]
                for sentence in required:
                    key = note_meaning(sentence)
                    if not key or key in seen_in_record:
                        continue
                    seen_in_record.add(key)
                    hit = format_hits.setdefault(key, [0, sentence, order])
                    hit[0] += 1
                    order += 1
            else:
                for sentence in sentences:
                    if _TIP_LEAD.match(sentence):
                        tip = _TIP_LEAD.sub("", sentence).rstrip(")").strip()
                        key = note_meaning(tip)
                        if key and key not in seen_in_record:
                            seen_in_record.add(key)
                            tip_hits.setdefault(key, [0, tip[:1].upper() + tip[1:], order])[0] += 1
                            order += 1
                        continue
                    if _ANSWER_VERDICT.search(sentence):
                        judged_wrong = True
                        continue
                    key = note_meaning(sentence)
                    # Sentences that are nothing but masked values carry no reusable lesson.
                    if key in seen_in_record or len(key.replace(" ", "")) < 6:
                        continue
                    seen_in_record.add(key)
                    hit = recurring.setdefault(key, [0, _as_rule(sentence), order])
                    hit[0] += 1
                    order += 1
            wrong_answers += int(judged_wrong)
        notes = [_NoteCandidate(self._shorten(f"Format rule: {text}"), count, "format", first)
                 for count, text, first in format_hits.values() if count >= self.min_count_format]
        notes += [_NoteCandidate(self._shorten(f"Tip: {text}"), count, "format", first)
                  for count, text, first in tip_hits.values() if count >= self.min_count_format]
        notes += [_NoteCandidate(self._shorten(f"Avoid this recurring mistake: {rule}"), count, "recurring", first)
                  for count, rule, first in recurring.values() if count >= self.min_count and rule]
        if wrong_answers >= self.min_count:
            notes.append(_NoteCandidate(_RECHECK_RULE, wrong_answers, "recurring", order))
        return sorted(notes, key=lambda n: (n.kind != "format", -n.count, n.order))

    @staticmethod
    def parse_notes(text: str) -> list[str]:
        """The notes in a "notes" component: one per non-empty line, bullet markers removed."""
        return [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines() if line.strip()]

    # ---- proposer protocol
    def reflect(self, candidate: dict[str, str], reflective_dataset: ReflectiveDataset,
                components_to_update: list[str]) -> tuple[ReflectionProposal, NotesProposer]:
        """gepa's ``ReflectionLM`` protocol: new notes per component, with the rationale as the "raw output"."""
        new_texts: dict[str, str] = {}
        rationale: dict[str, str] = {}
        for name in components_to_update:
            records = reflective_dataset.get(name) or []
            existing = self.parse_notes(candidate.get(name, ""))
            known = {note_meaning(n) for n in existing}
            fresh: list[_NoteCandidate] = []
            for note in self.derive_notes(records):
                if note_meaning(note.text) not in known and len(fresh) < self.max_new_notes:
                    fresh.append(note)
                    known.add(note_meaning(note.text))
            if not fresh:
                continue
            kept = (existing + [n.text for n in fresh])[-self.max_notes:]
            new_texts[name] = "\n".join(f"- {n}" for n in kept)
            rationale[name] = "; ".join(f"{n.kind} x{n.count}: {n.text}" for n in fresh)
        return ReflectionProposal(new_texts=new_texts, raw_lm_outputs=rationale), self

    def __call__(self, candidate: Context, reflective_dataset: ReflectiveDataset,
                 components_to_update: list[str]) -> dict[str, str]:
        return self.reflect(dict(candidate), reflective_dataset, components_to_update)[0].new_texts
