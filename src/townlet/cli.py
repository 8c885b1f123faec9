"""The `townlet` command line.

Every command's anticipated failures (a bad file, field or option; a run directory or checkpoint that cannot be
used; a busy port; Ctrl-C outside training) end in one or two plain lines and exit code 2 (130 for Ctrl-C);
anything else is an internal error: one line and exit code 1, the traceback with `townlet --debug`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

import townlet
from townlet.config_files import ConfigError, shorten
from townlet.devices import require_device
from townlet.train.checkpoint import CheckpointError, SkippedCheckpointWarning
from townlet.world import LEVEL_NAMES, load_level, scripted_stats

EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 130
EXIT_CODES = (
    "Exit codes: 0 finished (training also when stopped by Ctrl-C or SIGTERM, after writing its checkpoint); "
    "2 bad input (a file, field, option, run directory or checkpoint that cannot be used: the message says "
    "which); 130 interrupted by Ctrl-C outside training; 1 an internal error (rerun with --debug for the "
    "traceback)."
)
LINE_CHARS = 1000  # the most of one error line printed: a message quotes what was wrong, not a whole file

console = Console() if sys.stdout.isatty() else Console(width=140)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def _say(text: str) -> None:
    """Print text that may hold user input (paths, names) as it is: no rich markup, no highlighting."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """`error: message` on stderr, printed as plain text (brackets such as `[1` or `[dev]` stay as they are),
    each line cut to LINE_CHARS characters."""
    lines = [shorten(line, LINE_CHARS) for line in str(message).splitlines() or [""]]
    errors.print(Text.assemble(("error: ", "bold red"), "\n".join(lines)))


def _anticipated() -> tuple[type[BaseException], ...]:
    """The error types that mean bad input rather than a bug. Those of modules not imported yet cannot have
    been raised, so they are not imported for this."""
    kinds: list[type[BaseException]] = [ConfigError, CheckpointError, ValidationError]
    for module, name in (("townlet.serve.app", "ServeError"), ("townlet.train.report", "ReportError"),
                         ("townlet.train.watch", "WatchError"), ("townlet.serve.sim", "SimulationError")):
        loaded = sys.modules.get(module)
        if loaded is not None:
            kinds.append(getattr(loaded, name))
    return tuple(kinds)


def describe_error(error: BaseException) -> tuple[str, int] | None:
    """(message, exit code) for an anticipated error; None for an internal one."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C); nothing more was done", EXIT_INTERRUPTED
    if isinstance(error, OSError) and error.filename is not None:
        where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 is not None else "")
        return f"{where}: {error.strerror or error}", EXIT_BAD_INPUT
    if isinstance(error, _anticipated()):
        return str(error), EXIT_BAD_INPUT
    return None


# what the command-line framework raises to end or refuse a command (a usage error prints itself); typer's own
# classes, which are click's where typer uses click and its vendored copy's where it does not
_FRAMEWORK_EXITS: tuple[type[BaseException], ...] = (
    typer.Exit, typer.Abort, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


class _Commands(TyperGroup):
    """Runs a command and turns what it raises into the messages and exit codes the module docstring lists."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _FRAMEWORK_EXITS:
            raise
        except (Exception, KeyboardInterrupt) as error:
            if ctx.meta.get("townlet.debug"):
                raise
            known = describe_error(error)
            if known is not None:
                print_error(known[0])
                raise typer.Exit(known[1]) from None
            print_error(f"internal error ({type(error).__name__}: {shorten(str(error))}); rerun with "
                        "`townlet --debug ...` for the traceback, and please report it")
            raise typer.Exit(EXIT_INTERNAL) from None


app = typer.Typer(
    help="townlet: a batched survival world for deep RL.", epilog=EXIT_CODES, no_args_is_help=True,
    cls=_Commands, pretty_exceptions_show_locals=False, rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"townlet {townlet.__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an internal error.")] = False,
    version: Annotated[bool | None, typer.Option("--version", callback=_show_version, is_eager=True,
                                                 help="Print the version and exit.")] = None,
) -> None:
    """townlet: a batched survival world for deep RL."""
    ctx.meta["townlet.debug"] = debug


def _device(name: str) -> str:
    """A --device option's value, checked against this machine (a ConfigError naming what is allowed)."""
    require_device(name, "--device")
    return name


DEVICE_HELP = "Where to run: cpu, cuda, cuda:N or mps."
SEED_HELP = "Random seed (the same seed plays the same episodes)."


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
    seed: Annotated[int, typer.Option(min=0, help=SEED_HELP)] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """Survival of the scripted reference policies: random valid actions; the needs policy with full knowledge,
    and on partial views remembering what it saw (needs-memory), knowing only its window (needs-view), remembering
    and searching the cells it has not seen (needs-explore), or knowing only its window and searching by a fixed
    round of the town (needs-sweep: no memory at all)."""
    rows = _scripted_table(levels or list(LEVEL_NAMES), episodes, agents, seed, _device(device))
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
            Text(r["level"]), r["policy"], f"{r['survival_mean']:.1f}", f"{r['survival_median']:.0f}",
            f"{r['survival_p10']:.0f}", f"{lo:.1f}–{hi:.1f}", f"{r['cap_rate']:.1%}",
            f"{causes.get('energy', 0)}/{causes.get('health', 0)}",
        )
    console.print(table)


