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


def stream_offset(seed: int, stream: int) -> int:
    """The constant that selects draw `stream` of a seed."""
    return _signed(seed * 0x9E3779B97F4A7C15 + stream * 0xE7037ED1A0B428DB)


def _bits(agents: torch.Tensor, episodes: torch.Tensor, offset: int | torch.Tensor) -> torch.Tensor:
    """53 random bits (as a non-negative int64) per (agent, episode, offset)."""
    return _shift_right(mix64(mix64(agents * _AGENT + episodes * _EPISODE + offset)), 11)


def agent_randint(
    seed: int, agents: torch.Tensor, episodes: torch.Tensor, stream: int, high: int
) -> torch.Tensor:
    """One integer in [0, high) per agent for draw `stream` of its episode `episodes[i]`."""
    return _bits(agents, episodes, stream_offset(seed, stream)) % high


def agent_uniform(agents: torch.Tensor, episodes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """[N, K] float32 in [0, 1): one draw per agent and per stream, `offsets` [K] from `stream_offset` (kept on
    the device by the caller, so drawing needs no host-to-device copy)."""
    bits = _bits(agents.view(-1, 1), episodes.view(-1, 1), offsets.view(1, -1))
    return _shift_right(bits, 29).float() * (1.0 / (1 << 24))
