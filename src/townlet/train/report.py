"""A run's report: PNG plots and a Markdown summary in `RUN/report/`.

Everything is computed and rendered in memory first (metrics, evaluations, every PNG, the summary), then
written file by file with `atomic_write`, `summary.md` last: a failure or a kill before the write phase leaves
the previous report untouched, one during it leaves only whole files (new or old), never half of one.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from townlet.train.checkpoint import CheckpointError, atomic_write
from townlet.train.metrics import read_metrics
from townlet.train.rundir import checkpoint_step, open_run
from townlet.train.watch import FILE_MODE, Frame, few_threads, greedy_episode
from townlet.world import METER_NAMES, LevelConfig, survival_summary

REPORT_DIR = "report"
_CAUSE_COLORS = {"energy": "#e0a030", "health": "#d04a3c", "truncated": "#5a9e5a", "running": "#999999"}
_METER_COLORS = ("#e0a030", "#4aa3d0", "#8c6bb1", "#5a9e5a", "#e377c2", "#bcbd22", "#d04a3c", "#7f7f7f")


class ReportError(ValueError):
    """A run directory that cannot be reported on; the message says why."""


@dataclass
class Report:
    """What `build_report` wrote and the numbers it put in the summary."""

    directory: Path
    files: list[Path] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # training survival over the last episodes
    greedy: dict[str, Any] | None = None
    scripted: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoint: Path | None = None  # the checkpoint evaluated: the newest that could be read
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # newer ones that could not, and why

    @property
    def summary(self) -> Path:
        return self.directory / "summary.md"


# ---------------------------------------------------------------------- numbers
def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)


def _any_value(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> bool:
    return any(r.get(k) is not None for r in rows for k in keys)


def _present(rows: list[dict[str, Any]], key: str) -> bool:
    """Whether a metric was recorded: some value not null and not zero (runs without a curriculum or
    curiosity log stage 0 / weight 0 or nothing)."""
    return any(r.get(key) for r in rows)


def rolling(values: np.ndarray, window: int, points: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, mean, median) of the trailing `window` values, at up to `points` evenly spaced indices."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=int), np.zeros(0), np.zeros(0)
    window = max(1, min(window, n))
    idx = np.unique(np.linspace(window - 1, n - 1, min(points, n - window + 1)).round().astype(int))
    csum = np.concatenate([[0.0], np.cumsum(values)])
    mean = (csum[idx + 1] - csum[idx + 1 - window]) / window
    median = np.array([np.median(values[i + 1 - window : i + 1]) for i in idx])
    return idx, mean, median


def _window(n: int) -> int:
    return int(min(500, max(20, n // 10)))


# ---------------------------------------------------------------------- plots (each returns PNG bytes)
def _figure(rows: int = 1, height: float = 4.0, sharex: bool = True):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height * rows if rows > 1 else height), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def plot_survival(
    episodes: list[dict[str, Any]], scripted: dict[str, dict[str, Any]], greedy: dict[str, Any] | None,
    max_steps: int, final_step: int | None,
) -> bytes:
    fig, (ax,) = _figure(height=4.5)
    steps, lengths = _column(episodes, "step"), _column(episodes, "length")
    if len(lengths):
        w = _window(len(lengths))
        idx, mean, median = rolling(lengths, w)
        if len(lengths) <= 20000:
            ax.scatter(steps, lengths, s=4, alpha=0.3, color="#4a74b0", linewidths=0, label="episodes")
        ax.plot(steps[idx], mean, color="#1f4e8c", lw=2, label=f"mean (last {w} episodes)")
        ax.plot(steps[idx], median, color="#1f4e8c", lw=1.2, ls="--", label=f"median (last {w} episodes)")
    else:
        _empty(ax, "no finished episodes yet")
    styles = {"random": ("#d04a3c", ":"), "needs": ("#5a9e5a", "-."), "needs-memory": ("#8a6bb0", "-."),
              "needs-view": ("#c08a2a", "-."), "needs-explore": ("#3a8fb7", "-."),
              "needs-sweep": ("#2a9d8f", "-.")}
    for name, stats in scripted.items():
        color, ls = styles.get(name, ("grey", ":"))
        ax.axhline(stats["survival_mean"], color=color, ls=ls, lw=1.5,
                   label=f"scripted {name}: mean {stats['survival_mean']:.0f}")
    if greedy is not None and final_step:
        ax.plot([final_step], [greedy["survival_mean"]], marker="*", ms=14, color="black", ls="none",
                label=f"greedy eval: mean {greedy['survival_mean']:.0f}")
    ax.axhline(max_steps, color="grey", lw=0.8, alpha=0.6)
    ax.set(title="Survival over training (episode length)", xlabel="env steps (agent-steps)", ylabel="ticks survived")
    ax.set_ylim(0, max_steps * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    return _png(fig)


def plot_returns(episodes: list[dict[str, Any]]) -> bytes:
    fig, (ax,) = _figure()
    steps, returns = _column(episodes, "step"), _column(episodes, "return")
    if len(returns):
        w = _window(len(returns))
        idx, mean, _ = rolling(returns, w)
        if len(returns) <= 20000:
            ax.scatter(steps, returns, s=4, alpha=0.3, color="#8c6bb1", linewidths=0, label="episodes")
        ax.plot(steps[idx], mean, color="#5b3d8a", lw=2, label=f"mean (last {w} episodes)")
        ax.legend(loc="upper left", fontsize=8)
    else:
        _empty(ax, "no finished episodes yet")
    ax.set(title="Episode return over training", xlabel="env steps (agent-steps)", ylabel="return")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_learner(learner: list[dict[str, Any]]) -> bytes:
    fig, (ax_eps, ax_loss, ax_q) = _figure(rows=3, height=2.4)
    steps = _column(learner, "step")
    eps, loss, q = _column(learner, "epsilon"), _column(learner, "loss"), _column(learner, "q_mean")
    if len(steps) and not np.isnan(eps).all():
        ax_eps.plot(steps, eps, color="#e0a030", marker=".", lw=1.5)
    else:
        _empty(ax_eps, "no learner rows yet")
    ax_eps.set(title="Exploration ε, loss and mean Q over training", ylabel="ε", ylim=(0, 1.05))
    ok = ~np.isnan(loss)
    if ok.any():
        ax_loss.plot(steps[ok], loss[ok], color="#d04a3c", marker=".", lw=1.5)
        finite = loss[ok]
        if (finite > 0).all() and finite.max() / finite.min() > 20:
            ax_loss.set_yscale("log")
    else:
        _empty(ax_loss, "no updates yet (learning_starts not reached)")
    ax_loss.set(ylabel="loss")
    ok = ~np.isnan(q)
    if ok.any():
        ax_q.plot(steps[ok], q[ok], color="#4aa3d0", marker=".", lw=1.5)
    else:
        _empty(ax_q, "no updates yet")
    ax_q.set(ylabel="mean Q", xlabel="env steps (agent-steps)")
    for ax in (ax_eps, ax_loss, ax_q):
        ax.grid(alpha=0.3)
    return _png(fig)


def cause_shares(episodes: list[dict[str, Any]], buckets: int = 30) -> tuple[np.ndarray, np.ndarray, dict]:
    """(bucket edges, bucket episode counts, {cause: share per bucket}) over the episodes' end steps."""
    steps = _column(episodes, "step")
    causes = np.array([r["cause"] for r in episodes])
    b = int(max(1, min(buckets, len(steps) // 20)))
    lo, hi = (steps.min(), steps.max()) if len(steps) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, b + 1)
    which = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, b - 1)
    counts = np.bincount(which, minlength=b).astype(float)
    shares = {}
    for name in sorted(set(causes.tolist()), key=lambda c: (c == "truncated", c)):
        hits = np.bincount(which[causes == name], minlength=b).astype(float)
        shares[name] = np.divide(hits, counts, out=np.zeros(b), where=counts > 0)
    return edges, counts, shares


def plot_causes(episodes: list[dict[str, Any]]) -> bytes:
    fig, (ax,) = _figure()
    if episodes:
        edges, _, shares = cause_shares(episodes)
        width = np.diff(edges)
        bottom = np.zeros(len(width))
        for name, share in shares.items():
            ax.bar(edges[:-1], share, width=width, bottom=bottom, align="edge", label=name,
                   color=_CAUSE_COLORS.get(name), edgecolor="white", linewidth=0.3)
            bottom += share
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, title="ended by")
    else:
        _empty(ax, "no finished episodes yet")
    ax.set(title="Causes of death over training (share of episodes ending in each step bucket)",
           xlabel="env steps (agent-steps)", ylabel="share", ylim=(0, 1))
    return _png(fig)


