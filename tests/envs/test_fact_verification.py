"""fst/FactVerification-v0: config, world consistency, determinism, splits, label and evidence scoring."""

from __future__ import annotations

import collections
import re
import subprocess
import sys

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.envs.fact_verification import (
    PRESETS,
    RELATIONS,
    FactVerificationConfig,
    generate_problem,
    make_config,
    parse_response,
)


def make(**kwargs):
    return gym.make("fst/FactVerification-v0", **kwargs).unwrapped


def step(env, seed: int, text: str):
    env.reset(seed=seed)
    _, reward, terminated, _, info = env.step(text)
    assert terminated
    return reward, info["verdict"], info["feedback"]


def answer(label: str, ids) -> str:
    return f"Let me follow the chain.\nVerdict: {label}\nEvidence: [{', '.join(map(str, ids))}]"


def seed_with(env, label: str, **conditions) -> tuple[int, dict]:
    for seed in range(500):
        env.reset(seed=seed)
        meta = env.problem.metadata
        if meta["label"] == label and all(meta[k] == v for k, v in conditions.items()):
            return seed, meta
    raise AssertionError(f"no {label} problem with {conditions}")


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad, message", [
    ({"min_hops": 0}, "1 <= min_hops <= max_hops <= 6"),
    ({"min_hops": 3, "max_hops": 2}, "1 <= min_hops <= max_hops <= 6"),
    ({"max_hops": 7}, "1 <= min_hops <= max_hops <= 6"),
    ({"num_distractors": 3}, "num_distractors must be in \\[4, 200\\]"),
    ({"num_countries": 1}, "num_countries must be in \\[2, 50\\]"),
    ({"max_extra_evidence": -1}, "max_extra_evidence must be >= 0"),
])
def test_config_validate_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        FactVerificationConfig(**bad).validate()


def test_config_types_names_and_presets():
    with pytest.raises(TypeError, match="must be an int"):
        FactVerificationConfig(min_hops=2.0).validate()
    with pytest.raises(TypeError, match="must be a bool"):
        FactVerificationConfig(require_evidence="yes").validate()
    with pytest.raises(TypeError, match=r"no option \['hops'\]"):
        make(hops=3)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        make(difficulty="brutal")
    for config in PRESETS.values():
        config.validate()
    assert make_config() == PRESETS["medium"]
    assert make_config("hard", num_distractors=5).num_distractors == 5


# ----------------------------------------------------------------------------- the generated world
_FACT_PATTERNS = [(name, re.compile(re.escape(rel.fact).replace(re.escape("{s}"), "(?P<s>.+?)")
                                    .replace(re.escape("{o}"), "(?P<o>.+?)") + "$"))
                  for name, rel in RELATIONS.items()]


def parse_documents(prompt: str) -> tuple[dict[int, str], dict[tuple[str, str], list[str]]]:
    """Read the documents back from the prompt text: id -> title, and (subject, relation) -> objects."""
    titles, facts = {}, collections.defaultdict(list)
    for doc_id, title, body in re.findall(r"^\[(\d+)\] ([^:\n]+): (.*)$", prompt, re.MULTILINE):
        titles[int(doc_id)] = title
        for sentence in re.split(r"(?<=\.) ", body):
            matches = [(name, m) for name, p in _FACT_PATTERNS if (m := p.match(sentence))]
            assert len(matches) == 1, sentence
            name, m = matches[0]
            assert m["s"] == title
            facts[(m["s"], name)].append(m["o"])
    return titles, facts


@pytest.mark.parametrize("difficulty", list(PRESETS))
def test_labels_follow_from_the_document_text(difficulty):
    config = PRESETS[difficulty]
    for index in range(150):
        problem = generate_problem(config, index)
        meta = problem.metadata
        titles, facts = parse_documents(problem.prompt)
        assert all(len(objects) == 1 for objects in facts.values())  # functional: one answer per question
        hops = meta["hops"]
        assert config.min_hops <= len(hops) <= config.max_hops
        assert len(titles) == len(hops) + config.num_distractors
        assert sorted(titles) == list(range(1, len(titles) + 1))
        # Follow the chain through the text alone, starting from the claim's entity.
        entity = hops[0]["subject"]
        for hop in hops:
            assert titles[hop["doc"]] == entity
            entity = facts[(entity, hop["relation"])][0]
        claim = meta["claim"]
        assert claim.endswith(f" {meta['claimed_end']}.") and hops[0]["subject"] in claim
        assert (entity == meta["claimed_end"]) == (meta["label"] == "SUPPORTED")
        assert meta["true_end"] == entity


