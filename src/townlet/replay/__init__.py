"""Replay buffers: n-step transitions for DQN, stored sequences with recurrent start states for R2D2.

Both are preallocated time-major rings on any device; `add` takes one step of all agents, `sample` takes an
optional `torch.Generator` for reproducible runs, and neither synchronises with the device. Intrinsic
(curiosity) rewards are stored apart from the extrinsic ones and mixed in at sampling time by `with_intrinsic`.
"""

from townlet.replay.mix import with_intrinsic
from townlet.replay.sequence import SequenceBatch, SequenceReplay
from townlet.replay.transition import TransitionBatch, TransitionReplay

__all__ = ["SequenceBatch", "SequenceReplay", "TransitionBatch", "TransitionReplay", "with_intrinsic"]
