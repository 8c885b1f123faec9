"""Stable-Baselines3 baselines on a townlet level: train SB3's PPO and DQN and sb3-contrib's MaskablePPO and
RecurrentPPO through `TownletVecEnv` (one batched `World`) for the same budget each, evaluate every greedy policy
with townlet's protocol (deterministic actions, a fresh world at full difficulty, N episodes, mean survival in
ticks), and write the table beside townlet's default learner (from benchmarks/results/learning.json, when it has
that level) and a random valid-action policy measured in this run, as Markdown + JSON.

    python benchmarks/sb3_baselines.py LEVEL [--minutes 5] [--steps S] [--seed 0]
        [--algos ppo,dqn,maskable_ppo,recurrent_ppo] [--episodes 1000] [--num-envs N] [--out benchmarks/results]
    python benchmarks/sb3_baselines.py LEVEL --replot    # rewrite the Markdown from the JSON

Each algorithm trains until its budget ends: `--minutes` of wall clock, `--steps` agent-steps, or whichever comes
first when both are given (default: 5 minutes). With a time budget, SB3's schedules (DQN's ε) advance with the
fraction of the time spent. The hyperparameters below are SB3's usual settings for small discrete tasks, not
tuned on townlet; the JSON records them. Writes `sb3-LEVEL.md` and `sb3-LEVEL.json` (atomically) in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from townlet.train.checkpoint import atomic_write_text
from townlet.train.experiment import budget_label, machine
from townlet.world import ConfigError, LevelConfig, load_level, scripted_stats
from townlet.world.sb3 import TownletVecEnv, evaluate_model

EVAL_SEED = 12345  # townlet eval's default seed: the same episodes as benchmarks/learning.py evaluates
EVAL_AGENTS = 250


@dataclass(frozen=True)
class AlgoSpec:
    label: str
    module: str  # where the class lives (sb3-contrib's are imported only when asked for)
    cls: str
    policy: str
    num_envs: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def model_class(self) -> type:
        try:
            module = __import__(self.module, fromlist=[self.cls])
        except ImportError as e:
            raise SystemExit(f"{self.label} needs {self.module.split('.')[0]}: pip install 'townlet[sb3]' ({e})") from e
        return getattr(module, self.cls)


_PPO = {"n_steps": 128, "batch_size": 1024, "n_epochs": 4, "learning_rate": 3e-4, "gamma": 0.99,
        "gae_lambda": 0.95, "ent_coef": 0.01, "policy_kwargs": {"net_arch": [128, 128]}}
ALGOS: dict[str, AlgoSpec] = {
    "ppo": AlgoSpec("SB3 PPO", "stable_baselines3", "PPO", "MlpPolicy", 64, _PPO),
    "dqn": AlgoSpec("SB3 DQN", "stable_baselines3", "DQN", "MlpPolicy", 32, {
        "learning_rate": 2.5e-4, "buffer_size": 500_000, "learning_starts": 10_000, "batch_size": 256,
        "train_freq": 1, "gradient_steps": 1, "target_update_interval": 4_000, "gamma": 0.99,
        "exploration_fraction": 0.2, "exploration_final_eps": 0.02, "policy_kwargs": {"net_arch": [128, 128]}}),
    "maskable_ppo": AlgoSpec("sb3-contrib MaskablePPO", "sb3_contrib", "MaskablePPO", "MlpPolicy", 64, _PPO),
    "recurrent_ppo": AlgoSpec("sb3-contrib RecurrentPPO", "sb3_contrib", "RecurrentPPO", "MlpLstmPolicy", 64, {
        **_PPO, "policy_kwargs": {"net_arch": [128], "lstm_hidden_size": 128}}),
}


class Budget(BaseCallback):
    """Stops training when the wall-clock budget is spent. With a time budget it also sets the model's planned
    total steps to those the current rate will reach by then, so SB3's schedules (fed by the fraction of
    `_total_timesteps` done) follow the fraction of the time spent."""

    def __init__(self, seconds: float | None, steps: int | None) -> None:
        super().__init__()
        self.seconds, self.steps = seconds, steps
        self.start = 0.0

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        if self.seconds is None:
            return True
        elapsed = time.perf_counter() - self.start
        if elapsed >= self.seconds:
            return False
        done = self.model.num_timesteps
        if done > 0 and elapsed > 0:
            projected = int(done * self.seconds / elapsed)
            if self.steps is not None:
                projected = min(projected, self.steps)
            self.model._total_timesteps = max(projected, done + 1)
        return True


def train_and_evaluate(level: LevelConfig, name: str, seed: int, minutes: float | None, steps: int | None,
                       episodes: int, num_envs: int | None) -> dict[str, Any]:
    spec = ALGOS[name]
    model_class = spec.model_class()
    envs = num_envs or spec.num_envs
    kwargs = dict(spec.kwargs)
    if "n_steps" in kwargs:  # PPO family: no minibatch larger than the rollout
        kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"] * envs)
    env = TownletVecEnv(level, num_envs=envs, seed=seed)
    model = model_class(spec.policy, env, seed=seed, device="cpu", verbose=0, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))  # no /tmp/SB3-<time> folder per run
    budget = Budget(None if minutes is None else minutes * 60, steps)
    start = time.perf_counter()
    model.learn(total_timesteps=steps if steps is not None else 10**12, callback=budget)
    train_s = time.perf_counter() - start
    env.close()
    recent = [e["l"] for e in model.ep_info_buffer]
    ev = evaluate_model(model, level, episodes=episodes, agents=EVAL_AGENTS, seed=EVAL_SEED)
    return {
        "algo": name, "label": spec.label, "level": level.name, "seed": seed, "minutes": minutes, "steps": steps,
        "num_envs": envs, "policy": spec.policy, "hyperparameters": kwargs,
        "env_steps": int(model.num_timesteps), "train_s": train_s, "steps_per_s": model.num_timesteps / train_s,
        "train_survival_recent": sum(recent) / len(recent) if recent else math.nan,
        "eval": {"seed": EVAL_SEED, **ev},
    }


def townlet_row(level: str, learning_json: Path) -> dict[str, Any] | None:
    """townlet's default learner on `level` from the learning results (its wall-clock row when it has one)."""
    if not learning_json.exists():
        return None
    rows = [r for r in json.loads(learning_json.read_text()).get("rows", []) if r.get("level") == level]
    rows.sort(key=lambda r: r.get("steps") is not None)  # the time-budget row first
    return rows[0] if rows else None


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it (results should not name a home directory)."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def _budget(record: dict[str, Any]) -> str:
    """'5 min', '0.2 M steps' or both (training stopped at whichever came first)."""
    parts = []
    if record.get("minutes") is not None:
        parts.append(f"{record['minutes']:g} min")
    if record.get("steps") is not None:
        parts.append(f"{record['steps'] / 1e6:g} M steps")
    return " or ".join(parts)


