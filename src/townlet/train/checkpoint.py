"""Files written atomically, and checkpoints loaded without unpickling arbitrary objects."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FORMAT = 2  # the layout of a checkpoint's state; a change that old code cannot read bumps it


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be used; the message names the file and why."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it into place.

    A killed process leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are meant to be shared
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file with `weights_only=True` (tensors and plain containers only)."""
    try:
        # mmap: reading the weights of a checkpoint does not read its (large) replay buffer
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable townlet checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a townlet checkpoint (no 'format' entry)")
    if state["format"] != FORMAT:
        age = "an older" if int(state["format"]) < FORMAT else "a newer"
        raise CheckpointError(
            f"{path}: checkpoint format {state['format']} was written by {age} townlet; this one reads format "
            f"{FORMAT} only")
    return state
