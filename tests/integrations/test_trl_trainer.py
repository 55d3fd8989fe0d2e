"""FSTGRPOTrainer (CISPO + mixed contexts + fast rounds) on a tiny model (CPU): a short run and its checkpoint.

Also its config checks, vLLM and multi-process plumbing, the resumable sampler, evaluation, the multi-GPU doc script.
"""

import importlib.util
import json
import math
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _trl_helpers import (
    ADVICE,
    ENV_ID,
    ROWS,
    SECOND_CONTEXT,
    SEED_CONTEXT,
    G,
    _accept_all_notes,
    _columns,
    _config,
    _trainer,
)
from peft import LoraConfig

from fst_env.agents.fast import NotesFastLearner, ReflectiveFastLearner, ScoreAcceptance
from fst_env.agents.population import ContextPopulation
from fst_env.agents.rollout import Rollout
from fst_env.core import VERDICTS
from fst_env.integrations import trl as fst_trl
from fst_env.integrations.trl import (
    DEFAULT_EPSILON_HIGH,
    FST_STATE_NAME,
    EnvReward,
    env_dataset,
    fst_grpo_config,
    parse_problem_key,
)
from fst_env.models import tiny_policy


# ============================================================================================== objective
def test_fst_config_defaults_to_cispo_with_tau(tmp_path):
    args = fst_grpo_config(str(tmp_path), report_to=[], bf16=False, use_cpu=True)
    assert (args.loss_type, args.epsilon_high, args.beta, args.scale_rewards) == ("cispo", DEFAULT_EPSILON_HIGH,
                                                                                  0.0, "group")
    assert fst_grpo_config(str(tmp_path), epsilon_high=5.0, bf16=False, use_cpu=True).epsilon_high == 5.0


def test_trainer_refuses_cispo_without_cap_other_losses_and_server_mixing(tmp_path):
    cases = [(dict(loss_type="cispo", epsilon_high=None), "explicit epsilon_high"),
             (dict(loss_type="dapo"), "CISPO"),
             (dict(use_vllm=True, vllm_mode="server"), "server mode")]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            _trainer(tmp_path, args=_config(tmp_path, **overrides))
    with pytest.raises(ValueError, match="trials='round'"):
        _trainer(tmp_path, fast_learner=NotesFastLearner(trials="collect"), fast_every=1)