def _fmt_ci(summary: dict[str, Any]) -> str:
    lo, hi = summary["survival_ci95"]
    half = (hi - lo) / 2
    return f"{summary['survival_mean']:.1f}" + ("" if math.isnan(half) else f" ± {half:.1f}")


def markdown(payload: dict[str, Any]) -> str:
    level, random = payload["level"], payload["random"]
    lines = [
        f"# Stable-Baselines3 baselines: {level}", "",
        f"`{payload['command']}` on {payload['machine']}, {payload['date']}.", "",
        f"Greedy evaluation: {payload['episodes']:,} episodes on a fresh world at full difficulty (seed "
        f"{EVAL_SEED}, {min(EVAL_AGENTS, payload['episodes'])} agents), mean survival in ticks ± 95% CI.", "",
        "| learner | budget | envs | env steps | steps/s | greedy mean survival | median | cap rate | invalid rate "
        "| ÷ random |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["runs"]:
        ev = r["eval"]
        lines.append(
            f"| {r['label']} | {_budget(r)} | {r['num_envs']} | {r['env_steps']:,} | "
            f"{r['steps_per_s']:,.0f} | {_fmt_ci(ev)} | {ev['survival_median']:.0f} | {ev['cap_rate']:.1%} | "
            f"{ev['invalid_rate']:.1%} | {ev['survival_mean'] / random['survival_mean']:.2f}× |"
        )
    town = payload.get("townlet")
    if town is not None:
        ci = "" if math.isnan(town["ci95_half"]) else f" ± {town['ci95_half']:.1f}"
        lines.append(
            f"| townlet default ({len(town['seeds'])} seeds, recorded) | {budget_label(town)} | — | "
            f"{town['env_steps']:,.0f} | — | {town['survival_mean']:.1f}{ci} ({town['ci_over']}) | "
            f"{town['survival_median']:.0f} | {town['cap_rate']:.1%} | — | "
            f"{town['survival_mean'] / random['survival_mean']:.2f}× |"
        )
    lines.append(
        f"| random valid actions (this run) | — | — | — | — | {_fmt_ci(random)} | {random['survival_median']:.0f} | "
        f"{random['cap_rate']:.1%} | {random['invalid_rate']:.1%} | 1.00× |"
    )
    lines.append("")
    if town is None:
        lines.append(f"townlet's default learner: no {level} row in {payload['learning_json']}.")
    else:
        lines.append(f"The townlet row is the recorded result of `benchmarks/learning.py` in "
                     f"{payload['learning_json']} (its own budget and machine speed; goal: "
                     f"{town.get('goal', 'none')}), not measured in this run.")
        if payload["runs"]:
            best = max(payload["runs"], key=lambda r: r["eval"]["survival_mean"])
            ratio = town["survival_mean"] / best["eval"]["survival_mean"]
            lines.append(f"townlet's default learner lives {ratio:.2f}× as long as the best peer here, "
                         f"{best['label']}.")
    lines.append("PPO, DQN and RecurrentPPO act unmasked (an invalid action is a no-op, counted in the invalid "
                 "rate); MaskablePPO and townlet's learner act on the valid actions only.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", help="a packaged level name (e.g. L1_full) or a level YAML")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget per algorithm (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="agent-step budget per algorithm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated, of {', '.join(ALGOS)}")
    parser.add_argument("--episodes", type=int, default=1000, help="greedy evaluation episodes per policy")
    parser.add_argument("--num-envs", type=int, default=None, help="sub-environments for every algorithm "
                        "(default: 64, DQN 32)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--learning-json", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "learning.json",
                        help="townlet's learning results, whose row for LEVEL goes beside the SB3 figures")
    parser.add_argument("--replot", action="store_true",
                        help="rewrite sb3-LEVEL.md from the sb3-LEVEL.json already in --out, without training")
    args = parser.parse_args(argv)
    if args.replot:
        json_path = args.out / f"sb3-{Path(args.level).stem}.json"
        if not json_path.exists():
            parser.error(f"--replot: {json_path} does not exist")
        atomic_write_text(json_path.with_suffix(".md"), markdown(json.loads(json_path.read_text())))
        print(f"wrote {json_path.with_suffix('.md')}")
        return 0
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    unknown = [a for a in algos if a not in ALGOS]
    if unknown or not algos:
        parser.error(f"--algos: unknown {unknown or 'empty'}; allowed: {', '.join(ALGOS)}")
    for flag, value in (("--minutes", args.minutes), ("--steps", args.steps), ("--episodes", args.episodes),
                        ("--num-envs", args.num_envs)):
        if value is not None and value <= 0:
            parser.error(f"{flag} must be > 0, got {value}")
    minutes = 5.0 if args.minutes is None and args.steps is None else args.minutes
    try:
        config = load_level(args.level)
    except (ConfigError, OSError) as e:
        parser.error(f"level {args.level!r}: {e}")
    level = config.name

    runs = []
    for name in algos:
        what = _budget({"minutes": minutes, "steps": args.steps})
        print(f"{ALGOS[name].label} on {level}: training {what} ...", flush=True)
        record = train_and_evaluate(config, name, args.seed, minutes, args.steps, args.episodes, args.num_envs)
        ev = record["eval"]
        print(f"  {record['env_steps']:,} steps in {record['train_s'] / 60:.1f} min ({record['steps_per_s']:,.0f}/s); "
              f"greedy mean survival {ev['survival_mean']:.1f}, cap rate {ev['cap_rate']:.1%}", flush=True)
        runs.append(record)
    random = scripted_stats(config, args.episodes, min(EVAL_AGENTS, args.episodes), EVAL_SEED)["random"]
    for r in runs:
        r["vs_random"] = r["eval"]["survival_mean"] / random["survival_mean"]
    print(f"random valid actions: mean survival {random['survival_mean']:.1f}", flush=True)
    command = "python benchmarks/sb3_baselines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {
        "title": f"Stable-Baselines3 baselines: {level}", "command": command, "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "level": level, "episodes": args.episodes, "runs": runs,
        "random": random, "townlet": townlet_row(level, args.learning_json),
        "learning_json": _shown(args.learning_json), "torch": torch.__version__,
    }
    json_path, md_path = args.out / f"sb3-{level}.json", args.out / f"sb3-{level}.md"
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=float) + "\n")
    atomic_write_text(md_path, markdown(payload))
    print(f"wrote {json_path}\nwrote {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