DEMO_DIR = Path("runs/demo")


def _fail(message: str) -> typer.Exit:
    """Print `message` as an error (plain text) and return the bad-input exit to raise."""
    print_error(message)
    return typer.Exit(EXIT_BAD_INPUT)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


TRAIN_HELP = (
    "Train an agent: many agents in one batched world feed one learner; Ctrl-C stops with a checkpoint.\n\n"
    f"TARGET is a packaged level ({', '.join(LEVEL_NAMES)}), which trains its default run config; a run config "
    "(a packaged one, e.g. L2_partial_ppo or L2_partial_demonstrations, or a run YAML file); or a level YAML "
    "file, trained with the default run config of the packaged level it extends. The run config's fields, which "
    "--set changes by their dotted names (--set learner.lr=3e-4), are listed in docs/training.md."
)


@app.command(help=TRAIN_HELP)
def train(
    target: Annotated[str, typer.Argument(help="A level name (its default run config), a run config (name or "
                                          "YAML) or a level YAML file.")] = "L1_full",
    agents: Annotated[int | None, typer.Option(min=1, help="Agents stepped in parallel.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Agent-steps to train for, in total: a resumed run counts "
                                              "the steps it already trained.")] = None,
    minutes: Annotated[float | None, typer.Option(min=0.01, help="Wall-clock budget (instead of --steps), in total: "
                                                  "a resumed run counts the minutes it already trained.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help=SEED_HELP)] = None,
    device: Annotated[str | None, typer.Option(help=DEVICE_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory, new or empty (default runs/<level>-<time>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Delete the run already in --out and start afresh.")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a run config field: key=value, the key dotted (learner.lr=3e-4); repeatable. "
        "The fields: docs/training.md.")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue this run directory from its newest checkpoint; "
                                                "only the budget, --device and logging may change.")] = None,
    quiet: Annotated[bool, typer.Option(help="Plain log lines at the log interval instead of the live display "
                                        "(also when the output is not a terminal).")] = False,
    serve_: Annotated[bool, typer.Option("--serve", help="Watch it live in the browser meanwhile (townlet serve "
                                         "in a child process).")] = False,
    serve_port: Annotated[int, typer.Option(min=1, max=65535, help="The --serve page's port.")] = 8000,
) -> None:
    from townlet.train import Trainer, load_run_config, open_run, parse_overrides
    from townlet.train.config import level_file_defaults, run_config_path

    overrides = parse_overrides(set_ or [])
    if device is not None:
        _device(device)
    for key, value in (("agents", agents), ("seed", seed), ("device", device), ("steps", steps)):
        if value is not None:
            overrides[key] = value
    if minutes is not None:
        overrides["minutes"] = minutes
        if steps is None:
            overrides["steps"] = None  # the time budget alone
    elif steps is not None and resume is not None:
        overrides["minutes"] = None  # on resume, a new budget replaces the old one: the step budget alone
    if resume is not None:
        if out is not None or overwrite:
            raise ConfigError("--resume continues a run in its own directory: leave out --out and --overwrite")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedCheckpointWarning)  # said below, in a line of its own
            run = open_run(resume)
        for path, why in run.skipped:
            _say(f"skipped {why}; it will be renamed {path.name}.corrupt")
        trainer = run.resume(overrides)
        if trainer.finished:
            _say(f"{resume} has already finished its budget ({_budget(trainer)}); nothing to train. "
                 f"To train on, resume with a larger budget, e.g. --steps {2 * max(trainer.env_steps, 1)}")
            return
        _say(f"resuming {resume} from {run.checkpoint.name} at {trainer.env_steps:,} steps "
             f"(budget: {_budget(trainer)})")
        run_dir = resume
    else:
        config = load_run_config(target, overrides, source_note="--set/options" if overrides else "")
        packaged = target in LEVEL_NAMES or run_config_path(target).is_file()
        base = None if packaged else level_file_defaults(Path(target))
        if base is not None:
            _say(f"{target} is a level file: training it with the default run config of {base}")
        run_dir = out or Path("runs") / f"{Path(config.level).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        trainer = Trainer(config, run_dir, overwrite=overwrite)
    config = trainer.config
    scripted = trainer.algorithm.scripted
    count = int(scripted.sum()) if scripted is not None else 0
    guided = f" ({count} of them follow the scripted {config.guides.policy} policy)" if count else ""
    _say(f"training {config.level} with {config.agents} agents{guided} -> {run_dir}")
    climbing = config.curriculum.kind == "adversarial"
    top = trainer.curriculum.num_stages - 1
    if climbing:  # training survival is then on easier worlds than the one `eval` plays
        _say(f"each agent climbs the curriculum's stages 0 to {top} (stage {top} is the real game); training "
             "survival is on each agent's own stage, `townlet eval` plays the real game")
    with _live_view(trainer, serve_port) if serve_ else contextlib.nullcontext():
        last = _run_with_display(trainer, quiet or not sys.stdout.isatty())
    if last is not None:
        _say(_summary_line(last) + (f"; mean curriculum stage {last.stage:.2f} of {top}" if climbing else ""))
    _say(f"checkpoint written; resume with: townlet train --resume {run_dir}")
    _say(f"evaluate with: townlet eval {run_dir}    report: townlet report {run_dir}")


def _summary_line(p) -> str:
    """The one line a finished (or stopped) training run ends with."""
    return (f"done: {p.env_steps:,} agent-steps in {p.elapsed_s:,.0f} s ({p.steps_per_s:,.0f}/s this session), "
            f"{p.episodes:,} episodes; survival of the last 100: mean {_fmt(p.survival_mean)}, median "
            f"{_fmt(p.survival_median, '.0f')}")


def _budget(trainer) -> str:
    """'4,000 of 6,000 agent-steps, 0.3 of 5 minutes': how much of a run's total budget is spent."""
    config = trainer.config
    parts = []
    if config.steps is not None:
        parts.append(f"{trainer.env_steps:,} of {config.steps:,} agent-steps")
    if config.minutes is not None:
        parts.append(f"{trainer.elapsed_before / 60:.1f} of {config.minutes:g} minutes")
    return ", ".join(parts)


@contextlib.contextmanager
def _live_view(trainer, port: int) -> Iterator[None]:
    from townlet.serve import start_beside

    view = start_beside(trainer, port)
    _say(f"live view: {view.url} (it plays the newest checkpoint; log: {view.run_dir / 'serve.log'})")
    try:
        yield
    finally:
        view.stop()


def _progress_line(p) -> str:
    return (
        f"steps={p.env_steps} sps={p.steps_per_s:.0f} episodes={p.episodes} "
        f"survival_mean={_fmt(p.survival_mean)} median={_fmt(p.survival_median, '.0f')} "
        f"eps={_fmt(p.epsilon, '.3f')} loss={_fmt(p.loss, '.4f')} stage={_fmt(p.stage, '.2f')}"
        + "".join(f" {k}={v:.3g}" for k, v in p.extra.items())
    )


def _run_with_display(trainer, quiet: bool):
    """Train with the live display, or (quiet) one plain line each log interval; the last Progress seen."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    config = trainer.config
    by_time = config.minutes is not None and config.steps is None
    total = config.minutes * 60 if by_time else float(config.steps)
    last: list[Any] = [None]
    if quiet:
        every = config.logging.interval_steps
        next_line = [(trainer.env_steps // every + 1) * every]

        def log(p) -> None:
            last[0] = p
            if p.env_steps >= next_line[0]:
                next_line[0] = (p.env_steps // every + 1) * every
                typer.echo(_progress_line(p))

        trainer.run(on_progress=log)
        return last[0]
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[line]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        task = bar.add_task(escape(config.level), total=total, line="")

        def show(p) -> None:
            last[0] = p
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
    return last[0]


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
        _say(f"sweep {plan['config']}: {len(trials)} trials -> {sweep_dir}")
        outcome, files = sweeps.sweep(sweep_dir, plan, trials, resume=resume is not None, concurrent=concurrent,
                                      address=address, retries=retries,
                                      log=_say)
    except (ConfigError, sweeps.SweepError) as e:
        raise _fail(str(e)) from None
    for r in outcome.failed:
        _say(f"failed: {r['name']} seed {r['seed']}: {r['error']}")
    for path in files:
        _say(f"  {path}")
    _say(f"results: {sweep_dir / sweeps.RESULTS_MD}")
    if outcome.failed:
        _say(f"{len(outcome.failed)} trial(s) failed; run them again with: townlet sweep --resume {sweep_dir}")
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="A run directory (its newest checkpoint) or a checkpoint file.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes of the agent and of each scripted policy.")] = 1000,
    level: Annotated[str | None, typer.Option(help="Evaluate on another level (same observation size).")] = None,
    agents: Annotated[int, typer.Option(min=1, help="Episodes played in parallel.")] = 250,
    seed: Annotated[int, typer.Option(min=0, help=SEED_HELP)] = 12345,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Masked greedy evaluation at full difficulty, with the scripted policies beside it.

    An LSTM agent is also played with its memory wiped before every step: the gap is what memory is worth.
    """
    from townlet.train.evaluate import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedCheckpointWarning)  # in the output instead
        result = evaluate(run, episodes, level, agents, seed, _device(device))
    if as_json:
        typer.echo(json.dumps(result))
        return
    for skipped in result["skipped_checkpoints"]:
        _say(f"skipped {skipped['reason']}")
    _say(f"checkpoint: {result['checkpoint']} ({result['checkpoint_step']:,} agent-steps)")
    table = Table(title=Text(f"{result['level']}: {episodes} episodes, greedy at full difficulty"))
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
        uses.add_column(Text(col), justify="left" if col == "policy" else "right")
    for name, r in rows:
        uses.add_row(name, *(f"{r['uses_per_episode'][a]:.1f}" for a in used))
    console.print(uses)