# ============================================================================================== a short run
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two CISPO steps of a LoRA tiny model with two contexts, a fast round after each, TensorBoard on."""
    out = tmp_path_factory.mktemp("fst_grpo")
    broadcasts = []
    real_broadcast = fst_trl.broadcast_object_list

    def recording_broadcast(objects, from_process=0):
        broadcasts.append(json.dumps(objects[0]["population"], sort_keys=True))
        return real_broadcast(objects, from_process=from_process)

    fst_trl.broadcast_object_list = recording_broadcast
    try:
        trainer = _trainer(out, args=_config(out, report_to=["tensorboard"], save_strategy="steps", save_steps=2),
                           fast_learner=_accept_all_notes(), fast_every=1, fast_problems=2,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        trainer.train()
    finally:
        fst_trl.broadcast_object_list = real_broadcast
    return {"trainer": trainer, "out": out, "broadcasts": broadcasts}


def test_run_uses_cispo_with_the_requested_cap(run):
    trainer = run["trainer"]
    assert trainer.args.loss_type == trainer.loss_type == "cispo"
    assert trainer.args.epsilon_high == trainer.epsilon_high == DEFAULT_EPSILON_HIGH
    step_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in step_logs] == [1, 2]
    # cispo_clip_ratio is only logged by the cispo branch of GRPOTrainer._compute_loss.
    assert all("cispo_clip_ratio" in e and math.isfinite(e["loss"]) for e in step_logs)
    assert any(e["grad_norm"] > 0 for e in step_logs)


def test_contexts_are_mixed_within_each_group(run):
    trainer = run["trainer"]
    first = trainer.feedback_buffer.recent()[:ROWS]  # step 1's batch, generated before any fast round
    for start in range(0, ROWS, G):
        group = first[start:start + G]
        assert len({r.group for r in group}) == 1
        ids = sorted(r.context_id for r in group)
        assert ids == [0, 0, 1, 1]  # G/K = 2 rollouts per context
        assert {r.context_id: r.context for r in group} == {0: SEED_CONTEXT, 1: SECOND_CONTEXT}
    # The prompts TRL generated from in the last step: one user message per group, several system messages.
    prompts = list(trainer._logs["prompt"])
    assert len(prompts) == ROWS
    for start in range(0, ROWS, G):
        group = prompts[start:start + G]
        assert len({p[-1]["content"] for p in group}) == 1
        assert len({p[0]["content"] for p in group}) >= 2 and all(p[0]["role"] == "system" for p in group)


def test_one_advantage_per_problem_across_its_contexts(run):
    trainer = run["trainer"]
    last = trainer.feedback_buffer.recent(ROWS)  # the last batch, in TRL's row order
    rewards = torch.tensor([r.reward for r in last]).view(-1, G)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # Bessel-corrected, as TRL's nanstd
    expected = ((rewards - mean) / (std + 1e-4)).flatten()
    assert torch.allclose(torch.tensor(list(trainer._logs["advantages"])), expected, atol=1e-5)
    assert (std > 0).any(), "the graded reward should give at least one group reward variance"
    for start in range(0, ROWS, G):
        assert len({r.context_id for r in last[start:start + G]}) >= 2


def test_rewards_and_feedback_land_in_the_buffer(run):
    trainer = run["trainer"]
    records = trainer.feedback_buffer.recent()
    assert len(records) == 2 * ROWS and trainer.feedback_buffer.total_added == 2 * ROWS
    check = EnvReward(ENV_ID)
    for r in records:
        env_id, split, pid = parse_problem_key(r.group)
        assert (env_id, split) == (ENV_ID, "train")
        assert r.verdict in VERDICTS and r.feedback
        assert r.reward == check.judge(split, pid, r.completion).reward
        assert r.info["step"] in (0, 1)
    assert {r.info["step"] for r in records} == {0, 1}


def test_fast_rounds_change_the_population_reuse_rollouts_and_reach_the_next_prompts(run):
    trainer = run["trainer"]
    assert trainer.fst_counters["fast_rounds"] == 2 and len(trainer.fast_history) == 2
    assert all(h["rollouts_reused"] > 0 for h in trainer.fast_history)  # RL rollouts reused, not regenerated
    assert trainer.fst_counters["rollouts_reused"] == sum(h["rollouts_reused"] for h in trainer.fast_history)
    noted = [c for c in trainer.population if ADVICE in c.context.get("notes", "")]
    assert noted and all(c.parent_id in (0, 1) and c.changed == ["notes"] for c in noted)
    first_child = min(c.id for c in noted)
    # The round after step 1 added a context; step 2's groups were generated with it.
    second_batch = trainer.feedback_buffer.recent(ROWS)
    assert first_child in {r.context_id for r in second_batch}
    assert any(ADVICE in p[0]["content"] for p in trainer._logs["prompt"])


class ScriptedReflector:
    """Stands in for a reflection LM: records GEPA's prompt, answers with the current instruction plus a phrase."""

    def __init__(self, phrase: str) -> None:
        self.phrase = phrase
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        current = prompt.split("```")[1].strip()  # GEPA's template quotes the current instruction first
        return f"A better instruction:\n```\n{current} {self.phrase}\n```"


