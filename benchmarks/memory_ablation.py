"""Memory ablation: does the LSTM agent's memory matter? Three agents, same level, budget and seeds:

- `lstm`: the level's default run config (R2D2: LSTM, stored start state, burn-in);
- `no-memory`: the same learner and encoders with a Linear core in place of the LSTM, so each Q-value sees
  the current observation only (`network.kind=feedforward`);
- `zero-state`: the LSTM learner with a zero start state for every training sequence and no burn-in (the
  seed-era method: `replay.stored_state=false`, `replay.burn_in=0`).

The LSTM agent should beat both by >= 30% in mean greedy survival; the table gives each ratio. The notes
also give each recurrent agent's survival with its memory wiped before every step (the same trained net acting
on the current observation alone), which says how much the trained agent itself relies on what it remembers.

    python benchmarks/memory_ablation.py [--level L2_partial] [--minutes 15 | --steps 20000000] [--seeds 1]
        [--episodes 1000] [--lstm-from benchmarks/results/learning.json] [--concurrent 1] [--address ADDRESS]

Every variant learns from the level's reward alone when the level's default run config does (it is the
`lstm` variant; the others change only the memory).

`--lstm-from` takes the `lstm` runs from a `benchmarks/learning.py` results file instead of training them
again: those are the same default config, level, seeds and budget (checked), so this saves one run per seed.
`--rerun SEED` trains only that seed (repeatable) and keeps the other seeds' runs of every variant from the
level's earlier results file, so a seed can be added without retraining the others. `--replot` rewrites the
level's Markdown, plots and ratios from its results JSON without training.

The runs are Ray Tune trials (`townlet.train.sweep`), one at a time by default (a wall-clock budget is what one
run gets from the whole machine); `--concurrent K` runs share its cores, and `--address` runs them on a Ray
cluster (every node must see the `--runs` directory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from townlet.config_files import deep_merge
from townlet.train import open_run
from townlet.train.config import parse_overrides
from townlet.train.evaluate import greedy_stats
from townlet.train.experiment import Trial, budget_label, run_label, summarize, write_results
from townlet.train.sweep import SweepOutcome, run_trials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_throughput import machine_speed  # sibling benchmark script

VARIANTS = {
    "lstm": {},
    "no-memory": {"network": {"kind": "feedforward"}},
    "zero-state": {"replay": {"stored_state": False, "burn_in": 0}},
}


def same_budget(record: dict, minutes: float | None, steps: int | None) -> bool:
    return record["minutes"] == minutes and record.get("steps") == steps


def kept_records(path: Path, level: str, minutes: float | None, rerun: list[int],
                 steps: int | None = None) -> dict[tuple[str, int], dict]:
    """The runs of an earlier results file for this level and budget whose seeds are not retrained, by
    (variant, seed)."""
    if not path.exists():
        return {}
    return {(r["name"], r["seed"]): r for r in json.loads(path.read_text())["runs"]
            if r["level"] == level and same_budget(r, minutes, steps) and r["seed"] not in rerun}


def untouched_records(path: Path, level: str, minutes: float | None, steps: int | None,
                      variants: list[str]) -> list[dict]:
    """The runs of an earlier results file for this level that this call leaves alone: the other budget's, and
    at this budget the variants it does not run, so one file holds the level's ablation at both budgets."""
    if not path.exists():
        return []
    return [r for r in json.loads(path.read_text())["runs"] if r["level"] == level
            and (not same_budget(r, minutes, steps) or r["name"] not in variants)]


def fill_memory_wiped(record: dict, agents: int = 250) -> None:
    """Add `eval.memory_wiped` to a recurrent run's record that predates it, if its run directory is still there."""
    result = record["eval"]
    if "memory_wiped" in result or not (Path(record["run_dir"]) / "checkpoints").is_dir():
        return
    run = open_run(Path(record["run_dir"]))
    policy, episodes = run.policy(), result["episodes"]
    if policy.memory:
        result["memory_wiped"] = greedy_stats(policy, run.level, episodes, min(agents, episodes), result["seed"],
                                              wipe_memory=True)


