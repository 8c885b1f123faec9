"""Counter-based randomness: every agent owns a reproducible stream without per-agent generator objects.

A value depends only on (seed, agent, episode, stream), so an agent's next layout or spawn cell does not
change when other agents reset, and the same seed gives the same draws on CPU and CUDA.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_AGENT = _signed(0xD6E8FEB86659FD93)
_EPISODE = _signed(0xA0761D6478BD642F)


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping arithmetic)."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def agent_randint(
    seed: int, agents: torch.Tensor, episodes: torch.Tensor, stream: int, high: int
) -> torch.Tensor:
    """One integer in [0, high) per agent for draw `stream` of its episode `episodes[i]`."""
    offset = _signed(seed * 0x9E3779B97F4A7C15 + stream * 0xE7037ED1A0B428DB)
    z = agents * _AGENT + episodes * _EPISODE + offset
    return (_shift_right(mix64(mix64(z)), 11)) % high
