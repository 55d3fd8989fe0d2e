"""The ``fst`` command line: list envs, train, evaluate, compare FST with RL-only and fast-only, plot runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from fst_env.checkpoints import CheckpointError, find_checkpoint
from fst_env.config import (
    DEFAULT_ENV_SPEC,
    DEFAULT_PRESET,
    DEFAULT_STEPS,
    MODES,
    PRESETS,
    RunConfig,
    load_config,
)
from fst_env.schedule import ConfigError, resolve_env_id

EXAMPLES = {
    "envs": """examples:
  fst envs                          # every registered env with its card
  fst envs --markdown               # the README table
  fst envs fst/StarGraph-v0         # one card""",
    "train": """examples:
  fst train                                             # the main job: FST on the embedded model, easy chain sums
  fst train --mode rl --steps 20 --run-dir runs/rl      # RL only (slow weights), same everything else
  fst train --env fst/MathReasoning-v0:difficulty=easy --env fst/StarGraph-v0 --steps 10   # continual: 2 stages
  fst train --config run.toml --resume                  # continue a killed run from its last checkpoint
  fst train --fast-learner reflective --reflection-model http://127.0.0.1:8000/v1 --reflection-api-model qwen

Watch it: tensorboard --logdir RUN_DIR/tb ; plots: fst plot RUN_DIR""",
    "eval": """examples:
  fst eval --run-dir runs/fst                           # the run's latest checkpoint on its tasks
  fst eval --model embedded --env fst/MathReasoning-v0 --problems 32 --k 4
  fst eval --run-dir runs/fst --context none            # trained weights without the evolved context""",
    "compare": """examples:
  fst compare --steps 12 --run-dir runs/compare         # FST vs RL-only vs fast-only, same schedule and seeds
  fst compare --config run.toml --run-dir runs/cmp""",
    "plot": """examples:
  fst plot runs/fst                                     # PNGs next to the run's files""",
    "reproduce": """examples:
  fst reproduce --quick                                 # the paper's four claims in miniature (<= 15 min, 2 cores)
  fst reproduce --out runs/reproduce-full               # full mode (<= 60 min), 3 seeds
  fst reproduce --quick --set reproduce.steps=5 --set agent.temperature=0.5

Sizes: SETTINGS_TABLE at the top of fst_env/reproduce.py; task, temperature and lr come from the cpu preset.
Writes REPRODUCTION.md, reproduce.json (every number) and plots into --out.""",
}


_ENV_SPEC = re.compile(r"^(?:(?P<module>[A-Za-z_][\w.]*):)?(?P<id>[^:=]+)(?::(?P<kwargs>.*))?$")