def ratio_interval(records: list[dict], budget: str, other: str, rounds: int = 10_000,
                   seed: int = 0) -> tuple[float, float, int] | None:
    """A 95% paired bootstrap interval of mean(lstm) / mean(`other`) at `budget`, over the seeds both variants ran
    (resampled with replacement, the two variants' runs kept together by seed), and how many seeds that is.

    Seeds can differ more than variants do, so a ratio of means needs its spread beside it. None with fewer
    than two shared seeds."""
    by_seed: dict[str, dict[int, float]] = {"lstm": {}, other: {}}
    for r in records:
        if r["name"] in by_seed and budget_label(r) == budget:
            by_seed[r["name"]][r["seed"]] = r["eval"]["survival_mean"]
    seeds = sorted(by_seed["lstm"].keys() & by_seed[other].keys())
    if len(seeds) < 2:
        return None
    lstm = torch.tensor([by_seed["lstm"][s] for s in seeds], dtype=torch.float64)
    rest = torch.tensor([by_seed[other][s] for s in seeds], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(seeds), (rounds, len(seeds)), generator=gen)
    ratios = lstm[pick].mean(dim=1) / rest[pick].mean(dim=1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return low, high, len(seeds)


def ratio_text(records: list[dict], budget: str, other: str, ratio: float) -> str:
    """'<ratio>× <other> (95% interval <low>–<high>, paired bootstrap over <n> seeds)', or without the interval."""
    interval = ratio_interval(records, budget, other)
    if interval is None:
        return f"{ratio:.2f}× {other}"
    low, high, seeds = interval
    return f"{ratio:.2f}× {other} (95% interval {low:.2f}–{high:.2f}, paired bootstrap over {seeds} seeds)"


def memory_wiped_note(records: list[dict]) -> str:
    """One sentence: each recurrent variant's greedy mean with and without its memory wiped, by seed."""
    parts = []
    for name in dict.fromkeys(r["name"] for r in records):
        runs = [r for r in records if r["name"] == name and "memory_wiped" in r["eval"]]
        if runs:  # "seed 0", or "seed 0 (15 min)" when this variant's runs mix budgets
            parts.append(f"{name} " + ", ".join(
                f"{run_label(r, runs, name=False)} {r['eval']['memory_wiped']['survival_mean']:.1f} "
                f"(against {r['eval']['survival_mean']:.1f})" for r in runs))
    if not parts:
        return ""
    return ("The same trained agents with their memory wiped before every step (acting on the current "
            "observation alone): " + "; ".join(parts) + ".")


def main(argv: list[str] | None = None, execute: Callable[..., SweepOutcome] = run_trials) -> int:
    """`execute(trials, runs_dir, **options)` trains and evaluates the trials (`townlet.train.sweep.run_trials`)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", default="L2_partial")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default 15)")
    parser.add_argument("--steps", type=int, default=None, help="agent-step budget (instead of --minutes)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1 per variant")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "bench-ablation", help="run directories")
    parser.add_argument("--lstm-from", type=Path, default=None, help="reuse lstm runs from a learning.json")
    parser.add_argument("--rerun", type=int, action="append", default=[], metavar="SEED",
                        help="of the --seeds, train only this one (repeatable); keep the others' recorded runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config field in every variant, as `townlet train --set`")
    parser.add_argument("--replot", action="store_true",
                        help="rewrite the level's results Markdown, plots and ratios from its JSON, without training")
    parser.add_argument("--concurrent", type=int, default=1,
                        help="runs at once (default 1: each gets the whole machine, as the wall-clock budgets assume)")
    parser.add_argument("--address", default=None, help="run on this Ray cluster (auto, ray://host:10001)")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.steps is not None:
        parser.error("give one budget: --minutes or --steps")
    if args.minutes is None and args.steps is None:
        args.minutes = 15.0
    if any(not 0 <= seed < args.seeds for seed in args.rerun):
        parser.error(f"--rerun: seeds must be among the --seeds 0 .. {args.seeds - 1}, got {args.rerun}")
    if args.concurrent < 1:
        parser.error(f"--concurrent: at least 1, got {args.concurrent}")
    extra = parse_overrides(args.overrides)
    stem = f"memory-ablation-{args.level}"
    if args.replot:
        for path in replot(args.out, stem):
            print(f"wrote {path}")
        return 0
    kept = kept_records(args.out / f"{stem}.json", args.level, args.minutes, args.rerun, args.steps)
    kept = kept if args.rerun else {}
    reused = {}
    if args.lstm_from is not None:
        for run in json.loads(args.lstm_from.read_text())["runs"]:
            if run["level"] == args.level and same_budget(run, args.minutes, args.steps) and run["overrides"] == extra:
                reused[run["seed"]] = {**run, "name": "lstm"}
    planned: list[dict | Trial] = []  # in table order: recorded runs kept as they are, and runs to train
    for seed in range(args.seeds):
        for name in args.variants:
            if args.rerun and seed not in args.rerun:
                if (name, seed) not in kept:
                    parser.error(f"--rerun: no recorded {name} run of seed {seed} in {args.out / (stem + '.json')}")
                print(f"{name} seed {seed}: keeping {kept[name, seed]['run_dir']}", flush=True)
                planned.append(kept[name, seed])
                continue
            if name == "lstm" and seed in reused:
                print(f"lstm seed {seed}: reusing {reused[seed]['run_dir']} from {args.lstm_from}", flush=True)
                planned.append(reused[seed])
                continue
            trial = Trial(name, args.level, seed, args.minutes, deep_merge(extra, VARIANTS[name]), args.steps)
            print(f"{name} seed {seed}: training {args.level} for {budget_label(vars(trial))}", flush=True)
            planned.append(trial)
    trials = [p for p in planned if isinstance(p, Trial)]
    outcome = execute(trials, args.runs, episodes=args.episodes, concurrent=args.concurrent, address=args.address,
                      before_training=machine_speed) if trials else SweepOutcome()
    trained = {(r["name"], r["seed"]): r for r in outcome.records}
    for record in outcome.records:
        print(f"{record['name']} seed {record['seed']}: greedy mean {record['eval']['survival_mean']:.1f}, "
              f"{record['env_steps']:,} steps, {record['updates']:,} updates", flush=True)
    for failed in outcome.failed:
        print(f"{failed['name']} seed {failed['seed']}: FAILED: {failed['error']}", flush=True)
    records = [p if isinstance(p, dict) else trained[p.name, p.seed] for p in planned
               if isinstance(p, dict) or (p.name, p.seed) in trained]
    if not records:
        return 1
    records += untouched_records(args.out / f"{stem}.json", args.level, args.minutes, args.steps, args.variants)
    order = list(VARIANTS)
    records.sort(key=lambda r: (r.get("steps") is not None, r["seed"], order.index(r["name"])))
    for record in records:
        fill_memory_wiped(record)
    rows = summarize(records)
    command = "python benchmarks/memory_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_results(args.out, stem, "Memory ablation", records, rows, command, compare=True,
                              notes=ablation_notes(records, rows)):
        print(f"wrote {path}")
    return 1 if outcome.failed else 0


def ablation_notes(records: list[dict], rows: list[dict]) -> str:
    """The LSTM agent against each ablation at every budget (also stored as `lstm_ratio` in `rows`), then what
    each recurrent agent is worth with its memory wiped."""
    notes = []
    for budget in dict.fromkeys(budget_label(r) for r in rows):
        means = {r["name"]: r["survival_mean"] for r in rows if budget_label(r) == budget}
        if "lstm" not in means:
            continue
        for row in rows:
            if budget_label(row) == budget:
                row["lstm_ratio"] = means["lstm"] / row["survival_mean"]
        notes.append(f"LSTM against the ablations at {budget} (goal >= 1.30× each): " + ", ".join(
            ratio_text(records, budget, name, means["lstm"] / mean) for name, mean in means.items() if name != "lstm"))
    return "\n\n".join(part for part in (*notes, memory_wiped_note(records)) if part)


def replot(out: Path, stem: str) -> list[Path]:
    """Rewrite `<stem>.md`, its plots and the ratios from `<stem>.json` as it stands, without training."""
    data = json.loads((out / f"{stem}.json").read_text())
    records = data["runs"]
    rows = summarize(records)
    return write_results(out, stem, data["title"], records, rows, data["command"], compare=True,
                         notes=ablation_notes(records, rows), machine_note=data["machine"], date=data["date"])


if __name__ == "__main__":
    raise SystemExit(main())