def test_labels_are_balanced_and_hops_vary():
    metas = [generate_problem(PRESETS["medium"], i).metadata for i in range(400)]
    labels = collections.Counter(m["label"] for m in metas)
    assert 150 <= labels["SUPPORTED"] <= 250
    assert {len(m["hops"]) for m in metas} == {2, 3}
    assert {m["swapped_hop"] for m in metas if m["label"] == "REFUTED"} >= {1, 2, 3}


def test_determinism_and_problem_ids():
    a, b = make(), make()
    for seed in range(5):
        assert a.reset(seed=seed)[0] == b.reset(seed=seed)[0]
        out_a, out_b = a.step(answer("SUPPORTED", [1, 2])), b.step(answer("SUPPORTED", [1, 2]))
        assert out_a[1:3] == out_b[1:3] and out_a[4]["feedback"] == out_b[4]["feedback"]
    assert a.reset(options={"problem_id": 3})[0] != a.reset(options={"problem_id": 4})[0]
    assert make(seed=1).reset(options={"problem_id": 3})[0] != a.reset(options={"problem_id": 3})[0]


def test_splits_are_disjoint():
    prompts = {}
    for split in ("train", "validation", "test"):
        env = make(split=split, difficulty="easy")
        prompts[split] = {env.reset(options={"problem_id": k})[0] for k in range(200)}
        assert len(prompts[split]) == 200
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]


# ----------------------------------------------------------------------------- judging
@pytest.mark.parametrize("difficulty", list(PRESETS))
def test_oracle_answer_scores_one(difficulty):
    env = make(difficulty=difficulty)
    for seed in range(20):
        env.reset(seed=seed)
        _, reward, _, _, info = env.step(env.problem.answer)
        assert (reward, info["verdict"]) == (1.0, "correct")
        assert info["feedback"].startswith(f"Correct: the claim is {env.problem.metadata['label']}")


def test_wrong_label_names_the_deciding_document():
    env = make(difficulty="easy")  # two hops, so swapped_hop=2 is the last one
    seed, meta = seed_with(env, "REFUTED", swapped_hop=2)
    last = meta["hops"][-1]
    assert len(meta["hops"]) == 2
    reward, verdict, feedback = step(env, seed, answer("SUPPORTED", meta["evidence"]))
    assert (reward, verdict) == (0.0, "incorrect")
    assert f"doc {last['doc']} says {last['fact'][:-1]}, not {meta['claimed_end']}" in feedback
    assert "Label wrong: the claim is REFUTED" in feedback

    seed, meta = seed_with(env, "SUPPORTED")
    reward, verdict, feedback = step(env, seed, answer("REFUTED", meta["evidence"]))
    assert (reward, verdict) == (0.0, "incorrect")
    assert "Label wrong: the claim is SUPPORTED" in feedback
    assert all(f"doc {h['doc']} says {h['fact'][:-1]}" in feedback for h in meta["hops"])


def test_missing_evidence_names_each_missing_document():
    env = make()
    seed, meta = seed_with(env, "SUPPORTED")
    first, *rest = meta["hops"]
    reward, verdict, feedback = step(env, seed, answer("SUPPORTED", [h["doc"] for h in rest]))
    assert (reward, verdict) == (0.0, "incorrect")
    assert f"You did not cite the document saying {first['ask']} (doc {first['doc']})." in feedback
    assert "Label right" in feedback


