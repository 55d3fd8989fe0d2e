"""Every long phase of a run is named on the progress bar (so none looks like a hang); --quiet prints nothing."""

import fst_env
from fst_env.agents.fst_agent import FSTAgent, FSTConfig
from fst_env.loop import Schedule, Stage, train
from fst_env.models import tiny_policy

TASK = "test/ProgressEven-v0"
fst_env.register_task(TASK, {"train": [{"prompt": f"Say item {i}."} for i in range(8)],
                             "validation": [{"prompt": f"Say thing {i}."} for i in range(4)]},
                      reward_fn=lambda response, problem: float(len(response) % 2 == 0), summary="test task")


def _agent() -> FSTAgent:
    return FSTAgent(tiny_policy(0), TASK, FSTConfig(group_size=2, groups_per_step=1, fast_every=2,
                                                    fast_learner="notes", max_new_tokens=6, fast_problems=2,
                                                    fast_budget=8, proposals_per_round=1, population_size=2))


def test_progress_names_baseline_updates_fast_rounds_evaluations_and_checkpoints(tmp_path, capsys):
    schedule = Schedule([Stage(TASK, 2)], eval_every=1, eval_problems=2)
    train(_agent(), schedule, run_dir=tmp_path / "run", tensorboard=False)
    err = capsys.readouterr().err
    for label in ("baseline evaluation (1 task x 2 held-out problems)", "update 1/2: rollouts + slow step",
                  "update 2/2: rollouts + slow step + fast round", "evaluation after update 1",
                  "end-of-stage 0 evaluation", "saving checkpoint"):
        assert label in err, label


def test_quiet_prints_no_progress(tmp_path, capsys):
    train(_agent(), Schedule([Stage(TASK, 1)], eval_problems=2), quiet=True, tensorboard=False)
    assert "fst train" not in capsys.readouterr().err
