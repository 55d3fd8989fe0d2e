"""fst/ReasoningGym-v0 and the curated reasoning-gym ids: config, determinism, splits, scoring, bad input."""

from __future__ import annotations

import subprocess
import sys
import time

import gymnasium as gym
import pytest
import reasoning_gym
from gymnasium.utils.env_checker import check_env

import fst_env
from fst_env.envs import reasoning_gym as rg_env

CURATED_IDS = sorted(rg_env.CURATED)


def make(env_id: str = "fst/ReasoningGym-v0", **kwargs):
    return gym.make(env_id, **kwargs).unwrapped


def oracle(env) -> str:
    return f"Let me think.\n<answer>{env.problem.answer}</answer>"


# ----------------------------------------------------------------------------- config
def test_unknown_task_lists_close_matches():
    with pytest.raises(ValueError, match="knights_knaves"):
        make(task="knight_knaves")


def test_missing_task_lists_tasks_and_the_registered_default():
    with pytest.raises(ValueError, match=r"needs task=.*knights_knaves"):
        rg_env.ReasoningGymEnv()
    with pytest.raises(ValueError, match=r"needs task="):
        make(task=None)
    assert make().task == rg_env.DEFAULT_TASK


def test_unknown_config_field_names_the_fields():
    with pytest.raises(TypeError, match=r"'n_peple' \(did you mean 'n_people'\?\).*depth_constraint=2"):
        make(task="knights_knaves", n_peple=3)


def test_invalid_config_value_is_a_clear_error():
    with pytest.raises(ValueError, match=r"invalid config for reasoning-gym task 'knights_knaves'.*n_people"):
        make(task="knights_knaves", n_people=0)


def test_difficulty_checks():
    with pytest.raises(ValueError, match="difficulty must be one of"):
        make("fst/KnightsKnaves-v0", difficulty="impossible")
    with pytest.raises(ValueError, match="no difficulty presets"):
        make(task="acre", difficulty="easy")


def test_presets_validate_and_overrides_win():
    for task, levels in rg_env.PRESETS.items():
        assert set(levels) == set(rg_env.DIFFICULTIES)
        for level in rg_env.DIFFICULTIES:
            config = rg_env.build_config(task, level)
            for name, value in levels[level].items():
                assert getattr(config, name) == value
    config = rg_env.build_config("knights_knaves", "hard", n_people=5)
    assert (config.n_people, config.depth_constraint, config.seed) == (5, 3, 0)


def test_item_seed_is_the_problem_index():
    env = make("fst/Maze-v0")
    env.reset(seed=3)
    index = env.problem.metadata["index"]
    expected = reasoning_gym.create_dataset("maze", seed=0)[index]
    assert env.problem.metadata["entry"]["question"] == expected["question"]
    assert env.problem.prompt.startswith(expected["question"])
    assert "<answer>" in env.problem.prompt


# ----------------------------------------------------------------------------- cache
def test_one_dataset_per_task_and_config():
    rg_env.clear_dataset_cache()
    a, b = make("fst/Syllogism-v0"), make(task="syllogism", split="test")
    c = make("fst/Syllogism-v0", difficulty="easy")
    assert a.dataset is b.dataset
    assert a.dataset is not c.dataset
    assert rg_env.dataset_cache_size() == 2
    rg_env.clear_dataset_cache()
    assert make("fst/Syllogism-v0").dataset is not a.dataset


# ----------------------------------------------------------------------------- determinism and splits
def test_same_seed_same_problem_same_action_same_outcome():
    first, second = make("fst/KnightsKnaves-v0"), make("fst/KnightsKnaves-v0")
    for seed in range(5):
        p1, _ = first.reset(seed=seed)
        p2, _ = second.reset(seed=seed)
        assert p1 == p2
        out1 = first.step("<answer>Zoey is an angel</answer>")
        out2 = second.step("<answer>Zoey is an angel</answer>")
        assert out1[1:3] == out2[1:3] and out1[4]["feedback"] == out2[4]["feedback"]
    a, _ = first.reset(options={"problem_id": 7})
    b, _ = first.reset(options={"problem_id": 8})
    assert a != b