def test_reflective_learner_with_a_scripted_reflector_changes_the_population(tmp_path):
    reflector = ScriptedReflector(ADVICE)
    learner = ReflectiveFastLearner(reflector, minibatch_size=2, proposals_per_round=1, seed=0,
                                    acceptance=ScoreAcceptance(lambda before, after: True, "accept-all"))
    trainer = _trainer(tmp_path, args=_config(tmp_path, max_steps=1), fast_learner=learner, fast_every=1,
                       fast_problems=2)
    trainer.train()
    assert len(reflector.prompts) == 1 == trainer.fst_counters["reflection_calls"]
    # The reflector saw the env's feedback on the RL rollouts of step 1.
    assert "letters or digits" in reflector.prompts[0] and "## Feedback" in reflector.prompts[0]
    children = [c for c in trainer.population if c.parent_id is not None and c.id > 1]
    assert len(children) == 1 and children[0].changed == ["instructions"]
    parent = trainer.population.context(children[0].parent_id)
    assert children[0].context["instructions"] == f"{parent['instructions']} {ADVICE}"


def test_population_is_broadcast_every_round(run):
    trainer, broadcasts = run["trainer"], run["broadcasts"]
    assert len(broadcasts) == 2  # once per fast round (single process: a no-op that returns the same object)
    assert json.loads(broadcasts[-1]) == trainer.population.state_dict()


def test_fast_round_metrics_share_trl_tensorboard_run_and_steps(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, out = run["trainer"], run["out"]
    fast_logs = [e for e in trainer.state.log_history if "fast/n_proposals" in e]
    assert [e["step"] for e in fast_logs] == [1, 2]
    assert all(e["population/size"] >= 3 and e["budget/fast_rounds"] >= 1 for e in fast_logs)
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/fast/n_accepted", "train/fast/metric_calls", "train/population/size", "train/reward",
            "train/loss", "train/fst/contexts_per_group", "train/fst/correct_frac"} <= tags
    assert [s.step for s in events.Scalars("train/fast/n_accepted")] == [1, 2]


def test_checkpoint_carries_the_population_and_resume_restores_it(run, tmp_path):
    trainer, out = run["trainer"], run["out"]
    saved = json.loads((out / "checkpoint-2" / FST_STATE_NAME).read_text())
    assert saved["population"] == trainer.population.state_dict()
    assert saved["counters"] == trainer.fst_counters and len(saved["buffer"]["records"]) == 2 * ROWS
    fresh = _trainer(tmp_path, population=ContextPopulation(dict(SEED_CONTEXT), max_size=4),
                     fast_learner=_accept_all_notes(), fast_every=1,
                     peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert len(fresh.population) == 1
    # What Trainer.train(resume_from_checkpoint=...) does before the first resumed step.
    fresh.create_optimizer_and_scheduler(num_training_steps=2)
    fresh._load_optimizer_and_scheduler(str(out / "checkpoint-2"))
    assert fresh.population.state_dict() == trainer.population.state_dict()
    assert fresh.fst_counters == trainer.fst_counters
    assert fresh.fast_learner.state_dict() == trainer.fast_learner.state_dict()
    assert fresh.feedback_buffer.recent() == trainer.feedback_buffer.recent()


# ============================================================================================== vLLM plumbing
FAKE_VLLM_TEXT = "ab!?"  # half letters: imperfect, so the fast round has failures to propose from


class _FakeVLLM:
    """Stands in for TRL's VLLMGeneration (vLLM cannot run here): records weight syncs and generations."""

    def __init__(self, trainer):
        self.trainer, self.calls = trainer, []

    def sync_weights(self):
        self.calls.append(("sync", self.trainer.state.global_step))

    def generate(self, prompts, images, num_generations, profiler=None):
        self.calls.append(("generate", len(prompts), num_generations))
        ids = self.trainer.processing_class(FAKE_VLLM_TEXT, add_special_tokens=False)["input_ids"]
        return prompts, [list(ids) for _ in prompts], [[[-0.1]] * len(ids) for _ in prompts], None


def test_fast_round_syncs_vllm_weights_first_and_generates_through_it(tmp_path):
    trainer = _trainer(tmp_path, fast_learner=_accept_all_notes(), fast_every=1)
    data = env_dataset(ENV_ID, "train", 2)
    trainer.env_reward(prompts=[data[i]["prompt"] for i in (0, 0, 1, 1)], completions=["a-b", "a!", "?", "x."],
                       context_id=[0, 1, 0, 1], context=[json.dumps(SEED_CONTEXT), json.dumps(SECOND_CONTEXT)] * 2,
                       **{k: v for k, v in _columns(data, [0, 0, 1, 1]).items() if k not in ("context_id", "context")})
    fake = _FakeVLLM(trainer)
    trainer.state.global_step = 3
    trainer.use_vllm, trainer.vllm_mode, trainer.vllm_generation = True, "colocate", fake
    scalars = trainer.fast_round()
    assert fake.calls[0] == ("sync", 3) and trainer._last_loaded_step == 3
    assert [c for c in fake.calls if c[0] == "sync"] == [("sync", 3)]  # fresh weights: no second push
    generations = [c for c in fake.calls if c[0] == "generate"]
    assert generations and all(n == 1 for _, _, n in generations)
    assert scalars["fast/metric_calls"] == sum(c[1] for c in generations)
    assert trainer.fast_history[0]["proposals"][0]["child_scores"] == [0.5, 0.5]  # scored on vLLM's completions
    # Fast-round rollouts are not RL rollouts: they stay out of the buffer.
    assert len(trainer.feedback_buffer) == 4 and all(r.completion != FAKE_VLLM_TEXT for r in trainer.feedback_buffer)


# ============================================================================================== several processes
def test_a_group_split_across_processes_gets_one_assignment(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fast_every=0)
    trainer.population.add({"instructions": "Third."}, parent_id=0, scores={})
    trainer.fst_counters["generation_rounds"] = 5
    whole = trainer.assign_contexts(12, G)  # one process holding 12 rows = 3 groups
    halves = []
    for rank in (0, 1):  # two processes holding 6 rows each: group 1 straddles them
        monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(process_index=rank))
        halves += trainer.assign_contexts(6, G)
    assert halves == whole
    for start in range(0, 12, G):
        assert sorted(Counter(whole[start:start + G]).values()) == [1, 1, 2]  # G // K each, one extra


