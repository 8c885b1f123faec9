"""Tiny batched synthetic environments for learner tests: N agents step at once, as tensors.

Actions follow the world's order: UP, DOWN, LEFT, RIGHT, INTERACT.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

LEFT, RIGHT, INTERACT = 2, 3, 4


class Step(NamedTuple):
    rewards: Tensor  # [N]
    terminated: Tensor  # [N] bool
    truncated: Tensor  # [N] bool
    final_obs: Tensor  # [N, D]: the obs right after the step, before any reset
    final_mask: Tensor  # [N, A]


class ChainEnv:
    """States A -> B -> C (one-hot obs). RIGHT/LEFT move along the chain; INTERACT at C pays +1 and ends
    the episode; nothing else pays. Episodes are truncated after `max_steps`. Optimal: RIGHT, RIGHT,
    INTERACT."""

    obs_dim = 3
    optimal = torch.tensor([RIGHT, RIGHT, INTERACT])

    def __init__(self, n: int, max_steps: int = 8) -> None:
        self.n, self.max_steps = n, max_steps
        self.pos = torch.zeros(n, dtype=torch.long)
        self.t = torch.zeros(n, dtype=torch.long)

    def obs(self) -> Tensor:
        return torch.nn.functional.one_hot(self.pos, 3).float()

    def mask(self) -> Tensor:
        m = torch.ones(self.n, 5, dtype=torch.bool)
        m[:, LEFT] = self.pos > 0
        m[:, RIGHT] = self.pos < 2
        m[:, INTERACT] = self.pos == 2
        return m

    def step(self, actions: Tensor) -> Step:
        paid = (actions == INTERACT) & (self.pos == 2)
        self.pos = (self.pos + (actions == RIGHT).long() - (actions == LEFT).long()).clamp(0, 2)
        self.t = self.t + 1
        truncated = (self.t >= self.max_steps) & ~paid
        out = Step(paid.float(), paid, truncated, self.obs(), self.mask())
        done = paid | truncated
        self.pos = torch.where(done, 0, self.pos)
        self.t = torch.where(done, 0, self.t)
        return out


class CueEnv:
    """A cue (one of two) is shown only at t = 0; then `delay - 1` blank steps; at t = delay a flag asks
    for the choice: action 0 or 1 (the only valid ones then) pays +1 if it matches the cue, else -1, and
    the episode terminates. Obs: [cue is 0, cue is 1, choose now]. Agents start at random phases."""

    obs_dim = 3

    def __init__(self, n: int, generator: torch.Generator, delay: int = 20, random_phase: bool = True) -> None:
        self.n, self.g, self.delay = n, generator, delay
        self.t = (
            torch.randint(0, delay + 1, (n,), generator=generator) if random_phase else torch.zeros(n, dtype=torch.long)
        )
        self.cue = torch.randint(0, 2, (n,), generator=generator)

    def obs(self) -> Tensor:
        first = self.t == 0
        return torch.stack([first & (self.cue == 0), first & (self.cue == 1), self.t == self.delay], dim=1).float()

    def mask(self) -> Tensor:
        m = torch.ones(self.n, 5, dtype=torch.bool)
        m[:, 2:] = (self.t != self.delay).unsqueeze(1)
        return m

    def step(self, actions: Tensor) -> Step:
        choice = self.t == self.delay
        reward = torch.where(choice, torch.where(actions == self.cue, 1.0, -1.0), 0.0)
        self.t = torch.where(choice, 0, self.t + 1)
        final_obs = torch.zeros(self.n, 3)
        out = Step(reward, choice, torch.zeros_like(choice), final_obs, torch.ones(self.n, 5, dtype=torch.bool))
        self.cue = torch.where(choice, torch.randint(0, 2, (self.n,), generator=self.g), self.cue)
        return out