def fresh_demo_dir(base: Path = DEMO_DIR) -> Path:
    """`runs/demo` if it is free (missing or empty), else the first free `runs/demo-2`, `runs/demo-3`, ...:
    a second demo never touches the first one's run."""
    candidate, n = base, 2
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(min=0.1, help="Training budget.")] = 3.0,
    out: Annotated[Path | None, typer.Option(help=f"Run directory (default {DEMO_DIR}, or {DEMO_DIR}-2, ... if it "
                                             "holds a run already).")] = None,
    overwrite: Annotated[bool, typer.Option(help=f"Replace the run in --out (default {DEMO_DIR}).")] = False,
) -> None:
    """The main job: train L1_full for a few minutes, evaluate, write the report, and say where to look."""
    if out is None:
        out = DEMO_DIR if overwrite else fresh_demo_dir()
    _say(f"demo run directory: {out}")
    train(target="L1_full", minutes=minutes, out=out, overwrite=overwrite, agents=None, steps=None, seed=None,
          device=None, set_=None, resume=None, quiet=not sys.stdout.isatty())
    eval_(run=out, episodes=1000, level=None, agents=250, seed=12345, device="cpu", as_json=False)
    report(run=out, episodes=200, scripted_episodes=50, agents=250, seed=12345, device="cpu")
    _say(f"look at: {out / 'report' / 'summary.md'} (plots beside it), "
         f"tensorboard --logdir {out / 'tb'}, metrics in {out / 'metrics.sqlite'}")
    _say(f"watch it live: townlet serve {out}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory (made by `townlet train`).")],
    episodes: Annotated[int, typer.Option(min=1, help="Greedy evaluation episodes.")] = 200,
    scripted_episodes: Annotated[int, typer.Option(min=1, help="Episodes per scripted reference policy.")] = 50,
    agents: Annotated[int, typer.Option(min=1, help="Episodes played in parallel.")] = 250,
    seed: Annotated[int, typer.Option(min=0, help=SEED_HELP)] = 12345,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
) -> None:
    """Plots (survival, return, ε/loss, causes of death, meters of one greedy episode, stage) and a Markdown
    summary with a greedy evaluation, written atomically into RUN/report/."""
    from townlet.train.report import build_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedCheckpointWarning)  # in the output instead
        result = build_report(run, episodes, scripted_episodes, seed, agents, _device(device),
                              log=lambda msg: console.print(Text(msg, style="dim")))
    for _, why in result.skipped:
        _say(f"skipped {why}")
    if result.checkpoint is not None:
        _say(f"checkpoint evaluated: {result.checkpoint}")
    if result.greedy is not None:
        _say(f"greedy survival: mean {result.greedy['survival_mean']:.1f}, "
             f"median {result.greedy['survival_median']:.0f} ticks over {result.greedy['episodes']} episodes")
    for path in result.files:
        _say(f"  {path}")
    _say(f"report written: {result.summary}")


