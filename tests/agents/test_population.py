"""ContextPopulation: ids and lineage, gepa's per-problem Pareto front, pruning, sampling, persistence."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from fst_env.agents.population import ContextPopulation

# A hand-made score matrix (candidate -> problem -> score).
# - A wins p1, p2, p3 outright; B wins p4 outright (a specialist with a low mean);
# - C ties A on p1 and wins nothing else: every problem it is best on is also won by A -> dominated;
# - D is best nowhere (but has a better mean than B).
MATRIX = {
    "A": {"p1": 1.0, "p2": 1.0, "p3": 0.8, "p4": 0.0},
    "B": {"p1": 0.0, "p2": 0.0, "p3": 0.0, "p4": 0.9},
    "C": {"p1": 1.0, "p2": 0.2, "p3": 0.1, "p4": 0.0},
    "D": {"p1": 0.5, "p2": 0.5, "p3": 0.5, "p4": 0.5},
}


def make_population(max_size: int = 8) -> tuple[ContextPopulation, dict[str, int]]:
    pop = ContextPopulation({"instructions": "A"}, max_size=max_size)
    ids = {"A": pop.ids[0]}
    pop.set_scores(ids["A"], MATRIX["A"])
    for name in ("B", "C", "D"):
        ids[name] = pop.add({"instructions": name}, ids["A"], MATRIX[name])
    return pop, ids


def test_seed_ids_lineage_and_changed_components() -> None:
    pop = ContextPopulation({"instructions": "solve", "notes": "n"}, max_size=3)
    seed = pop.ids[0]
    pop.new_round()
    child = pop.add({"instructions": "solve carefully", "notes": "n"}, seed, {"p": 1.0}, reflection="why")
    assert child == seed + 1
    record = pop[child]
    assert record.parent_id == seed and record.round == 1 and record.reflection == "why"
    assert record.changed == ["instructions"]
    assert pop.context(child) == {"instructions": "solve carefully", "notes": "n"}
    # Copies: editing the returned context does not edit the population.
    pop.context(child)["instructions"] = "tampered"
    assert pop[child].context["instructions"] == "solve carefully"
    with pytest.raises(KeyError, match="parent id 99"):
        pop.add({"instructions": "x"}, 99, {})
    with pytest.raises(TypeError, match="texts \\(str\\)"):
        pop.add({"instructions": 3}, seed, {})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="max_size"):
        ContextPopulation({"instructions": ""}, max_size=0)


def test_reset_to_never_reuses_ids() -> None:
    pop, ids = make_population()
    new_seed = pop.reset_to({"instructions": "stage 2"})
    assert pop.ids == [new_seed] and new_seed > max(ids.values())
    assert pop.seed_context == {"instructions": "stage 2"}
    assert pop[new_seed].scores == {}


def test_pareto_front_drops_dominated_and_keeps_specialists() -> None:
    pop, ids = make_population()
    front = set(pop.pareto_front())
    assert front == {ids["A"], ids["B"]}  # C dominated by A (ties only where A wins), D best nowhere
    coverage = pop.front_coverage()
    assert coverage[ids["A"]] == 3 and coverage[ids["B"]] == 1
    assert coverage[ids["C"]] == 0 and coverage[ids["D"]] == 0


def test_pareto_front_matches_gepa_state() -> None:
    pop, ids = make_population()
    state, order = pop.to_gepa_state()
    assert {order[i] for i in state.program_at_pareto_front_valset["p1"]} == {ids["A"], ids["C"]}
    assert {order[i] for i in state.program_at_pareto_front_valset["p4"]} == {ids["B"]}
    assert state.per_program_tracked_scores == pytest.approx([sum(MATRIX[n].values()) / 4 for n in "ABCD"])
    assert state.is_consistent()


def test_prune_keeps_front_first_then_means() -> None:
    pop, ids = make_population()
    removed = pop.prune(3)
    # The specialist B (mean 0.225) survives; of the rest, D (mean 0.5) beats C (mean 0.325).
    assert set(pop.ids) == {ids["A"], ids["B"], ids["D"]}
    assert removed == [ids["C"]]
    pop.prune(1)
    assert pop.ids == [ids["A"]]  # most problems won


def test_prune_limit_validated_and_default_is_max_size() -> None:
    pop, _ = make_population(max_size=2)
    assert len(pop.prune()) == 2 and len(pop) == 2
    with pytest.raises(ValueError, match="max_size"):
        pop.prune(0)


def test_best_is_highest_mean() -> None:
    pop, ids = make_population()
    assert pop.best().id == ids["A"]
    pop.set_scores(ids["D"], {"p1": 1.0, "p2": 1.0, "p3": 1.0, "p4": 1.0})
    assert pop.best().id == ids["D"]


def test_rescoring_replaces_stale_scores() -> None:
    pop, ids = make_population()
    pop.set_scores(ids["B"], {"q1": 1.0})
    assert pop[ids["B"]].scores == {"q1": 1.0}  # no stale p1..p4 left behind
    assert pop[ids["B"]].mean_score == 1.0


def test_select_parent_weighted_by_problems_won() -> None:
    pop, ids = make_population()
    rng = random.Random(1234)
    draws = Counter(pop.select_parent(rng) for _ in range(4000))
    assert set(draws) == {ids["A"], ids["B"]}  # dominated and never-best candidates are never parents
    # gepa's selector: P(A) = 3/4 (wins 3 problems), P(B) = 1/4; 4000 draws give sd ~0.007.
    assert draws[ids["A"]] / 4000 == pytest.approx(0.75, abs=0.03)
    again = [pop.select_parent(random.Random(1234)) for _ in range(3)]
    assert len(set(again)) == 1  # seeded


def test_select_parent_uniform_before_scoring() -> None:
    pop = ContextPopulation({"instructions": "s"})
    other = pop.add({"instructions": "t"}, pop.ids[0], {})
    rng = random.Random(0)
    draws = Counter(pop.select_parent(rng) for _ in range(200))
    assert set(draws) == {pop.ids[0], other}
    assert abs(draws[other] - 100) < 30


@pytest.mark.parametrize(("group", "size"), [(8, 4), (8, 3), (5, 4), (3, 4), (1, 1)])
def test_assign_group_even_split_with_seeded_remainder(group: int, size: int) -> None:
    pop = ContextPopulation({"instructions": "c0"}, max_size=size)
    for i in range(1, size):
        pop.add({"instructions": f"c{i}"}, pop.ids[0], {})
    assigned = pop.assign_group(group, random.Random(7))
    assert len(assigned) == group
    counts = Counter(assigned)
    base, remainder = divmod(group, size)
    assert all(counts[cid] in (base, base + 1) for cid in pop.ids)
    assert sum(1 for cid in pop.ids if counts[cid] == base + 1) == remainder
    assert pop.assign_group(group, random.Random(7)) == assigned


def test_assign_group_remainder_depends_on_rng() -> None:
    pop = ContextPopulation({"instructions": "c0"})
    for i in range(1, 4):
        pop.add({"instructions": f"c{i}"}, pop.ids[0], {})
    outcomes = {tuple(pop.assign_group(5, random.Random(seed))) for seed in range(20)}
    assert len(outcomes) > 1
    with pytest.raises(ValueError, match="group_size"):
        pop.assign_group(0, random.Random(0))


def test_state_dict_round_trip_through_json() -> None:
    pop, ids = make_population(max_size=3)
    pop.new_round()
    pop.prune()
    state = json.loads(json.dumps(pop.state_dict()))
    restored = ContextPopulation.from_state_dict(state)
    assert restored.state_dict() == pop.state_dict()
    assert restored.pareto_front() == pop.pareto_front()
    # Counters survive: the next id is the same in both.
    assert restored.add({"instructions": "z"}, ids["A"], {}) == pop.add({"instructions": "z"}, ids["A"], {})
    assert restored.round == pop.round == 1


def test_load_state_dict_rejects_bad_states() -> None:
    pop, _ = make_population()
    state = pop.state_dict()
    with pytest.raises(ValueError, match="version"):
        pop.load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError, match="no candidates"):
        pop.load_state_dict({**state, "candidates": []})
    with pytest.raises(ValueError, match="corrupt"):
        pop.load_state_dict({**state, "next_id": 0})
