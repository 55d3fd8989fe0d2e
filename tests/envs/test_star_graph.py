"""fst/StarGraph-v0: config, graph shape, determinism, splits, exact-path reward and the feedback on mistakes."""

from __future__ import annotations

import itertools
import re

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.envs.star_graph import PRESETS, StarGraphConfig, make_config, parse_path


def make(**kwargs):
    return gym.make("fst/StarGraph-v0", **kwargs).unwrapped


def solved(env, seed: int = 0, **kwargs):
    env.reset(seed=seed, **kwargs)
    return env.problem.metadata


def join(nodes) -> str:
    return "Path: " + ",".join(map(str, nodes))


def step(env, seed: int, text: str):
    env.reset(seed=seed)
    _, reward, terminated, _, info = env.step(text)
    assert terminated
    return reward, info["verdict"], info["feedback"]


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("bad, message", [
    ({"degree": 1}, "degree must be >= 2"),
    ({"arm_length": 0}, "arm_length must be >= 1"),
    ({"degree": 3, "arm_length": 5, "node_range": 15}, "node_range must be >= 1 \\+ degree \\* arm_length = 16"),
    ({"degree": 100, "arm_length": 100, "node_range": 100_000}, "prompt size"),
])
def test_config_validate_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        StarGraphConfig(**bad).validate()


def test_config_types_and_names():
    with pytest.raises(TypeError, match="degree must be an int"):
        StarGraphConfig(degree=True).validate()
    with pytest.raises(TypeError, match=r"no option \['degre'\]"):
        make(degre=3)
    with pytest.raises(ValueError, match="difficulty must be one of"):
        make(difficulty="extreme")


def test_presets_and_overrides():
    for config in PRESETS.values():
        config.validate()
    assert make_config() == PRESETS["medium"]
    config = make_config("hard", arm_length=2)
    assert (config.degree, config.arm_length) == (PRESETS["hard"].degree, 2)


# ----------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("difficulty", list(PRESETS))
def test_graph_is_a_star_and_the_prompt_lists_every_edge_once(difficulty):
    env = make(difficulty=difficulty)
    config = env.config
    for seed in range(20):
        meta = solved(env, seed)
        edges = [tuple(map(int, e)) for e in re.findall(r"(\d+)->(\d+)", env.problem.prompt.split("\n\n")[0])]
        assert sorted(edges) == sorted(meta["edges"])
        assert len(edges) == config.degree * config.arm_length
        nodes = {n for e in edges for n in e}
        assert len(nodes) == 1 + config.degree * config.arm_length
        assert all(0 <= n < config.node_range for n in nodes)
        children = {}
        for a, b in edges:
            children.setdefault(a, []).append(b)
        assert len(children[meta["centre"]]) == config.degree
        assert all(len(c) == 1 for n, c in children.items() if n != meta["centre"])
        assert meta["target"] not in children  # a leaf
        path = meta["path"]
        assert len(path) == config.arm_length + 1 and path[0] == meta["centre"] and path[-1] == meta["target"]
        assert all(edge in meta["edges"] for edge in itertools.pairwise(path))
        assert f"centre node {meta['centre']}" in env.problem.prompt
        assert f"leaf node {meta['target']}" in env.problem.prompt


def test_determinism_and_problem_ids():
    a, b = make(), make()
    for seed in range(5):
        assert a.reset(seed=seed)[0] == b.reset(seed=seed)[0]
        out_a, out_b = a.step("Path: 1,2,3"), b.step("Path: 1,2,3")
        assert out_a[1:3] == out_b[1:3] and out_a[4]["feedback"] == out_b[4]["feedback"]
    assert a.reset(options={"problem_id": 3})[0] == b.reset(options={"problem_id": 3})[0]
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
def test_exact_path_scores_one_in_any_accepted_spelling(difficulty):
    env = make(difficulty=difficulty)
    for seed in range(10):
        path = solved(env, seed)["path"]
        for text in (f"Path: {','.join(map(str, path))}", f"reasoning...\n**Path:** {', '.join(map(str, path))}.",
                     f"Path: {' -> '.join(map(str, path))}", f"<answer>{' '.join(map(str, path))}</answer>"):
            assert step(env, seed, text)[:2] == (1.0, "correct"), text


def test_wrong_paths_get_zero_and_say_what_went_wrong():
    env = make(difficulty="medium")
    meta = solved(env, 4)
    c, t, path = meta["centre"], meta["target"], meta["path"]
    other = next(arm for arm in meta["arms"] if arm[-1] != t)
    absent = next(n for n in range(1000) if n not in path and all(n not in arm for arm in meta["arms"]) and n != c)
    cases = {
        join(path[::-1]): "the path is reversed",
        join(path[1:]): f"the path starts at {path[1]} but must start at the centre {c}",
        join([c, path[2]]): f"edge {c}->{path[2]} does not exist (the edges out of {c} go to",
        join([c, *other]): f"you reached {other[-1]}, which is a dead end at the end of another arm",
        join([c, other[0]]): f"the path stops at {other[0]}, on the arm {c}->{other[0]}, which does not lead to {t}",
        join(path[:3]): f"the path stops at {path[2]} before reaching the target {t} ({len(path) - 3} more steps",
        join([c]): f"the path stops at the centre {c}",
        join([c, path[1], c]): f"the step {path[1]}->{c} goes back towards the centre",
        join([*path, absent]): f"node {absent} is not in the graph",
        join([c, other[0], *path[2:]]): f"edge {other[0]}->{path[2]} does not exist",
    }
    for text, expected in cases.items():
        reward, verdict, feedback = step(env, 4, text)
        assert (reward, verdict) == (0.0, "incorrect"), text
        assert expected in feedback, (text, feedback)
        assert f"The correct path is {','.join(map(str, path))}" in feedback


def test_format_errors():
    env = make()
    meta = solved(env, 0)
    for text, expected in [("I think it is 5", "no 'Path:' line found"), ("Path:", "the 'Path:' line is empty"),
                           (f"Path: {meta['centre']},...,{meta['target']}", "'...' on the 'Path:' line is not a node"),
                           ("Path: 3, x7", "'x7'")]:
        reward, verdict, feedback = step(env, 0, text)
        assert (reward, verdict) == (0.0, "format_error")
        assert expected in feedback and f"Path: {meta['centre']},...,{meta['target']}" in feedback


def test_parse_path_takes_the_last_path_line():
    assert parse_path("Path: 1,2\nbetter:\nPath: 1,3,4") == ([1, 3, 4], "")
    assert parse_path("no path")[0] is None
    assert parse_path("So the final path: 4, 8, 15.") == ([4, 8, 15], "")


BAD_ACTIONS = ["", "x" * (1 << 20), "\ud800", "Path: \ud800", "\x00\x01\x1b[2J\x7f", "Path: \x00,1",
               "Path: ١,٢,٣", "路径: 1,2,3", "Path: " + "9" * 50_000, "Path: " + ",".join(["7"] * 20_000)]


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
    env = gym.make("fst/StarGraph-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"fst/StarGraph-v0.*list"):
        env.step([1, 2])


def test_oracle_response_scores_one():
    env = make()
    for seed in range(5):
        env.reset(seed=seed)
        assert env.step(env.oracle_response())[1] == 1.0


def test_check_env_and_card():
    check_env(make())
    card = fst_env.card("fst/StarGraph-v0")
    assert set(card.feedback_kinds) == {"correct", "incorrect", "format_error"}
    assert {"degree", "arm_length"} <= set(card.difficulty_knobs)
