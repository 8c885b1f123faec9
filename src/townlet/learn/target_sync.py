"""Target-network updates: a hard copy every K updates, or Polyak averaging (soft updates)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def hard_update(target: nn.Module, online: nn.Module) -> None:
    """target <- online (parameters and buffers)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.copy_(o)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online; buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


class TargetSync:
    """Called once per learner update: every `every` updates, a hard copy (tau None) or a Polyak step with
    `tau` (use every=1 for the usual soft update after each step)."""

    def __init__(self, every: int = 1000, tau: float | None = None) -> None:
        if every < 1:
            raise ValueError(f"target update period must be >= 1, got {every}")
        if tau is not None and not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.every = every
        self.tau = tau

    def __call__(self, target: nn.Module, online: nn.Module, updates: int) -> bool:
        """Apply the update if `updates` (count so far, after this one) is due; returns whether it ran."""
        if updates % self.every != 0:
            return False
        if self.tau is None or self.tau == 1.0:
            hard_update(target, online)
        else:
            polyak_update(target, online, self.tau)
        return True
