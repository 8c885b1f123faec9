"""Scripted reference policies: floors and ceilings that learned agents are measured against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from townlet.world.config import LevelConfig
from townlet.world.engine import INTERACT, World

Knowledge = Literal["full", "memory", "view", "explore", "sweep", "recall"]

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3


class RandomPolicy:
    """Uniformly random among the currently valid actions (the floor: about 100 ticks on L1_full)."""

    name = "random"

    def __init__(self, seed: int = 0, device: str | torch.device = "cpu") -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def act(self, world: World) -> torch.Tensor:
        mask = world.action_mask()
        noise = torch.rand(mask.shape, generator=self.generator, device=mask.device)
        return (noise * mask).argmax(dim=1)


@dataclass(frozen=True)
class NeedThresholds:
    """A meter below its threshold sends the agent to the affordance that refills it."""

    energy: float = 0.35
    satiation: float = 0.35
    health: float = 0.45
    hygiene: float = 0.25
    money: float = 0.3
    money_buffer: float = 0.7  # when nothing is urgent, work (if the Job is open) up to this much money


class NeedsPolicy:
    """Scripted agent: walk to the affordance that fixes the most urgent need, work when money runs low, finish
    multi-tick uses once started, otherwise pace.

    `knowledge` says which affordances it can walk to. `full` reads the world's true layout (the ceiling).
    On a partial view, `memory` knows every affordance that has been inside its window this episode and `view`
    only those inside it now; when the one it needs is unknown, or nothing is needed, both take a random valid
    move. The two differ only in remembering, which measures what memory is worth on a level. `explore`
    remembers as `memory` does and also which cells its window has shown: instead of a random move it walks to
    the nearest cell not yet seen (random again once it has seen them all), so its search is a function of
    what it remembers, and a learner imitating it can predict it. `sweep` knows only what it sees now, as
    `view` does, and searches by a fixed clockwise round of the town (`sweep_move`) that depends on its cell
    alone: it needs no memory at all, and every one of its actions is a function of the current observation.
    `recall` searches by the same round and remembers what it saw, as `memory` does: the two sweeping policies
    differ only in remembering, which measures what memory is worth on a level to a policy that searches well.
    """

    def __init__(
        self, world: World, thresholds: NeedThresholds | None = None, knowledge: Knowledge = "full", seed: int = 0
    ) -> None:
        if knowledge not in get_args(Knowledge):
            raise ValueError(f"knowledge: {knowledge!r} is not one of {', '.join(get_args(Knowledge))}")
        self.thresholds = thresholds or NeedThresholds()
        self.knowledge = knowledge
        self.name = "needs" if knowledge == "full" else f"needs-{knowledge}"
        self._sweeps = knowledge in ("sweep", "recall")  # searches by the round, so every step is predictable
        names = world.affordance_names
        self._ids = {name: names.index(name) if name in names else -1 for name in (
            "Bed", "HomeMeal", "Doctor", "Hospital", "Job", "Shower")}
        self._meter = {name: world.meter_names.index(name) for name in world.meter_names}
        obs = world.config.observation
        self._sight = obs.vision_range if obs.view == "partial" else world.grid_size
        self._seen = torch.zeros(world.num_agents, world.num_affordances, dtype=torch.bool, device=world.device)
        g = world.grid_size
        xs, ys = torch.meshgrid(torch.arange(g, device=world.device), torch.arange(g, device=world.device),
                                indexing="ij")
        self._cells = torch.stack([xs.flatten(), ys.flatten()], dim=1).to(world.positions.dtype)  # [G*G, 2] (x, y)
        self._seen_cells = torch.zeros(world.num_agents, g * g, dtype=torch.bool, device=world.device)
        self._generator = torch.Generator(device=world.device).manual_seed(seed)
        # [N] bool, after each `act`: the action heads for a needed affordance it knows, uses one, or (explore)
        # heads for an unseen cell; False where it is a random (or pacing) move, which a learner imitating this
        # policy cannot predict
        self.purposeful = torch.zeros(world.num_agents, dtype=torch.bool, device=world.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What it remembers this episode and its random stream: enough to continue exactly."""
        return {"seen": self._seen, "seen_cells": self._seen_cells, "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._seen = state["seen"].to(self._seen.device)
        if "seen_cells" in state:  # checkpoints written before `explore` existed lack it
            self._seen_cells = state["seen_cells"].to(self._seen_cells.device)
        self._generator.set_state(state["generator"])

    def _id(self, name: str, n: int, device: torch.device) -> torch.Tensor:
        return torch.full((n,), self._ids[name], dtype=torch.long, device=device)

    def _is_open(self, world: World, name: str) -> torch.Tensor:
        aff = self._ids[name]
        if aff < 0:
            return torch.zeros(world.num_agents, dtype=torch.bool, device=world.device)
        return world.is_open(aff)

    def _known(self, world: World) -> torch.Tensor:
        """[N, A] bool: the affordances this policy may walk to now."""
        offset = world.affordance_positions - world.positions.unsqueeze(1)
        in_view = offset.abs().amax(dim=-1) <= self._sight
        if self.knowledge in ("view", "sweep"):
            return in_view
        if self.knowledge in ("memory", "explore", "recall"):
            self._seen = torch.where((world.steps == 0).unsqueeze(1), in_view, self._seen | in_view)
            return self._seen
        return torch.ones_like(in_view)

    def _frontier(self, world: World) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest cell (Manhattan; the first in x, y order on ties) the window has not shown this episode
        [N, 2], and whether there is one [N]."""
        offset = self._cells.unsqueeze(0) - world.positions.unsqueeze(1)  # [N, G*G, 2]
        in_view = offset.abs().amax(dim=-1) <= self._sight
        self._seen_cells = torch.where((world.steps == 0).unsqueeze(1), in_view, self._seen_cells | in_view)
        distance = offset.abs().sum(dim=-1).masked_fill(self._seen_cells, offset.shape[1] * 4)
        return self._cells[distance.argmin(dim=1)], ~self._seen_cells.all(dim=1)

    def sweep_move(self, pos: torch.Tensor, grid_size: int) -> torch.Tensor:
        """[N] the clockwise round's move from each cell: on the ring of cells `sight` in from the edges, the next
        cell clockwise; elsewhere, toward the ring. From the ring the window shows every cell of a grid up to
        4 * sight + 2 wide (the 8x8 town with a 5x5 window), so one round of 4 * (G - 2 * sight - 1) moves shows
        the whole town."""
        lo = min(self._sight, (grid_size - 1) // 2)
        hi = max(grid_size - 1 - self._sight, lo + 1)
        x, y = pos[:, 0], pos[:, 1]
        move = torch.where(x < lo, RIGHT, torch.where(x > hi, LEFT, torch.where(y > hi, UP, torch.where(
            y < lo, DOWN, UP))))  # off the ring, and inside it: toward the ring (inside: up to the top side)
        on_x = (x == lo) | (x == hi)
        on_y = (y == lo) | (y == hi)
        ring = (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi) & (on_x | on_y)
        clockwise = torch.where((y == lo) & (x < hi), RIGHT, torch.where((x == hi) & (y < hi), DOWN, torch.where(
            (y == hi) & (x > lo), LEFT, UP)))
        return torch.where(ring, clockwise, move)

    @staticmethod
    def _step_toward(pos: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """The move that closes the x gap first, then the y gap (UP when already there)."""
        dx, dy = goal[:, 0] - pos[:, 0], goal[:, 1] - pos[:, 1]
        return torch.where(dx > 0, RIGHT, torch.where(dx < 0, LEFT, torch.where(dy > 0, DOWN, UP)))

    def act(self, world: World) -> torch.Tensor:
        th, m, n, dev = self.thresholds, world.meters, world.num_agents, world.device
        meter = {k: m[:, i] for k, i in self._meter.items()}
        none = torch.full((n,), -1, dtype=torch.long, device=dev)
        target = none
        # Lowest priority first: later assignments override earlier ones.
        job_open = self._is_open(world, "Job")
        target = torch.where(job_open & (meter["money"] < th.money_buffer), self._id("Job", n, dev), target)
        if self._ids["Shower"] >= 0:
            target = torch.where(meter["hygiene"] < th.hygiene, self._id("Shower", n, dev), target)
        target = torch.where(job_open & (meter["money"] < th.money), self._id("Job", n, dev), target)
        if self._ids["Doctor"] >= 0 or self._ids["Hospital"] >= 0:
            doctor = self._id("Doctor", n, dev) if self._ids["Doctor"] >= 0 else self._id("Hospital", n, dev)
            if self._ids["Hospital"] >= 0:
                doctor = torch.where(self._is_open(world, "Doctor"), doctor, self._id("Hospital", n, dev))
            target = torch.where(meter["health"] < th.health, doctor, target)
        target = torch.where(meter["satiation"] < th.satiation, self._id("HomeMeal", n, dev), target)
        target = torch.where(meter["energy"] < th.energy, self._id("Bed", n, dev), target)

        mask = world.action_mask()
        pos = world.positions
        goal = world.affordance_positions.gather(1, target.clamp(min=0).view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1)
        arrived = (goal == pos).all(dim=1)
        action = torch.where(arrived, INTERACT, self._step_toward(pos, goal))
        headed = target >= 0
        if self.knowledge == "full":
            # Pace when idle or stuck: the first valid move of LEFT, RIGHT, UP, DOWN.
            pace_order = torch.tensor([LEFT, RIGHT, UP, DOWN], device=dev)
            wander = pace_order[mask[:, pace_order].to(torch.int8).argmax(dim=1)]
            action = torch.where(target < 0, wander, action)
        else:
            if self._sweeps:  # the round of the town: on the grid from every cell, so always valid
                wander = self.sweep_move(pos, world.grid_size)
            else:
                noise = torch.rand(n, INTERACT, generator=self._generator, device=dev)
                wander = (noise * mask[:, :INTERACT]).argmax(dim=1)  # a random valid move
            known = self._known(world).gather(1, target.clamp(min=0).view(-1, 1)).squeeze(1)
            headed = headed & known
            action = torch.where(headed, action, wander)
            if self.knowledge == "explore":
                frontier, unseen_left = self._frontier(world)
                exploring = ~headed & unseen_left
                action = torch.where(exploring, self._step_toward(pos, frontier), action)
                headed = headed | exploring
        busy = (world.progress > 0) & mask[:, INTERACT]
        action = torch.where(busy, INTERACT, action)
        valid = mask.gather(1, action.view(-1, 1)).squeeze(1)
        # a sweeping policy's every step follows from what it sees (recall: has seen), its round included
        self.purposeful = ((headed | busy) & valid) | self._sweeps
        return torch.where(valid, action, wander)


# the needs policy by what it knows: "needs" reads the layout, the others are named by their `Knowledge`
NEEDS_POLICIES = ("needs", *(f"needs-{k}" for k in get_args(Knowledge) if k != "full"))
SCRIPTED_POLICIES = ("random", *NEEDS_POLICIES)


def scripted_policies(level: LevelConfig) -> tuple[str, ...]:
    """The policies worth comparing on `level`: the memory-limited ones only where the view is partial."""
    return SCRIPTED_POLICIES if level.observation.view == "partial" else SCRIPTED_POLICIES[:2]


def make_policy(name: str, world: World, seed: int = 0) -> RandomPolicy | NeedsPolicy:
    """A scripted policy by name (see `SCRIPTED_POLICIES`)."""
    if name == "random":
        return RandomPolicy(seed, world.device)
    if name == "needs":
        return NeedsPolicy(world)
    if name in NEEDS_POLICIES:
        return NeedsPolicy(world, knowledge=name.removeprefix("needs-"), seed=seed)  # type: ignore[arg-type]
    raise ValueError(f"unknown scripted policy {name!r}; allowed: {', '.join(SCRIPTED_POLICIES)}")