def _parse_env(spec: str) -> tuple[str, dict[str, Any]]:
    """``[module:]ID[:key=value,key=value]`` (values parsed as JSON when they can be).

    A ``module:`` prefix (a dotted Python module name) is imported before the id is looked up, so an env registered
    in the user's own file (``fst_env.register_task``) can be trained from the command line.
    """
    match = _ENV_SPEC.match(spec)
    if match is None:
        raise ConfigError(f"--env {spec}: expected [module:]ID[:key=value,...], "
                          "e.g. fst/MathReasoning-v0:difficulty=easy")
    env_id = match["id"] if match["module"] is None else f"{match['module']}:{match['id']}"
    kwargs: dict[str, Any] = {}
    for item in filter(None, (match["kwargs"] or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {spec}: expected key=value after ':', got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return env_id, kwargs


def _preset_default(field: str, section: str = "agent") -> str:
    """What ``--help`` says a flag defaults to: the default preset's value, else the owner of the default."""
    value = PRESETS[DEFAULT_PRESET][section].get(field)
    if value is not None:
        return f"default {value}, from preset {DEFAULT_PRESET!r}"
    owner = "FSTConfig" if section == "agent" else "Schedule"
    return f"default: {owner}.{field}"


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a TOML/YAML/JSON run config (flags override it)")
    parser.add_argument("--preset", choices=tuple(PRESETS),
                        help=f"named defaults under the config (default {DEFAULT_PRESET!r}; 'paper': FSTConfig's "
                             "own values)")
    parser.add_argument("--model", help="embedded (default), tiny (random test model), a directory or a model id")
    parser.add_argument("--env", action="append", metavar="[MODULE:]ID[:k=v,...]",
                        help=f"a task; repeat for a continual schedule (default {DEFAULT_ENV_SPEC}); "
                             "MODULE is imported first (an env registered in your own file)")
    parser.add_argument("--steps", type=int, help=f"updates per stage (default {DEFAULT_STEPS})")
    parser.add_argument("--seed", type=int, help="run seed (default 0)")
    parser.add_argument("--group-size", type=int, help=f"rollouts per problem, G ({_preset_default('group_size')})")
    parser.add_argument("--groups-per-step", type=int,
                        help=f"problems per slow step ({_preset_default('groups_per_step')})")
    parser.add_argument("--fast-every", type=int,
                        help=f"a fast round every T updates ({_preset_default('fast_every')})")
    parser.add_argument("--population-size", type=int,
                        help=f"contexts kept, K ({_preset_default('population_size')})")
    parser.add_argument("--fast-learner", choices=("notes", "reflective", "demonstrations"),
                        help="notes: LLM-free, from env feedback; demonstrations: the policy's own correct "
                             "rollouts as worked examples; reflective: a reflection LM rewrites the context "
                             f"({_preset_default('fast_learner')})")
    parser.add_argument("--reflection-model", help="reflection LM: an http(s) OpenAI-compatible base URL, a model "
                                                   "dir/id; default: the policy's base model")
    parser.add_argument("--reflection-api-model", help="model name at --reflection-model's endpoint")
    parser.add_argument("--max-new-tokens", type=int,
                        help=f"completion length cap ({_preset_default('max_new_tokens')})")
    parser.add_argument("--temperature", type=float, help=f"sampling temperature ({_preset_default('temperature')})")
    parser.add_argument("--lr", type=float, help=f"slow learner's learning rate ({_preset_default('lr')})")
    parser.add_argument("--eval-every", type=int, help="evaluate every N updates (0: stage ends only)")
    parser.add_argument("--eval-problems", type=int,
                        help="held-out problems per task and evaluation "
                             f"({_preset_default('eval_problems', 'schedule')})")
    parser.add_argument("--eval-k", type=int,
                        help=f"samples per held-out problem, mean@k ({_preset_default('eval_k', 'schedule')})")
    parser.add_argument("--checkpoint-every", type=int, help="checkpoint every N updates (default: stage ends)")
    parser.add_argument("--reset-population", action="store_true", help="reset the contexts at each stage start")
    _add_set_option(parser)


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="any config field, e.g. agent.tau=2 or schedule.kl_prompts=0 (value read as JSON when "
                             "it can be); repeatable, applied last")


def apply_overrides(config: RunConfig, settings: list[str]) -> RunConfig:
    """Apply ``--set section.field=value`` strings to ``config`` (sections: agent, schedule, run)."""
    for item in settings:
        path, sep, text = item.partition("=")
        section, dot, name = path.strip().partition(".")
        if not sep or not dot or not name or section not in ("agent", "schedule", "run"):
            raise ConfigError(f"--set {item}: expected SECTION.FIELD=VALUE with SECTION agent, schedule or run, "
                              "e.g. --set agent.tau=2")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if section == "run":
            if name not in {f.name for f in dataclasses.fields(RunConfig)} - {"agent", "schedule", "stages"}:
                raise ConfigError(f"--set run.{name}: unknown field; allowed: model, mode, preset, seed, "
                                  "reflection_model, reflection_api_model")
            setattr(config, name, value)
        else:
            getattr(config, section)[name] = value
    return config


def build_config(args: argparse.Namespace) -> RunConfig:
    """The run config that a config file (if any), then the flags, then ``--set`` describe."""
    config = load_config(args.config) if args.config else RunConfig()
    for name in ("model", "preset", "seed", "reflection_model", "reflection_api_model"):
        if getattr(args, name, None) is not None:
            setattr(config, name, getattr(args, name))
    if getattr(args, "mode", None):
        config.mode = args.mode
    for flag in ("group_size", "groups_per_step", "fast_every", "population_size", "fast_learner",
                 "max_new_tokens", "temperature", "lr"):
        if getattr(args, flag, None) is not None:
            config.agent[flag] = getattr(args, flag)
    for flag in ("eval_every", "eval_problems", "eval_k", "checkpoint_every"):
        if getattr(args, flag, None) is not None:
            config.schedule[flag] = getattr(args, flag)
    if args.env:
        config.stages = [{"env_id": env_id, "steps": args.steps or DEFAULT_STEPS, "env_kwargs": kwargs}
                         for env_id, kwargs in map(_parse_env, args.env)]
    elif args.steps is not None:
        for stage in config.stages:
            stage["steps"] = args.steps
    if args.reset_population:
        for stage in config.stages:
            stage["reset_population"] = True
    return apply_overrides(config, args.set).validate()


def build_agent(config: RunConfig, policy: Any = None) -> Any:
    """The agent a run config describes (learners built) on ``policy``, or on the config's model loaded now."""
    from fst_env.agents.fst_agent import FSTAgent
    from fst_env.models import load_policy, tiny_policy

    if policy is None:
        policy = tiny_policy(config.seed) if config.model == "tiny" else load_policy(config.model)
    reflection = None
    if config.reflection_model:
        from fst_env.agents.reflection import from_openai, from_transformers

        if config.reflection_model.startswith(("http://", "https://")):
            if not config.reflection_api_model:
                raise ConfigError("reflection_api_model: required with an http(s) --reflection-model")
            reflection = from_openai(config.reflection_model, config.reflection_api_model)
        else:
            other = load_policy(config.reflection_model)
            reflection = from_transformers(other.model, other.tokenizer, disable_adapter=False)
    first = config.stages[0]
    return FSTAgent(policy, resolve_env_id(first["env_id"]), config.agent_config(),
                    env_kwargs=first.get("env_kwargs", {}), reflection_lm=reflection)


def cmd_envs(args: argparse.Namespace) -> int:
    import fst_env

    if args.markdown:
        print(fst_env.markdown_table())
        return 0
    ids = args.ids or fst_env.registered_ids()
    for env_id in ids:
        print(fst_env.describe(env_id), end="\n\n")
    return 0


def cmd_train(args: argparse.Namespace, mode_override: str | None = None) -> int:
    from fst_env.loop import train
    from fst_env.plots import plot_run

    config = build_config(args)
    if mode_override:
        config.mode = mode_override
    run_dir = Path(args.run_dir or f"runs/{config.mode}")
    saved = run_dir / "config.json"
    if args.resume:
        # fail in one line before the model loads if nothing validates, or if there is nothing to resume at all
        if find_checkpoint(run_dir, report=None) is None:
            raise ConfigError(f"--resume: {run_dir} has no checkpoint to resume from (a mistyped --run-dir? "
                              "drop --resume to start a new run there)")
        if saved.exists():
            config = _resumed_config(_saved_config(saved), config, mode_override)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(config.to_dict(), indent=2))
    agent = build_agent(config)
    summary = train(agent, config.build_schedule(), run_dir=run_dir, seed=config.seed, resume=args.resume,
                    quiet=args.quiet)
    plot_run(run_dir)
    print(final_report(summary, run_dir, config.mode))
    return 0


