"""Self-play: one agent's policy plays every seat, each seat's episode holds only its own view, groups are
(deal, seat), a slow step trains every turn of both seats, and the example trains end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import pytest

from fst_env.agents.fst_agent import FSTConfig, RLAgent
from fst_env.agents.self_play import collect_self_play, group_key, returns_by_seat, self_play_evaluate
from fst_env.core import Problem, Verdict
from fst_env.envs.text_games import BargainGame, WordGuessGame
from fst_env.models import tiny_policy
from fst_env.multiagent import MoveResult, TextAECEnv

FEEDBACK = "FEEDBACK-MARKER"


class ParityGame(TextAECEnv):
    """Two seats alternate ``rounds`` moves each; a move earns its mover 1 when the sum of its code points is
    even (random text from a random model: about half the moves). Each seat has a private code in its view
    only; feedback carries a marker that no view shows."""

    metadata: ClassVar[dict[str, Any]] = {**TextAECEnv.metadata, "name": "parity_v0"}

    def __init__(self, rounds: int = 2) -> None:
        super().__init__(("alpha", "beta"))
        self.rounds = rounds

    def num_problems(self) -> int:
        return 100

    def load_problem(self, problem_id: int) -> Problem:
        return Problem(prompt=f"parity {problem_id}", answer=None, metadata={"id": problem_id})

    def start_game(self, problem: Problem) -> None:
        self.codes = {seat: f"PRIVATE-{seat}-{problem.metadata['id']}" for seat in self.possible_agents}
        self.played = dict.fromkeys(self.possible_agents, 0)

    def view(self, agent: str) -> str:
        return (f"Parity game, seat {agent}. Your private code: {self.codes[agent]}. Moves so far: {self.moves}. "
                "Reply with any text.")

    def play(self, agent: str, action: str) -> MoveResult:
        self.played[agent] += 1
        reward = float(sum(map(ord, action)) % 2 == 0)
        over = all(n >= self.rounds for n in self.played.values())
        feedback = {a: f"{FEEDBACK} {a} after move {self.moves + 1}" for a in (self.possible_agents if over
                                                                                else [agent])}
        verdicts = dict.fromkeys(feedback, Verdict.CORRECT if reward else Verdict.INCORRECT)
        return MoveResult(feedback, verdicts, {agent: reward}, game_over=over)

    def wasted_move(self, agent: str, verdict: Verdict, reason: str) -> MoveResult:
        return MoveResult({agent: f"{FEEDBACK} {reason}"}, {agent: verdict})


class RecordingBackend:
    """Wraps the agent's backend and records every generate call (its prompts and generations)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], list[Any]]] = []
        self.supports_row_seeds = getattr(inner, "supports_row_seeds", False)

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        return self.inner.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def generate(self, prompts, params):
        generations = self.inner.generate(prompts, params)
        self.calls.append((list(prompts), list(generations)))
        return generations

    def update_weights(self) -> None:
        self.inner.update_weights()


def make_agent(group_size: int = 4, **overrides: Any) -> tuple[RLAgent, RecordingBackend]:
    config = FSTConfig(**{"group_size": group_size, "groups_per_step": 2, "max_new_tokens": 7, "backend": "hf",
                          "seed": 0, "max_context_tokens": 1536, **overrides})
    agent = RLAgent(tiny_policy(0), "fst/WordGuess-v0", config)
    recording = RecordingBackend(agent.backend)
    agent.backend = recording
    return agent, recording


def test_every_turn_of_every_seat_is_sampled_from_the_one_policy_in_batched_calls():
    agent, recording = make_agent(group_size=3)
    episodes = collect_self_play(agent, ParityGame, [3, 5])
    assert len(episodes) == 2 * 3 * 2  # deals x games x seats
    assert all(len(e.turns) == 2 and e.terminated and not e.truncated for e in episodes)
    # Every round moves one seat in each of the 6 games, all in one generate call; 4 moves per game.
    assert [len(prompts) for prompts, _ in recording.calls] == [6, 6, 6, 6]
    sampled = {(p, tuple(g.completion_ids)): g
               for prompts, gens in recording.calls for p, g in zip(prompts, gens, strict=True)}
    tokenizer = agent.policy.tokenizer
    for episode in episodes:
        for turn in episode.turns:
            prompt = tokenizer.decode(turn.prompt_ids)
            generation = sampled[(prompt, tuple(turn.completion_ids))]  # this seat's turn came from that call
            assert turn.old_logprobs == list(generation.logprobs) and turn.completion == generation.text
    # The seats' turns share one policy: the learner scores both seats' completions as the sampler did.
    scores = agent.slow.score([t for e in episodes for t in e.turns])
    for turn, logprobs in zip([t for e in episodes for t in e.turns], scores.logprobs, strict=True):
        assert logprobs == pytest.approx(turn.old_logprobs, abs=1e-4)


def test_each_seat_sees_only_its_own_view_and_never_feedback():
    agent, recording = make_agent(group_size=2)
    episodes = collect_self_play(agent, ParityGame, [7])
    prompts = [p for ps, _ in recording.calls for p in ps]
    assert prompts and not any(FEEDBACK in p for p in prompts)
    for episode in episodes:
        seat, other = episode.info["seat"], {"alpha": "beta", "beta": "alpha"}[episode.info["seat"]]
        for k, turn in enumerate(episode.turns):
            prompt = agent.policy.tokenizer.decode(turn.prompt_ids)
            assert f"PRIVATE-{seat}-" in prompt and f"PRIVATE-{other}-" not in prompt and FEEDBACK not in prompt
            # The conversation is this seat's own: its observations as user turns, its moves as assistant turns.
            assert prompt == agent.backend.apply_chat_template(_messages(episode, k))
        assert all(FEEDBACK in t.feedback for t in episode.turns)  # the learners keep it