@app.command()
def watch(
    run: Annotated[Path, typer.Argument(help="A run directory (its newest checkpoint) or a checkpoint file.")],
    level: Annotated[str | None, typer.Option(help="Play another level (same observation size).")] = None,
    speed: Annotated[float, typer.Option(min=0.0, help="Ticks/s on a terminal; 0: no delay.")] = 10.0,
    steps: Annotated[int, typer.Option(min=1, help="Stop after this many ticks if still alive.")] = 500,
    seed: Annotated[int, typer.Option(min=0, help="World seed (spawn cell, layout).")] = 0,
    record: Annotated[Path | None, typer.Option(help="Write a GIF: start + 1 frame/tick.")] = None,
    display: Annotated[bool, typer.Option(help="Show the episode (live on a terminal, log lines otherwise).")] = True,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
) -> None:
    """Watch one agent play a greedy episode: grid, meters, action, clock, survival and cause of death."""
    from townlet.train.watch import watch as play

    if not display and record is None:
        raise _fail("--no-display without --record shows and writes nothing")
    result = play(run, level, speed, steps, seed, record, display, console, _device(device))
    end = f"ended by {result.cause}" if result.cause else "still alive"
    _say(f"{result.level}: {result.ticks} ticks, {end}, return {result.episode_return:.1f}")
    if result.record is not None:
        _say(f"recorded {result.frames} frames: {result.record}")


@app.command()
def serve(
    target: Annotated[str, typer.Argument(help="A run directory (its newest checkpoint, reloaded when a newer one "
                                          "appears), a directory of runs (a page lists them; each opens on a "
                                          "click), a checkpoint file, or a level (name or YAML).")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0: any free one.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 shows the page to other machines.")]
    = "127.0.0.1",
    agents: Annotated[int, typer.Option(min=1, help="Agents in the world, each followable on the page.")] = 4,
    policy: Annotated[str | None, typer.Option(help="Who plays first: network (a run's default) or a scripted "
                                               "policy (a level's default: needs); switchable on the page.")] = None,
    speed: Annotated[int, typer.Option(min=1, max=60, help="Ticks per second at the start.")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="World seed (spawn cells, layouts).")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
) -> None:
    """Watch agents live in the browser: a local web page with the town, the meters, the network's action
    values and memory, recent episodes, and controls (pause, step, speed, next episode, agent, policy)."""
    from townlet.serve import serve as run_server

    run_server(target, host, port, agents, policy, speed, seed, _device(device), echo=_say)


def main() -> None:  # pragma: no cover - console entry point
    app()
