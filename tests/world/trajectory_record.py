"""Seeded trajectories of the world, summarised per step, so that a faster engine can be held to the old one.

`record()` plays fixed scenarios (levels, difficulties, random starts, truncations) with actions drawn from a
fixed generator, independent of the world, and keeps per step: an exact CRC of every discrete tensor (positions,
layouts, hours, use progress, dones, causes, invalid and completed flags, masks, episode lengths) and float64
sums of every float tensor (observations, plain and position-weighted, final observations of ended episodes,
rewards, meters, returns). The fixture `trajectories.json` holds what the engine recorded before its speed-up;
`python -m tests.world.trajectory_record` rewrites it (only ever from an engine known to be right).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch

from townlet.world import World, load_level

FIXTURE = Path(__file__).parent / "data" / "trajectories.json"
STEPS = 300
AGENTS = 8


def _scenario_worlds() -> dict[str, World]:
    """Each scenario exercises different rules: truncation, per-agent reward modes and depletion, random starts,
    the clock and multi-tick uses."""
    short = load_level("L1_full").model_copy(update={"max_steps": 60})
    worlds = {
        "L1_full_short": World(short, AGENTS, seed=11),
        "L2_partial_mixed": World("L2_partial", AGENTS, seed=12),
        "L3_temporal": World("L3_temporal", AGENTS, seed=13),
    }
    mixed = worlds["L2_partial_mixed"]
    mixed.set_difficulty(
        depletion=torch.linspace(0.5, 1.5, AGENTS), reward_mode=torch.arange(AGENTS) % 3
    )
    mixed.set_random_starts(0.5)
    worlds["L3_temporal"].set_random_starts(0.25)
    return worlds


def _crc(*tensors: torch.Tensor) -> int:
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.detach().to("cpu", torch.int64).contiguous().numpy().tobytes(), crc)
    return crc


def _sum(t: torch.Tensor) -> float:
    return round(float(t.detach().to("cpu", torch.float64).sum()), 6)


def _actions(gen: torch.Generator) -> torch.Tensor:
    """Mostly INTERACT (uses, payments, closed hours) and moves; some on nothing or off the grid (no-ops)."""
    draw = torch.randint(0, 8, (AGENTS,), generator=gen)
    return torch.where(draw >= 5, 4, draw)


def play(world: World, seed: int) -> list[list[Any]]:
    """One row per step: [crc of the discrete tensors, then the float sums]."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    weights = None
    for _ in range(STEPS):
        obs, reward, terminated, truncated, info = world.step(_actions(gen))
        if weights is None:
            weights = torch.arange(1, obs.shape[1] + 1, dtype=torch.float64)
        done = info["done"]
        final_obs = info["final_obs"][done]
        mask = world.action_mask()
        discrete = _crc(
            world.positions, world.layout_id, world.hour, world.progress, world.steps, world.episode, terminated,
            truncated, done, info["cause"], info["invalid"], info["completed"], info["episode_length"][done],
            info["final_mask"][done], mask, world.exploring,
        )
        rows.append([
            discrete,
            _sum(obs),
            _sum(obs.double() * weights),
            _sum(final_obs),
            _sum(final_obs.double() * weights),
            _sum(reward),
            _sum(world.meters),
            _sum(info["episode_return"]),
        ])
    return rows


def record() -> dict[str, list[list[Any]]]:
    return {name: play(world, seed=i) for i, (name, world) in enumerate(_scenario_worlds().items())}


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    data = {"steps": STEPS, "agents": AGENTS, "scenarios": record()}
    FIXTURE.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