def _messages(episode, k: int) -> list[dict[str, str]]:
    """The chat messages of turn ``k`` of ``episode`` (earlier turns of the same seat, then its observation)."""
    partial = type(episode)(group=episode.group, context_id=episode.context_id, context=episode.context,
                            turns=episode.turns[:k])
    return partial.messages(episode.turns[k].observation)


@pytest.mark.parametrize("game", [WordGuessGame, BargainGame])
def test_real_games_keep_the_other_seats_private_view_and_the_final_feedback_out(game):
    agent, recording = make_agent(group_size=2, max_context_tokens=4000)
    episodes = collect_self_play(agent, game, [11])
    probe = game()
    probe.reset(seed=11)

    def private(seat: str) -> list[str]:
        return [line for line in probe.observe(seat).splitlines() if line.startswith(("Secret word:", "Your values:"))]

    assert private(probe.possible_agents[0])  # the first seat (describer, player_0) holds something private
    for episode in episodes:
        seat = episode.info["seat"]
        assert episode.turns[0].observation.splitlines()[0] == probe.observe(seat).splitlines()[0]  # its role
        assert all(line in episode.turns[0].observation for line in private(seat))
        if seat == probe.agent_selection:  # the first mover's first view is the game's own view of it
            assert episode.turns[0].observation == str(probe.observe(seat))
        prompts = [agent.policy.tokenizer.decode(t.prompt_ids) for t in episode.turns]
        for other in probe.possible_agents:
            if other != seat:
                assert all(line not in p for line in private(other) for p in prompts)
        if episode.terminated:
            assert all(episode.turns[-1].feedback not in p for p in prompts)  # the end may name hidden values
    assert recording.calls


def test_groups_are_deal_and_seat_with_g_episodes_each():
    agent, _ = make_agent(group_size=3)
    episodes = collect_self_play(agent, ParityGame, [3, 5])
    groups: dict[str, list] = {}
    for episode in episodes:
        groups.setdefault(episode.group, []).append(episode)
    assert set(groups) == {group_key("parity_v0", d, s) for d in (3, 5) for s in ("alpha", "beta")}
    for key, members in groups.items():
        assert len(members) == 3
        assert {e.info["seat"] for e in members} == {key.rsplit("/", 1)[1]}
        assert len({e.turns[0].observation for e in members}) == 1  # same deal, same seat: the same start
    assert set(returns_by_seat(episodes)) == {"alpha", "beta"}


def test_a_slow_step_on_self_play_trains_every_turn_of_both_seats_at_ratio_one():
    agent, _ = make_agent(group_size=6)
    episodes = collect_self_play(agent, ParityGame, [3, 5])
    returns: dict[str, set[float]] = {}
    for episode in episodes:
        returns.setdefault(episode.group, set()).add(episode.episode_return())
    assert all(len(values) > 1 for values in returns.values())  # every (deal, seat) group has a signal
    lora = {k: v.detach().clone() for k, v in agent.policy.model.named_parameters() if "lora_" in k}
    metrics = agent.slow_step(episodes)
    turns = sum(len(e.turns) for e in episodes)
    assert metrics["slow/skipped"] == 0 and metrics["slow/n_pieces"] == turns == 2 * 6 * 2 * 2
    assert metrics["slow/n_trained"] == len(episodes) and metrics["slow/n_groups"] == 4
    assert metrics["slow/ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["slow/ratio_max"] == pytest.approx(1.0, abs=1e-4)
    after = dict(agent.policy.model.named_parameters())
    assert any(not after[k].detach().equal(v) for k, v in lora.items())  # the adapter moved
    assert agent.counters["rl_samples"] == len(episodes) and agent.counters["rl_turns"] == turns


def test_held_out_evaluation_is_reproducible_on_the_same_deals():
    agent, _ = make_agent(group_size=2)
    first = self_play_evaluate(agent, ParityGame, [1, 2], samples=2, seed=4)
    again = self_play_evaluate(agent, ParityGame, [1, 2], samples=2, seed=4)
    assert first == again and first["n_games"] == 4 and set(first["per_seat"]) == {"alpha", "beta"}
    assert agent.counters["rl_samples"] == 0  # evaluation is not training budget


def test_episode_limits_end_the_whole_game():
    agent, _ = make_agent(group_size=2, max_turns=1)
    episodes = collect_self_play(agent, ParityGame, [3])
    assert all(e.truncated and e.info["stopped"] == "max_turns" and len(e.turns) == 1 for e in episodes)


def test_the_example_trains_by_self_play_with_the_tiny_model(capsys):
    path = Path(__file__).resolve().parents[2] / "examples" / "self_play.py"
    spec = importlib.util.spec_from_file_location("self_play_example_train", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--game", "word_guess", "--train", "2", "--model", "tiny", "--games", "2",
                           "--eval-deals", "2", "--eval-samples", "1"])
    out = capsys.readouterr().out
    assert "update 1: mean return per seat describer" in out and "update 2:" in out
    assert "before: mean return per seat" in out and "after:  mean return per seat" in out and "n=2" in out
    assert len(result["history"]) == 2 and result["before"]["deals"] == result["after"]["deals"] == [0, 1]