def test_env_seed_picks_another_stream():
    a = make("fst/WordSorting-v0").reset(options={"problem_id": 0})[0]
    b = make("fst/WordSorting-v0", seed=1).reset(options={"problem_id": 0})[0]
    assert a != b


def test_splits_are_disjoint():
    prompts = {}
    for split in ("train", "validation", "test"):
        env = make("fst/CircuitLogic-v0", split=split)
        prompts[split] = {env.reset(options={"problem_id": k})[0] for k in range(200)}
        assert len(prompts[split]) > 150
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]


def test_finite_pool_tasks_wrap_around():
    env = make(task="acre", size=50)
    questions = set()
    for k in range(60):
        env.reset(options={"problem_id": k})
        questions.add(env.problem.metadata["entry"]["question"])
        _, reward, *_ = env.step(oracle(env))
        assert reward == 1.0
    assert len(questions) <= 50


# ----------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("env_id", CURATED_IDS)
@pytest.mark.parametrize("difficulty", [None, *rg_env.DIFFICULTIES])
def test_oracle_answer_scores_one(env_id, difficulty):
    env = make(env_id, difficulty=difficulty)
    for seed in range(4):
        env.reset(seed=seed)
        _, reward, terminated, truncated, info = env.step(oracle(env))
        assert (reward, terminated, truncated, info["verdict"]) == (1.0, True, False, "correct")
        assert info["feedback"].startswith("Correct")


@pytest.mark.parametrize("env_id", CURATED_IDS)
def test_wrong_answer_scores_zero_with_specific_feedback(env_id):
    env = make(env_id)
    env.reset(seed=11)
    _, reward, _, _, info = env.step("<answer>qqq wrong qqq</answer>")
    assert reward == 0.0
    assert info["verdict"] == "incorrect"
    assert "'qqq wrong qqq'" in info["feedback"]
    assert repr(env.problem.answer)[:40].strip("'") in info["feedback"]
    assert "<answer>" in info["feedback"]


@pytest.mark.parametrize("env_id", CURATED_IDS)
def test_oracle_response_scores_one(env_id):
    env = make(env_id)
    env.reset(seed=9)
    _, reward, _, _, info = env.step(env.oracle_response())
    assert (reward, info["verdict"]) == (1.0, "correct")


def test_no_oracle_where_the_task_stores_no_usable_answer():
    env = make(task="graph_color")  # any valid colouring scores 1; the entry stores no answer
    env.reset(seed=0)
    assert env.problem.answer is None and env.oracle_response() is None


def test_partial_credit_is_incorrect_with_the_score():
    env = make("fst/KnightsKnaves-v0", difficulty="hard")
    for seed in range(20):
        env.reset(seed=seed)
        answer = env.problem.answer
        flipped = answer.replace("angel", "TMP", 1).replace("devil", "angel", 1).replace("TMP", "devil")
        if "angel" in answer and "devil" in answer and flipped != answer:
            break
    _, reward, _, _, info = env.step(f"<answer>{flipped}</answer>")
    assert 0.0 < reward < 1.0
    assert info["verdict"] == "incorrect"
    assert f"score {reward:.2f} of 1" in info["feedback"]


def test_answer_extraction_rules():
    assert rg_env.extract_answer("x <answer> 1 </answer> y <answer>2</answer>") == ("2", "tag")
    assert rg_env.extract_answer("work\nAnswer: 12\n") == ("12", "answer_line")
    assert rg_env.extract_answer("**Final answer:** yes") == ("yes", "answer_line")
    assert rg_env.extract_answer("Answer: 3\n<answer>4</answer>") == ("4", "tag")
    assert rg_env.extract_answer("no answer here") == (None, "none")


