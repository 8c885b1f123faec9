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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from townlet.train.checkpoint import atomic_write, atomic_write_text
from townlet.train.config import load_run_config
from townlet.train.evaluate import evaluate
from townlet.train.metrics import read_metrics
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
    """One training run: a named variant of a level's default run config, one seed, one budget."""

    name: str
    level: str
    seed: int
    minutes: float
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return f"{self.name}-seed{self.seed}"


def run_trial(
    trial: Trial, runs_dir: Path, episodes: int = 1000, eval_seed: int = 12345,
    machine_speed: Callable[[int], float | None] | None = None,
) -> dict[str, Any]:
    """Train `trial` from scratch (an old run directory of the same name is replaced) and evaluate it.

    `machine_speed(agents)`, measured just before training, is recorded as `yardstick_steps_per_s`: a
    wall-clock budget buys as much compute as the machine gives at that moment, so results say how fast it was.
    """
    overrides = {**trial.overrides, "seed": trial.seed, "minutes": trial.minutes, "steps": None}
    config = load_run_config(trial.level, overrides, source_note="experiment overrides")
    speed = machine_speed(config.agents) if machine_speed is not None else None
    run_dir = Path(runs_dir) / trial.run_name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    trainer = Trainer(config, run_dir)
    start = time.perf_counter()
    trainer.run()
    train_s = time.perf_counter() - start
    result = evaluate(run_dir, episodes=episodes, seed=eval_seed, scripted=False)
    return {
        **asdict(trial),
        "run_dir": str(run_dir),
        "train_s": train_s,
        "env_steps": trainer.env_steps,
        "updates": trainer.algorithm.metrics()["updates"],
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "yardstick_steps_per_s": speed,
        "eval": {k: v for k, v in result.items() if k not in ("checkpoint", "level")},
    }


def summarize(records: list[dict[str, Any]], goals: dict[str, Goal] | None = None) -> list[dict[str, Any]]:
    """One row per trial name (seeds pooled): mean across seeds with its 95% CI, cap rate, steps, time."""
    goals = goals or {}
    rows = []
    for name in dict.fromkeys(r["name"] for r in records):
        group = [r for r in records if r["name"] == name]
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


def markdown_table(rows: list[dict[str, Any]], baselines: dict[str, float] | None = None) -> str:
    """The results table; `baselines` (name -> mean) adds a column of the ratio against each row's baseline."""
    head = (
        "| run | level | budget | seeds | greedy mean survival ± 95% CI | median | cap rate | goal | env steps "
        "| updates |"
    )
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    if baselines:
        head += " this run's mean ÷ each other's |"
        sep += "---|"
    lines = [head, sep]
    for r in rows:
        ci = "n/a" if math.isnan(r["ci95_half"]) else f"{r['ci95_half']:.1f}"
        goal = "—"
        if "goal" in r:
            goal = f"{r['goal']}: {'met' if r['goal_met'] else 'not met'}"
        line = (
            f"| {r['name']} | {r['level']} | {r['minutes']:g} min | {len(r['seeds'])} | "
            f"{r['survival_mean']:.1f} ± {ci} ({r['ci_over']}) | {r['survival_median']:.0f} | {r['cap_rate']:.1%} | "
            f"{goal} | {r['env_steps'] / 1e6:.1f} M | {r['updates']:,.0f} |"
        )
        if baselines:
            ref = r["survival_mean"]
            line += " " + ", ".join(f"{ref / v:.2f}× {k}" for k, v in baselines.items() if k != r["name"]) + " |"
        lines.append(line)
    return "\n".join(lines)


