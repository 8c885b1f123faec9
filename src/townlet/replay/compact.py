"""Compact, exact ring storage of observations and the checks shared by the replay buffers.

Discrete observation fields (one-hots, presence windows) hold only -1, 0 or 1, so they are stored as int8
(4x smaller than float32) and decode bit-exactly; float fields stay float32. With a plain `obs_dim`
everything is float32, which is always exact.
"""

from __future__ import annotations

import math
import zlib
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
    buffer does not have, is refused by name instead of being read into the wrong tensors.

    A state holds only the part of each ring written so far (`_ring_axes`), flags packed as bits and int8
    observations compressed (lossless), so a checkpoint of a young run is small; loading restores the same
    buffer, zeros past the written part included. A state holding whole buffers (an older checkpoint) loads too.
    """

    _total: int

    def _buffers(self) -> dict[str, Tensor]:
        """Every preallocated tensor, by a name that stays fixed across versions."""
        raise NotImplementedError

    def _ring_axes(self, total: int) -> dict[str, tuple[int, int]]:
        """Buffers written in order along an axis: name -> (axis, entries written after `total` adds)."""
        return {}

    def state_dict(self) -> dict[str, object]:
        """`{"total": int, "buffers": {name: tensor}, "encoding": {name: how it is stored}, "shapes": {name: the
        whole buffer's shape}}`, for checkpoints (tensors and plain containers only: loadable with
        weights_only=True). The tensors are copies of the written part."""
        axes = self._ring_axes(self._total)
        buffers: dict[str, Tensor] = {}
        encoding: dict[str, dict[str, object]] = {}
        shapes: dict[str, list[int]] = {}
        for name, tensor in self._buffers().items():
            shapes[name] = list(tensor.shape)
            if name in axes:
                axis, written = axes[name]
                tensor = tensor.narrow(axis, 0, written)
            buffers[name], how = encode_tensor(tensor)
            if how:
                encoding[name] = how
        return {"total": self._total, "buffers": buffers, "encoding": encoding, "shapes": shapes}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Copy a `state_dict()` in; ValueError (nothing changed) if its buffer names, shapes or dtypes differ. A
        state without `shapes` holds whole buffers (as checkpoints of format 2 do)."""
        owner = type(self).__name__
        buffers, own = state.get("buffers"), self._buffers()
        encoding, shapes = state.get("encoding") or {}, state.get("shapes")
        if not isinstance(buffers, Mapping) or not isinstance(encoding, Mapping):
            raise ValueError(f"{owner} state: expected a 'buffers' mapping of name -> tensor")
        missing = sorted(own.keys() - buffers.keys())
        unexpected = sorted(buffers.keys() - own.keys())
        if missing or unexpected:
            raise ValueError(
                f"{owner} state: buffers differ (missing: {', '.join(missing) or 'none'}; "
                f"unexpected: {', '.join(unexpected) or 'none'}); saved by a different version?"
            )
        total = state.get("total")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"{owner} state: 'total' must be a count of steps >= 0, got {total!r}")
        axes = self._ring_axes(total) if isinstance(shapes, Mapping) else {}
        decoded: dict[str, Tensor] = {}
        for name, dst in own.items():
            what = f"{owner} state buffer {name!r}"
            src = decode_tensor(buffers[name], encoding.get(name), what)
            whole = list(shapes[name]) if isinstance(shapes, Mapping) and name in shapes else list(src.shape)
            if src.dtype != dst.dtype or whole != list(dst.shape):
                raise ValueError(
                    f"{what}: expected {dst.dtype} {list(dst.shape)}, got {src.dtype} {whole} "
                    "(built with a different capacity or layout?)"
                )
            stored = list(dst.shape)
            if name in axes:
                axis, written = axes[name]
                stored[axis] = written
            if list(src.shape) != stored:
                raise ValueError(f"{what}: holds shape {list(src.shape)} where {total} steps written make {stored}; "
                                 "the checkpoint is damaged")
            decoded[name] = src
        for name, dst in own.items():
            src = decoded[name]
            if name not in axes:
                dst.copy_(src)
            else:
                axis, written = axes[name]
                dst.narrow(axis, 0, written).copy_(src)
                dst.narrow(axis, written, dst.shape[axis] - written).zero_()
        self._total = total


_COMPRESSED_DTYPES = {"int8": torch.int8, "uint8": torch.uint8}
_COMPRESS_AT = 4096  # smaller tensors are stored as they are


def encode_tensor(tensor: Tensor) -> tuple[Tensor, dict[str, object] | None]:
    """A CPU copy of `tensor` to store, and how it was encoded (None: as it is). Bools become bits (8 per byte);
    int8/uint8 tensors (one-hot observations: mostly zeros) are zlib-compressed. Both are exact."""
    tensor = tensor.detach()
    shape = list(tensor.shape)
    if tensor.dtype == torch.bool and tensor.numel() > 0:
        flat = tensor.reshape(-1)
        flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 8)]).view(-1, 8).to(torch.uint8)
        bits = (flat << torch.arange(8, dtype=torch.uint8, device=flat.device)).sum(1, dtype=torch.uint8)
        return bits.cpu(), {"kind": "bits", "shape": shape}
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype in _COMPRESSED_DTYPES and tensor.numel() >= _COMPRESS_AT:
        data = zlib.compress(tensor.contiguous().cpu().numpy().tobytes(), 1)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), {"kind": "zlib", "shape": shape,
                                                                     "dtype": dtype}
    return tensor.cpu().clone(), None  # a copy: a narrowed view would save its whole (preallocated) storage


def decode_tensor(stored: object, how: object, what: str) -> Tensor:
    """The tensor `encode_tensor` stored; ValueError naming `what` if it does not decode."""
    if how is None:
        if not isinstance(stored, Tensor):
            raise ValueError(f"{what}: expected a tensor, got {type(stored).__name__}")
        return stored
    if not isinstance(how, Mapping) or not isinstance(stored, Tensor) or stored.dtype != torch.uint8:
        raise ValueError(f"{what}: an encoded buffer must be a uint8 tensor with its encoding")
    shape = [int(n) for n in how.get("shape", [])]
    count = math.prod(shape)
    try:
        if how.get("kind") == "bits":
            bits = (stored.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
            if bits.numel() < count:
                raise ValueError("too few bits")
            return bits.reshape(-1)[:count].bool().view(shape)
        if how.get("kind") == "zlib" and how.get("dtype") in _COMPRESSED_DTYPES:
            data = zlib.decompress(stored.numpy().tobytes())
            dtype = _COMPRESSED_DTYPES[str(how["dtype"])]
            if len(data) != count:
                raise ValueError(f"{len(data)} bytes for shape {shape}")
            if count == 0:
                return torch.zeros(shape, dtype=dtype)
            return torch.frombuffer(bytearray(data), dtype=dtype).view(shape)
    except (ValueError, RuntimeError, zlib.error) as e:
        raise ValueError(f"{what}: does not decode ({e}); the checkpoint is damaged") from None
    raise ValueError(f"{what}: unknown encoding {dict(how)!r}")
