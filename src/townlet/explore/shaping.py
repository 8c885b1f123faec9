"""Potential-based reward shaping (Ng, Harada & Russell 1999) on the meters.

The task reward pays for surviving, so what keeps an agent alive is paid only when a death it would have died
does not come: the money earned at the Job counts 100-200 ticks later, when the agent can still pay for the
Bed. Shaping adds F = γ Φ(s') − Φ(s) to every stored reward, with Φ(s) = weight · Σ_meters √meter, read off
the observation, and Φ = 0 after a death. Working while broke, sleeping while tired, eating while hungry then
pay at once, and more the lower the meter they raise (√ is concave). Being a difference of potentials, the
shaping sums over any stretch of an episode to γ^k Φ(s_k) − Φ(s_0): it does not change which policy is optimal,
n-step returns stay consistent, and a truncated episode bootstraps from Φ of its last state like any other.
Only replay sees it: episode returns and evaluation keep the level's reward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.world.observation import ObsLayout


class MeterPotential:
    """Φ(obs) = weight · Σ √meters, and the shaping term for a batch of transitions."""

    def __init__(self, layout: ObsLayout, weight: float, gamma: float) -> None:
        if weight <= 0:
            raise ValueError(f"shaping weight must be > 0, got {weight}")
        if not 0 < gamma <= 1:
            raise ValueError(f"shaping gamma must be in (0, 1], got {gamma}")
        self.meters = layout["meters"].slice
        self.weight, self.gamma = weight, gamma

    def potential(self, obs: Tensor) -> Tensor:
        """[...] float: weight · Σ √meter over the observation's meters (each in [0, 1])."""
        return self.weight * obs[..., self.meters].clamp(min=0.0).sqrt().sum(dim=-1)

    def reward(self, obs: Tensor, next_obs: Tensor, terminated: Tensor) -> Tensor:
        """[N] γ Φ(next_obs) − Φ(obs), with Φ = 0 after a death (`terminated`); next_obs is the transition's
        true next observation (the final one where an episode ended)."""
        after = torch.where(terminated.bool(), 0.0, self.potential(next_obs))
        return self.gamma * after - self.potential(obs)