def test_main_process_gathers_every_processes_rollouts(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fast_every=0)
    mine = [Rollout(group=f"{ENV_ID}/train/0", problem="p", context_id=0, context={}, completion="m")]
    theirs = [Rollout(group=f"{ENV_ID}/train/1", problem="p", context_id=1, context={}, completion="t")]
    mark = trainer.feedback_buffer.total_added
    trainer.feedback_buffer.extend(mine)
    gathered = []
    monkeypatch.setattr(fst_trl, "gather_object", lambda local: gathered.append(local) or [*local, *theirs])
    for is_main in (False, True):
        monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(num_processes=2, is_main_process=is_main))
        trainer._share_rollouts(mark)
    assert gathered == [mine, mine]
    assert trainer.feedback_buffer.recent() == [*mine, *theirs]  # added once, on the main process only


def test_fast_generation_set_ups_that_would_hang_are_refused(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path, fast_every=1)
    monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(num_processes=2))
    monkeypatch.setattr(trainer, "_dist", SimpleNamespace(is_zero3=True, is_fsdp=False))
    with pytest.raises(ValueError, match="ZeRO-3 or FSDP"):
        trainer._check_fast_generation()
    monkeypatch.setattr(trainer, "use_vllm", True)
    monkeypatch.setattr(trainer, "vllm_mode", "colocate")
    trainer._check_fast_generation()  # colocate, tensor_parallel_size=1: the main rank generates alone
    monkeypatch.setattr(trainer, "vllm_tensor_parallel_size", 2)
    with pytest.raises(ValueError, match="colocate TP>1"):
        trainer._check_fast_generation()
    monkeypatch.setattr(trainer, "fast_generate", lambda messages: ["x"] * len(messages))
    trainer._check_fast_generation()  # the user's own generator takes the responsibility


