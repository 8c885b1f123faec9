"""Helpers to put agents in hand-chosen states."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from townlet.world import World, load_level

# Spec order: energy, hygiene, satiation, money, mood, social, health, fitness
E, HY, SA, MO, MD, SO, H, FI = range(8)


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """SB3's `learn()` makes a log folder (`/tmp/SB3-<time>` unless SB3_LOGDIR says where): keep it under
    pytest's own temporary directory, which pytest prunes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3-logs")))
        yield


def make_world(level: str = "L1_full", n: int = 1, seed: int = 0, **overrides: object) -> World:
    config = load_level(level)
    if overrides:
        config = config.model_copy(update=overrides)
    return World(config, n, seed=seed)


def place(
    world: World,
    xy: list[tuple[int, int]] | tuple[int, int],
    meters: list[float] | list[list[float]] | None = None,
    hour: int | None = None,
) -> None:
    """Put every agent at `xy` (one pair, or one per agent) with `meters` (one row, or one per agent)."""
    n = world.num_agents
    pos = torch.tensor(xy, dtype=torch.long)
    world.positions = pos.expand(n, 2).clone() if pos.dim() == 1 else pos.clone()
    if meters is not None:
        m = torch.tensor(meters, dtype=torch.float32)
        world.meters = m.expand(n, 8).clone() if m.dim() == 1 else m.clone()
    if hour is not None:
        world.hour = torch.full((n,), hour, dtype=torch.long)


def act(world: World, *actions: int):
    return world.step(torch.tensor(actions if len(actions) == world.num_agents else actions * world.num_agents))


@pytest.fixture
def l1() -> World:
    return make_world("L1_full")
