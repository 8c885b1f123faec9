"""Files written atomically, and checkpoints loaded without unpickling arbitrary objects."""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The layout of a checkpoint's state; a change that old code cannot read bumps it. Format 3 stores the replay
# buffer's filled rows only (flags as bits, discrete observations compressed); format 2 stored it whole.
FORMAT = 3
READABLE_FORMATS = (2, 3)
TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: `.<name>.<random>.tmp` beside the file they become


class CheckpointError(ValueError):
    """A run directory or checkpoint that cannot be used; the message names the file and why."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint of a format this townlet does not read: not damaged, so never skipped or set aside."""


class SkippedCheckpointWarning(UserWarning):
    """The newest checkpoint(s) of a run could not be read; an older one was used."""


class RunDirError(CheckpointError):
    """A run directory that cannot be created, written or reused; the message names the path and what to do."""


class RunWriteError(RunDirError, OSError):
    """Writing a run's file failed (a full disk, a read-only file system); `errno` is the system's error code.

    Also an OSError, so code that guards a write with `except OSError` still catches it."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code  # type: ignore[misc]


def describe_os_error(e: OSError) -> str:
    """'no space left on device (ENOSPC)': the system's words and the code's name, which users search for."""
    code = e.errno
    name = errno.errorcode.get(code, "") if code is not None else ""
    text = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    text = text[0].lower() + text[1:] if text else text
    return f"{text} ({name})" if name else text


def write_error(path: Path, e: BaseException) -> RunWriteError:
    """A RunWriteError naming `path` for a failed write: the system's error when there is one, else (torch's
    C++ writer loses errno: 'basic_ios::clear: iostream error') ENOSPC when the disk has no room left."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        try:
            if shutil.disk_usage(Path(path).parent).free < 1 << 20:
                code = errno.ENOSPC
        except OSError:
            pass
    if code is not None:
        reason = describe_os_error(e if isinstance(e, OSError) and e.errno else OSError(code, os.strerror(code)))
    else:
        reason = f"{type(e).__name__}: {e}"
    hint = {
        errno.ENOSPC: "free some space on that disk (or train into a run directory on another one)",
        errno.EDQUOT: "free some space within your disk quota",
        errno.EROFS: "the file system is read-only; choose a writable run directory",
        errno.EACCES: "you may not write there; choose a writable run directory",
    }.get(code or 0, "")
    return RunWriteError(
        f"cannot write {path}: {reason}; the unfinished file was removed and any earlier {Path(path).name} is "
        f"untouched{'; ' + hint if hint else ''}", code)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it into place.

    A killed process leaves either the old file or the new one, never half of one (only a stray temporary file,
    which `remove_stale_temp_files` clears). A failed write (a full disk) removes the temporary file and raises
    RunWriteError naming `path` and the system's reason.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
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
    except RunWriteError:
        raise
    except OSError as e:
        raise write_error(path, e) from e
    except RuntimeError as e:  # torch.save's C++ writer: "basic_ios::clear: iostream error", "failed writing"
        raise write_error(path, e) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


class _KeepsWriteError:
    """A file for torch.save that remembers why a write failed: torch's writer replaces that OSError (a full
    disk: ENOSPC) by a RuntimeError about stream positions."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.file.flush()


def save_state(path: Path, state: dict[str, Any]) -> None:
    """`torch.save(state)` to `path` atomically; a failed write raises RunWriteError with the system's reason."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            out = _KeepsWriteError(f)
            try:
                torch.save(state, out)
            except RuntimeError:
                if out.error is not None:
                    raise out.error from None
                raise

    atomic_write(path, write)


_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")  # torch's two wordings


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file with `weights_only=True` (tensors and plain containers only)."""
    try:
        # mmap: reading the weights of a checkpoint does not read its (large) replay buffer
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        # torch's own advice here is to load it with weights_only=False, which would run whatever it holds
        found = _GLOBAL.search(str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: holds Python objects{what} other than tensors and plain containers, which townlet refuses to "
            "unpickle (unpickling can run any code); the file is treated as untrusted or corrupt and not loaded"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it: {describe_os_error(e)}") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        detail = str(e).split(". ")[0].strip()  # torch goes on with advice about saving; the first sentence says it
        raise CheckpointError(f"{path}: not a readable townlet checkpoint, damaged or truncated ({type(e).__name__}: "
                              f"{detail})") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path}: not a townlet checkpoint (no 'format' entry)")
    written = state["format"]
    if written not in READABLE_FORMATS:
        readable = " and ".join(str(f) for f in READABLE_FORMATS)
        if isinstance(written, int) and not isinstance(written, bool):
            age = "an older" if written < min(READABLE_FORMATS) else "a newer"
            raise CheckpointFormatError(
                f"{path}: checkpoint format {written} was written by {age} townlet; this one reads formats "
                f"{readable}" + ("; upgrade townlet to use it" if age == "a newer" else ""))
        raise CheckpointFormatError(
            f"{path}: unknown checkpoint format {written!r} (this townlet reads formats {readable}); not a townlet "
            "checkpoint, or a damaged one")
    return state