def test_multiline_answer_line_is_accepted():
    env = make("fst/MiniSudoku-v0")
    env.reset(seed=2)
    _, reward, _, _, info = env.step(f"Solved it.\nAnswer:\n{env.problem.answer}\n")
    assert reward == 1.0, info["feedback"]


def test_format_errors_name_the_format_and_the_answer():
    env = make("fst/Maze-v0")
    for response in ("I am not sure.", "<answer> </answer>"):
        env.reset(seed=0)
        _, reward, _, _, info = env.step(response)
        assert (reward, info["verdict"]) == (0.0, "format_error")
        assert "<answer>" in info["feedback"] and f"'{env.problem.answer}'" in info["feedback"]


def test_scorer_exception_is_incorrect_not_a_crash():
    env = make(task="prime_factorization")
    env.reset(seed=0)
    _, reward, _, _, info = env.step("<answer>zzz</answer>")
    assert (reward, info["verdict"]) == (0.0, "incorrect")
    assert "could not read your answer 'zzz'" in info["feedback"]


def test_eval_scorers_never_see_code(monkeypatch):
    env = make(task="n_queens")
    env.reset(seed=0)
    calls = []
    monkeypatch.setattr(env.dataset, "score_answer", lambda answer, entry: calls.append(answer) or 1.0)
    _, reward, _, _, info = env.step("<answer>__import__('os').system('echo pwned')</answer>")
    assert (reward, calls) == (0.0, [])
    assert "never contain" in info["feedback"]
    monkeypatch.undo()
    env.reset(seed=0)
    assert env.step(oracle(env))[1] == 1.0


def test_composite_task_from_plain_dicts():
    env = make(task="composite", datasets=[{"name": "syllogism", "weight": 1.0, "config": {}},
                                           {"name": "maze", "weight": 1.0, "config": {}}])
    for seed in range(4):
        env.reset(seed=seed)
        assert env.step(oracle(env))[1] == 1.0


# ----------------------------------------------------------------------------- bad input and API
BAD_ACTIONS = ["", "x" * (1 << 20), "\ud800", "<answer>\ud800\udfff</answer>", "\x00\x01\x1b[2J\x7f",
               "<answer>\x00</answer>", "Answer: 答案是四十二", "<answer>مرحبا</answer>", "Answer:", "<answer>",
               "<answer>" + "9" * 10_000 + "</answer>"]


@pytest.mark.parametrize("env_id", ["fst/KnightsKnaves-v0", "fst/TowerOfHanoi-v0", "fst/CourseSchedule-v0"])
def test_any_string_is_a_legal_action(env_id):
    env = make(env_id)
    for action in BAD_ACTIONS:
        env.reset(seed=1)
        _, reward, terminated, _, info = env.step(action)
        assert reward == 0.0 and terminated
        assert info["verdict"] in {"incorrect", "format_error"}
        assert isinstance(info["feedback"], str) and info["feedback"].strip()
        info["feedback"].encode("utf-8")  # no lone surrogates echoed back


def test_non_str_action_is_a_type_error():
    env = gym.make("fst/Syllogism-v0")
    env.reset(seed=0)
    with pytest.raises(TypeError, match=r"fst/Syllogism-v0.*int"):
        env.step(3)


@pytest.mark.parametrize("env_id", ["fst/ReasoningGym-v0", *CURATED_IDS])
def test_check_env_and_card(env_id):
    kwargs = {"task": "course_schedule"} if env_id == "fst/ReasoningGym-v0" else {}
    check_env(make(env_id, **kwargs))
    card = fst_env.card(env_id)
    assert card.splits == rg_env.SPLIT_SIZES and card.reward_range == (0.0, 1.0)
    assert "reasoning-gym" in card.data_source and card.licence