def final_report(summary: dict[str, Any], run_dir: Path, mode: str) -> str:
    """What a person reads at the end of a run: before/after with intervals, the paired change, wall time,
    where everything was written, and the best context as text."""
    wall = float(summary.get("wall_time_s", 0.0))
    took = f"{wall:.0f} s" if wall < 120 else f"{wall / 60:.1f} min"
    lines = [f"\nfinished {summary['steps']} updates ({mode}) in {took} of wall time"]
    before, after = summary.get("baseline_row"), (summary["evals"][-1] if summary["evals"] else None)
    if before and after:
        lines.append("held-out accuracy, before -> after (95% intervals; n problems x k samples):")
        for suffix, label in (("", f"sampled mean@{after.get('k', 1)}"), ("_greedy", "greedy")):
            if f"accuracy{suffix}" not in after or f"accuracy{suffix}" not in before:
                continue  # greedy evaluation off (schedule.eval_greedy = false)
            for task, value in after[f"accuracy{suffix}"].items():
                lo0, hi0 = before[f"ci{suffix}"][task]
                lo1, hi1 = after[f"ci{suffix}"][task]
                change = _paired_change(before[f"per_problem{suffix}"][task], after[f"per_problem{suffix}"][task])
                lines.append(f"  {task} [{label}, n={after['n'][task]}]: {before[f'accuracy{suffix}'][task]:.3f} "
                             f"[{lo0:.3f}, {hi0:.3f}] -> {value:.3f} [{lo1:.3f}, {hi1:.3f}]; {change}")
    context = summary.get("best_context") or {}
    lines.append("best context:" + ("" if context else " (empty)"))
    for name, text in context.items():
        lines.append(f"  [{name}]")
        lines.extend(f"    {line}" for line in str(text).splitlines() or ["(empty)"])
    checkpoint = find_checkpoint(run_dir, report=None)
    lines += [f"run directory: {run_dir} (summary.json, scalars.csv, config.json)",
              f"checkpoint: {checkpoint or 'none'}",
              f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}",
              "plots: " + ", ".join(str(p) for p in sorted(run_dir.glob('*.png')))]
    return "\n".join(lines)


