"""The `townlet` command line."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from townlet.train.checkpoint import CheckpointError
from townlet.world import LEVEL_NAMES, ConfigError, load_level, scripted_stats

app = typer.Typer(help="townlet: a batched survival world for deep RL.", no_args_is_help=True)
console = Console() if sys.stdout.isatty() else Console(width=140)


def _scripted_table(levels: list[str], episodes: int, agents: int, seed: int, device: str) -> list[dict]:
    return [
        {"level": level, "policy": name, **stats}
        for level in levels
        for name, stats in scripted_stats(load_level(level), episodes, agents, seed, device).items()
    ]


@app.command()
def policies(
    levels: Annotated[list[str] | None, typer.Argument(help="Levels (names or YAML paths); default: all.")] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per level and policy.")] = 500,
    agents: Annotated[int, typer.Option(min=1, help="Agents stepped in parallel.")] = 250,
    seed: int = 0,
    device: str = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """Survival of the scripted reference policies: random valid actions; the needs policy with full knowledge,
    and on partial views remembering what it saw (needs-memory), knowing only its window (needs-view), remembering
    and searching the cells it has not seen (needs-explore), or knowing only its window and searching by a fixed
    round of the town (needs-sweep: no memory at all)."""
    try:
        rows = _scripted_table(levels or list(LEVEL_NAMES), episodes, agents, seed, device)
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title=f"Scripted policies: survival over {episodes} episodes per row")
    for col in ("level", "policy", "mean", "median", "p10", "95% CI", "cap rate", "died E/H"):
        table.add_column(col, justify="left" if col in ("level", "policy") else "right")
    for r in rows:
        lo, hi = r["survival_ci95"]
        causes = r["causes"]
        table.add_row(
            r["level"], r["policy"], f"{r['survival_mean']:.1f}", f"{r['survival_median']:.0f}",
            f"{r['survival_p10']:.0f}", f"{lo:.1f}–{hi:.1f}", f"{r['cap_rate']:.1%}",
            f"{causes.get('energy', 0)}/{causes.get('health', 0)}",
        )
    console.print(table)


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


@app.command()
def train(
    target: Annotated[str, typer.Argument(help="A level name (its default run config) or a run YAML.")] = "L1_full",
    agents: Annotated[int | None, typer.Option(min=1, help="Agents stepped in parallel.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Agent-steps to train for.")] = None,
    minutes: Annotated[float | None, typer.Option(min=0.01, help="Wall-clock budget (instead of --steps).")] = None,
    seed: Annotated[int | None, typer.Option(min=0)] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<level>-<time>).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: key=value (dotted).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory from its checkpoint.")] = None,
    quiet: Annotated[bool, typer.Option(help="Log lines instead of the live display.")] = False,
    serve_: Annotated[bool, typer.Option("--serve", help="Watch it live in the browser meanwhile (townlet serve "
                                         "in a child process).")] = False,
    serve_port: Annotated[int, typer.Option(min=1, max=65535, help="The --serve page's port.")] = 8000,
) -> None:
    """Train an agent: many agents in one batched world feed one learner; Ctrl-C stops with a checkpoint."""
    from townlet.train import Trainer, load_run_config, open_run, parse_overrides

    overrides = parse_overrides(set_ or [])
    for key, value in (("agents", agents), ("seed", seed), ("device", device), ("steps", steps)):
        if value is not None:
            overrides[key] = value
    if minutes is not None:
        overrides["minutes"] = minutes
        if steps is None:
            overrides["steps"] = None  # the time budget alone
    try:
        if resume is not None:
            run = open_run(resume)
            trainer = run.resume(overrides)
            console.print(f"resuming {resume} from {run.checkpoint.name} at {trainer.env_steps:,} steps")
            run_dir = resume
        else:
            config = load_run_config(target, overrides, source_note="--set/options" if overrides else "")
            run_dir = out or Path("runs") / f"{Path(config.level).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            trainer = Trainer(config, run_dir)
    except (ConfigError, CheckpointError) as e:
        raise _fail(str(e)) from None
    config = trainer.config
    scripted = trainer.algorithm.scripted
    count = int(scripted.sum()) if scripted is not None else 0
    guided = f" ({count} of them follow the scripted {config.guides.policy} policy)" if count else ""
    console.print(f"training {config.level} with {config.agents} agents{guided} -> {run_dir}")
    with _live_view(trainer, serve_port) if serve_ else contextlib.nullcontext():
        _run_with_display(trainer, quiet)
    console.print(f"checkpoint written; resume with: townlet train --resume {run_dir}")
    console.print(f"evaluate with: townlet eval {run_dir}    report: townlet report {run_dir}")


@contextlib.contextmanager
def _live_view(trainer, port: int) -> Iterator[None]:
    from townlet.serve import ServeError, start_beside

    try:
        view = start_beside(trainer, port)
    except ServeError as e:
        raise _fail(str(e)) from None
    console.print(f"live view: {view.url} (it plays the newest checkpoint; log: {view.run_dir / 'serve.log'})",
                  highlight=False)
    try:
        yield
    finally:
        view.stop()


def _run_with_display(trainer, quiet: bool) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    config = trainer.config
    by_time = config.minutes is not None and config.steps is None
    total = config.minutes * 60 if by_time else float(config.steps)
    if quiet:
        last = [0.0]

        def log(p) -> None:
            if time.perf_counter() - last[0] >= 10:
                last[0] = time.perf_counter()
                typer.echo(
                    f"steps={p.env_steps} sps={p.steps_per_s:.0f} episodes={p.episodes} "
                    f"survival_mean={_fmt(p.survival_mean)} median={_fmt(p.survival_median, '.0f')} "
                    f"eps={_fmt(p.epsilon, '.3f')} loss={_fmt(p.loss, '.4f')} stage={_fmt(p.stage, '.2f')}"
                    + "".join(f" {k}={v:.3g}" for k, v in p.extra.items())
                )

        trainer.run(on_progress=log)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[line]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        task = bar.add_task(config.level, total=total, line="")

        def show(p) -> None:
            left = "-" if p.budget_left_s is None else f"{max(p.budget_left_s, 0):.0f}s"
            if p.budget_left_s is None and config.steps:
                left = f"{max(config.steps - p.env_steps, 0) / max(p.steps_per_s, 1):.0f}s"
            line = (
                f"steps {p.env_steps:,} ({p.steps_per_s:,.0f}/s)  episodes {p.episodes:,}  "
                f"survival mean {_fmt(p.survival_mean)} median {_fmt(p.survival_median, '.0f')}  "
                f"ε {_fmt(p.epsilon, '.3f')}  loss {_fmt(p.loss, '.4f')}  stage {_fmt(p.stage, '.2f')}  left {left}"
            )
            if "intrinsic_weight" in p.extra:
                line += f"  curiosity w {p.extra['intrinsic_weight']:.3g} r_int {p.extra['intrinsic_reward']:.3g}"
            done = p.elapsed_s if by_time else p.env_steps
            bar.update(task, completed=min(done, total), line=line)

        trainer.run(on_progress=show)


@app.command()
def sweep(
    target: Annotated[str | None, typer.Argument(help="A level name (its default run config) or a run YAML.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0 .. N-1 of every setting.")] = 5,
    grid: Annotated[list[str] | None, typer.Option(help="key=v1,v2,...: the values of one field; every "
                                                   "combination of the --grid fields is a setting.")] = None,
    minutes: Annotated[float | None, typer.Option(min=0.01, help="Wall-clock budget of each trial.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Agent-step budget of each trial.")] = None,
    concurrent: Annotated[int | None, typer.Option(min=1, help="Trials at once (default: one per CPU).")] = None,
    out: Annotated[Path | None, typer.Option(help="Sweep directory (default sweeps/<config>-<time>).")] = None,
    address: Annotated[str | None, typer.Option(help="Join this Ray cluster (auto, ray://host:10001) instead of "
                                                "starting Ray here.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="asha: stop poor settings early on training survival.")]
    = None,
    episodes: Annotated[int, typer.Option(min=1, help="Greedy evaluation episodes per trial.")] = 1000,
    retries: Annotated[int, typer.Option(min=0, help="Restart a dead trial (from its checkpoint) this often.")] = 0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field in every trial: key=value.")]
    = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this sweep directory: finished trials are kept, "
                                                "the others continue from their checkpoints.")] = None,
) -> None:
    """Train every --grid setting × seed as a Ray Tune trial, each an ordinary run directory; then a results table
    (greedy and training survival, mean ± 95% CI across seeds, best first) and a plot. See docs/sweep.md."""
    from rich.markup import escape

    from townlet.train import sweep as sweeps

    try:
        if resume is not None:
            if target is not None or grid or set_ or minutes is not None or steps is not None or scheduler:
                raise sweeps.SweepError("--resume continues the sweep as planned; give no config, --grid, --set, "
                                        "budget or --scheduler with it")
            sweep_dir = resume
            plan, trials = sweeps.read_plan(sweep_dir)
        else:
            if target is None:
                raise sweeps.SweepError("give a level or run YAML to sweep, or --resume SWEEP_DIR")
            sweep_dir = out or Path("sweeps") / f"{Path(target).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            plan, trials = sweeps.plan_sweep(sweep_dir, target, seeds, grid or [], set_ or [], minutes, steps,
                                             episodes, scheduler)
        console.print(f"sweep {plan['config']}: {len(trials)} trials -> {sweep_dir}", highlight=False)
        outcome, files = sweeps.sweep(sweep_dir, plan, trials, resume=resume is not None, concurrent=concurrent,
                                      address=address, retries=retries,
                                      log=lambda line: console.print(line, highlight=False))
    except (ConfigError, sweeps.SweepError) as e:
        raise _fail(escape(str(e))) from None
    for r in outcome.failed:
        console.print(f"failed: {r['name']} seed {r['seed']}: {r['error']}", markup=False, highlight=False)
    for path in files:
        console.print(f"  {path}", highlight=False)
    console.print(f"results: {sweep_dir / sweeps.RESULTS_MD}", highlight=False)
    if outcome.failed:
        console.print(f"{len(outcome.failed)} trial(s) failed; run them again with: townlet sweep --resume "
                      f"{sweep_dir}", highlight=False)
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="A run directory (its newest checkpoint) or a checkpoint file.")],
    episodes: Annotated[int, typer.Option(min=1)] = 1000,
    level: Annotated[str | None, typer.Option(help="Evaluate on another level (same observation size).")] = None,
    agents: Annotated[int, typer.Option(min=1, help="Episodes played in parallel.")] = 250,
    seed: int = 12345,
    device: str = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Masked greedy evaluation at full difficulty, with the scripted policies beside it.

    An LSTM agent is also played with its memory wiped before every step: the gap is what memory is worth.
    """
    from townlet.train.evaluate import evaluate

    try:
        result = evaluate(run, episodes, level, agents, seed, device)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{result['level']}: {episodes} episodes, greedy at full difficulty")
    for col in ("policy", "mean", "median", "p10", "95% CI", "cap rate", "died E/H", "invalid"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    rows = [("agent", result)]
    if "memory_wiped" in result:  # an LSTM agent: the same net acting on the current observation alone
        rows.append(("agent, memory wiped", result["memory_wiped"]))
    rows += [(name, r) for name, r in result["scripted"].items()]
    for name, r in rows:
        lo, hi = r["survival_ci95"]
        table.add_row(
            name, f"{r['survival_mean']:.1f}", f"{r['survival_median']:.0f}", f"{r['survival_p10']:.0f}",
            f"{lo:.1f}–{hi:.1f}", f"{r['cap_rate']:.1%}",
            f"{r['causes'].get('energy', 0)}/{r['causes'].get('health', 0)}", f"{r['invalid_rate']:.2%}",
        )
    console.print(table)
    # the columns: what the agent or a needs policy uses at least once in 20 episodes (random uses everything)
    used = [a for a in result["uses_per_episode"]
            if any(r["uses_per_episode"][a] >= 0.05 for name, r in rows if name != "random")]
    uses = Table(title="Uses per episode")
    for col in ("policy", *used):
        uses.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in rows:
        uses.add_row(name, *(f"{r['uses_per_episode'][a]:.1f}" for a in used))
    console.print(uses)


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(min=0.1, help="Training budget.")] = 3.0,
    out: Path = Path("runs/demo"),
) -> None:
    """The main job: train L1_full for a few minutes, evaluate, write the report, and say where to look."""
    train(target="L1_full", minutes=minutes, out=out, agents=None, steps=None, seed=None, device=None,
          set_=None, resume=None, quiet=not sys.stdout.isatty())
    eval_(run=out, episodes=1000, level=None, agents=250, seed=12345, device="cpu", as_json=False)
    report(run=out, episodes=200, scripted_episodes=50, agents=250, seed=12345, device="cpu")
    console.print(f"look at: {out / 'report' / 'summary.md'} (plots beside it), "
                  f"tensorboard --logdir {out / 'tb'}, metrics in {out / 'metrics.sqlite'}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory (made by `townlet train`).")],
    episodes: Annotated[int, typer.Option(min=1, help="Greedy evaluation episodes.")] = 200,
    scripted_episodes: Annotated[int, typer.Option(min=1, help="Episodes per scripted reference policy.")] = 50,
    agents: Annotated[int, typer.Option(min=1, help="Episodes played in parallel.")] = 250,
    seed: int = 12345,
    device: str = "cpu",
) -> None:
    """Plots (survival, return, ε/loss, causes of death, meters of one greedy episode, stage) and a Markdown
    summary with a greedy evaluation, written atomically into RUN/report/."""
    from townlet.train.report import ReportError, build_report

    try:
        result = build_report(run, episodes, scripted_episodes, seed, agents, device,
                              log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    except (ReportError, ConfigError, CheckpointError) as e:
        raise _fail(str(e)) from None
    if result.greedy is not None:
        console.print(f"greedy survival: mean {result.greedy['survival_mean']:.1f}, "
                      f"median {result.greedy['survival_median']:.0f} ticks over {result.greedy['episodes']} episodes")
    for path in result.files:
        console.print(f"  {path}", highlight=False)
    console.print(f"report written: {result.summary}")


@app.command()
def watch(
    run: Annotated[Path, typer.Argument(help="A run directory (its newest checkpoint) or a checkpoint file.")],
    level: Annotated[str | None, typer.Option(help="Play another level (same observation size).")] = None,
    speed: Annotated[float, typer.Option(min=0.0, help="Ticks/s on a terminal; 0: no delay.")] = 10.0,
    steps: Annotated[int, typer.Option(min=1, help="Stop after this many ticks if still alive.")] = 500,
    seed: Annotated[int, typer.Option(min=0, help="World seed (spawn cell, layout).")] = 0,
    record: Annotated[Path | None, typer.Option(help="Write a GIF: start + 1 frame/tick.")] = None,
    display: Annotated[bool, typer.Option(help="Show the episode (live on a terminal, log lines otherwise).")] = True,
    device: str = "cpu",
) -> None:
    """Watch one agent play a greedy episode: grid, meters, action, clock, survival and cause of death."""
    from townlet.train.watch import WatchError
    from townlet.train.watch import watch as play

    if not display and record is None:
        raise _fail("--no-display without --record shows and writes nothing")
    try:
        result = play(run, level, speed, steps, seed, record, display, console, device)
    except WatchError as e:
        raise _fail(str(e)) from None
    end = f"ended by {result.cause}" if result.cause else "still alive"
    console.print(f"{result.level}: {result.ticks} ticks, {end}, return {result.episode_return:.1f}", highlight=False)
    if result.record is not None:
        console.print(f"recorded {result.frames} frames: {result.record}", highlight=False)


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="A run directory (its newest checkpoint, reloaded when a newer one "
                                          "appears), a checkpoint file, or a level (name or YAML).")],
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 shows the page to other machines.")]
    = "127.0.0.1",
    agents: Annotated[int, typer.Option(min=1, help="Agents in the world, each followable on the page.")] = 4,
    policy: Annotated[str | None, typer.Option(help="Who plays first: network (a run's default) or a scripted "
                                               "policy (a level's default: needs); switchable on the page.")] = None,
    speed: Annotated[int, typer.Option(min=1, max=60, help="Ticks per second at the start.")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="World seed (spawn cells, layouts).")] = 0,
    device: str = "cpu",
) -> None:
    """Watch agents live in the browser: a local web page with the town, the meters, the network's action
    values and memory, recent episodes, and controls (pause, step, speed, next episode, agent, policy)."""
    from townlet.serve import ServeError
    from townlet.serve import serve as run_server

    try:
        run_server(target, host, port, agents, policy, speed, seed, device,
                   echo=lambda line: console.print(line, highlight=False))
    except ServeError as e:
        raise _fail(str(e)) from None


def main() -> None:  # pragma: no cover - console entry point
    app()