def test_problems_do_not_depend_on_the_hash_seed():
    code = ("import hashlib, gymnasium as gym, fst_env\n"
            "from fst_env.envs.reasoning_gym import CURATED\n"
            "h = hashlib.sha256()\n"
            "for env_id in sorted(CURATED):\n"
            "    env = gym.make(env_id, split='test')\n"
            "    for seed in range(3):\n"
            "        h.update(env.reset(seed=seed)[0].encode())\n"
            "print(h.hexdigest())\n")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                              env={"PYTHONHASHSEED": str(seed), "PATH": ""}).stdout for seed in (1, 2)}
    (digest,) = digests  # one digest for both hash seeds
    assert len(digest.strip()) == 64


# ----------------------------------------------------------------------------- guards (H1)
class _SlowScorer:
    """A stand-in rg dataset whose scorer outlasts any step deadline (pickled into the judging worker)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def score_answer(self, answer, entry):
        import time

        time.sleep(self.seconds)
        return 1.0


def test_evaluating_tasks_filter_admits_their_real_answers():
    from fst_env.envs import reasoning_gym as rg

    for task in sorted(t for t in rg.task_names() if rg.scorer_class(t) != "plain" and t != "composite"):
        env = gym.make("fst/ReasoningGym-v0", task=task)
        for seed in range(8):
            env.reset(seed=seed)
            problem = env.unwrapped.problem
            if env.unwrapped.oracle_response() is None:
                continue
            assert rg.answer_filter_error(task, str(problem.answer), problem.metadata["entry"]) is None, \
                (task, problem.answer)


@pytest.mark.parametrize("answer", ["__import__('os').system('id')", "9**9**9", "x**(10**9)", "1" * 20,
                                    "(" * 20 + "1" + ")" * 20, "lambda: 1", "a.__class__"])
def test_code_and_bombs_are_filtered_for_expression_tasks(answer):
    from fst_env.envs import reasoning_gym as rg

    for task in ("countdown", "puzzle24", "polynomial_multiplication", "simple_integration",
                 "intermediate_integration"):
        entry = {"metadata": {"variables": ["x"], "variable": "x"}}
        assert rg.answer_filter_error(task, answer, entry) is not None, (task, answer)


def test_isolated_scoring_past_the_deadline_is_a_timeout():
    env = gym.make("fst/ReasoningGym-v0", task="countdown", step_deadline_s=0.5)
    env.reset(seed=0)
    env.unwrapped.dataset = _SlowScorer(30)
    start = time.monotonic()
    _, reward, _, _, info = env.step("<answer>1 + 2</answer>")
    assert time.monotonic() - start < 0.5 + 1.5
    assert (reward, info["verdict"]) == (0.0, "timeout")
    assert "0.5 s" in info["hint"] and "0.5 s" in info["feedback"]


def test_in_process_overrun_is_a_timeout():
    env = gym.make("fst/ReasoningGym-v0", task="knights_knaves", step_deadline_s=0.2)
    env.reset(seed=0)
    assert not env.unwrapped.isolated
    env.unwrapped.dataset = _SlowScorer(0.4)
    _, reward, _, _, info = env.step("<answer>anything</answer>")
    assert (reward, info["verdict"]) == (0.0, "timeout")


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e9, True, "5"])
def test_step_deadline_is_validated(bad):
    with pytest.raises(ValueError, match="step_deadline_s"):
        gym.make("fst/ReasoningGym-v0", task="knights_knaves", step_deadline_s=bad)


def test_tower_of_hanoi_easy_has_honest_disjoint_splits():
    prompts = {}
    for split in ("train", "validation", "test"):
        env = gym.make("fst/TowerOfHanoi-v0", split=split, difficulty="easy")
        n = env.unwrapped.num_problems()
        assert n >= 1
        prompts[split] = {env.reset(options={"problem_id": k})[0] for k in range(n)}
        assert len(prompts[split]) == n
    assert not (prompts["train"] & prompts["validation"] or prompts["train"] & prompts["test"]
                or prompts["validation"] & prompts["test"])


def test_maze_easy_validation_problems_all_build():
    env = gym.make("fst/Maze-v0", split="validation", difficulty="easy")
    for k in range(12):
        env.reset(options={"problem_id": k})
        assert env.unwrapped.oracle_response() is not None