def _paired_change(before: list[float], after: list[float]) -> str:
    """The after-minus-before difference over the same problems, with its paired 95% interval."""
    from fst_env.metrics import paired_difference

    if len(before) != len(after) or len(before) < 2:
        return "change: too few problems for an interval"
    diff = paired_difference(after, before)
    verdict = "excludes 0" if diff.ci_low > 0 or diff.ci_high < 0 else "includes 0"
    return f"change {diff.mean:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}] ({verdict})"


def _resumed_config(saved: RunConfig, asked: RunConfig, mode_override: str | None) -> RunConfig:
    """The saved config a resume continues; a setting the command line asks for that differs from it is a
    one-line ConfigError (it would otherwise be ignored without a word, e.g. ``--steps 40`` on a 24-step run)."""
    plain = build_config(make_parser().parse_args(["train", "--resume"]))  # what no flags at all would give
    if mode_override:
        plain.mode = mode_override
    saved_d, asked_d, plain_d = saved.to_dict(), asked.to_dict(), plain.to_dict()
    differ = []
    for key, value in asked_d.items():
        if isinstance(value, dict):  # agent / schedule tables: compare field by field
            differ += [f"{key}.{k}={v!r} (saved: {saved_d[key].get(k)!r})" for k, v in value.items()
                       if v != plain_d[key].get(k) and v != saved_d[key].get(k)]
        elif value != plain_d[key] and value != saved_d[key]:
            differ.append(f"{key}={value!r} (saved: {saved_d[key]!r})")
    if differ:
        raise ConfigError("--resume continues the run exactly as saved in config.json, but these settings differ "
                          f"from it: {'; '.join(differ)}; drop them, or train in a new --run-dir")
    return saved


def _saved_config(path: Path) -> RunConfig:
    """The run config a run directory saved, validated; a missing or unreadable file is one ConfigError line."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--run-dir: {path} does not exist (not a `fst train` run directory?)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable run config ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a run config (a JSON object is expected)")
    return RunConfig.from_dict(data).validate()


def _eval_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``fst eval``'s --temperature and --set applied to the run's (or a fresh) config, validated."""
    if args.temperature is not None:
        config.agent["temperature"] = args.temperature
    return apply_overrides(config, args.set).validate()