# ============================================================================================== resumable sampler
def test_resumable_sampler_keeps_trls_order_and_replays_any_epoch_on_a_fresh_sampler():
    from trl.trainer.utils import RepeatSampler

    def make(cls):
        return cls(list(range(10)), mini_repeat_count=2, batch_size=3, repeat_count=1, seed=7)

    trl_sampler = make(RepeatSampler)
    trl_epochs = [list(trl_sampler) for _ in range(3)]
    assert len({tuple(e) for e in trl_epochs}) == 3
    assert list(make(RepeatSampler)) == trl_epochs[0]  # why: a fresh TRL sampler (a resumed run) replays epoch 0
    ours = make(fst_trl.ResumableRepeatSampler)
    assert [list(ours) for _ in range(3)] == trl_epochs  # no set_epoch: TRL's order, epoch after epoch
    for epoch in (2, 1, 0):
        fresh = make(fst_trl.ResumableRepeatSampler)
        fresh.set_epoch(epoch)
        assert list(fresh) == trl_epochs[epoch]
    unshuffled = fst_trl.ResumableRepeatSampler(list(range(4)), mini_repeat_count=2, batch_size=2, shuffle=False)
    unshuffled.set_epoch(3)
    assert list(unshuffled) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_trainer_trains_from_the_resumable_sampler_and_sets_its_epoch(tmp_path):
    trainer = _trainer(tmp_path, fast_every=0)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, fst_trl.ResumableRepeatSampler) and trainer.train_sampler is sampler
    assert (sampler.mini_repeat_count, sampler.seed) == (G, trainer.args.seed)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, fst_trl.FastRoundCallback))
    for progress, epoch in ((None, 0), (0.0, 0), (2.0, 2), (2.5, 2)):  # resumed mid-epoch 2: state.epoch = 2.5
        callback.on_epoch_begin(trainer.args, SimpleNamespace(epoch=progress), trainer.control)
        assert sampler.epoch == epoch


# ============================================================================================== evaluation
def test_evaluation_uses_the_best_context_and_records_nothing(tmp_path):
    trainer = _trainer(tmp_path, eval_dataset=env_dataset(ENV_ID, "validation"), fast_every=0)
    trainer.population.set_scores(0, {"k": 0.2})
    trainer.population.set_scores(1, {"k": 0.9})
    metrics = trainer.evaluate()
    assert "eval_reward" in metrics and len(trainer.feedback_buffer) == 0
    prompts = list(trainer._logs["prompt"])
    assert prompts and all(p[0]["content"] == SECOND_CONTEXT["instructions"] for p in prompts)


# ============================================================================================== the multi-GPU recipe
def test_multi_gpu_doc_script_runs_single_process_on_cpu(tmp_path):
    doc = (Path(__file__).resolve().parents[2] / "docs" / "multi_gpu.md").read_text()
    script = re.search(r"Save as `train_fst_trl.py`:\n\n```python\n(.*?)```", doc, re.DOTALL).group(1)
    path = tmp_path / "train_fst_trl.py"
    path.write_text(script)
    spec = importlib.util.spec_from_file_location("train_fst_trl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = tiny_policy(0).save(tmp_path / "tiny")
    trainer = module.main(["--model", str(model_dir), "--env", ENV_ID, "--cpu", "--output-dir", str(tmp_path / "out"),
                           "--max-steps", "1", "--num-generations", "4", "--per-device-batch-size", "4",
                           "--max-completion-length", "8", "--num-problems", "6", "--fast-every", "1",
                           "--fast-problems", "1", "--report-to", "none", "--lora-rank", "4"])
    assert trainer.state.global_step == 1 and trainer.fst_counters["fast_rounds"] == 1
    assert (trainer.loss_type, trainer.epsilon_high) == ("cispo", 4.0)
    assert any("loss" in e for e in trainer.state.log_history)
    assert (tmp_path / "out" / "adapter_config.json").exists()  # save_model wrote the LoRA adapter