def test_extra_citations_tolerance():
    env = make(max_extra_evidence=1)
    seed, meta = seed_with(env, "REFUTED")
    others = [i for i in range(1, meta["num_documents"] + 1) if i not in meta["evidence"]]
    assert step(env, seed, answer("REFUTED", [*meta["evidence"], others[0]]))[:2] == (1.0, "correct")
    reward, verdict, feedback = step(env, seed, answer("REFUTED", range(1, meta["num_documents"] + 1)))
    assert (reward, verdict) == (0.0, "incorrect")
    assert f"You cited {len(others)} documents the chain does not pass through" in feedback
    reward, _, feedback = step(env, seed, answer("REFUTED", [*meta["evidence"], 999]))
    assert reward == 1.0 and "Doc 999 does not exist" in feedback


def test_partial_credit_and_label_only_modes():
    env = make(partial_credit=True)
    seed, meta = seed_with(env, "SUPPORTED")
    hops = len(meta["hops"])
    reward, verdict, _ = step(env, seed, answer("SUPPORTED", meta["evidence"][:1]))
    assert verdict == "incorrect" and reward == pytest.approx(0.5 + 0.5 / hops)
    assert step(env, seed, answer("REFUTED", meta["evidence"]))[0] == 0.0

    env = make(require_evidence=False)
    seed, meta = seed_with(env, "REFUTED")
    assert "The Evidence line is optional" in env.problem.prompt
    assert step(env, seed, "Verdict: REFUTED")[:2] == (1.0, "correct")
    assert step(env, seed, "Verdict: SUPPORTED")[:2] == (0.0, "incorrect")


def test_format_errors():
    env = make()
    for text, expected in [("It is false.", "no 'Verdict:' line"),
                           ("Verdict: TRUE\nEvidence: [1]", "says 'TRUE', which is neither"),
                           ("Verdict: REFUTED", "no 'Evidence:' line found")]:
        reward, verdict, feedback = step(env, 0, text)
        assert (reward, verdict) == (0.0, "format_error")
        assert expected in feedback and "Verdict: SUPPORTED" in feedback


def test_parser_accepts_common_spellings():
    assert parse_response("**Verdict:** refutes\n**Evidence:** docs 4 and 9") == ("REFUTED", [4, 9], "")
    assert parse_response("Verdict: SUPPORTED\nEvidence: []") == ("SUPPORTED", [], "")
    assert parse_response("My verdict: REFUTED, evidence: [4, 9].") == ("REFUTED", [4, 9], "")
    assert parse_response("Verdict: REFUTED\nVerdict: SUPPORTED")[0] == "SUPPORTED"  # the last line counts


BAD_ACTIONS = ["", "x" * (1 << 20), "\ud800", "Verdict: \ud800", "\x00\x01\x1b[2J\x7f",
               "Verdict: REFUTED\nEvidence: [\ud800]", "Verdict: 支持\nEvidence: [1]", "Вердикт: SUPPORTED",
               "Verdict: SUPPORTED\nEvidence: " + "9" * 100_000, "Verdict: SUPPORTED\nEvidence: " + "1," * 30_000]


def test_any_string_is_a_legal_action():
    env = make()
    for action in BAD_ACTIONS:
        env.reset(seed=1)
        _, reward, terminated, _, info = env.step(action)
        assert reward == 0.0 and terminated
        assert info["verdict"] in {"incorrect", "format_error"}
        assert info["feedback"].strip()
        info["feedback"].encode("utf-8")


def test_non_str_action_is_a_type_error():
    env = gym.make("fst/FactVerification-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"fst/FactVerification-v0.*NoneType"):
        env.step(None)


def test_oracle_response_scores_one():
    env = make()
    for seed in range(5):
        env.reset(seed=seed)
        assert env.step(env.oracle_response())[1] == 1.0


def test_check_env_and_card():
    check_env(make())
    card = fst_env.card("fst/FactVerification-v0")
    assert {"num_distractors", "min_hops / max_hops"} <= set(card.difficulty_knobs)
    assert "no HoVer data" in card.data_source


def test_problems_do_not_depend_on_the_hash_seed():
    code = ("import hashlib\n"
            "from fst_env.envs.fact_verification import PRESETS, generate_problem\n"
            "print(hashlib.sha256(''.join(generate_problem(PRESETS['hard'], i).prompt for i in range(50)).encode())"
            ".hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                              env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2)}
    (digest,) = digests  # one digest for both hash seeds
    assert len(digest.strip()) == 64
