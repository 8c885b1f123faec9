"""What the learners read from a replay batch. Structural types, so the learners depend only on the fields
(`townlet.replay.TransitionBatch` / `SequenceBatch` satisfy them, and so do hand-built test batches)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class TransitionBatchLike(Protocol):
    """One n-step transition per row. `rewards` is the discounted sum of `steps` rewards (stopping at an
    episode end); bootstrap from `next_obs` with gamma**steps unless `terminated`."""

    obs: Tensor  # [B, D]
    actions: Tensor  # [B] int64
    rewards: Tensor  # [B]
    next_obs: Tensor  # [B, D]
    next_mask: Tensor  # [B, A] bool
    terminated: Tensor  # [B] bool
    truncated: Tensor  # [B] bool
    steps: Tensor  # [B] int64
    weights: Tensor  # [B]


class SequenceBatchLike(Protocol):
    """B sequences of T = burn_in + train_len steps; obs[:, t + 1] follows step t. `valid` is True up to
    and including the first episode end; (h0, c0) is the stored LSTM state before obs[:, 0].
    `continuation` (or None): the next episode of each sequence, as a batch of the same shape whose step j is
    step `continuation.start` + j of this one (see `townlet.replay.SequenceBatch`). `demo` marks the
    sequences whose actions came from a guide, for the large-margin imitation loss."""

    obs: Tensor  # [B, T + 1, D]
    masks: Tensor  # [B, T + 1, A] bool
    actions: Tensor  # [B, T] int64
    rewards: Tensor  # [B, T]
    terminated: Tensor  # [B, T] bool
    truncated: Tensor  # [B, T] bool
    valid: Tensor  # [B, T] bool
    h0: Tensor  # [layers, B, H]
    c0: Tensor  # [layers, B, H]
    weights: Tensor  # [B]
    continuation: SequenceBatchLike | None
    start: Tensor | None  # [B] int64, on a continuation
    demo: Tensor | None  # [B] bool: the sequence's actions are a guide's demonstration (or None: none are)
    advice: Tensor | None  # [B, T] int64: what a guide would have done at each step (or None)
