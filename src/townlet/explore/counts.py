"""Count-based exploration (MBIE-EB, Strehl & Littman 2008): a bonus of 1 / sqrt(N) for an action taken
N times, over all agents and the whole run, in the same situation.

A situation is the agent's cell, the affordance on it, and which meters are low (below `low_meter`). The
affordance makes a key mean the same on fixed and random layouts ("INTERACT on the Job" stays one key
wherever the Job lies). The low meters make it matter *when* an action is tried: the early random phase
works at the Job often, but with money to spare, so working while broke stays rare, and so does walking
anywhere off the usual loop while broke. Unlike RND's novelty of a whole observation, the bonus is for a
(situation, action) pair: trying an action in a familiar place counts. Everything stays on `device`;
nothing synchronises with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.world import World
from townlet.world.config import METER_NAMES
from townlet.world.engine import NUM_ACTIONS

MAX_KEYS = 1 << 26  # 512 MiB of float64 counts


class VisitCounts:
    """How often each (cell, affordance on it, low meters, action) has been taken; `bonus` counts a batch of
    agents about to act and scores each of their pairs."""

    def __init__(self, grid_size: int, num_affordances: int, low_meter: float = 0.3,
                 device: str | torch.device = "cpu") -> None:
        self.grid_size, self.num_affordances, self.low_meter = grid_size, num_affordances, low_meter
        places = grid_size * grid_size * (num_affordances + 1)  # +1: no affordance on the cell
        keys = places * NUM_ACTIONS << len(METER_NAMES)
        if keys > MAX_KEYS:
            raise ValueError(f"VisitCounts: a {grid_size}x{grid_size} grid with {num_affordances} affordances needs "
                             f"{keys:,} counts, more than {MAX_KEYS:,}")
        self.counts = torch.zeros(keys, dtype=torch.float64, device=torch.device(device))
        self._bits = 1 << torch.arange(len(METER_NAMES), device=self.counts.device)

    def keys(self, world: World, actions: Tensor) -> Tensor:
        """Key of each agent's (cell, affordance on it or none, low meters, action) in `world` now: [N] int64."""
        cell = world.positions[:, 1] * self.grid_size + world.positions[:, 0]
        place = cell * (self.num_affordances + 1) + world.affordance_here() + 1
        low = ((world.meters < self.low_meter).long() * self._bits).sum(dim=1)
        return ((place << len(METER_NAMES)) + low) * NUM_ACTIONS + actions

    def bonus(self, world: World, actions: Tensor) -> Tensor:
        """Count the pairs `actions` are about to take in `world`, then return 1 / sqrt(N) for each: [N]
        float32. Call it before the step. Agents taking the same pair in the same step all count, so a pair
        256 agents take at once is already familiar after that step."""
        key = self.keys(world, actions)
        self.counts.index_add_(0, key, torch.ones_like(key, dtype=self.counts.dtype))
        return self.counts[key].rsqrt().float()

    def state_dict(self) -> dict[str, Tensor]:
        return {"counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        counts = state["counts"]
        if counts.shape != self.counts.shape:
            raise ValueError(f"VisitCounts state: expected {self.counts.numel():,} counts (grid {self.grid_size}, "
                             f"{self.num_affordances} affordances), got {counts.numel():,}")
        self.counts.copy_(counts)
