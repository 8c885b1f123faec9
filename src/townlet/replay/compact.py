"""Compact, exact ring storage of observations and the checks shared by the replay buffers.

Discrete observation fields (one-hots, presence windows) hold only -1, 0 or 1, so they are stored as int8
(4x smaller than float32) and decode bit-exactly; float fields stay float32. With a plain `obs_dim`
everything is float32, which is always exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from townlet.world.observation import ObsLayout

# (source start, source stop, stores discrete part?, start inside that part)
_Run = tuple[int, int, bool, int]


def _runs(obs: ObsLayout | int) -> tuple[int, list[_Run], int, int]:
    """Merge adjacent fields of the same kind into runs, so a write is one copy per run, not per field."""
    if isinstance(obs, ObsLayout):
        parts = [(f.start, f.stop, f.discrete) for f in obs.fields]
        dim = obs.dim
    elif isinstance(obs, int) and not isinstance(obs, bool) and obs > 0:
        parts = [(0, obs, False)]
        dim = obs
    else:
        raise ValueError(f"obs: expected an ObsLayout or a positive int obs_dim, got {obs!r}")
    merged: list[list] = []
    for start, stop, discrete in parts:
        if merged and merged[-1][2] == discrete and merged[-1][1] == start:
            merged[-1][1] = stop
        else:
            merged.append([start, stop, discrete])
    runs: list[_Run] = []
    widths = {True: 0, False: 0}
    for start, stop, discrete in merged:
        runs.append((start, stop, discrete, widths[discrete]))
        widths[discrete] += stop - start
    return dim, runs, widths[True], widths[False]


class CompactObs:
    """Observations of a `[rows, num_envs]` ring, split into an int8 part and a float32 part.

    Rows and agents are addressed by flat index `row * num_envs + env`, so a gather is one `index_select`
    per part (no Python loop over agents or time).
    """

    def __init__(self, rows: int, num_envs: int, obs: ObsLayout | int, device: torch.device) -> None:
        self.dim, self._runs, disc_dim, float_dim = _runs(obs)
        self.rows, self.num_envs = rows, num_envs
        self.discrete = torch.zeros(rows, num_envs, disc_dim, dtype=torch.int8, device=device)
        self.floats = torch.zeros(rows, num_envs, float_dim, dtype=torch.float32, device=device)
        self._plain = disc_dim == 0  # everything float32: gathers need no reassembly

    def buffers(self, prefix: str) -> dict[str, Tensor]:
        """Its storage by name, `<prefix>.discrete` and `<prefix>.floats`, for the owning ring's `_buffers`."""
        return {f"{prefix}.discrete": self.discrete, f"{prefix}.floats": self.floats}

    def write(self, row: int, obs: Tensor) -> None:
        """Store `obs` [num_envs, dim] at `row`; float -> int8 is exact for the discrete fields' values."""
        for start, stop, discrete, at in self._runs:
            part = self.discrete if discrete else self.floats
            part[row, :, at : at + stop - start].copy_(obs[:, start:stop])

    def gather(self, flat: Tensor) -> Tensor:
        """Float32 observations at flat indices `flat` (any shape) -> `[*flat.shape, dim]`."""
        idx = flat.reshape(-1)
        floats = self.floats.view(-1, self.floats.shape[-1]).index_select(0, idx)
        if self._plain:
            return floats.view(*flat.shape, self.dim)
        disc = self.discrete.view(-1, self.discrete.shape[-1]).index_select(0, idx)
        out = torch.empty(idx.shape[0], self.dim, dtype=torch.float32, device=idx.device)
        for start, stop, discrete, at in self._runs:
            out[:, start:stop].copy_((disc if discrete else floats)[:, at : at + stop - start])
        return out.view(*flat.shape, self.dim)


def nbytes(tensors: Iterable[Tensor]) -> int:
    """Bytes held by preallocated tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def action_dtype(num_actions: int) -> torch.dtype:
    """Smallest integer dtype holding every action index exactly."""
    if num_actions <= 256:
        return torch.uint8
    return torch.int16 if num_actions <= 32768 else torch.int32


def check(name: str, t: object, shape: tuple[int, ...], kind: str, *, what: str = "") -> Tensor:
    """Raise a ValueError naming `name` unless `t` is a tensor of `shape` and dtype kind.

    kind: "float" (any floating dtype), "int" (integer, not bool) or "bool".
    """
    expected = f"{name}: expected a {kind} tensor of shape {list(shape)}{what}"
    if not isinstance(t, Tensor):
        raise ValueError(f"{expected}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{expected}, got shape {list(t.shape)}")
    ok = {
        "float": t.dtype.is_floating_point,
        "int": not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool,
        "bool": t.dtype == torch.bool,
    }[kind]
    if not ok:
        raise ValueError(f"{expected}, got dtype {t.dtype}")
    return t


def check_sample_args(batch_size: int, available: int, owner: str) -> None:
    """Refuse a sample that could only return garbage (nothing complete stored yet)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if available == 0:
        raise ValueError(f"{owner}.sample: nothing is sampleable yet (len() == 0); add more steps first")


class RingState:
    """Checkpoint support for a ring buffer: its preallocated buffers, by name (`_buffers`), and its host-side
    `_total` counter. Loading matches buffers by name, so a checkpoint that lacks a buffer, or holds one this
    buffer does not have, is refused by name instead of being read into the wrong tensors."""

    _total: int

    def _buffers(self) -> dict[str, Tensor]:
        """Every preallocated tensor, by a name that stays fixed across versions."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, object]:
        """`{"total": int, "buffers": {name: tensor}}`, for checkpoints (tensors only: loadable with
        weights_only=True). The tensors are the live buffers, not copies."""
        return {"total": self._total, "buffers": self._buffers()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Copy a `state_dict()` in; ValueError (nothing changed) if its buffer names, shapes or dtypes differ."""
        owner = type(self).__name__
        buffers, own = state.get("buffers"), self._buffers()
        if not isinstance(buffers, Mapping):
            raise ValueError(f"{owner} state: expected a 'buffers' mapping of name -> tensor")
        missing = sorted(own.keys() - buffers.keys())
        unexpected = sorted(buffers.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(
                f"{owner} state: buffers differ (missing: {', '.join(missing) or 'none'}; "
                f"unexpected: {', '.join(unexpected) or 'none'}); saved by a different version?"
            )
        for name, dst in own.items():
            src = buffers[name]
            if not isinstance(src, Tensor) or dst.shape != src.shape or dst.dtype != src.dtype:
                got = f"{src.dtype} {list(src.shape)}" if isinstance(src, Tensor) else type(src).__name__
                raise ValueError(
                    f"{owner} state buffer {name!r}: expected {dst.dtype} {list(dst.shape)}, got {got} "
                    "(built with a different capacity or layout?)"
                )
        for name, dst in own.items():
            dst.copy_(buffers[name])  # type: ignore[arg-type]
        self._total = int(state["total"])  # type: ignore[call-overload]