def cmd_eval(args: argparse.Namespace) -> int:
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not run_dir.is_dir():
            raise ConfigError(f"--run-dir: {run_dir} does not exist (give the directory a `fst train` run wrote)")
        config = _saved_config(run_dir / "config.json")
        checkpoint = find_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"--run-dir: {run_dir} has no checkpoint yet")
        agent = build_agent(_eval_overrides(config, args))
        agent.load(checkpoint / "agent")
        tasks = [(s["env_id"], s.get("env_kwargs", {})) for s in config.stages]
    else:
        config = RunConfig(model=args.model or "embedded", mode="rl")  # without --env: the default task
        if args.env:
            config.stages = [{"env_id": e, "steps": 1, "env_kwargs": k} for e, k in map(_parse_env, args.env)]
        agent = build_agent(_eval_overrides(config, args))
        tasks = [(s["env_id"], s["env_kwargs"]) for s in config.stages]
    if args.env and args.run_dir:
        tasks = list(map(_parse_env, args.env))
    context = {"best": None, "none": {}, "seed": dict(agent.config.seed_context)}[args.context]
    schedule = config.build_schedule()  # the run's evaluation settings, so a run's numbers are reproduced
    problems = args.problems if args.problems is not None else schedule.eval_problems
    k = args.k if args.k is not None else schedule.eval_k
    print(f"{'task':44} {'sampled mean@' + str(k):>26} {'greedy':>26} {'reward':>7}   (split={args.split}, "
          f"context={args.context}; 95% Wilson intervals over n problems)")
    for env_id, kwargs in tasks:
        env_id = resolve_env_id(env_id)
        sampled = agent.evaluate(env_id, split=args.split, problems=problems, k=k, context=context, **kwargs)
        greedy = agent.evaluate(env_id, split=args.split, problems=problems, greedy=True, context=context,
                                **kwargs)
        cells = [f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n']}" for r in (sampled, greedy)]
        print(f"{env_id:44} {cells[0]:>26} {cells[1]:>26} {sampled['reward_mean']:7.3f}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fst_env.plots import accuracy_matrix, accuracy_vs_samples, kl_vs_accuracy, load_summary

    root = Path(args.run_dir or "runs/compare")
    runs = {}
    for mode in MODES:
        args.run_dir = str(root / mode)
        print(f"== {mode} ==")
        cmd_train(args, mode_override=mode)
        runs[mode] = root / mode
    files = [accuracy_vs_samples(runs, root / "accuracy_vs_samples.png")]
    kl = kl_vs_accuracy(runs, root / "kl_vs_accuracy.png")
    files += [kl] if kl else []
    files += [accuracy_matrix(path, root / f"accuracy_matrix_{mode}.png", title=mode) for mode, path in runs.items()]
    lines = ["# fst compare", "", "| mode | task | baseline | final | samples |", "|---|---|---|---|---|"]
    for mode, path in runs.items():
        summary = load_summary(path)
        final = summary["accuracy_matrix"][-1]
        samples = summary["counters"]["rl_samples"] + summary["counters"]["fast_rollouts"]
        for task, value in final.items():
            lines.append(f"| {mode} | {task} | {summary['baseline'][task]:.3f} | {value:.3f} | {samples} |")
    lines += ["", "ScaleRL-style fit of mean held-out accuracy vs samples, "
              "R = R0 + (A - R0) / (1 + (C_mid / C)^B):", "",
              "| mode | A (asymptote) | C_mid (samples) | B | R^2 |", "|---|---|---|---|---|"]
    for mode, path in runs.items():
        lines.append(f"| {mode} | " + _sigmoid_cells(load_summary(path)) + " |")
    lines += ["", *[f"![{f.stem}]({f.name})" for f in files]]
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:-len(files) - 1]))
    print(f"\nwrote {root / 'summary.md'} and {len(files)} plots")
    return 0


def _sigmoid_cells(summary: dict[str, Any]) -> str:
    from fst_env.metrics import fit_sigmoid

    samples = [0.0] + [e["rl_samples"] + e.get("fast_rollouts", 0) for e in summary["evals"]]
    accuracy = [sum(summary["baseline"].values()) / len(summary["baseline"])]
    accuracy += [sum(e["accuracy"].values()) / len(e["accuracy"]) for e in summary["evals"]]
    try:
        fit = fit_sigmoid(samples, accuracy)
    except (ValueError, RuntimeError) as exc:  # too few evaluations, or no convergence
        return f"n/a ({str(exc).splitlines()[0][:80]}; evaluate more often with --eval-every) | | |"
    return f"{fit.A:.3f} | {fit.C_mid:.0f} | {fit.B:.2f} | {fit.r2:.2f}"


