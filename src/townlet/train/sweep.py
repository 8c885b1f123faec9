"""Sweeps: every combination of a grid of run-config values, times seeds, trained as Ray Tune trials.

Each trial is an ordinary run directory (what `townlet train` writes, so eval, report, watch and serve work on
it) plus `trial.json`, its record once it has been evaluated. Trials report their training survival at every log
interval through Tune, so Tune's schedulers (ASHA) can stop bad settings early. A trial that dies resumes from
its newest checkpoint when the sweep is resumed, and a failed trial is reported with its error without stopping
the others. Ray is an optional dependency (`pip install 'townlet[sweep]'`): nothing here imports it until a sweep
runs.

Layout of a sweep directory: `sweep.json` (the plan: config, grid, seeds, budget, every trial's resolved run
config), `runs/<setting>-seed<k>/` (the trials' run directories), `tune/` (Ray Tune's experiment state), and at
the end `results.md`, `results.json` and `survival.png`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from townlet.config_files import ConfigError, deep_merge
from townlet.train.checkpoint import atomic_write, atomic_write_text
from townlet.train.config import load_run_config, load_run_config_data, parse_overrides
from townlet.train.experiment import (
    Trial,
    budget_label,
    machine,
    record_curve,
    train_and_evaluate,
    training_curve,
    trial_config,
)
from townlet.world.evaluate import mean_ci95

INSTALL_HINT = "townlet sweep needs Ray Tune, which is not installed here: pip install 'townlet[sweep]'"
PLAN_FILE, TRIAL_FILE, RUNS, TUNE = "sweep.json", "trial.json", "runs", "tune"
RESULTS_MD, RESULTS_JSON, PLOT = "results.md", "results.json", "survival.png"
SCHEDULERS = ("asha",)
# seeds and budgets are the sweep's own options: one budget for every setting keeps the settings comparable
NOT_GRIDDED = {"seed": "--seeds", "steps": "--steps", "minutes": "--minutes"}


class SweepError(ValueError):
    """A sweep that cannot run or resume; the message says what and how to fix it."""


def require_ray() -> None:
    """Import Ray Tune, or fail with the one line that says how to install it."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        raise SweepError(INSTALL_HINT) from None


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class GridAxis:
    """One `--grid key=v1,v2,...`: a dotted run-config field and the values it takes, as typed (`labels`)."""

    key: str
    labels: tuple[str, ...]

    def overrides(self, label: str) -> dict[str, Any]:
        return parse_overrides([f"{self.key}={label}"])


def _split_values(text: str) -> list[str]:
    """`1e-4,3e-4` -> two values; commas inside brackets (`[64,64],[128]`) belong to one value."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(pairs: list[str]) -> list[GridAxis]:
    """`["learner.lr=1e-4,3e-4", "replay.train_len=32,64"]` -> one axis per key (values checked later, with
    the run config)."""
    axes: list[GridAxis] = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {pair!r}: expected key=value,value,..., e.g. learner.lr=1e-4,3e-4")
        if key in NOT_GRIDDED:
            raise ConfigError(f"--grid {key}: not a grid field; give it with {NOT_GRIDDED[key]} (one for every "
                              "setting)")
        if any(axis.key == key for axis in axes):
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid {key}=a,b,...")
        labels = _split_values(raw)
        if any(not label for label in labels):
            raise ConfigError(f"--grid {key}: an empty value in {raw!r}")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"--grid {key}: a value is listed twice in {raw!r}")
        for label in labels:
            parse_overrides([f"{key}={label}"])  # readable as a value
        axes.append(GridAxis(key, tuple(labels)))
    return axes


def settings(axes: list[GridAxis]) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of the axes' values: (name, overrides), the first axis varying slowest; one setting
    named `base` (no overrides) without a grid."""
    if not axes:
        return [("base", {})]
    out = []
    for labels in itertools.product(*(axis.labels for axis in axes)):
        overrides: dict[str, Any] = {}
        for axis, label in zip(axes, labels, strict=True):
            overrides = deep_merge(overrides, axis.overrides(label))
        out.append((",".join(f"{axis.key}={label}" for axis, label in zip(axes, labels, strict=True)), overrides))
    return out


