"""The `townlet` command line."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from townlet.world import LEVEL_NAMES, SCRIPTED_POLICIES, ConfigError, World, load_level, make_policy, run_episodes

app = typer.Typer(help="townlet: a batched survival world for deep RL.", no_args_is_help=True)
console = Console() if sys.stdout.isatty() else Console(width=140)


def _scripted_table(levels: list[str], episodes: int, agents: int, seed: int, device: str) -> list[dict]:
    rows = []
    for level in levels:
        for name in SCRIPTED_POLICIES:
            world = World(load_level(level), agents, device=device, seed=seed)
            policy = make_policy(name, world, seed)
            stats = run_episodes(world, lambda obs, w, p=policy: p.act(w), episodes).summary()
            rows.append({"level": level, "policy": name, **stats})
    return rows


@app.command()
def policies(
    levels: Annotated[list[str] | None, typer.Argument(help="Levels (names or YAML paths); default: all.")] = None,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per level and policy.")] = 500,
    agents: Annotated[int, typer.Option(min=1, help="Agents stepped in parallel.")] = 250,
    seed: int = 0,
    device: str = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list instead of a table.")] = False,
) -> None:
    """Survival of the scripted reference policies (random valid actions, full-knowledge needs)."""
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


@app.command()
def demo() -> None:
    """The main job on a fresh machine: for now, the scripted policies on every level."""
    policies(levels=None, episodes=500, agents=250, seed=0, device="cpu", as_json=False)


def main() -> None:  # pragma: no cover - console entry point
    app()