def cmd_reproduce(args: argparse.Namespace) -> int:
    from fst_env.reproduce import reproduce

    command = ["fst", "reproduce", *(["--quick"] if args.quick else []), "--out", args.out,
               *(["--seeds", str(args.seeds)] if args.seeds is not None else []), "--model", args.model]
    for item in args.set:
        command += ["--set", item]
    reproduce("quick" if args.quick else "full", args.out, seeds=args.seeds, model=args.model, overrides=args.set,
              command=" ".join(shlex.quote(part) for part in command))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from fst_env.plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fst", description="Fast-Slow Training for LLM agents.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="run `fst COMMAND --help` for each command's options and examples")
    sub = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    envs = sub.add_parser("envs", help="list registered envs with their cards", epilog=EXAMPLES["envs"],
                          formatter_class=formatter)
    envs.add_argument("ids", nargs="*", help="env ids (default: all)")
    envs.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    envs.set_defaults(func=cmd_envs)

    train = sub.add_parser("train", help="train an agent (FST by default)", epilog=EXAMPLES["train"],
                           formatter_class=formatter)
    _add_run_options(train)
    train.add_argument("--mode", choices=MODES, help="fst (both channels, default), rl (slow only), prompt (fast only)")
    train.add_argument("--run-dir", help="where logs, checkpoints and plots go (default runs/MODE)")
    train.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a run's checkpoint or a base model", epilog=EXAMPLES["eval"],
                              formatter_class=formatter)
    evaluate.add_argument("--run-dir", help="a `fst train` run directory (its latest checkpoint)")
    evaluate.add_argument("--model", help="a base model instead of a run (embedded, tiny, dir or id)")
    evaluate.add_argument("--env", action="append", metavar="ID[:k=v,...]", help="tasks (default: the run's)")
    evaluate.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    evaluate.add_argument("--problems", "--eval-problems", type=int,
                          help="problems per task (default: the run's eval_problems, else 16)")
    evaluate.add_argument("--k", "--eval-k", type=int,
                          help="samples per problem for mean@k (default: the run's eval_k, else 1)")
    evaluate.add_argument("--context", default="best", choices=("best", "seed", "none"),
                          help="which context: the population's best, the seed, or none (default best)")
    evaluate.add_argument("--temperature", type=float, help="sampling temperature (default: the run's)")
    _add_set_option(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    compare = sub.add_parser("compare", help="FST vs RL-only vs fast-only on the same schedule and seeds",
                             epilog=EXAMPLES["compare"], formatter_class=formatter)
    _add_run_options(compare)
    compare.add_argument("--run-dir", help="root for the three runs and the plots (default runs/compare)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(func=cmd_compare, resume=False, mode=None)

    repro = sub.add_parser("reproduce", help="re-measure the paper's four claims in miniature (several seeds)",
                           epilog=EXAMPLES["reproduce"], formatter_class=formatter)
    repro.add_argument("--quick", action="store_true", help="the quick mode (<= 15 min on 2 cores; default: full, "
                                                            "<= 60 min)")
    repro.add_argument("--out", default="runs/reproduce", help="where the report, JSON and plots go "
                                                               "(default runs/reproduce)")
    repro.add_argument("--seeds", type=int, help="training seeds per arm (default 3)")
    repro.add_argument("--model", default="embedded", help="embedded (default), tiny (random test model) or a model "
                                                           "directory / .gguf file")
    repro.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="reproduce.FIELD (the settings table), agent.FIELD, schedule.FIELD or run.FIELD; value "
                            "read as JSON when it can be; repeatable")
    repro.set_defaults(func=cmd_reproduce)

    plot = sub.add_parser("plot", help="PNG plots from a run directory", epilog=EXAMPLES["plot"],
                          formatter_class=formatter)
    plot.add_argument("run_dir", help="a `fst train` run directory")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"fst {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:  # a run that cannot be resumed: not a usage error, so its own exit status
        print(f"fst {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # training stopped on a broken task (loop.BrokenTaskError): one line, exit 1
        loop = sys.modules.get("fst_env.loop")  # only a run that trained can raise it: no torch import here
        if loop is None or not isinstance(exc, loop.BrokenTaskError):
            raise
        print(f"fst {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
