"""Pieces both learners share: the online/target pair, the optimizer step, checkpoint state."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from townlet.learn.target_sync import TargetSync


@dataclass
class OptimConfig:
    """Adam, gradient clipping, target-network schedule. No defaults: the run config
    (`townlet.train.config`) is the one place that has them. `grad_clip=None`: no clipping. `tau=None`:
    hard copy every `target_update_every` updates; else Polyak with `tau` every `target_update_every`
    updates. `value_rescale`: the networks learn h(Q), R2D2's rescaled values (`double_q_targets`)."""

    gamma: float
    lr: float
    adam_eps: float
    grad_clip: float | None
    huber_delta: float
    double: bool
    target_update_every: int
    tau: float | None
    value_rescale: bool


def make_adam(params: list[nn.Parameter], lr: float, eps: float) -> torch.optim.Optimizer:
    """Fused Adam where the parameters allow it (one fused kernel: fewer launches than foreach), else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # pragma: no cover - devices/dtypes without a fused kernel
        return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


class OnlineTargetLearner:
    """An online network trained by Adam, and a frozen target copy updated by `TargetSync`."""

    def __init__(self, network: nn.Module, config: OptimConfig) -> None:
        self.config = config
        self.online = network
        self.target = copy.deepcopy(network).requires_grad_(False)
        for m in self.target.modules():
            if isinstance(m, nn.RNNBase):  # keep cuDNN's single weight chunk after the copy
                m.flatten_parameters()
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = make_adam(self.params, config.lr, config.adam_eps)
        self.sync = TargetSync(config.target_update_every, config.tau)
        self.updates = 0

    def set_lr(self, lr: float) -> None:
        """Change Adam's learning rate (the runner's schedule); the moment estimates stay."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _step(self, loss: Tensor) -> Tensor:
        """Backward, clip, Adam step, target schedule; returns the pre-clip gradient norm (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        self.optimizer.step()
        self.updates += 1
        self.sync(self.target, self.online, self.updates)
        return grad_norm.detach()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training."""
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        # a copy: Optimizer.load_state_dict may alias the given tensors, which the source keeps updating
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.updates = int(state["updates"])