def plot_meters(frames: list[Frame], level: LevelConfig) -> bytes:
    fig, (ax,) = _figure(height=4.5)
    ticks = [f.tick for f in frames]
    values = np.array([f.meters for f in frames])
    for i, name in enumerate(METER_NAMES):
        terminal = level.meters[name].terminal
        ax.plot(ticks, values[:, i], color=_METER_COLORS[i], lw=2.2 if terminal else 1.2,
                label=name + (" (terminal)" if terminal else ""))
    last = frames[-1]
    end = f"ended: {last.cause}" if last.done else "still alive"
    ax.set(title=f"Meters over one greedy episode on {level.name} ({last.tick} ticks, {end})", xlabel="tick",
           ylabel="meter", ylim=(-0.02, 1.02))
    if level.temporal is not None:
        day = level.temporal.day_length
        for f in frames:
            if f.hour == 0 and f.tick > 0:
                ax.axvline(f.tick, color="grey", lw=0.6, alpha=0.5)
        ax.set_xlabel(f"tick (grey lines: midnight, day = {day} ticks)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _png(fig)


def plot_stage(
    episodes: list[dict[str, Any]], learner: list[dict[str, Any]], curriculum: bool = False, curiosity: bool = False
) -> bytes | None:
    """Curriculum stage and intrinsic reward over training, or None when the run has neither: a panel is drawn
    when its feature is on (`curriculum`, `curiosity`) or its metrics hold a value other than null or 0."""
    has_stage = _present(learner, "stage_mean") or any(r.get("stage") for r in episodes)
    has_stage = has_stage or (curriculum and bool(episodes or learner))
    has_intrinsic = _present(learner, "intrinsic_weight") or _present(learner, "intrinsic_reward")
    has_intrinsic = has_intrinsic or (curiosity and _any_value(learner, ("intrinsic_weight", "intrinsic_reward")))
    if not (has_stage or has_intrinsic):
        return None
    panels = [p for p, on in (("stage", has_stage), ("intrinsic", has_intrinsic)) if on]
    fig, axes = _figure(rows=len(panels), height=2.8 if len(panels) > 1 else 4.0)
    steps = _column(learner, "step")
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "stage":
            stage = _column(learner, "stage_mean")
            ok = ~np.isnan(stage)
            if ok.any():
                ax.plot(steps[ok], stage[ok], color="#1f4e8c", marker=".", label="stage (mean over agents)")
            else:  # only the episodes table knows the stage
                ep_steps, ep_stage = _column(episodes, "step"), _column(episodes, "stage")
                idx, mean, _ = rolling(ep_stage, _window(len(ep_stage)))
                ax.plot(ep_steps[idx], mean, color="#1f4e8c", label="stage of finished episodes (rolling mean)")
            ax.set(title="Curriculum stage", ylabel="stage")
        else:
            for key, color in (("intrinsic_weight", "#e0a030"), ("intrinsic_reward", "#8c6bb1")):
                col = _column(learner, key)
                ok = ~np.isnan(col)
                if ok.any():
                    ax.plot(steps[ok], col[ok], color=color, marker=".", label=key.replace("_", " "))
            ax.set(title="Intrinsic reward", ylabel="value")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("env steps (agent-steps)")
    return _png(fig)


# ---------------------------------------------------------------------- summary
def _f(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _stats_row(name: str, s: dict[str, Any]) -> str:
    lo, hi = s.get("survival_ci95", [None, None])
    causes = ", ".join(f"{k} {v}" for k, v in s.get("causes", {}).items() if v) or "-"
    return (
        f"| {name} | {s['episodes']} | {_f(s['survival_mean'])} | {_f(s['survival_median'], '.0f')} | "
        f"{_f(s['survival_p10'], '.0f')} | {_f(lo)}–{_f(hi)} | {_f(s.get('cap_rate'), '.1%')} | "
        f"{_f(s.get('return_mean'))} | {causes} | {_f(s.get('invalid_rate'), '.2%')} |"
    )


def _feature_rows(config: Any) -> list[str]:
    rows = []
    curriculum = getattr(config, "curriculum", None)
    if curriculum is not None:
        rows.append(f"| curriculum | {curriculum.kind} |")
    curiosity = getattr(config, "curiosity", None)
    if curiosity is not None:
        state = f"{curiosity.kind}, initial weight {curiosity.weight:g}" if curiosity.enabled else "off"
        rows.append(f"| curiosity | {state} |")
    guides = getattr(config, "guides", None)
    if guides is not None:
        if guides.fraction > 0:
            state = f"{guides.fraction:.0%} of the agents follow {guides.policy} (not in the training metrics)"
        else:
            state = f"no agent follows {guides.policy}" if guides.imitation > 0 else "off"
        if guides.imitation > 0:
            what = {
                "all": "advice on every agent's steps",
                "purposeful": "advice on every agent's steps where it heads for a known place or uses one",
                "guided": "actions on the guided agents' steps",
            }[guides.imitate]
            state += (f"; the network imitates its {what} (large margin {guides.margin:g}, "
                      f"weight {guides.imitation:g})")
        rows.append(f"| guides | {state} |")
    return rows


def render_summary(
    run_dir: Path, config: Any, level: LevelConfig, checkpoint: Path | None, episodes: list[dict[str, Any]],
    learner: list[dict[str, Any]], report: Report, images: list[tuple[str, str]], meters_note: str,
) -> str:
    c = config
    net = c.network
    net_text = f"{config.algorithm}: {net.kind} {net.hidden}"
    net_text += f", core {net.lstm_hidden}" if net.kind != "mlp" else ""
    net_text += ", dueling" if net.dueling else ""
    lc, ex = c.learner, c.exploration
    last = learner[-1] if learner else {}
    ckpt_steps = checkpoint_step(checkpoint) if checkpoint else None
    trained = max([ckpt_steps or 0, int(last.get("step") or 0), *(int(e["step"]) for e in episodes[-1:])])
    budget = f"{c.steps:,} steps" if c.steps is not None else ""
    if c.minutes is not None:
        budget += (" or " if budget else "") + f"{c.minutes:g} minutes"
    lines = [
        f"# townlet report: {run_dir.name}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{run_dir}`"
        + (f", checkpoint `{checkpoint.name}`." if checkpoint else " (no checkpoint: no agent evaluation)."),
        "",
        *(["Newer checkpoints could not be read and were skipped: "
           + "; ".join(f"`{path.name}` ({why.removeprefix(str(path) + ': ')})" for path, why in report.skipped)
           + ".", ""] if report.skipped else []),
        "## Run configuration",
        "",
        "| setting | value |",
        "|---|---|",
        f"| level | {level.name} ({level.grid_size}×{level.grid_size}, {level.observation.view} view"
        f"{', temporal' if level.temporal else ''}, max {level.max_steps} ticks) |",
        f"| agents × budget | {c.agents} × {budget} |",
        f"| network | {net_text} |",
        f"| learner | lr {lc.lr:g}, γ {lc.gamma:g}, n-step {lc.n_step}, batch {lc.batch_size}, "
        f"replay ratio {lc.replay_ratio:g}, learning starts {lc.learning_starts:,}, "
        f"target every {lc.target_update_every} |",
        f"| replay | capacity {c.replay.capacity:,}{', prioritized' if c.replay.prioritized else ''} |",
        f"| exploration | ε {ex.start:g} → {ex.end:g} over {ex.decay_steps:,} steps ({ex.schedule}) |",
        f"| seed, device | {c.seed}, {c.device} |",
        *_feature_rows(c),
        "",
        "## Training",
        "",
        f"- env steps (agent-steps): **{trained:,}**"
        + (f" (the evaluated checkpoint is at {ckpt_steps:,})" if ckpt_steps is not None else ""),
        *([
            f"- wall time at the last metrics row: {_f(last.get('wall_s'))} s "
            f"(step {int(last.get('step') or 0):,}), {_f(last.get('steps_per_s'), ',.0f')} steps/s",
            f"- learner updates: {int(last.get('updates') or 0):,}; final ε {_f(last.get('epsilon'), '.3f')}; "
            f"last loss {_f(last.get('loss'), '.4f')}; mean Q {_f(last.get('q_mean'), '.3f')}",
        ] if learner else [
            f"- no learner metrics rows yet (one every logging.interval_steps = {c.logging.interval_steps:,} steps)",
        ]),
        f"- finished episodes: {len(episodes):,}",
        "",
        "## Final survival during training",
        "",
    ]
    final = report.final
    if final.get("episodes"):
        lines += [
            f"Over the last {final['episodes']} finished training episodes (exploring, ε as above): "
            f"mean **{final['survival_mean']:.1f}**, median **{final['survival_median']:.0f}**, "
            f"p10 {final['survival_p10']:.0f} ticks. "
            f"All {len(episodes):,} episodes: mean {report.final['all_mean']:.1f} ticks.",
            "",
        ]
        if final.get("causes"):
            lines += ["Causes in those episodes: " + ", ".join(f"{k} {v}" for k, v in final["causes"].items()), ""]
    else:
        lines += ["No finished episodes recorded yet.", ""]
    lines += ["## Greedy evaluation and scripted references", ""]
    header = ("| policy | episodes | mean | median | p10 | 95% CI | cap rate | return | ended by | invalid |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    if report.greedy is not None:
        rows.append(_stats_row("**agent (greedy)**", report.greedy))
    rows += [_stats_row(f"scripted {n}", s) for n, s in report.scripted.items()]
    if rows:
        lines += [
            f"Masked greedy play at full difficulty on {level.name}, survival in ticks "
            f"(the level caps episodes at {level.max_steps}).",
            "", header, *rows, "",
        ]
    if report.greedy is None:
        lines += ["No checkpoint to evaluate.", ""]
    lines += ["## Plots", ""]
    for name, caption in images:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
        if name == "meters.png" and meters_note:
            lines += [meters_note, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- the command's work
def _dump(tmp: Path, data: bytes) -> None:
    tmp.write_bytes(data)
    tmp.chmod(FILE_MODE)


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: _dump(tmp, data))


def build_report(
    run_dir: Path, episodes: int = 200, scripted_episodes: int = 50, seed: int = 12345, agents: int = 250,
    device: str = "cpu", log=None,
) -> Report:
    """Plots and `summary.md` for a run directory, in `run_dir/report/`. `log(str)` hears progress."""
    from townlet.train.evaluate import greedy_stats, scripted_stats

    say = log or (lambda _msg: None)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    try:
        ep_rows, learner = read_metrics(run_dir)
    except FileNotFoundError as e:
        raise ReportError(str(e)) from None
    try:
        run = open_run(run_dir)
        if run.checkpoint is not None:
            say(f"loading the agent from {run.checkpoint.name}")
        policy = run.policy(device) if run.checkpoint is not None else None
    except CheckpointError as e:
        raise ReportError(str(e)) from None
    config, level, checkpoint = run.config, run.level, run.checkpoint

    report = Report(directory=run_dir / REPORT_DIR, checkpoint=checkpoint, skipped=run.skipped)
    lengths = _column(ep_rows, "length")
    tail = ep_rows[-min(len(ep_rows), 100):]
    report.final = survival_summary(_column(tail, "length"), level.max_steps)
    if ep_rows:
        report.final["all_mean"] = float(lengths.mean())
        report.final["causes"] = {k: sum(r["cause"] == k for r in tail) for k in sorted({r["cause"] for r in tail})}

    with few_threads(device):
        say(f"scripted references on {level.name} ({scripted_episodes} episodes each)")
        report.scripted = scripted_stats(level, scripted_episodes, min(agents, scripted_episodes), seed, device)
        frames: list[Frame] = []
        if policy is not None:
            say(f"greedy evaluation ({episodes} episodes)")
            report.greedy = greedy_stats(policy, level, episodes, min(agents, episodes), seed, device)
            say("one greedy episode for the meters plot")
            frames = list(greedy_episode(policy, level, seed, level.max_steps, device))

    say("plotting")
    final_step = int(ep_rows[-1]["step"]) if ep_rows else None
    if checkpoint is not None:
        final_step = max(final_step or 0, checkpoint_step(checkpoint))
    images: list[tuple[str, str, bytes]] = [
        ("survival.png", "Survival over training",
         plot_survival(ep_rows, report.scripted, report.greedy, level.max_steps, final_step)),
        ("returns.png", "Episode return over training", plot_returns(ep_rows)),
        ("learner.png", "Exploration ε, loss and mean Q", plot_learner(learner)),
        ("causes.png", "Causes of death over training", plot_causes(ep_rows)),
    ]
    meters_note = ""
    if frames:
        images.append(("meters.png", "Meters over one greedy episode", plot_meters(frames, level)))
        last = frames[-1]
        meters_note = (f"Seed {seed}: the agent lived {last.tick} ticks"
                       + (f", ended by {last.cause}." if last.done else "."))
    curriculum = config.curriculum.kind != "static"
    curiosity = config.curiosity.enabled
    stage = plot_stage(ep_rows, learner, curriculum, curiosity)
    if stage is not None:
        images.append(("stage.png", "Curriculum stage and intrinsic reward", stage))
    summary = render_summary(run_dir, config, level, checkpoint, ep_rows, learner, report,
                             [(n, c) for n, c, _ in images], meters_note)

    say(f"writing {report.directory}")
    for name, _, data in images:
        _write(report.directory / name, data)
        report.files.append(report.directory / name)
    _write(report.summary, summary.encode())
    report.files.append(report.summary)
    return report
