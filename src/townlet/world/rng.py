"""Counter-based randomness: every agent owns a reproducible stream without per-agent generator objects.

A value depends only on (seed, agent, episode, stream), so an agent's next layout or spawn cell does not
change when other agents reset, and the same seed gives the same draws on CPU and CUDA.
"""

from __future__ import annotations

from typing import Any

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


# SplitMix64's finaliser (wrapping int64 arithmetic), in place on a tensor the caller owns. Its operands as 0-dim
# tensors (eagerly, a tensor operand costs less per call than a Python int that has to be wrapped) or as plain
# ints (compiled: folded into the code).
_NUMBERS = {
    "s11": 11, "s27": 27, "s30": 30, "s31": 31, "mask11": (1 << 53) - 1, "mask27": (1 << 37) - 1,
    "mask30": (1 << 34) - 1, "mask31": (1 << 33) - 1, "mix1": _MIX1, "mix2": _MIX2, "episode": _EPISODE,
}
_CONSTANTS = {name: torch.tensor(value) for name, value in _NUMBERS.items()}


def _mix64_(z: torch.Tensor, c: dict[str, Any]) -> torch.Tensor:
    z ^= (z >> c["s30"]).bitwise_and_(c["mask30"])
    z *= c["mix1"]
    z ^= (z >> c["s27"]).bitwise_and_(c["mask27"])
    z *= c["mix2"]
    z ^= (z >> c["s31"]).bitwise_and_(c["mask31"])
    return z


def stream_offset(seed: int, stream: int) -> int:
    """The constant that selects draw `stream` of a seed."""
    return _signed(seed * 0x9E3779B97F4A7C15 + stream * 0xE7037ED1A0B428DB)


def agent_term(agents: torch.Tensor) -> torch.Tensor:
    """The agents' share of the counter, fixed for a world's life (`agent_bits` takes it precomputed)."""
    return agents * _AGENT


def agent_bits(
    agent_terms: torch.Tensor, episodes: torch.Tensor, offsets: torch.Tensor, plain: bool = False
) -> torch.Tensor:
    """[N, K] non-negative int64 of 53 random bits: one per agent (its `agent_term`) and per stream offset
    (`offsets` [K] from `stream_offset`, kept on the device), for episode `episodes[i]`. `plain`: the
    constants as Python ints (for code that is compiled)."""
    c = _NUMBERS if plain else _CONSTANTS
    z = torch.mul(episodes, c["episode"]).add_(agent_terms).unsqueeze(1) + offsets
    return _mix64_(_mix64_(z, c), c).__irshift__(c["s11"]).bitwise_and_(c["mask11"])


def bits_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1) from `agent_bits` (their top 24 bits)."""
    return _shift_right(bits, 29).float() * (1.0 / (1 << 24))

