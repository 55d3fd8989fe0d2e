"""fst-env on TRL: any fst env as a ``GRPOTrainer`` source, and an FST trainer built on ``GRPOTrainer``.

Tested with TRL 1.16.x only (checked at import). Its pieces, all importable from here (their homes:
:mod:`~fst_env.integrations.trl_rewards` for the dataset and rewards, :mod:`~fst_env.integrations.trl_episodes`
for the multi-turn rollout function, this module for the trainer; the problem keys and the feedback buffer are
the agent's own, from :mod:`fst_env.agents.bookkeeping`):

- :func:`env_dataset`, :class:`EnvReward` and :class:`EpisodeReward`: an env split as a TRL prompt dataset and
  the reward functions that score it (and fill the :class:`FeedbackBuffer` fast rounds reuse); see
  :mod:`~fst_env.integrations.trl_rewards`.
- :class:`FSTGRPOTrainer`: ``GRPOTrainer`` with ``loss_type="cispo"`` (always an explicit ``epsilon_high``,
  the paper's tau), prompts whose system message is a context drawn from a :class:`ContextPopulation` and mixed
  within each group (G/K rollouts per context), and a fast round every ``fast_every`` optimizer steps on the
  main process whose new population is broadcast to every process.

How the grouping works in TRL 1.16 (verified in ``grpo_trainer.py``): ``RepeatSampler`` puts the
``num_generations`` copies of a problem in consecutive rows of the global generation batch; each process holds
the contiguous slice ``[process_index * n, (process_index + 1) * n)`` of it; rewards are gathered and
normalised over ``rewards.view(-1, num_generations)``, i.e. over consecutive rows whatever prompt text each
row carries. :class:`FSTGRPOTrainer` overrides ``_generate_and_score_completions`` (the one place that turns
dataset rows into prompts, once per generation batch on every process) and rewrites each row's system message
with the context assigned to its position in its group. The assignment depends only on the seed, a generation
counter, the global group index and the (broadcast, identical) population, so every process agrees on it even
when a group straddles two processes; and the advantage is computed once per problem across all its contexts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import trl

from fst_env.integrations.trl_rewards import SUPPORTED_TRL, check_trl_version

# Again here, not only in trl_rewards: that module runs its check once, at its first import.
check_trl_version(trl.__version__)

import torch  # noqa: E402
from accelerate.utils import broadcast_object_list, gather_object  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import RepeatSampler  # noqa: E402

from fst_env.agents.bookkeeping import (  # noqa: E402
    NO_CONTEXT_ID,
    BudgetCounters,
    FeedbackBuffer,
    fast_round_rollouts,
    parse_problem_key,
    problem_key,
)
from fst_env.agents.episodes import EnvPool  # noqa: E402
from fst_env.agents.fast import FastLearner, NotesFastLearner  # noqa: E402
from fst_env.agents.fst_agent import DEFAULT_SEED_CONTEXT  # noqa: E402
from fst_env.agents.population import ContextPopulation  # noqa: E402
from fst_env.agents.rollout import Rollout  # noqa: E402
from fst_env.context import Context  # noqa: E402
from fst_env.integrations.trl_episodes import EpisodeRollouts  # noqa: E402
from fst_env.integrations.trl_rewards import (  # noqa: E402
    EnvReward,
    EpisodeReward,
    _context_json,
    _env_turns,
    build_messages,
    completion_text,
    env_dataset,
    with_context,
)

logger = logging.getLogger(__name__)

#: CISPO's importance-weight cap when none is given: the FST paper's tau (TRL's own default would be 0.2).
DEFAULT_EPSILON_HIGH = 4.0

#: File written next to each TRL checkpoint with the population, the fast learner and the feedback buffer.
FST_STATE_NAME = "fst_state.json"
_STATE_VERSION = 1


# ============================================================================================== config
def fst_grpo_config(output_dir: str, **kwargs: Any) -> GRPOConfig:
    """A ``GRPOConfig`` with the FST objective: ``loss_type="cispo"``, ``epsilon_high`` = tau = 4.0, no KL
    (``beta=0``) and per-group reward scaling; any keyword overrides these and sets the other fields."""
    settings: dict[str, Any] = {"loss_type": "cispo", "epsilon_high": DEFAULT_EPSILON_HIGH, "beta": 0.0,
                                "scale_rewards": "group"}
    settings.update(kwargs)
    return GRPOConfig(output_dir=output_dir, **settings)


def _check_objective(args: GRPOConfig) -> None:
    if args.loss_type != "cispo":
        raise ValueError(f"FSTGRPOTrainer trains with CISPO (loss_type='cispo'), got loss_type={args.loss_type!r}; "
                         "build the config with fst_grpo_config(...) or use trl.GRPOTrainer for other losses")
    if args.epsilon_high is None:
        raise ValueError("FSTGRPOTrainer: loss_type='cispo' needs an explicit epsilon_high (the cap on the "
                         "importance weight, the paper's tau). Left unset, TRL uses epsilon=0.2 and caps every "
                         f"weight at 0.2. Set GRPOConfig(epsilon_high={DEFAULT_EPSILON_HIGH}) or use "
                         "fst_grpo_config(...)")
    if not args.epsilon_high > 0:
        raise ValueError(f"FSTGRPOTrainer: epsilon_high must be > 0, got {args.epsilon_high}")


# ============================================================================================== sampler
class ResumableRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose order in epoch ``e`` depends on (seed, e) only, so a resumed run replays it.

    TRL 1.16's sampler seeds one generator at construction and draws a new permutation per epoch; transformers 5
    resumes by skipping batches within the resumed epoch only, so a resumed run's fresh sampler would replay
    epoch 0's permutation in epoch ``e`` (measured: a 2-process run resumed at an epoch boundary trained on other
    problems than the uninterrupted run). This one re-seeds with ``seed`` at each iteration and discards ``e``
    permutations first: uninterrupted runs get exactly TRL's order, resumed runs the same order. The epoch comes
    from :meth:`set_epoch` (accelerate's data loader forwards it, and :class:`FSTGRPOTrainer` sets it at every
    epoch begin, which also covers loaders that do not forward it); an iteration without a new ``set_epoch``
    continues with the next epoch, as TRL's would. With ``seed=None`` or ``shuffle=False`` it is TRL's sampler.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of epoch ``epoch`` at the next iteration."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle and self.seed is not None:
            self.generator.manual_seed(self.seed)
            for _ in range(self.epoch):  # TRL's generator has drawn one permutation per earlier epoch
                torch.randperm(self.num_samples, generator=self.generator)
        self.epoch += 1
        return super().__iter__()


# ============================================================================================== trainer
class FastRoundCallback(TrainerCallback):
    """Runs :meth:`FSTGRPOTrainer.fast_round` on every process after every ``fast_every``-th optimizer step."""

    def __init__(self, trainer: FSTGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        trainer = self.trainer
        if trainer.fast_every > 0 and state.global_step > 0 and state.global_step % trainer.fast_every == 0:
            trainer.fast_round()
        return control

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # Before the epoch's data loader is iterated; on resume state.epoch is the checkpoint's progress, whose
        # integer part is the epoch Trainer resumes in (global_step // steps per epoch).
        sampler = self.trainer.train_sampler
        if sampler is not None:
            sampler.set_epoch(math.floor(state.epoch or 0))
        return control


class FSTGRPOTrainer(EpisodeRollouts, GRPOTrainer):
    """Fast-Slow Training on TRL: CISPO on the weights, a context population evolved between steps.

    Contract:
    - the objective is TRL's CISPO: ``args.loss_type`` must be ``"cispo"`` with an explicit ``epsilon_high``
      (:func:`fst_grpo_config` defaults it to tau = 4.0); anything else raises ValueError;
    - ``train_dataset`` defaults to ``env_dataset(env_id, split, num_problems, **env_kwargs)`` (no context);
      the first reward function is an :class:`EnvReward` on ``env_id`` writing into :attr:`feedback_buffer`,
      followed by ``extra_reward_funcs``;
    - in training, the G = ``num_generations`` rollouts of each problem get their system message from the
      population's ``assign_group`` (G/K per context, the remainder to distinct random candidates), the same on
      every process; TRL then normalises the advantage once over the G rows, across contexts. Evaluation uses
      the population's best context for every row and records nothing in the buffer;
    - every ``fast_every`` optimizer steps (0 = never) :meth:`fast_round` runs the fast learner (default: an
      LLM-free ``NotesFastLearner``; pass a ``ReflectiveFastLearner`` for reflection) on the main process
      (problems = the ``fast_problems`` most recent buffer keys, recent rollouts = the buffer; its evaluate fn
      generates with the trainer's current model), broadcasts the new population and learner state
      to every process, and logs the round's scalars through ``Trainer.log`` (so they reach every reporter in
      ``report_to``, TensorBoard included, at the current global step) as ``fast/...`` and ``budget/...``;
      with vLLM, the weights are synced to vLLM on every process before the round;
    - a multi-turn env (card ``turns="multi"``, or ``multi_turn=True``) is played by the trainer's own TRL
      ``rollout_func`` (:meth:`play_episodes`): each row is one whole episode of at most ``max_turns`` turns, one
      TRL sequence whose env-written ids are masked out of the loss (``env_mask``), scored by
      :class:`EpisodeReward` with its return (``return_rule`` "sum" or "last"); ``max_completion_length`` bounds
      each turn and ``max_episode_tokens`` (default: ``max_turns`` such turns and 512 tokens per env turn)
      the whole completion.
      Fast rounds evaluate candidates on whole episodes too. Generation must not be collective (episodes differ in
      length across processes): vLLM server mode, colocate TP>1, and ZeRO-3/FSDP without vLLM are refused;
    - checkpoints get ``fst_state.json`` (population, fast learner, buffer, counters), written by the process(es)
      that write TRL's checkpoint; on resume the main process reads it and broadcasts it to every process. The
      training sampler is a :class:`ResumableRepeatSampler`, so a resumed run sees the problems, in the order, of
      the uninterrupted run (TRL's own sampler replays epoch 0's order after a resume).

    Fast-round generation runs on the main process alone, so it must not need the other processes: it works
    single-process, under DDP, and with vLLM colocate at tensor_parallel_size=1. Where it cannot (ZeRO-3 or FSDP
    without vLLM, vLLM server mode or colocate TP>1 with several processes) the constructor raises unless a
    ``fast_generate(messages_list) -> texts`` callable is given. vLLM server mode samples one prompt per group
    (``all_prompts[::num_generations]`` in TRL 1.16), so it cannot mix contexts: it is refused unless the
    population holds a single context (``population_size=1``).
    """

    def __init__(self, model: Any, env_id: str, args: GRPOConfig | None = None, *, split: str = "train",
                 num_problems: int | None = None, env_kwargs: Mapping[str, Any] | None = None,
                 train_dataset: Dataset | None = None, eval_dataset: Dataset | None = None,
                 population: ContextPopulation | None = None, seed_context: Context | None = None,
                 population_size: int = 4, fast_learner: FastLearner | None = None, fast_every: int = 6,
                 fast_problems: int = 8, feedback_buffer: FeedbackBuffer | None = None,
                 extra_reward_funcs: Sequence[Callable[..., Any]] = (),
                 fast_generate: Callable[[list[list[dict[str, str]]]], list[str]] | None = None,
                 multi_turn: bool | None = None, max_turns: int = 4, max_episode_tokens: int | None = None,
                 return_rule: str = "sum", callbacks: list[TrainerCallback] | None = None,
                 **grpo_kwargs: Any) -> None:
        if args is None:
            args = fst_grpo_config(f"{env_id.replace('/', '_')}-FST-GRPO")
        _check_objective(args)
        for name, value in (("fast_every", fast_every), ("fast_problems", fast_problems)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "fast_every" else 1):
                raise ValueError(f"FSTGRPOTrainer: {name} must be an int >= {0 if name == 'fast_every' else 1}, "
                                 f"got {value!r}")
        if fast_generate is not None and not callable(fast_generate):
            raise TypeError(f"FSTGRPOTrainer: fast_generate must be callable, got {type(fast_generate).__name__}")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.population = population if population is not None else ContextPopulation(
            dict(seed_context or DEFAULT_SEED_CONTEXT), max_size=population_size)
        if args.use_vllm and args.vllm_mode == "server" and self.population.max_size > 1:
            raise ValueError("FSTGRPOTrainer: TRL 1.16's vLLM server mode generates from the first prompt of each "
                             "group only, so contexts cannot be mixed within a group; use vllm_mode='colocate', or a "
                             "population of one context (population_size=1)")
        self.fast_every = fast_every
        self.fast_problems = fast_problems
        self.fast_learner: FastLearner | None = fast_learner if fast_learner is not None else (
            NotesFastLearner(seed=args.seed) if fast_every > 0 else None)
        if getattr(self.fast_learner, "trials", "round") != "round":
            raise ValueError("FSTGRPOTrainer: its fast rounds try children on their own rollouts (trials='round'); "
                             "trials in the collects need FSTAgent, which tags each episode with its weights")
        self.fast_generate = fast_generate
        if feedback_buffer is None:
            # Enough for every rollout since the last fast round, with room for rounds several steps apart.
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
            feedback_buffer = FeedbackBuffer(max(4 * per_step * max(fast_every, 1), 64))
        self.feedback_buffer = feedback_buffer
        self.multi_turn = _env_turns(env_id) == "multi" if multi_turn is None else bool(multi_turn)
        self.split = split
        if self.multi_turn:
            self._check_episode_settings(args, max_turns, max_episode_tokens, fast_generate, grpo_kwargs)
            self.max_turns = max_turns
            # Default: every turn may use max_completion_length, and each env turn between them up to 512 tokens.
            self.max_episode_tokens = (max_episode_tokens if max_episode_tokens is not None
                                       else max_turns * args.max_completion_length + (max_turns - 1) * 512)
            self.env_reward: EnvReward | EpisodeReward = EpisodeReward(
                env_id, feedback_buffer, split=split, return_rule=return_rule, **self.env_kwargs)
            grpo_kwargs["rollout_func"] = self._rollout_episodes
        else:
            self.env_reward = EnvReward(env_id, feedback_buffer, split=split, **self.env_kwargs)
        self._episode_envs = EnvPool()
        self._rollout_rows: list[dict[str, Any]] | None = None
        if train_dataset is None:
            train_dataset = env_dataset(env_id, split, num_problems, **self.env_kwargs)
        for column in ("prompt", "problem_id"):
            if column not in train_dataset.column_names:
                raise ValueError(f"FSTGRPOTrainer: train_dataset needs a {column!r} column (build it with env_dataset)")
        self.fast_history: list[dict[str, Any]] = []
        self.fst_counters = BudgetCounters({"generation_rounds": 0})
        self.last_context_ids: list[int] = []
        #: The training sampler (set when TRL builds the train data loader), see :class:`ResumableRepeatSampler`.
        self.train_sampler: ResumableRepeatSampler | None = None
        super().__init__(model=model, reward_funcs=[self.env_reward, *extra_reward_funcs], args=args,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=callbacks, **grpo_kwargs)
        self._check_fast_generation()
        self.add_callback(FastRoundCallback(self))

    @staticmethod
    def _check_episode_settings(args: GRPOConfig, max_turns: Any, max_episode_tokens: Any, fast_generate: Any,
                                grpo_kwargs: Mapping[str, Any]) -> None:
        """Refuse multi-turn settings this trainer cannot honour (before TRL builds anything)."""
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"FSTGRPOTrainer: max_turns must be an int >= 1, got {max_turns!r}")
        if max_episode_tokens is not None and (isinstance(max_episode_tokens, bool)
                                               or not isinstance(max_episode_tokens, int) or max_episode_tokens < 1):
            raise ValueError(f"FSTGRPOTrainer: max_episode_tokens must be an int >= 1 or None, "
                             f"got {max_episode_tokens!r}")
        if "rollout_func" in grpo_kwargs:
            raise ValueError("FSTGRPOTrainer: a multi-turn env is played by the trainer's own rollout_func; "
                             "do not pass another")
        if fast_generate is not None:
            raise ValueError("FSTGRPOTrainer: fast_generate writes one turn; with a multi-turn env, fast rounds play "
                             "whole episodes with the trainer's model")
        if args.use_vllm and (args.vllm_mode == "server" or args.vllm_tensor_parallel_size > 1):
            raise ValueError("FSTGRPOTrainer: episodes take a different number of turns on each process, so their "
                             "generation must not be collective; vLLM server mode and colocate TP>1 are; use "
                             "colocate with vllm_tensor_parallel_size=1 or transformers generation")

    def _check_fast_generation(self) -> None:
        """Refuse set-ups where generating on the main process alone would wait forever on the other processes."""
        if (self.multi_turn and self.accelerator.num_processes > 1 and not self.use_vllm
                and (self._dist.is_zero3 or self._dist.is_fsdp)):
            raise ValueError("FSTGRPOTrainer: with ZeRO-3 or FSDP every generate call gathers the weights (a "
                             "collective), but episodes take a different number of turns on each process; use vLLM "
                             "colocate (tensor_parallel_size=1)")
        if self.fast_every == 0 or self.fast_generate is not None or self.accelerator.num_processes == 1:
            return
        if self.use_vllm and (self.vllm_mode == "server" or self.vllm_tensor_parallel_size > 1):
            raise ValueError("FSTGRPOTrainer: with several processes, fast rounds generate on the main process only, "
                             "but vLLM server mode and colocate TP>1 generate collectively; use colocate with "
                             "vllm_tensor_parallel_size=1 or pass fast_generate=")
        if not self.use_vllm and (self._dist.is_zero3 or self._dist.is_fsdp):
            raise ValueError("FSTGRPOTrainer: with ZeRO-3 or FSDP the weights are sharded, so the main process cannot "
                             "generate alone for a fast round; use vLLM colocate (tensor_parallel_size=1) or pass "
                             "fast_generate=")

    def _get_train_sampler(self, dataset: Any = None) -> Any:
        """TRL's sampler as a :class:`ResumableRepeatSampler` (same order, reproduced on resume)."""
        trl_sampler = super()._get_train_sampler(dataset)
        if type(trl_sampler) is not RepeatSampler:
            return trl_sampler  # not the sampler whose resume behaviour is known
        self.train_sampler = ResumableRepeatSampler(
            data_source=trl_sampler.data_source, mini_repeat_count=trl_sampler.mini_repeat_count,
            batch_size=trl_sampler.batch_size, repeat_count=trl_sampler.repeat_count, shuffle=trl_sampler.shuffle,
            seed=trl_sampler.seed)
        return self.train_sampler

    # ------------------------------------------------------------------ contexts per rollout
    def assign_contexts(self, num_rows: int, group_size: int) -> list[int]:
        """Context ids for this process's ``num_rows`` rows of the current generation batch.

        Row ``i`` is global row ``process_index * num_rows + i``; its group is that // ``group_size`` and its
        place in the group that % ``group_size``. Each group's assignment is the population's
        ``assign_group(group_size, rng)`` with an rng seeded from (seed, generation round, group index), so
        every process computes the same assignment for a group whatever slice of it the process holds.
        """
        offset = self.accelerator.process_index * num_rows
        assignments: dict[int, list[int]] = {}
        ids = []
        for i in range(num_rows):
            group, place = divmod(offset + i, group_size)
            if group not in assignments:
                rng = random.Random(f"fst-trl/{self.args.seed}/{self.fst_counters['generation_rounds']}/{group}")
                assignments[group] = self.population.assign_group(group_size, rng)
            ids.append(assignments[group][place])
        return ids

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self.fst_counters["generation_rounds"] += 1
            context_ids = self.assign_contexts(len(inputs), self.num_generations)
        else:
            context_ids = [self.population.best().id] * len(inputs)
        rows = []
        for row, cid in zip(inputs, context_ids, strict=True):
            context = self.population.context(cid)
            rows.append({**row, "prompt": with_context(row["prompt"], context), "context_id": cid,
                         "context": _context_json(context)})
        self.last_context_ids = context_ids
        mark = self.feedback_buffer.total_added
        self.env_reward.recording = mode == "train"  # evaluation rollouts must not leak into fast rounds
        self._rollout_rows = rows  # what a multi-turn rollout needs besides the prompt (problem, split, context)
        try:
            output = super()._generate_and_score_completions(rows)
        finally:
            self.env_reward.recording = True
            self._rollout_rows = None
        if mode == "train":
            self._share_rollouts(mark)
            groups = [context_ids[i:i + self.num_generations] for i in range(0, len(context_ids), self.num_generations)]
            self._metrics[mode]["fst/contexts_per_group"].append(sum(len(set(g)) for g in groups) / len(groups))
            self._metrics[mode]["fst/population_size"].append(float(len(self.population)))
        return output

    def _share_rollouts(self, mark: int) -> None:
        """Give the main process (which runs the fast rounds) every process's rollouts of the last batch."""
        if self.accelerator.num_processes == 1:
            return
        local = self.feedback_buffer.since(mark)
        gathered = gather_object(local)  # process 0's records come first
        if self.accelerator.is_main_process:
            self.feedback_buffer.extend(gathered[len(local):])

    # ------------------------------------------------------------------ fast rounds
    def fast_round(self) -> dict[str, float]:
        """One fast round (call on every process at the same point); returns the scalars it logged."""
        if self.fast_learner is None:
            raise RuntimeError("FSTGRPOTrainer.fast_round: no fast learner (fast_every=0 and none was given)")
        if self.use_vllm:
            # The fast round samples with vLLM; push the current weights first (a collective under ZeRO-3/FSDP,
            # hence on every process), and tell TRL they are fresh so the next training batch does not push again.
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                payload[0] = self._fast_round_main()
            except Exception as err:
                # The other processes wait in the broadcast below: send them the failure instead of nothing.
                payload[0] = {"error": f"{type(err).__name__}: {err}"}
                broadcast_object_list(payload, from_process=0)
                raise
        broadcast_object_list(payload, from_process=0)
        state = payload[0]
        if "error" in state:
            raise RuntimeError(f"FSTGRPOTrainer: the fast round failed on the main process ({state['error']})")
        if not self.accelerator.is_main_process:
            self.population.load_state_dict(state["population"])
            self.fast_learner.load_state_dict(state["fast"])
            self.fst_counters.restore(state["counters"])
        scalars = dict(state["scalars"])
        # Trainer.log, not GRPOTrainer.log: the latter would also flush (and clear) TRL's metrics of the steps
        # since the last log, which belong to the regular logging_steps cadence. The callback handler's on_log
        # clears control.should_log, which would cancel this step's regular log: keep the flag as it was.
        should_log = self.control.should_log
        Trainer.log(self, dict(scalars))
        self.control.should_log = should_log
        return scalars

    def _fast_round_main(self) -> dict[str, Any]:
        keys = self.feedback_buffer.problem_keys(self.fast_problems)
        if keys:
            # The round runs after an optimizer step, so no recorded rollout was sampled under the current weights:
            # none may stand in for the round's own (parent and child are judged under the same weights).
            metrics = self.fast_learner.round(self.population, self.fast_evaluate, self.feedback_buffer.recent(), keys,
                                              evidence=())
            self.fast_history.append(metrics)
            self.fst_counters.count_fast_round(metrics)
        else:
            logger.warning("FSTGRPOTrainer: fast round skipped, the feedback buffer holds no rollouts yet")
            metrics = {"skipped": 1}
        scalars = {f"fast/{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        scalars.update({k: float(v) for k, v in self.fst_counters.as_metrics().items()})
        scalars["population/size"] = float(len(self.population))
        return {"population": self.population.state_dict(), "fast": self.fast_learner.state_dict(),
                "counters": dict(self.fst_counters), "scalars": scalars}

    def fast_evaluate(self, context: Context, keys: list[str]) -> list[Rollout]:
        """The fast learner's evaluate fn: the current model with ``context`` on each problem key, one rollout each."""
        rule = self.env_reward.return_rule if self.multi_turn else "sum"
        return fast_round_rollouts(context, keys, self._play_fast_problems, return_rule=rule, env_id=self.env_id,
                                   step=self.state.global_step)

    def _play_fast_problems(self, problems: list[tuple[str, str, int]], context: Context) -> list[Any]:
        """Score ``context`` on each problem with the trainer's model: whole episodes (multi-turn), or one
        completion each judged by the env. Unlike FSTAgent's, this generates through TRL (its tokenisation, its
        vLLM or transformers path, or ``fast_generate``) on the main process, so only the scoring is shared."""
        if self.multi_turn:
            played = self.play_episodes([(split, pid, NO_CONTEXT_ID, dict(context)) for _, split, pid in problems])
            return [episode for episode, *_ in played]
        messages = [build_messages(self.env_reward.observation(split, pid), context) for _, split, pid in problems]
        texts = self.fast_generate(messages) if self.fast_generate is not None else self._generate_texts(messages)
        if len(texts) != len(messages):
            raise ValueError(f"FSTGRPOTrainer: fast generation returned {len(texts)} texts for {len(messages)} prompts")
        return [self.env_reward.judge(split, pid, text, context_id=NO_CONTEXT_ID, context=context,
                                      step=self.state.global_step)
                for (_, split, pid), text in zip(problems, texts, strict=True)]

    def _generate_texts(self, messages: list[list[dict[str, str]]]) -> list[str]:
        """Sample one completion per prompt with TRL's own tokenisation and generation path (transformers or vLLM)."""
        prompt_ids, _, _ = self._tokenize_prompts(messages)
        chunk = self.args.per_device_train_batch_size * self.args.steps_per_generation
        completion_ids: list[list[int]] = []
        for start in range(0, len(prompt_ids), chunk):
            ids, _ = self._generate_single_turn(prompt_ids[start:start + chunk], None, {}, 1)
            completion_ids.extend(list(c) for c in ids)
        return self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ checkpoints
    def fst_state_dict(self) -> dict[str, Any]:
        """Population, fast learner, feedback buffer and counters, JSON-serialisable."""
        return {"version": _STATE_VERSION, "population": self.population.state_dict(),
                "fast": self.fast_learner.state_dict() if self.fast_learner is not None else None,
                "buffer": self.feedback_buffer.state_dict(), "counters": dict(self.fst_counters)}

    def load_fst_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`fst_state_dict`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"FSTGRPOTrainer: unsupported fst state version {state.get('version')!r}")
        self.population.load_state_dict(state["population"])
        if self.fast_learner is not None and state.get("fast") is not None:
            self.fast_learner.load_state_dict(state["fast"])
        self.feedback_buffer.load_state_dict(state["buffer"])
        self.fst_counters.restore({**self.fst_counters, **{k: int(v) for k, v in state["counters"].items()}})

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), checkpoint)
            with open(os.path.join(folder, FST_STATE_NAME), "w", encoding="utf-8") as f:
                json.dump(self.fst_state_dict(), f)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        # The main process reads the state and sends it to every process (Trainer calls this on all of them): every
        # process resumes from the one state the main process wrote, even where its own file system lacks the file
        # (several nodes without shared storage), instead of some processes silently keeping a fresh population.
        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            path = os.path.join(checkpoint, FST_STATE_NAME)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    payload[0] = json.load(f)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        if payload[0] is None:
            logger.warning("FSTGRPOTrainer: %s has no %s; the population restarts from its current state",
                           checkpoint, FST_STATE_NAME)
            return
        self.load_fst_state_dict(payload[0])


__all__ = ["DEFAULT_EPSILON_HIGH", "FST_STATE_NAME", "NO_CONTEXT_ID", "SUPPORTED_TRL", "EnvReward", "EpisodeReward",
           "EpisodeRollouts", "FSTGRPOTrainer", "FastRoundCallback", "FeedbackBuffer", "ResumableRepeatSampler",
           "build_messages", "check_trl_version", "completion_text", "env_dataset", "fst_grpo_config",
           "parse_problem_key", "problem_key", "with_context"]
