"""Timed learning experiments: train under a wall-clock budget, evaluate greedily at full difficulty, and
write the results table (Markdown + JSON) and learning curves. Used by `benchmarks/learning.py` and
`benchmarks/memory_ablation.py`; every file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from townlet.train.checkpoint import atomic_write, atomic_write_text
from townlet.train.config import RunConfig, load_run_config
from townlet.train.evaluate import evaluate
from townlet.train.logbook import Progress
from townlet.train.metrics import read_metrics
from townlet.train.rundir import CHECKPOINTS, list_checkpoints, open_run
from townlet.train.runner import Trainer
from townlet.world.evaluate import mean_ci95


@dataclass(frozen=True)
class Goal:
    """`metric` (survival_mean or cap_rate) of the greedy evaluation must reach `threshold`."""

    metric: str
    threshold: float

    def met(self, value: float) -> bool:
        return value >= self.threshold

    def describe(self) -> str:
        if self.metric == "cap_rate":
            return f"cap rate >= {self.threshold:.0%}"
        return f"mean survival >= {self.threshold:g}"


@dataclass
class Trial:
    """One training run: a named variant of a level's default run config, one seed, one budget (wall-clock
    `minutes` or agent-`steps`; exactly one)."""

    name: str
    level: str
    seed: int
    minutes: float | None
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None

    def __post_init__(self) -> None:
        if (self.minutes is None) == (self.steps is None):
            raise ValueError(f"trial {self.name!r}: give exactly one budget, minutes or steps")

    @property
    def run_name(self) -> str:
        return f"{self.name}-seed{self.seed}"


def budget_label(record: dict[str, Any]) -> str:
    """'15 min' or '20 M steps': the budget a trial record (or results row) trained under."""
    if record.get("steps") is not None:
        return f"{record['steps'] / 1e6:g} M steps"
    return f"{record['minutes']:g} min"


_NOT_RESULTS = ("checkpoint", "checkpoint_step", "skipped_checkpoints", "level")  # where, not how well


def trial_config(trial: Trial) -> RunConfig:
    """The resolved run config of `trial`: its run config with its overrides, seed and budget."""
    overrides = {**trial.overrides, "seed": trial.seed, "minutes": trial.minutes, "steps": trial.steps}
    return load_run_config(trial.level, overrides, source_note="experiment overrides")


def run_trial(
    trial: Trial, runs_dir: Path, episodes: int = 1000, eval_seed: int = 12345,
    machine_speed: Callable[[int], float | None] | None = None,
) -> dict[str, Any]:
    """Train `trial` from scratch in this process (an old run directory of the same name is replaced) and
    evaluate it; the record of `train_and_evaluate`."""
    run_dir = Path(runs_dir) / trial.run_name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train_and_evaluate(trial, run_dir, trial_config(trial), episodes, eval_seed, machine_speed)


def train_and_evaluate(
    trial: Trial, run_dir: Path, config: RunConfig, episodes: int = 1000, eval_seed: int = 12345,
    machine_speed: Callable[[int], float | None] | None = None,
    on_interval: Callable[[dict[str, float | None]], None] | None = None,
) -> dict[str, Any]:
    """Train `trial` (resolved as `config`) in `run_dir`, continuing from its newest checkpoint if it has one,
    evaluate the greedy agent over `episodes` episodes, and return the trial's record.

    A wall-clock budget counts every session of the run, so a trial resumed after a crash trains only for what
    its budget has left. `machine_speed(agents)`, measured just before training, is recorded as
    `yardstick_steps_per_s`: a wall-clock budget buys as much compute as the machine gives at that moment, so
    results say how fast it was. `on_interval` gets each log interval's learner row.
    """
    run_dir = Path(run_dir)
    resumed_from = None
    if list_checkpoints(run_dir / CHECKPOINTS):
        trainer = open_run(run_dir).resume()
        resumed_from = trainer.env_steps
    else:
        if run_dir.exists():  # killed before its first checkpoint: nothing to continue from
            shutil.rmtree(run_dir)
        trainer = Trainer(config, run_dir)
    speed = machine_speed(config.agents) if machine_speed is not None else None
    budget_s = config.minutes * 60 if config.minutes is not None and config.steps is None else None

    def stop_at_budget(p: Progress) -> None:
        if budget_s is not None and p.elapsed_s >= budget_s:
            trainer.request_stop()

    spent = budget_s is not None and trainer.elapsed_before >= budget_s
    if not spent:
        trainer.run(on_progress=stop_at_budget, progress_every_s=0.5, on_interval=on_interval)
    result = evaluate(run_dir, episodes=episodes, seed=eval_seed, scripted=False)
    curve = training_curve(run_dir)
    keep = np.unique(np.linspace(0, len(curve["survival"]) - 1, min(len(curve["survival"]), 300)).astype(int))
    return {
        **asdict(trial),
        "run_dir": str(run_dir),
        "train_s": trainer.elapsed_before,
        "env_steps": trainer.env_steps,
        "updates": trainer.algorithm.metrics()["updates"],
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "yardstick_steps_per_s": speed,
        "train_survival": trainer.logbook.survival()[0],
        "resumed_from": resumed_from,
        "eval": {k: v for k, v in result.items() if k not in _NOT_RESULTS},
        # the curve travels with the record: run directories are not committed, plots are redrawn without them
        "curve": {k: [round(float(x), 3) for x in v[keep]] for k, v in curve.items()} if len(keep) else {},
    }


def summarize(records: list[dict[str, Any]], goals: dict[str, Goal] | None = None) -> list[dict[str, Any]]:
    """One row per trial name and budget (seeds pooled): mean across seeds with its 95% CI, cap rate, steps,
    time."""
    goals = goals or {}
    rows = []
    for name, budget in dict.fromkeys((r["name"], budget_label(r)) for r in records):
        group = [r for r in records if (r["name"], budget_label(r)) == (name, budget)]
        means = [r["eval"]["survival_mean"] for r in group]
        mean, half = mean_ci95(means)  # across seeds
        if len(group) == 1:  # one seed: the interval over its evaluation episodes
            lo, hi = group[0]["eval"]["survival_ci95"]
            half, ci_kind = (hi - lo) / 2, "episodes"
        else:
            ci_kind = "seeds"
        row = {
            "name": name,
            "level": group[0]["level"],
            "seeds": [r["seed"] for r in group],
            "minutes": group[0]["minutes"],
            "steps": group[0].get("steps"),
            "survival_mean": mean,
            "ci95_half": half,
            "ci_over": ci_kind,
            "per_seed_mean": means,
            "survival_median": float(np.mean([r["eval"]["survival_median"] for r in group])),
            "cap_rate": float(np.mean([r["eval"]["cap_rate"] for r in group])),
            "episodes": int(sum(r["eval"]["episodes"] for r in group)),
            "env_steps": float(np.mean([r["env_steps"] for r in group])),
            "updates": float(np.mean([r["updates"] for r in group])),
            "train_s": float(np.mean([r["train_s"] for r in group])),
        }
        goal = goals.get(name)
        if goal is not None:
            row["goal"] = goal.describe()
            row["goal_met"] = goal.met(row[goal.metric])
        rows.append(row)
    return rows


def machine() -> str:
    """CPU model, cores, torch threads and version: where the figures were measured."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def markdown_table(rows: list[dict[str, Any]], compare: bool = False) -> str:
    """The results table; `compare` adds a column of each row's mean over every other row's at the same budget."""
    head = (
        "| run | level | budget | seeds | greedy mean survival ± 95% CI | median | cap rate | goal | env steps "
        "| updates |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    if compare:
        head += " this run's mean ÷ each other's |"
        sep += "---|"
    lines = [head, sep]
    for r in rows:
        ci = "n/a" if math.isnan(r["ci95_half"]) else f"{r['ci95_half']:.1f}"
        goal = "—"
        if "goal" in r:
            goal = f"{r['goal']}: {'met' if r['goal_met'] else 'not met'}"
        line = (
            f"| {r['name']} | {r['level']} | {budget_label(r)} | {len(r['seeds'])} | "
            f"{r['survival_mean']:.1f} ± {ci} ({r['ci_over']}) | {r['survival_median']:.0f} | {r['cap_rate']:.1%} | "
            f"{goal} | {r['env_steps'] / 1e6:.1f} M | {r['updates']:,.0f} |"
        )
        if compare:
            others = [o for o in rows if o["name"] != r["name"] and budget_label(o) == budget_label(r)]
            ratios = (f"{r['survival_mean'] / o['survival_mean']:.2f}× {o['name']}" for o in others)
            line += " " + ", ".join(ratios) + " |"
        lines.append(line)
    return "\n".join(lines)


def training_curve(run_dir: Path, window: int = 200) -> dict[str, np.ndarray]:
    """A run's learning curve: `survival` (rolling mean of the last `window` finished training episodes) at
    agent-`steps` and wall-clock `minutes`; each episode's wall time is interpolated from the learner rows."""
    episodes, learner = read_metrics(run_dir)
    if not episodes or not learner:
        return {"minutes": np.zeros(0), "steps": np.zeros(0), "survival": np.zeros(0)}
    steps = np.array([e["step"] for e in episodes], dtype=np.float64)
    lengths = np.array([e["length"] for e in episodes], dtype=np.float64)
    l_steps = np.array([0.0] + [r["step"] for r in learner])
    l_wall = np.array([0.0] + [r["wall_s"] for r in learner])
    minutes = np.interp(steps, l_steps, l_wall) / 60
    w = max(1, min(window, len(lengths)))
    csum = np.concatenate([[0.0], np.cumsum(lengths)])
    idx = np.arange(w - 1, len(lengths))
    return {"minutes": minutes[idx], "steps": steps[idx], "survival": (csum[idx + 1] - csum[idx + 1 - w]) / w}


def record_curve(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The curve stored in a trial record, or read from its run directory for records made before curves were
    stored; empty when neither exists."""
    if record.get("curve"):
        return {k: np.asarray(v, dtype=np.float64) for k, v in record["curve"].items()}
    run_dir = Path(record["run_dir"])
    if (run_dir / "metrics.sqlite").exists():
        return training_curve(run_dir)
    return {"minutes": np.zeros(0), "steps": np.zeros(0), "survival": np.zeros(0)}


def run_label(record: dict[str, Any], among: list[dict[str, Any]], name: bool = True) -> str:
    """'L2_partial seed 0', with the budget added ('seed 0 (15 min)') when `among` mixes budgets, so the runs of
    one seed at both budgets are told apart; `name=False` leaves the name out when `among` has only one."""
    label = f"seed {record['seed']}"
    if name or len({r["name"] for r in among}) > 1:
        label = f"{record['name']} {label}"
    if len({budget_label(r) for r in among}) > 1:
        label += f" ({budget_label(record)})"
    return label


def _draw_curves(ax: Any, records: list[dict[str, Any]], title: str, cap: int, x_axis: str = "minutes") -> None:
    """Each run (name and seed) in its own colour, its greedy evaluation as a star at the end of its budget."""
    for i, r in enumerate(records):
        color = f"C{i % 10}"
        curve = record_curve(r)
        scale = 1e6 if x_axis == "steps" else 1.0
        end = (r["env_steps"] if x_axis == "steps" else r["train_s"] / 60) / scale
        label = run_label(r, records, name=False)
        if len(curve["survival"]):
            ax.plot(curve[x_axis] / scale, curve["survival"], color=color, lw=1.4, label=label)
        else:
            label += " (no curve recorded)"
        ax.plot([end], [r["eval"]["survival_mean"]], marker="*", ms=13, color=color, ls="none",
                label=None if len(curve["survival"]) else label)
    ax.axhline(cap, color="grey", lw=0.8, alpha=0.6)
    xlabel = "agent-steps of training (millions)" if x_axis == "steps" else "wall-clock minutes of training"
    ax.set(title=title, xlabel=xlabel, ylabel="ticks survived", ylim=(0, cap * 1.05), xlim=(0, None))
    ax.plot([], [], marker="*", ms=11, color="black", ls="none", label="greedy evaluation")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_overview(records: list[dict[str, Any]], title: str, cap: int = 500) -> bytes:
    """One row per level: survival against wall-clock minutes (left) and against agent-steps (right)."""
    from matplotlib.figure import Figure

    levels = list(dict.fromkeys(r["level"] for r in records))
    fig = Figure(figsize=(12, 3.8 * len(levels)), dpi=100, layout="constrained")
    axes = fig.subplots(len(levels), 2, squeeze=False)
    for (by_time, by_steps), level in zip(axes, levels, strict=True):
        group = [r for r in records if r["level"] == level]
        _draw_curves(by_time, group, level, cap, "minutes")
        _draw_curves(by_steps, group, level, cap, "steps")
    fig.suptitle(title)
    return _png(fig)


def write_results(
    out_dir: Path, stem: str, title: str, records: list[dict[str, Any]], rows: list[dict[str, Any]],
    command: str, compare: bool = False, notes: str = "", machine_note: str | None = None,
    date: str | None = None,
) -> list[Path]:
    """`<stem>.json`, `<stem>.md`, one `<stem>-<level>.png` of curves per level and, for several levels, an
    overview `<stem>.png` with a row each; all written atomically."""
    out_dir = Path(out_dir)
    written = []
    if len({r["level"] for r in records}) > 1:
        png = plot_overview(records, title)
        atomic_write(out_dir / f"{stem}.png", lambda tmp: tmp.write_bytes(png))
        written.append(out_dir / f"{stem}.png")
    for level in dict.fromkeys(r["level"] for r in records):
        png = plot_overview([r for r in records if r["level"] == level], f"{title}: {level}")
        path = out_dir / f"{stem}-{level}.png"
        atomic_write(path, lambda tmp, data=png: tmp.write_bytes(data))
        written.append(path)
    when = date or time.strftime("%Y-%m-%d %H:%M")
    where = machine_note or machine()
    payload = {"title": title, "command": command, "machine": where, "date": when, "notes": notes, "rows": rows,
               "runs": records}
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(payload, indent=2, default=float) + "\n")
    md = [f"# {title}", "", f"`{command}` on {where}, {when}.", "", markdown_table(rows, compare), ""]
    if notes:
        md += [notes, ""]
    finished = [f"{run_label(r, records)} {r['finished']}" for r in records if "finished" in r]
    if finished:
        md += ["Runs finished: " + ", ".join(finished) + ".", ""]
    speeds = [f"{run_label(r, records)} {r['yardstick_steps_per_s']:,.0f}" for r in records
              if r.get("yardstick_steps_per_s")]
    if speeds:
        md += ["Machine speed just before each run (the plain batched-world yardstick in ../shared/bench, "
               "agent-steps/s at the run's number of agents): " + ", ".join(speeds) + ".", ""]
    md += [f"![{p.stem}]({p.name})" for p in written]
    atomic_write_text(out_dir / f"{stem}.md", "\n".join(md) + "\n")
    return [out_dir / f"{stem}.json", out_dir / f"{stem}.md", *written]
