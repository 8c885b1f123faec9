"""Learning results: train each level's default run config for its wall-clock budget, evaluate the greedy
agent over >= 1,000 episodes at full difficulty, and write the results table (Markdown + JSON) and learning
curves to benchmarks/results/.

Goals (2 CPU cores): L1_full 5 min -> >= 95% of episodes reach the 500-tick cap; L2_partial_fixed 10 min ->
mean >= 450; L2_partial 15 min -> mean >= 400; L3_temporal 20 min -> mean >= 350. The baseline beside each
row is the random policy, evaluated on the same episodes.

    python benchmarks/learning.py LEVEL|all [--seeds 3] [--episodes 1000] [--out benchmarks/results]

`--minutes` replaces every budget (for a quick smoke run; the goals are defined at the budgets above). Training
one level keeps the other levels' runs from the results JSON already there, so the table stays whole; each
run records when it finished.
`--replot` rewrites the Markdown and the plots from an earlier results JSON (and its run directories)
without training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from townlet.train.config import parse_overrides
from townlet.train.experiment import Goal, Trial, run_trial, summarize, write_results
from townlet.world import load_level, scripted_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_throughput import machine_speed  # sibling benchmark script

BUDGETS = {  # level: (minutes, goal)
    "L1_full": (5.0, Goal("cap_rate", 0.95)),
    "L2_partial_fixed": (10.0, Goal("survival_mean", 450)),
    "L2_partial": (15.0, Goal("survival_mean", 400)),
    "L3_temporal": (20.0, Goal("survival_mean", 350)),
}


def baseline_note(rows: list[dict]) -> str:
    return "Random valid-action policy on the same evaluation seeds (the baseline): " + ", ".join(
        f"{r['level']} {r['random_mean']:.1f} (agent {r['vs_random']:.2f}× it)" for r in rows
    )


def kept_records(path: Path, levels: list[str], rerun: list[int]) -> list[dict]:
    """The runs of an earlier results file that this call does not repeat: the other levels' runs, so training
    one level updates only its rows, and with `rerun` the seeds of these levels that are not retrained."""
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["runs"]
            if r["level"] in BUDGETS and (r["level"] not in levels or (rerun and r["seed"] not in rerun))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", choices=[*BUDGETS, "all"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per level")
    parser.add_argument("--rerun", type=int, action="append", default=[], metavar="SEED",
                        help="of the --seeds, retrain only this one (repeatable); the others keep their recorded runs")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=None, help="override every budget (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-learning", help="run directories")
    parser.add_argument("--stem", default="learning", help="output file names: STEM.md, STEM.json, STEM-LEVEL.png")
    parser.add_argument("--replot", action="store_true", help="re-render STEM.md and the plots from STEM.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config field in every run, as `townlet train --set` (recorded)")
    args = parser.parse_args(argv)
    if args.replot:
        data = json.loads((args.out / f"{args.stem}.json").read_text())
        for path in write_results(args.out, args.stem, data["title"], data["runs"], data["rows"], data["command"],
                                  notes=baseline_note(data["rows"]), machine_note=data["machine"], date=data["date"]):
            print(f"wrote {path}")
        return 0
    levels = list(BUDGETS) if args.level == "all" else [args.level]
    overrides = parse_overrides(args.overrides)
    if any(not 0 <= seed < args.seeds for seed in args.rerun):
        parser.error(f"--rerun: seeds must be among the --seeds 0 .. {args.seeds - 1}, got {args.rerun}")
    path = args.out / f"{args.stem}.json"
    records, goals = kept_records(path, levels, args.rerun), {lv: g for lv, (_, g) in BUDGETS.items()}
    for level in levels:
        minutes, _ = BUDGETS[level]
        for seed in sorted(set(args.rerun)) or range(args.seeds):
            trial = Trial(level, level, seed, args.minutes or minutes, overrides)
            print(f"{level} seed {seed}: training {trial.minutes:g} min ...", flush=True)
            record = run_trial(trial, args.runs, episodes=args.episodes, machine_speed=machine_speed)
            ev = record["eval"]
            print(f"  greedy mean {ev['survival_mean']:.1f}, cap rate {ev['cap_rate']:.1%}, "
                  f"{record['env_steps']:,} steps, {record['updates']:,} updates", flush=True)
            records.append(record)
    records.sort(key=lambda r: (list(BUDGETS).index(r["level"]), r["seed"]))
    rows = summarize(records, goals)
    for row in rows:
        random = scripted_stats(load_level(row["level"]), args.episodes, 250, 12345)["random"]
        row["random_mean"] = random["survival_mean"]
        row["vs_random"] = row["survival_mean"] / random["survival_mean"]
    command = "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_results(args.out, args.stem, "Learning results", records, rows, command,
                              notes=baseline_note(rows)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
