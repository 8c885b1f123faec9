"""Checkpoints and reports written atomically, loaded without unpickling arbitrary objects."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and, where one exists, an earlier one."""


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


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:012d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint for `step` and keep only the newest `keep` checkpoints."""
    path = checkpoint_path(directory, step)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file with `weights_only=True` (tensors and plain containers only)."""
    try:
        # mmap: reading the weights of a checkpoint does not read its (large) replay buffer
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable townlet checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a townlet checkpoint (no 'format' entry)")
    return state


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint in `directory`; a corrupt newer one is reported and skipped."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"{directory}: no checkpoints (ckpt_*.pt) to resume from")
    errors = []
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"skipped unreadable checkpoint(s): {'; '.join(errors)}; using {path}", stacklevel=2)
        return path, state
    raise CheckpointError("no readable checkpoint: " + "; ".join(errors))
