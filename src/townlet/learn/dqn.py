"""DQN for the full-view levels: online + target MLP, Double DQN over valid actions, n-step, Huber."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from townlet.learn.batches import TransitionBatchLike
from townlet.learn.common import OnlineTargetLearner, OptimConfig
from townlet.learn.targets import double_q_targets, huber


@dataclass
class DQNConfig(OptimConfig):
    """`gamma` must match the replay's n-step gamma: rewards arrive pre-summed, the bootstrap uses
    gamma**steps."""


@torch.no_grad()
def compute_targets(
    batch: TransitionBatchLike, online: nn.Module, target: nn.Module, gamma: float, double: bool = True,
    rescale: bool = False,
) -> Tensor:
    """Targets [B]: r + gamma**steps * Q_target(s')[argmax_valid Q_online(s')], no bootstrap if terminated.

    Truncated rows bootstrap from `next_obs` (the final obs): a time limit is not a death.
    """
    next_q_target = target(batch.next_obs)
    next_q_online = online(batch.next_obs) if double else next_q_target
    discount = gamma ** batch.steps.to(batch.rewards.dtype)
    return double_q_targets(
        batch.rewards, batch.terminated, discount, next_q_online, next_q_target, batch.next_mask, double, rescale
    )


class DQNLearner(OnlineTargetLearner):
    """`update(batch)` does one gradient step and returns detached stats; the runner feeds `td_abs` to a
    prioritized replay if it has one."""

    def __init__(self, network: nn.Module, config: DQNConfig) -> None:
        super().__init__(network, config)

    def compute_targets(self, batch: TransitionBatchLike) -> Tensor:
        c = self.config
        return compute_targets(batch, self.online, self.target, c.gamma, c.double, c.value_rescale)

    def update(self, batch: TransitionBatchLike) -> dict[str, Tensor]:
        """One step. Stats (all detached tensors): loss, q_mean, target_mean, td_abs [B], td_abs_mean,
        grad_norm."""
        targets = self.compute_targets(batch)
        q = self.online(batch.obs)
        q_taken = q.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        td = targets - q_taken
        loss = (batch.weights * huber(td, self.config.huber_delta)).mean()
        grad_norm = self._step(loss)
        td_abs = td.detach().abs()
        return {
            "loss": loss.detach(),
            "q_mean": q_taken.detach().mean(),
            "target_mean": targets.mean(),
            "td_abs": td_abs,
            "td_abs_mean": td_abs.mean(),
            "grad_norm": grad_norm,
        }