def training_curve(run_dir: Path, window: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(minutes, rolling mean survival of the last `window` finished training episodes) of a run; the wall
    time of each episode is interpolated from the learner rows (step, wall_s)."""
    episodes, learner = read_metrics(run_dir)
    if not episodes or not learner:
        return np.zeros(0), np.zeros(0)
    steps = np.array([e["step"] for e in episodes], dtype=np.float64)
    lengths = np.array([e["length"] for e in episodes], dtype=np.float64)
    l_steps = np.array([0.0] + [r["step"] for r in learner])
    l_wall = np.array([0.0] + [r["wall_s"] for r in learner])
    minutes = np.interp(steps, l_steps, l_wall) / 60
    w = max(1, min(window, len(lengths)))
    csum = np.concatenate([[0.0], np.cumsum(lengths)])
    idx = np.arange(w - 1, len(lengths))
    return minutes[idx], (csum[idx + 1] - csum[idx + 1 - w]) / w


def _draw_curves(ax: Any, records: list[dict[str, Any]], title: str, cap: int) -> None:
    colors: dict[str, str] = {}
    for r in records:
        color = colors.setdefault(r["name"], f"C{len(colors)}")
        run_dir = Path(r["run_dir"])
        # runs/ is not committed: a replot elsewhere, or after a run directory was reused, shows the star only
        x, y = training_curve(run_dir) if (run_dir / "metrics.sqlite").exists() else ([], [])
        if len(x):
            ax.plot(x, y, color=color, lw=1.6, label=f"{r['name']} (seed {r['seed']})")
        ax.plot([r["minutes"]], [r["eval"]["survival_mean"]], marker="*", ms=13, color=color, ls="none")
    ax.axhline(cap, color="grey", lw=0.8, alpha=0.6)
    ax.set(title=title, xlabel="wall-clock minutes of training", ylabel="ticks survived", ylim=(0, cap * 1.05))
    ax.plot([], [], marker="*", ms=11, color="black", ls="none", label="greedy evaluation")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_curves(records: list[dict[str, Any]], title: str, cap: int = 500) -> bytes:
    """Training survival (mean of the last 200 episodes) against wall-clock minutes, one line per run, the
    greedy evaluation at the end of each budget as a star."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.8), dpi=100, layout="constrained")
    _draw_curves(fig.subplots(), records, title, cap)
    return _png(fig)


def plot_overview(records: list[dict[str, Any]], title: str, cap: int = 500) -> bytes:
    """One panel per level, side by side, for the README."""
    from matplotlib.figure import Figure

    levels = list(dict.fromkeys(r["level"] for r in records))
    cols = min(2, len(levels))
    rows = -(-len(levels) // cols)
    fig = Figure(figsize=(6 * cols, 3.8 * rows), dpi=100, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, level in zip(axes, levels, strict=False):
        _draw_curves(ax, [r for r in records if r["level"] == level], level, cap)
    for ax in axes[len(levels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _png(fig)


def write_results(
    out_dir: Path, stem: str, title: str, records: list[dict[str, Any]], rows: list[dict[str, Any]],
    command: str, baselines: dict[str, float] | None = None, notes: str = "", machine_note: str | None = None,
    date: str | None = None,
) -> list[Path]:
    """`<stem>.json`, `<stem>.md`, one `<stem>-<level>.png` curve per level and, for several levels, an
    overview `<stem>.png` with one panel each; all written atomically."""
    out_dir = Path(out_dir)
    written = []
    if len({r["level"] for r in records}) > 1:
        png = plot_overview(records, title)
        atomic_write(out_dir / f"{stem}.png", lambda tmp: tmp.write_bytes(png))
        written.append(out_dir / f"{stem}.png")
    for level in dict.fromkeys(r["level"] for r in records):
        png = plot_curves([r for r in records if r["level"] == level], f"{title}: {level}")
        path = out_dir / f"{stem}-{level}.png"
        atomic_write(path, lambda tmp, data=png: tmp.write_bytes(data))
        written.append(path)
    when = date or time.strftime("%Y-%m-%d %H:%M")
    where = machine_note or machine()
    payload = {"title": title, "command": command, "machine": where, "date": when, "notes": notes, "rows": rows,
               "runs": records}
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(payload, indent=2, default=float) + "\n")
    md = [f"# {title}", "", f"`{command}` on {where}, {when}.", "", markdown_table(rows, baselines), ""]
    if notes:
        md += [notes, ""]
    finished = [f"{r['name']} seed {r['seed']} {r['finished']}" for r in records if "finished" in r]
    if finished:
        md += ["Runs finished: " + ", ".join(finished) + ".", ""]
    speeds = [f"{r['name']} seed {r['seed']} {r['yardstick_steps_per_s']:,.0f}" for r in records
              if r.get("yardstick_steps_per_s")]
    if speeds:
        md += ["Machine speed just before each run (the plain batched-world yardstick in ../shared/bench, "
               "agent-steps/s at the run's number of agents): " + ", ".join(speeds) + ".", ""]
    md += [f"![{p.stem}]({p.name})" for p in written]
    atomic_write_text(out_dir / f"{stem}.md", "\n".join(md) + "\n")
    return [out_dir / f"{stem}.json", out_dir / f"{stem}.md", *written]
