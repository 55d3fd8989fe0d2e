"""Multi-turn envs on TRL: the rollout function that plays one whole episode per row, token-exactly.

Part of :mod:`fst_env.integrations.trl`: :class:`EpisodeRollouts` is a mixin of
:class:`~fst_env.integrations.trl.FSTGRPOTrainer` (it uses the trainer's TRL tokenisation and single-turn
generation, ``_tokenize_prompts`` and ``_generate_single_turn``, and the attributes the trainer sets:
``env_id``, ``env_kwargs``, ``max_turns``, ``max_episode_tokens``, ``_episode_envs``, ``_rollout_rows``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym

from fst_env.agents.bookkeeping import NO_CONTEXT_ID, problem_key
from fst_env.agents.episodes import Episode, Turn
from fst_env.integrations.trl_rewards import _context_from, build_messages


class EpisodeRollouts:
    """What :class:`~fst_env.integrations.trl.FSTGRPOTrainer` needs to play multi-turn envs (see the module doc)."""

    def _rollout_episodes(self, prompts: list[Any], trainer: Any = None) -> dict[str, Any]:
        """TRL's ``rollout_func`` for a multi-turn env: one whole episode per row of this process's batch.

        Returns TRL's ``prompt_ids`` (the first turn's prompt), ``completion_ids`` (every turn's sampled ids with
        the chat-formatted env observations in between), ``env_mask`` (1 on sampled ids, 0 on env ids, so the loss
        only covers what the policy wrote), ``logprobs`` (the sampler's, 0 on env ids; ``None`` when TRL's
        generation gives none) and the extra column ``episode`` that :class:`EpisodeReward` scores.
        """
        rows = self._rollout_rows
        if rows is None or len(rows) != len(prompts):
            raise RuntimeError("FSTGRPOTrainer: the multi-turn rollout runs inside _generate_and_score_completions, "
                               "which sets the rows it plays")
        starts = [(str(row.get("split") or self.split), int(row["problem_id"]),
                   int(row.get("context_id", NO_CONTEXT_ID)), _context_from(row.get("context"))) for row in rows]
        played = self.play_episodes(starts)
        logprobs = [lp for *_, lp in played]
        return {"prompt_ids": [p for _, p, _, _, _ in played], "completion_ids": [c for _, _, c, _, _ in played],
                "env_mask": [m for _, _, _, m, _ in played],
                "logprobs": None if any(lp is None for lp in logprobs) else logprobs,
                "episode": [episode.without_tokens().to_dict() for episode, *_ in played]}

    def play_episodes(self, starts: Sequence[tuple[str, int, int, Mapping[str, str]]]
                      ) -> list[tuple[Episode, list[int], list[int], list[int], list[float] | None]]:
        """Play one episode per (split, problem id, context id, context) with the current model, token-exactly.

        Turn ``k+1`` is generated from exactly the ids trained on: the first prompt (TRL's own tokenisation),
        then every earlier turn's sampled ids and the chat template's user turn for each env observation
        (:meth:`user_turn_ids`). All active episodes generate in one TRL call per turn (this process only, no
        collective). An episode ends when the env terminates or truncates it, after ``max_turns`` turns, or when
        its completion would exceed ``max_episode_tokens`` (sampled + env ids; the last turn is cut there).
        Returns (episode, prompt ids, completion ids, env mask, sampler log-probs or ``None``) per start.
        """
        by_split: dict[str, list[int]] = {}
        for i, (split, *_rest) in enumerate(starts):
            by_split.setdefault(split, []).append(i)
        envs: list[gym.Env | None] = [None] * len(starts)
        for split, indices in by_split.items():
            for i, env in zip(indices, self._episode_envs.take(self.env_id, len(indices), split=split,
                                                                **self.env_kwargs), strict=True):
                envs[i] = env
        episodes, pending = [], []
        for (split, pid, cid, context), env in zip(starts, envs, strict=True):
            observation, _ = env.reset(options={"problem_id": int(pid)})
            episodes.append(Episode(group=problem_key(self.env_id, split, pid), context_id=int(cid),
                                    context=dict(context)))
            pending.append(observation)
        prompt_ids, _, _ = self._tokenize_prompts([build_messages(o, c) for o, (*_, c) in zip(pending, starts,
                                                                                              strict=True)])
        prompt_ids = [list(p) for p in prompt_ids]
        tails: list[list[int]] = [[] for _ in starts]
        masks: list[list[int]] = [[] for _ in starts]
        logprobs: list[list[float] | None] = [[] for _ in starts]
        eos = set(self.eos_token_ids)
        active = list(range(len(starts)))
        while active:
            ids_out, lps_out = self._generate_single_turn([prompt_ids[i] + tails[i] for i in active], None, {}, 1)
            still = []
            for j, i in enumerate(active):
                ids = list(ids_out[j])[: self.max_episode_tokens - len(tails[i])]
                cut = len(ids) < len(ids_out[j])
                text = self.processing_class.decode(ids, skip_special_tokens=True)
                observation, reward, terminated, truncated, info = envs[i].step(text)
                episode = episodes[i]
                turn_lps = None if lps_out is None or logprobs[i] is None else [float(x) for x in lps_out[j][:len(ids)]]
                episode.turns.append(Turn(observation=pending[i], completion=text, prompt_ids=prompt_ids[i] + tails[i],
                                          completion_ids=ids, old_logprobs=turn_lps or [], reward=float(reward),
                                          feedback=str(info.get("feedback", "")), verdict=str(info.get("verdict", "")),
                                          hint=str(info.get("hint") or "")))
                tails[i] += ids
                masks[i] += [1] * len(ids)
                logprobs[i] = None if turn_lps is None else logprobs[i] + turn_lps
                episode.terminated, episode.truncated = bool(terminated), bool(truncated)
                if episode.done:
                    continue
                if len(episode.turns) >= self.max_turns:
                    episode.truncated, episode.info["stopped"] = True, "max_turns"
                    continue
                user = self.user_turn_ids(str(observation), after_eos=bool(ids) and ids[-1] in eos)
                if cut or len(tails[i]) + len(user) >= self.max_episode_tokens:
                    episode.truncated, episode.info["stopped"] = True, "max_context"
                    continue
                tails[i] += user
                masks[i] += [0] * len(user)
                if logprobs[i] is not None:
                    logprobs[i] += [0.0] * len(user)
                pending[i] = str(observation)
                still.append(i)
            active = still
        return [(episode, prompt_ids[i], tails[i], masks[i], logprobs[i]) for i, episode in enumerate(episodes)]

    def user_turn_ids(self, observation: str, *, after_eos: bool) -> list[int]:
        """The ids that close the policy's turn and pose ``observation`` as the next user turn, up to the
        assistant's generation prompt, as the chat template writes them (``after_eos``: the sampled turn already
        ended with the eos token, which the template's end-of-turn then does not repeat)."""
        marker = "\u2063fst-assistant-turn\u2063"  # text no template writes: where the assistant content ends
        text = self.processing_class.apply_chat_template(
            [{"role": "user", "content": "."}, {"role": "assistant", "content": marker},
             {"role": "user", "content": observation}], tokenize=False, add_generation_prompt=True,
            **getattr(self, "chat_template_kwargs", None) or {})
        ids = self.processing_class(text[text.index(marker) + len(marker):], add_special_tokens=False)["input_ids"]
        if after_eos and ids and ids[0] in set(self.eos_token_ids):
            ids = ids[1:]
        return list(ids)


__all__ = ["EpisodeRollouts"]
