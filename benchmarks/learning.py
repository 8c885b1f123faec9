"""Learning results: train each level's default run config (teacher-free: learning from the level's reward
alone) for its budget, evaluate the greedy agent over >= 1,000 episodes at full difficulty, and write the
results table (Markdown + JSON) and learning curves to benchmarks/results/.

Each level has two budgets, and each goal must hold at both: a wall-clock budget on 2 CPU cores
(`--budget time`, what a user's run gets) and an agent-step budget (`--budget steps`, which does not depend on
how fast the machine is that day). Goals: L1_full 5 min / 3 M steps -> >= 95% of episodes reach the 500-tick
cap; L2_partial_fixed 10 min / 10 M -> mean >= 450; L2_partial 15 min / 20 M -> mean >= 400; L3_temporal
20 min / 25 M -> mean >= 350. The baseline beside each row is the random policy, on the same episodes.

    python benchmarks/learning.py LEVEL|all [--budget time|steps] [--seeds 3] [--episodes 1000]
        [--demonstrations] [--out benchmarks/results] [--concurrent 1] [--address ray://host:10001]

`--demonstrations` trains the levels' learning-from-demonstrations run configs (`<level>_demonstrations`:
imitating a scripted policy) instead, into their own table (`learning-demonstrations.md`).
`--minutes` / `--steps` replace every budget (smoke runs; the goals are defined at the budgets above).
Training one level or budget keeps the other rows' runs from the results JSON already there, so the table stays
whole; each run records when it finished. `--replot` rewrites the Markdown and the plots from an earlier
results JSON without training.

The runs are Ray Tune trials (`townlet.train.sweep`), one at a time by default: a wall-clock budget is what one
run gets from the whole machine, and `--concurrent K` runs share its cores. `--address` runs them on a Ray
cluster instead (every node must see the `--runs` directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from townlet.train.config import parse_overrides
from townlet.train.experiment import Goal, Trial, budget_label, summarize, write_results
from townlet.train.sweep import SweepOutcome, run_trials
from townlet.world import load_level, scripted_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_throughput import machine_speed  # sibling benchmark script


@dataclass(frozen=True)
class LevelBudget:
    minutes: float
    steps: int
    goal: Goal


BUDGETS = {
    "L1_full": LevelBudget(5.0, 3_000_000, Goal("cap_rate", 0.95)),
    "L2_partial_fixed": LevelBudget(10.0, 10_000_000, Goal("survival_mean", 450)),
    "L2_partial": LevelBudget(15.0, 20_000_000, Goal("survival_mean", 400)),
    "L3_temporal": LevelBudget(20.0, 25_000_000, Goal("survival_mean", 350)),
}
# Learning from demonstrations: run configs that imitate a scripted policy (L1_full learns without one).
DEMONSTRATIONS = {level: f"{level}_demonstrations" for level in ("L2_partial_fixed", "L2_partial", "L3_temporal")}


def baseline_note(rows: list[dict]) -> str:
    return "Random valid-action policy on the same evaluation seeds (the baseline): " + ", ".join(
        f"{r['name']} {budget_label(r)} {r['random_mean']:.1f} (agent {r['vs_random']:.2f}× it)" for r in rows
    )


def kept_records(path: Path, levels: list[str], budget: str, rerun: list[int]) -> list[dict]:
    """The runs of an earlier results file that this call does not repeat: other levels' and the other budget's
    runs, so training one level at one budget updates only its rows, and with `rerun` the seeds of these levels
    that are not retrained."""
    if not path.exists():
        return []

    def repeated(r: dict) -> bool:
        same_budget = (r.get("steps") is not None) == (budget == "steps")
        return r["name"] in levels and same_budget and (not rerun or r["seed"] in rerun)

    return [r for r in json.loads(path.read_text())["runs"] if r["name"] in BUDGETS and not repeated(r)]


def main(argv: list[str] | None = None, execute: Callable[..., SweepOutcome] = run_trials) -> int:
    """`execute(trials, runs_dir, **options)` trains and evaluates the trials (`townlet.train.sweep.run_trials`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", choices=[*BUDGETS, "all"])
    parser.add_argument("--budget", choices=["time", "steps"], default="time")
    parser.add_argument("--demonstrations", action="store_true",
                        help="train the learning-from-demonstrations run configs, into their own table")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per level")
    parser.add_argument("--rerun", type=int, action="append", default=[], metavar="SEED",
                        help="of the --seeds, retrain only this one (repeatable); the others keep their recorded runs")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=None, help="override every time budget (smoke runs)")
    parser.add_argument("--steps", type=int, default=None, help="override every step budget (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-learning", help="run directories")
    parser.add_argument("--stem", default=None,
                        help="output file names STEM.md, STEM.json, STEM-LEVEL.png (default: learning, or "
                             "learning-demonstrations)")
    parser.add_argument("--replot", action="store_true", help="re-render STEM.md and the plots from STEM.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config field in every run, as `townlet train --set` (recorded)")
    parser.add_argument("--concurrent", type=int, default=1,
                        help="runs at once (default 1: each gets the whole machine, as the wall-clock budgets assume)")
    parser.add_argument("--address", default=None, help="run on this Ray cluster (auto, ray://host:10001)")
    args = parser.parse_args(argv)
    stem = args.stem or ("learning-demonstrations" if args.demonstrations else "learning")
    title = "Learning from demonstrations" if args.demonstrations else "Learning from the level's reward"
    if args.replot:
        data = json.loads((args.out / f"{stem}.json").read_text())
        for path in write_results(args.out, stem, data["title"], data["runs"], data["rows"], data["command"],
                                  notes=baseline_note(data["rows"]), machine_note=data["machine"], date=data["date"]):
            print(f"wrote {path}")
        return 0
    levels = list(BUDGETS) if args.level == "all" else [args.level]
    if args.demonstrations:
        levels = [level for level in levels if level in DEMONSTRATIONS]
        if not levels:
            parser.error(f"--demonstrations: {args.level} has no such run config; levels: {', '.join(DEMONSTRATIONS)}")
    overrides = parse_overrides(args.overrides)
    if any(not 0 <= seed < args.seeds for seed in args.rerun):
        parser.error(f"--rerun: seeds must be among the --seeds 0 .. {args.seeds - 1}, got {args.rerun}")
    if args.concurrent < 1:
        parser.error(f"--concurrent: at least 1, got {args.concurrent}")
    records = kept_records(args.out / f"{stem}.json", levels, args.budget, args.rerun)
    trials = []
    for level in levels:
        budget = BUDGETS[level]
        config = DEMONSTRATIONS[level] if args.demonstrations else level
        for seed in sorted(set(args.rerun)) or range(args.seeds):
            if args.budget == "time":
                trials.append(Trial(level, config, seed, args.minutes or budget.minutes, overrides))
            else:
                trials.append(Trial(level, config, seed, None, overrides, steps=args.steps or budget.steps))
            print(f"{config} seed {seed}: training {budget_label(vars(trials[-1]))}", flush=True)
    outcome = execute(trials, args.runs, episodes=args.episodes, concurrent=args.concurrent, address=args.address,
                      before_training=machine_speed)
    for record in outcome.records:
        ev = record["eval"]
        print(f"{record['level']} seed {record['seed']}: greedy mean {ev['survival_mean']:.1f}, cap rate "
              f"{ev['cap_rate']:.1%}, {record['env_steps']:,} steps in {record['train_s'] / 60:.1f} min, "
              f"{record['updates']:,} updates", flush=True)
    for failed in outcome.failed:
        print(f"{failed['level']} seed {failed['seed']}: FAILED: {failed['error']}", flush=True)
    records += outcome.records
    if not records:
        return 1
    records.sort(key=lambda r: (list(BUDGETS).index(r["name"]), r.get("steps") is not None, r["seed"]))
    rows = summarize(records, {level: b.goal for level, b in BUDGETS.items()})
    for row in rows:
        random = scripted_stats(load_level(row["name"]), args.episodes, 250, 12345)["random"]
        row["random_mean"] = random["survival_mean"]
        row["vs_random"] = row["survival_mean"] / random["survival_mean"]
    command = "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_results(args.out, stem, title, records, rows, command, notes=baseline_note(rows)):
        print(f"wrote {path}")
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
