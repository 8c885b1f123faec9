"""Pure target math shared by the learners: masked argmax, Double-DQN targets, Huber loss.

Termination ends the bootstrap; truncation (time limit) does not, so `truncated` never appears here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.learn.value_rescale import h, h_inv


def masked_argmax(q: Tensor, mask: Tensor) -> Tensor:
    """argmax over the valid actions of q [..., A] (mask [..., A] bool) -> [...] int64.

    A row with no valid action (e.g. a don't-care mask after an episode end) falls back to all actions.
    """
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return torch.where(mask, q, torch.finfo(q.dtype).min).argmax(dim=-1)


def double_q_targets(
    rewards: Tensor,
    terminated: Tensor,
    discount: Tensor | float,
    next_q_online: Tensor,
    next_q_target: Tensor,
    next_mask: Tensor,
    double: bool = True,
    rescale: bool = False,
) -> Tensor:
    """y = r + discount * (1 - terminated) * Q_target(s')[argmax_{valid a} Q_online(s')].

    Shapes: rewards/terminated [...], next_q_* [..., A], next_mask [..., A]. With `double=False` the target
    net both selects and evaluates (plain DQN). `discount` is gamma**steps for n-step returns. With `rescale`
    the networks learn h(Q) (R2D2's value rescaling, `value_rescale.h`): y = h(r + discount * h⁻¹(next)), so a
    death's -100 and a tick's reward share one scale without clipping rewards.
    """
    chooser = next_q_online if double else next_q_target
    best = masked_argmax(chooser, next_mask)
    next_v = next_q_target.gather(-1, best.unsqueeze(-1)).squeeze(-1)
    if rescale:
        next_v = h_inv(next_v)
    # where (not multiply) so a non-finite don't-care value after termination cannot leak in.
    y = rewards + torch.where(terminated, torch.zeros_like(next_v), discount * next_v)
    return h(y) if rescale else y


def huber(x: Tensor, delta: float = 1.0) -> Tensor:
    """Elementwise Huber loss of a TD error (quadratic inside |x| < delta, linear outside)."""
    return torch.nn.functional.huber_loss(x, torch.zeros_like(x), reduction="none", delta=delta)