def run_name(trial: Trial) -> str:
    """The trial's run directory name: its setting and seed, with only file-name-safe characters."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", trial.run_name)


def plan_trials(
    target: str, axes: list[GridAxis], seeds: int, overrides: dict[str, Any] | None = None,
    minutes: float | None = None, steps: int | None = None,
) -> list[Trial]:
    """One trial per setting and seed (settings in grid order, seeds 0 .. seeds-1 within each). Every setting's
    run config is resolved here, so a bad key or value fails before anything starts, naming the field and what
    is allowed. Without `minutes` or `steps` the run config's own budget holds (its steps if it has them)."""
    overrides = overrides or {}
    bad = [key for key in NOT_GRIDDED if key in overrides and overrides[key] is not None]
    if bad:
        raise ConfigError(f"--set {bad[0]}: give it with {NOT_GRIDDED[bad[0]]}")
    if minutes is not None and steps is not None:
        raise ConfigError("give one budget for every trial: --minutes or --steps")
    if minutes is None and steps is None:
        base = load_run_config(target, overrides, source_note="--set")
        steps, minutes = (base.steps, None) if base.steps is not None else (None, base.minutes)
    if Path(target).suffix in (".yaml", ".yml") and Path(target).exists():
        target = str(Path(target).resolve())  # trials may run in another working directory
    trials = []
    for name, grid_overrides in settings(axes):
        merged = deep_merge(overrides, grid_overrides)
        trial = Trial(name, target, 0, minutes, merged, steps)
        try:
            trial_config(trial)
        except ConfigError as e:
            raise ConfigError(f"--grid setting {name}: {e}") from None
        trials += [Trial(name, target, seed, minutes, merged, steps) for seed in range(seeds)]
    names = [run_name(t) for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError("--grid: two settings get the same run directory name; use values that differ in letters "
                          "or digits")
    return trials


# ---------------------------------------------------------------------------------------------------- one trial
def trial_spec(
    trial: Trial, run_dir: Path, episodes: int, eval_seed: int, config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a Tune trial gets: the trial, its resolved run config (resolved now if not given), where it runs,
    how it is evaluated."""
    config = config if config is not None else trial_config(trial).model_dump(mode="json")
    return {"trial": asdict(trial), "config": config, "run_dir": str(Path(run_dir).resolve()), "episodes": episodes,
            "eval_seed": eval_seed}


def _interval_metrics(row: dict[str, float | None]) -> dict[str, float]:
    survival = row.get("survival_mean")
    return {"survival": math.nan if survival is None else float(survival), "agent_steps": float(row["step"] or 0),
            "train_s": float(row["wall_s"] or 0.0)}


# A Ray started here runs the trials at the sweep's own priority. Ray's default, worker niceness 15, puts them
# below anything else on the machine, so any other work would take its share out of a wall-clock budget first.
LOCAL_RAY: dict[str, Any] = {"_system_config": {"worker_niceness": 0}}


def train_trial(
    spec: dict[str, Any], threads: int = 1, report: Callable[[dict[str, float]], None] | None = None,
    before_training: Callable[[int], float | None] | None = None, concurrent: int = 1,
) -> dict[str, Any]:
    """Run one trial where it stands: its record if it has one, else train (continuing from the newest
    checkpoint), evaluate and write the record (with its torch `threads` and the trials run `concurrent`ly with
    it). `report` gets the training survival and agent-steps at every log interval and once at the end (Tune's
    `tune.report` in a sweep)."""
    import torch

    run_dir = Path(spec["run_dir"])
    done = run_dir / TRIAL_FILE
    if done.exists():  # finished (or stopped by the scheduler) in an earlier start of the sweep
        record = json.loads(done.read_text())
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        trial = Trial(**spec["trial"])
        config = load_run_config_data(spec["config"], f"{PLAN_FILE}: trial {trial.run_name}")
        on_interval = (lambda row: report(_interval_metrics(row))) if report is not None else None
        record = {"status": "finished", "threads": threads, "concurrent": concurrent, "niceness": os.nice(0),
                  **train_and_evaluate(trial, run_dir, config, spec["episodes"], spec["eval_seed"], before_training,
                                       on_interval)}
        atomic_write_text(done, json.dumps(record, indent=1, default=float) + "\n")
    if report is not None:
        final = {"survival": _nan(record.get("train_survival")), "agent_steps": float(record["env_steps"]),
                 "train_s": float(record["train_s"])}
        if "eval" in record:
            final["eval_survival"] = float(record["eval"]["survival_mean"])
        report(final)
    return record


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _tune_trial(
    config: dict[str, Any], specs: dict[str, dict[str, Any]], threads: int, concurrent: int,
    before_training: Callable[[int], float | None] | None,
) -> None:
    """The function Tune runs for each trial (`config["trial"]`: its run name, a key of `specs`). Tune may run
    several trials one after another in one process: each starts without the compiled code of the one before."""
    import torch
    from ray import tune

    torch._dynamo.reset()
    train_trial(specs[config["trial"]], threads, tune.report, before_training, concurrent)


# ---------------------------------------------------------------------------------------------------- many trials
@dataclass
class SweepOutcome:
    """Finished trials' records (in plan order), the trials the scheduler stopped early, and the failed ones
    (each with its error)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    stopped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def _cpus() -> tuple[float, float]:
    """(CPUs of the Ray cluster, CPUs of its largest node)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    nodes = [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    return total, max(nodes, default=total)


def threads_and_share(concurrent: int, total: float, largest: float) -> tuple[int, float]:
    """(torch threads per trial, CPUs Ray reserves for it): the CPUs shared among `concurrent` trials, at least
    one thread each; more trials than CPUs get fractions of one, so that many still run at once."""
    threads = max(1, int(min(total // concurrent, largest)))
    return threads, min(float(threads), total / concurrent)


def _error_line(error: BaseException | None) -> str:
    """The line of a trial's error that says what went wrong (Ray wraps it in a traceback)."""
    if error is None:
        return "unknown error"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
    line = named[-1] if named else f"{type(error).__name__}: {lines[0] if lines else ''}"
    return line if len(line) <= 400 else line[:397] + "..."


def run_trials(
    trials: list[Trial], runs_dir: Path, *, episodes: int = 1000, eval_seed: int = 12345,
    concurrent: int | None = None, address: str | None = None, scheduler: str | None = None, retries: int = 0,
    before_training: Callable[[int], float | None] | None = None, fresh: bool = True,
    state_dir: Path | None = None, configs: list[dict[str, Any]] | None = None, verbose: int = 1,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Train and evaluate `trials` as Ray Tune trials, each in `runs_dir/<run name>`, at most `concurrent` at
    once (default: as many as the CPUs allow). `fresh` starts every trial anew (their old run directories are
    removed); otherwise trials with a record (finished, or stopped by the scheduler) are kept and the others
    continue from their newest checkpoints. Ray runs on this machine unless `address` names a cluster (`auto`,
    `ray://host:10001`); a Ray already started in this process is used as it is. `scheduler="asha"` stops poor
    settings early on their training survival. Tune's experiment state goes to `state_dir/tune/start-<n>`, one
    per start (default `state_dir`: `runs_dir`); `configs`, the trials' resolved run configs, are resolved from
    their run configs if not given."""
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise SweepError(f"--scheduler {scheduler}: allowed: {', '.join(SCHEDULERS)}")
    require_ray()
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    runs_dir = Path(runs_dir).resolve()
    state_dir = (Path(state_dir).resolve() if state_dir is not None else runs_dir) / TUNE
    run_dirs = {t.run_name: runs_dir / run_name(t) for t in trials}
    if fresh:
        for path in [*run_dirs.values(), state_dir]:
            if path.exists():
                shutil.rmtree(path)
    configs = configs or [None] * len(trials)
    specs = [trial_spec(t, run_dirs[t.run_name], episodes, eval_seed, c) for t, c in zip(trials, configs, strict=True)]
    # what is left: a trial killed, failed or interrupted continues from its checkpoints in its run directory
    by_name = {run_name(Trial(**spec["trial"])): spec for spec in specs
               if not (Path(spec["run_dir"]) / TRIAL_FILE).exists()}
    outcomes: dict[str, Any] = {}
    if by_name:
        # Ctrl-C stops the sweep at once (Tune's own handler would wind it down as if it had ended); a resume
        # continues from each trial's checkpoints
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        started = not ray.is_initialized()
        if started:
            local = address is None and "RAY_ADDRESS" not in os.environ
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     configure_logging=True, log_to_driver=verbose > 0, **(LOCAL_RAY if local else {}))
        try:
            total, largest = _cpus()
            concurrent = concurrent or max(1, min(len(by_name), int(total)))
            threads, share = threads_and_share(concurrent, total, largest)
            log(f"{len(by_name)} trial(s) to run, {concurrent} at once, {threads} torch thread(s) each, on "
                f"{total:g} CPUs")
            trainable = tune.with_resources(tune.with_parameters(
                _tune_trial, specs=by_name, threads=threads, concurrent=concurrent, before_training=before_training),
                {"cpu": share})
            starts = len(list(state_dir.glob("start-*"))) if state_dir.is_dir() else 0
            tuner = tune.Tuner(
                trainable, param_space={"trial": tune.grid_search(list(by_name))},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=concurrent, scheduler=_scheduler(ASHAScheduler, scheduler, trials),
                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name, reuse_actors=True),
                run_config=tune.RunConfig(
                    name=f"start-{starts + 1}", storage_path=str(state_dir), verbose=verbose,
                    failure_config=tune.FailureConfig(max_failures=retries)),
            )
            results = tuner.fit()
            outcomes = {by_name[r.config["trial"]]["run_dir"]: r for r in results if r.config}
        finally:
            if started:
                ray.shutdown()
    return _collect(specs, outcomes, scheduled=scheduler is not None)


def _trial_name(trial: Any) -> str:
    return str(trial.config["trial"])


def _scheduler(asha: Any, name: str | None, trials: list[Trial]) -> Any:
    """ASHA on training survival, its time the budget's unit (agent-steps, or training seconds for a wall-clock
    budget): rungs at 1/9 and 1/3 of the budget, the best third going on from each."""
    if name is None:
        return None
    by_steps = trials[0].steps is not None
    budget = float(trials[0].steps if by_steps else trials[0].minutes * 60)
    # ASHA puts rungs at grace * 3^k below max_t: a max_t of half the budget leaves none at the budget's end,
    # where a trial's last interval report would be judged before its evaluation
    return asha(time_attr="agent_steps" if by_steps else "train_s", metric="survival", mode="max",
                max_t=budget / 2, grace_period=budget / 9, reduction_factor=3, stop_last_trials=False)


def _collect(specs: list[dict[str, Any]], outcomes: dict[str, Any], scheduled: bool) -> SweepOutcome:
    """Each trial's fate: its record (finished), its last report (stopped by the scheduler: Tune ended it without
    an error before it wrote its record), or its error."""
    out = SweepOutcome()
    for spec in specs:
        run_dir = Path(spec["run_dir"])
        done = run_dir / TRIAL_FILE
        if done.exists():
            record = json.loads(done.read_text())
            (out.records if record["status"] == "finished" else out.stopped).append(record)
            continue
        result = outcomes.get(spec["run_dir"])
        base = {**spec["trial"], "run_dir": str(run_dir)}
        if result is None or result.error is not None or not scheduled:
            error = _error_line(result.error) if result is not None and result.error is not None else (
                "ended without its record")
            out.failed.append({**base, "error": error})
            continue
        metrics = result.metrics or {}
        record = {"status": "stopped", **base, "env_steps": metrics.get("agent_steps"),
                  "train_s": metrics.get("train_s"), "train_survival": _finite(metrics.get("survival"))}
        atomic_write_text(done, json.dumps(record, indent=1) + "\n")  # a resumed sweep leaves it stopped
        out.stopped.append(record)
    return out


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------- results
def summarize_sweep(outcome: SweepOutcome, settings_order: list[str], seeds: int) -> list[dict[str, Any]]:
    """One row per setting: the greedy evaluation's and the training survival's mean ± 95% CI across the seeds
    that finished; best greedy mean first (settings with no finished seed last)."""
    rows = []
    for name in settings_order:
        group = [r for r in outcome.records if r["name"] == name]
        greedy, greedy_half = mean_ci95([r["eval"]["survival_mean"] for r in group])
        trained = [r["train_survival"] for r in group if r.get("train_survival") is not None]
        train_mean, train_half = mean_ci95(trained)
        rows.append({
            "name": name, "seeds": seeds, "finished": len(group),
            "finished_seeds": [r["seed"] for r in group],
            "stopped": sorted(r["seed"] for r in outcome.stopped if r["name"] == name),
            "failed": sorted(r["seed"] for r in outcome.failed if r["name"] == name),
            "eval_survival_mean": greedy, "eval_ci95_half": greedy_half,
            "eval_per_seed": [r["eval"]["survival_mean"] for r in group],
            "train_survival_mean": train_mean, "train_ci95_half": train_half,
            "cap_rate": float(np.mean([r["eval"]["cap_rate"] for r in group])) if group else math.nan,
            "env_steps": float(np.mean([r["env_steps"] for r in group])) if group else math.nan,
            "train_s": float(np.mean([r["train_s"] for r in group])) if group else math.nan,
        })
    rows.sort(key=lambda r: -r["eval_survival_mean"] if math.isfinite(r["eval_survival_mean"]) else math.inf)
    return rows


def _pm(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.1f} ± {half:.1f}" if math.isfinite(half) else f"{mean:.1f} (one seed)"


def _how_run(records: list[dict[str, Any]]) -> str:
    """'2 trials at once with 1 torch thread each' (the settings of every start that trained a trial)."""
    ways = sorted({(r.get("concurrent", 1), r.get("threads", 1)) for r in records})
    return " or ".join(f"{k} trial(s) at once with {t} torch thread(s) each" for k, t in ways) or "no trial finished"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,.0f}"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def markdown(plan: dict[str, Any], rows: list[dict[str, Any]], outcome: SweepOutcome, when: str) -> str:
    """The results table, then the trials that did not finish and why."""
    lines = [
        f"# Sweep: {plan['config']}", "",
        f"`{plan['command']}` on {plan['machine']}, {when}. Budget {plan['budget']} per trial, seeds 0 .. "
        f"{plan['seeds'] - 1}, {_how_run(outcome.records)}, greedy evaluation over {plan['episodes']} episodes "
        "at full difficulty"
        + (f", scheduler {plan['scheduler']}" if plan.get("scheduler") else "") + ".", "",
        "| setting | seeds finished | greedy survival mean ± 95% CI | training survival mean ± 95% CI | cap rate "
        "| agent-steps | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = "—" if not math.isfinite(r["env_steps"]) else _count(r["env_steps"])
        cap = "—" if not math.isfinite(r["cap_rate"]) else f"{r['cap_rate']:.1%}"
        train_s = "—" if not math.isfinite(r["train_s"]) else _duration(r["train_s"])
        greedy, trained = _pm(r["eval_survival_mean"], r["eval_ci95_half"]), _pm(r["train_survival_mean"],
                                                                                 r["train_ci95_half"])
        lines.append(f"| {r['name']} | {r['finished']}/{r['seeds']} | {greedy} | {trained} | {cap} | {steps} "
                     f"| {train_s} |")
    lines += ["", "The 95% intervals are Student-t intervals across seeds (each seed's mean over its evaluation "
              "episodes, or its last 100 training episodes).", ""]
    for r in outcome.stopped:
        survival = "—" if r.get("train_survival") is None else f"{r['train_survival']:.1f}"
        steps = "?" if r.get("env_steps") is None else _count(r["env_steps"])
        lines.append(f"- stopped early by the scheduler: {r['name']} seed {r['seed']} at {steps} agent-steps "
                     f"(training survival {survival})")
    for r in outcome.failed:
        lines.append(f"- failed: {r['name']} seed {r['seed']} ({r['run_dir']}): {r['error']}")
    if outcome.stopped or outcome.failed:
        lines.append("")
    lines.append(f"![survival against agent-steps]({PLOT})")
    return "\n".join(lines) + "\n"


def _curve(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The record's learning curve; for a run too short to fill its 200-episode window (one point), a curve over
    20 episodes from its run directory."""
    curve = record_curve(record)
    if len(curve["survival"]) < 2 and (Path(record["run_dir"]) / "metrics.sqlite").exists():
        curve = training_curve(Path(record["run_dir"]), window=20)
    return curve


def plot(rows: list[dict[str, Any]], outcome: SweepOutcome, title: str) -> bytes:
    """Training survival against agent-steps, one line per setting (the mean of its seeds' curves where they
    reach, the band their range), its greedy evaluation as a star at the end."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(rows):
        color = f"C{i % 10}"
        curves = [c for c in (_curve(r) for r in outcome.records if r["name"] == row["name"])
                  if len(c["survival"]) > 1]
        if curves:  # each point: the seeds whose curves reach it
            grid = np.linspace(min(c["steps"][0] for c in curves), max(c["steps"][-1] for c in curves), 200)
            ys = np.stack([np.interp(grid, c["steps"], c["survival"], left=np.nan, right=np.nan) for c in curves])
            with warnings.catch_warnings():  # a point no seed reaches (a gap between curves) stays empty
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
            ax.plot(grid / 1e6, mean, color=color, lw=1.5, label=f"{row['name']} ({len(curves)} seeds)")
            if len(curves) > 1:
                ax.fill_between(grid / 1e6, low, high, color=color, alpha=0.15, lw=0)
        if math.isfinite(row["eval_survival_mean"]):
            ax.plot([row["env_steps"] / 1e6], [row["eval_survival_mean"]], marker="*", ms=13, color=color, ls="none",
                    label=None if curves else row["name"])
    ax.plot([], [], marker="*", ms=11, color="black", ls="none", label="greedy evaluation (mean of seeds)")
    ax.set(title=title, xlabel="agent-steps of training (millions)",
           ylabel="ticks survived (training episodes, rolling mean)", xlim=(0, None), ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_sweep_results(sweep_dir: Path, plan: dict[str, Any], outcome: SweepOutcome) -> list[Path]:
    """`results.md`, `results.json` and `survival.png` in the sweep directory, each written atomically."""
    sweep_dir = Path(sweep_dir)
    order = list(dict.fromkeys(t["name"] for t in plan["trials"]))
    rows = summarize_sweep(outcome, order, plan["seeds"])
    when = time.strftime("%Y-%m-%d %H:%M")
    png = plot(rows, outcome, f"{plan['config']}: {plan['budget']} per trial")
    atomic_write(sweep_dir / PLOT, lambda tmp: tmp.write_bytes(png))
    payload = {"config": plan["config"], "command": plan["command"], "machine": plan["machine"], "date": when,
               "budget": plan["budget"], "seeds": plan["seeds"], "episodes": plan["episodes"], "rows": rows,
               "runs": outcome.records, "stopped": outcome.stopped, "failed": outcome.failed}
    atomic_write_text(sweep_dir / RESULTS_JSON, json.dumps(payload, indent=1, default=float) + "\n")
    atomic_write_text(sweep_dir / RESULTS_MD, markdown(plan, rows, outcome, when))
    return [sweep_dir / RESULTS_MD, sweep_dir / RESULTS_JSON, sweep_dir / PLOT]


# ---------------------------------------------------------------------------------------------------- the command
def new_plan(
    sweep_dir: Path, target: str, trials: list[Trial], axes: list[GridAxis], seeds: int, overrides: list[str],
    episodes: int, scheduler: str | None, command: str,
) -> dict[str, Any]:
    """Write `sweep.json` into a new (or empty) sweep directory; refuse one that holds a sweep."""
    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        raise SweepError(f"{sweep_dir}: not empty; resume the sweep there with --resume {sweep_dir}, or give another "
                         "--out")
    plan = {
        "config": target, "command": command, "machine": machine(), "grid": [asdict(a) for a in axes],
        "set": overrides, "seeds": seeds, "budget": budget_label(asdict(trials[0])), "episodes": episodes,
        "scheduler": scheduler, "trials": [asdict(t) for t in trials],
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # every trial's resolved run config, so a resumed sweep trains what was planned even if the files changed
    plan["configs"] = [trial_config(t).model_dump(mode="json") for t in trials]
    atomic_write_text(sweep_dir / PLAN_FILE, json.dumps(plan, indent=1) + "\n")
    return plan


def plan_sweep(
    sweep_dir: Path, target: str, seeds: int, grid: list[str], overrides: list[str], minutes: float | None,
    steps: int | None, episodes: int, scheduler: str | None,
) -> tuple[dict[str, Any], list[Trial]]:
    """Check the options of `townlet sweep` (every setting's run config, then that Ray is there) and write the
    plan into `sweep_dir`; nothing is written if anything is wrong."""
    trials = plan_trials(target, parse_grid(grid), seeds, parse_overrides(overrides), minutes, steps)
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise SweepError(f"--scheduler {scheduler}: allowed: {', '.join(SCHEDULERS)}")
    require_ray()
    options = [("--seeds", seeds), *(("--grid", g) for g in grid), ("--minutes", minutes), ("--steps", steps),
               ("--episodes", episodes), ("--scheduler", scheduler), *(("--set", s) for s in overrides)]
    command = shlex.join(["townlet", "sweep", target, *(str(part) for name, value in options if value is not None
                                                         for part in (name, value))])
    plan = new_plan(sweep_dir, target, trials, parse_grid(grid), seeds, overrides, episodes, scheduler, command)
    return plan, trials


def read_plan(sweep_dir: Path) -> tuple[dict[str, Any], list[Trial]]:
    """The plan of an existing sweep directory, and its trials."""
    path = Path(sweep_dir) / PLAN_FILE
    if not path.is_file():
        raise SweepError(f"{sweep_dir}: not a sweep directory (no {PLAN_FILE})")
    try:
        plan = json.loads(path.read_text())
        trials = [Trial(**t) for t in plan["trials"]]
    except (ValueError, KeyError, TypeError) as e:
        raise SweepError(f"{path}: unreadable sweep plan ({type(e).__name__}: {e})") from None
    return plan, trials


def sweep(
    sweep_dir: Path, plan: dict[str, Any], trials: list[Trial], *, resume: bool, concurrent: int | None = None,
    address: str | None = None, retries: int = 0, verbose: int = 1, log: Callable[[str], None] = print,
) -> tuple[SweepOutcome, list[Path]]:
    """Run (or resume) the sweep planned in `sweep_dir`, then write its results."""
    outcome = run_trials(
        trials, Path(sweep_dir) / RUNS, episodes=plan["episodes"], concurrent=concurrent, address=address,
        scheduler=plan.get("scheduler"), retries=retries, fresh=not resume, state_dir=Path(sweep_dir),
        configs=plan.get("configs"), verbose=verbose, log=log)
    return outcome, write_sweep_results(sweep_dir, plan, outcome)

