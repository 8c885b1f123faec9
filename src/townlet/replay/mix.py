"""Mixing the separately stored intrinsic rewards into a sampled batch, with the weight of the moment."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from townlet.replay.sequence import SequenceBatch
from townlet.replay.transition import TransitionBatch

B = TypeVar("B", TransitionBatch, SequenceBatch)


def with_intrinsic(batch: B, weight: float) -> B:
    """A copy of `batch` whose `rewards` are `rewards + weight * intrinsic` (other fields shared, not copied).

    Extrinsic and intrinsic rewards are stored apart, so the intrinsic weight in force at sampling time
    applies to every stored transition, however old. For a TransitionBatch both are n-step discounted sums
    over the same steps, so the mix is the n-step return of the mixed reward; for a SequenceBatch both are
    per step, and a sequence's continuation is mixed too. A weight of 0 returns the rewards unchanged (the same
    tensor, even if intrinsics are missing).
    """
    if weight == 0.0:
        return dataclasses.replace(batch)
    if batch.intrinsic is None:
        raise ValueError(f"with_intrinsic: the {type(batch).__name__} has no intrinsic rewards (intrinsic=None)")
    mixed = dataclasses.replace(batch, rewards=batch.rewards + weight * batch.intrinsic)
    if isinstance(mixed, SequenceBatch) and mixed.continuation is not None:
        mixed.continuation = with_intrinsic(mixed.continuation, weight)
    return mixed
