"""FSTGRPOTrainer on a multi-turn env (a 3-turn test env, tiny model, CPU): whole episodes per row, env turns masked."""

import math
import string
from typing import ClassVar

import gymnasium as gym
import pytest
import torch
from _trl_helpers import ADVICE, ROWS, SECOND_CONTEXT, G, _accept_all_notes, _config, _population, _trainer
from gymnasium import spaces
from peft import LoraConfig

from fst_env.cards import EnvCard, register_env
from fst_env.integrations import trl as fst_trl
from fst_env.integrations.trl import FSTGRPOTrainer
from fst_env.models import tiny_policy

# ============================================================================================== multi-turn envs
MULTI_ID = "fsttest/TrlThreeTurns-v0"
MULTI_TURNS = 3


class ThreeTurnEnv(gym.Env):
    """Three replies per problem, each graded like the charset task; the next observation names the next turn."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, split: str = "train") -> None:
        self.observation_space = spaces.Text(max_length=256, min_length=0, charset=string.printable)
        self.action_space = spaces.Text(max_length=4096, charset=string.printable)
        self._problem = self._turn = 0

    def num_problems(self) -> int:
        return 6

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._problem, self._turn = int((options or {}).get("problem_id", 0)), 0
        return f"Name item {self._problem}, turn 1 of {MULTI_TURNS}.", {}

    def step(self, action):
        self._turn += 1
        text = action.strip()
        good = sum(ch.isascii() and ch.isalnum() for ch in text) / len(text) if text else 0.0
        done = self._turn == MULTI_TURNS
        observation = "" if done else f"Again for item {self._problem}, turn {self._turn + 1} of {MULTI_TURNS}."
        info = {"feedback": f"Turn {self._turn}: only {good:.0%} letters or digits. {ADVICE}",
                "verdict": "correct" if good == 1.0 else "incorrect"}
        return observation, good / MULTI_TURNS, done, False, info


register_env(MULTI_ID, ThreeTurnEnv, EnvCard(summary="test task: three graded replies", splits={"train": 6},
                                               turns="multi"))


def test_a_multi_turn_env_trains_for_two_steps_on_whole_episodes(tmp_path):
    trainer = FSTGRPOTrainer(tiny_policy(0).model, MULTI_ID, _config(tmp_path, max_completion_length=4),
                             processing_class=tiny_policy(0).tokenizer, population=_population(),
                             fast_learner=_accept_all_notes(), fast_every=1, fast_problems=2, max_episode_tokens=256,
                             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert trainer.multi_turn and isinstance(trainer.env_reward, fst_trl.EpisodeReward)  # from the card
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.fst_counters["fast_rounds"] == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    records = trainer.feedback_buffer.recent()
    assert len(records) == 2 * ROWS
    for r in records:  # whole episodes: three turns (4 sampled tokens a turn stay under the 256-token cap)
        turns = r.info["turns"]
        assert len(turns) == MULTI_TURNS and r.reward == pytest.approx(sum(t["reward"] for t in turns))
        assert [t["observation"].split(", turn ")[-1] for t in turns] == ["1 of 3.", "2 of 3.", "3 of 3."]
        assert "Turn 3 response" in r.completion and r.feedback.count(ADVICE) == 3
    assert all(h["rollouts_reused"] > 0 for h in trainer.fast_history)
    assert any(ADVICE in c.context.get("notes", "") for c in trainer.population)  # notes from the episodes' feedback
    # TRL trained on the episode sequences: one advantage per problem over its G episode returns.
    rewards = torch.tensor([r.reward for r in records[-ROWS:]]).view(-1, G)
    expected = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).flatten()
    assert torch.allclose(torch.tensor(list(trainer._logs["advantages"])), expected, atol=1e-5)


def test_episode_sequences_are_token_exact_with_env_turns_masked(tmp_path):
    trainer = FSTGRPOTrainer(tiny_policy(0).model, MULTI_ID, _config(tmp_path, max_completion_length=4),
                             processing_class=tiny_policy(0).tokenizer, population=_population(), fast_every=0,
                             max_episode_tokens=256)
    [(episode, prompt_ids, completion_ids, mask, _)] = trainer.play_episodes([("train", 2, 1, SECOND_CONTEXT)])
    assert len(episode.turns) == MULTI_TURNS and episode.terminated and episode.group == f"{MULTI_ID}/train/2"
    assert len(mask) == len(completion_ids) and 0 in mask and mask[-1] == 1
    # What the policy wrote (mask 1) is exactly every turn's sampled ids; each turn saw the ids trained on.
    assert [t for t, m in zip(completion_ids, mask, strict=True) if m] == [i for t in episode.turns
                                                                          for i in t.completion_ids]
    full = prompt_ids + completion_ids
    for turn in episode.turns:
        assert full[:len(turn.prompt_ids)] == turn.prompt_ids
        assert full[len(turn.prompt_ids):len(turn.prompt_ids) + len(turn.completion_ids)] == turn.completion_ids
    tokenizer = trainer.processing_class
    env_text = tokenizer.decode([t for t, m in zip(completion_ids, mask, strict=True) if not m])
    assert "turn 2 of 3" in env_text and "turn 3 of 3" in env_text
    assert SECOND_CONTEXT["instructions"] in tokenizer.decode(prompt_ids)
    # A cap on the episode's tokens ends it early, truncated, with the last turn cut at the cap.
    trainer.max_episode_tokens = 3
    [(short, _, short_ids, _, _)] = trainer.play_episodes([("train", 2, 1, SECOND_CONTEXT)])
    assert short.truncated and short.info["stopped"] == "max_context"
    assert len(short.turns) == 1 and short_ids == short.turns[0].completion_ids and len(short_ids) == 3


def test_multi_turn_settings_that_cannot_work_are_refused(tmp_path):
    cases = [(dict(max_turns=0), "max_turns"), (dict(max_episode_tokens=0), "max_episode_tokens"),
             (dict(fast_generate=lambda m: ["x"] * len(m)), "fast_generate"),
             (dict(rollout_func=lambda prompts, trainer: {}), "rollout_func")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            _trainer(tmp_path, multi_turn=True, **kwargs)


