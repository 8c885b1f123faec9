"""The exploration rate ε as a function of environment steps (not updates), so it does not depend on how
often the learner trains."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class EpsilonSchedule:
    """ε decays from `start` to `end` over `decay_steps` environment steps, then stays at `end`.

    `linear`: straight line. `exponential`: geometric, ε = start * (end / start) ** (step / decay_steps),
    so it also reaches `end` exactly at `decay_steps` (needs end > 0). `warmup_steps` holds ε at `start`
    before the decay begins (e.g. while the replay fills).
    """

    start: float = 1.0
    end: float = 0.05
    decay_steps: int = 100_000
    kind: Literal["linear", "exponential"] = "linear"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not (0.0 <= self.end <= 1.0 and 0.0 <= self.start <= 1.0):
            raise ValueError(f"epsilon start/end must be in [0, 1], got start={self.start}, end={self.end}")
        if self.decay_steps < 0 or self.warmup_steps < 0:
            raise ValueError("decay_steps and warmup_steps must be >= 0")
        if self.kind not in ("linear", "exponential"):
            raise ValueError(f"kind must be 'linear' or 'exponential', got {self.kind!r}")
        if self.kind == "exponential" and (self.start <= 0.0 or self.end <= 0.0):
            raise ValueError("exponential decay needs start > 0 and end > 0")

    def value(self, env_steps: int) -> float:
        """ε after `env_steps` environment steps."""
        step = env_steps - self.warmup_steps
        if step <= 0:
            return self.start
        if step >= self.decay_steps:
            return self.end
        frac = step / self.decay_steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * frac
        return self.start * math.exp(frac * math.log(self.end / self.start))

    __call__ = value


def agent_epsilons(epsilon: float, num_agents: int, spread: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """[N] per-agent exploration rates ε ** (1 + spread * i / (N - 1)), as Ape-X gives its actors.

    Agent 0 explores at ε, the last at ε ** (1 + spread): with ε = 0.4 and spread 7, from 0.4 down to 0.0007.
    The few explorers keep finding what the near-greedy majority has stopped trying, while the majority lives
    the long episodes that teach the late game. spread = 0 gives every agent ε.
    """
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}")
    rank = torch.arange(num_agents, dtype=torch.float64, device=device) / max(num_agents - 1, 1)
    return (epsilon ** (1.0 + spread * rank)).float()
