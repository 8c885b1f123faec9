"""Scripted reference policies: floors and ceilings that learned agents are measured against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from townlet.world.engine import INTERACT, World

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
    """Full-knowledge scripted agent: walk to the affordance that fixes the most urgent need, work when money
    runs low, finish multi-tick uses once started, otherwise pace. Reads the world's true state."""

    name = "needs"

    def __init__(self, world: World, thresholds: NeedThresholds | None = None) -> None:
        self.thresholds = thresholds or NeedThresholds()
        names = world.affordance_names
        self._ids = {name: names.index(name) if name in names else -1 for name in (
            "Bed", "HomeMeal", "Doctor", "Hospital", "Job", "Shower")}
        self._meter = {name: world.meter_names.index(name) for name in world.meter_names}

    def _id(self, name: str, n: int, device: torch.device) -> torch.Tensor:
        return torch.full((n,), self._ids[name], dtype=torch.long, device=device)

    def _is_open(self, world: World, name: str) -> torch.Tensor:
        aff = self._ids[name]
        if aff < 0:
            return torch.zeros(world.num_agents, dtype=torch.bool, device=world.device)
        return world.is_open(aff)

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
        dx, dy = goal[:, 0] - pos[:, 0], goal[:, 1] - pos[:, 1]
        step = torch.where(dx > 0, RIGHT, torch.where(dx < 0, LEFT, torch.where(dy > 0, DOWN, UP)))
        arrived = (dx == 0) & (dy == 0)
        # Pace when idle or stuck: the first valid move of LEFT, RIGHT, UP, DOWN.
        pace_order = torch.tensor([LEFT, RIGHT, UP, DOWN], device=dev)
        pace = pace_order[mask[:, pace_order].to(torch.int8).argmax(dim=1)]
        action = torch.where(arrived, INTERACT, step)
        action = torch.where(target < 0, pace, action)
        busy = (world.progress > 0) & mask[:, INTERACT]
        action = torch.where(busy, INTERACT, action)
        valid = mask.gather(1, action.view(-1, 1)).squeeze(1)
        return torch.where(valid, action, pace)


def make_policy(name: str, world: World, seed: int = 0):
    """A scripted policy by name: `random` or `needs`."""
    if name == "random":
        return RandomPolicy(seed, world.device)
    if name == "needs":
        return NeedsPolicy(world)
    raise ValueError(f"unknown scripted policy {name!r}; allowed: random, needs")


SCRIPTED_POLICIES = ("random", "needs")
