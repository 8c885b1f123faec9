"""A run directory, and the one way to open one (to resume, evaluate, watch or report).

Layout: `config.yaml` (the resolved run config), `level.yaml` (the level as trained), both written when the run
starts and never replaced, `metrics.sqlite`, `tb/` (TensorBoard), and `checkpoints/ckpt_<agent-steps>.pt` (the
newest k, each written atomically; an unreadable one is renamed `*.corrupt` when the run resumes). A run
directory is self-contained: resuming, evaluating or watching it never reads the level file it was started from.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from townlet.config_files import ConfigError, deep_merge
from townlet.train.algos import GreedyPolicy, make_greedy_policy
from townlet.train.checkpoint import (
    TEMP_SUFFIX,
    CheckpointError,
    CheckpointFormatError,
    RunDirError,
    SkippedCheckpointWarning,
    atomic_write_text,
    describe_os_error,
    load_checkpoint,
    save_state,
)
from townlet.train.config import RunConfig, load_run_config_data
from townlet.world import LevelConfig, ObsLayout, load_level

try:  # POSIX: an advisory lock that the kernel drops with its process, however it ends
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, no cleanup of other processes' files
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from townlet.train.runner import Trainer

CONFIG_FILE, LEVEL_FILE, METRICS_FILE, CHECKPOINTS = "config.yaml", "level.yaml", "metrics.sqlite", "checkpoints"
# what a run directory may hold: anything else in it is not townlet's, and --overwrite never deletes it
RUN_ENTRIES = frozenset({CONFIG_FILE, LEVEL_FILE, METRICS_FILE, f"{METRICS_FILE}-journal", f"{METRICS_FILE}-wal",
                         f"{METRICS_FILE}-shm", CHECKPOINTS, "tb", "report", "serve.log"})
# settings a resume may change; every other one built state that the checkpoint holds
RESUME_MAY_CHANGE = ("steps", "minutes", "device", "compile_world", "logging")
_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")
_STALE = {  # temporary files of atomic writes that a killed process left behind, by folder
    CHECKPOINTS: re.compile(r"^\.ckpt_\d{12}\.pt\.\w+" + re.escape(TEMP_SUFFIX) + "$"),
    "": re.compile(r"^\.(config|level)\.yaml\.\w+" + re.escape(TEMP_SUFFIX) + "$"),
}
CORRUPT_SUFFIX = ".corrupt"


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:012d}.pt"


def checkpoint_step(path: Path) -> int:
    """The agent-steps a checkpoint file was written at, from its name."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint file name (ckpt_<12 digits>.pt)")
    return int(match.group(1))


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first (files set aside as corrupt are not checkpoints)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint for `step` and keep it and the `keep - 1` newest older ones.

    Pruning deletes only checkpoints older than the one just written (whole: it was written atomically), so a
    file with a higher step, such as an unreadable one that a resumed run skipped, is never kept in its place.
    """
    path = checkpoint_path(directory, step)
    save_state(path, state)
    older = [p for p in list_checkpoints(directory) if checkpoint_step(p) < step]
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)
    return path


def _load_newest(directory: Path) -> tuple[Path, dict[str, Any], list[tuple[Path, str]]]:
    """(path, state, skipped) of the newest readable checkpoint in `directory`; `skipped`: the newer files that
    could not be read, with why. A checkpoint of another format stops the search (it is not damaged: an older
    one would silently lose its training), and so does a file that vanished meanwhile (pruned: look again)."""
    for _attempt in range(3):
        candidates = list_checkpoints(directory)
        if not candidates:
            raise CheckpointError(f"{directory}: no checkpoints (ckpt_*.pt) to resume from")
        skipped: list[tuple[Path, str]] = []
        vanished = False
        for path in reversed(candidates):
            try:
                return path, load_checkpoint(path), skipped
            except CheckpointFormatError:
                raise
            except CheckpointError as e:
                if not path.exists():  # pruned by the run that is training: list again
                    vanished = True
                    break
                skipped.append((path, str(e)))
        if not vanished:
            raise CheckpointError("no readable checkpoint: " + "; ".join(reason for _, reason in skipped))
    raise CheckpointError(f"{directory}: its checkpoints keep changing while being read; try again")


def load_latest(directory: Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint in `directory`; a corrupt newer one is reported and skipped."""
    path, state, skipped = _load_newest(directory)
    if skipped:
        _warn_skipped(skipped, path)
    return path, state


def _warn_skipped(skipped: list[tuple[Path, str]], used: Path) -> None:
    reasons = "; ".join(reason for _, reason in skipped)
    warnings.warn(f"skipped unreadable checkpoint(s): {reasons}; using {used}", SkippedCheckpointWarning,
                  stacklevel=3)


def write_run_files(run_dir: Path, config: RunConfig, level: LevelConfig) -> None:
    """The resolved run config and level, beside the checkpoints (readable without loading one). Written once,
    when a run starts: a resume never replaces them, so they stay what the run was started with."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, model in ((CONFIG_FILE, config), (LEVEL_FILE, level)):
        if not (run_dir / name).exists():
            atomic_write_text(run_dir / name, yaml.safe_dump(model.model_dump(mode="json")))


class RunLock:
    """An exclusive advisory lock (flock) on a run directory, held by the process that trains it. The kernel
    drops it when that process ends, however it ends (kill -9 included), so a lock that can be taken means no
    process is writing the run: its leftover temporary files are stale."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lock, waiting up to `wait_s` seconds; False if another holder keeps it."""
        if self._fd is not None or fcntl is None:
            return True
        fd = os.open(self.directory, os.O_RDONLY)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
                continue
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops its flock
            self._fd = None


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files that interrupted writes of checkpoints (and of config.yaml/level.yaml) left
    behind. Only call it holding the run's lock: a training process's write in progress looks the same."""
    removed = []
    for folder, pattern in _STALE.items():
        directory = Path(run_dir) / folder
        if not directory.is_dir():
            continue
        for p in directory.iterdir():
            if pattern.match(p.name):
                try:
                    p.unlink()
                except OSError:  # a read-only copy of a run: leave it
                    continue
                removed.append(p)
    return removed


def tidy_run_dir(run_dir: Path) -> list[Path]:
    """Remove stale temporary files unless a process is training the run right now (it holds the lock)."""
    lock = RunLock(run_dir)
    try:
        if not lock.acquire():
            return []
    except OSError:
        return []
    try:
        return remove_stale_temp_files(run_dir)
    finally:
        lock.release()


def set_aside(paths: list[Path]) -> list[Path]:
    """Rename unreadable checkpoints to `<name>.corrupt` (kept for a look, no longer a checkpoint: never the
    newest, never resumed from, never counted by pruning); the new names."""
    moved = []
    for path in paths:
        target = path.with_name(path.name + CORRUPT_SUFFIX)
        n = 2
        while target.exists():
            target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}-{n}")
            n += 1
        try:
            path.rename(target)
        except FileNotFoundError:
            continue
        moved.append(target)
    return moved


def describe_run_dir(path: Path) -> str:
    """'checkpoints up to agent-step 4,000, metrics.sqlite, config.yaml': what a run directory holds."""
    parts = []
    checkpoints = list_checkpoints(Path(path) / CHECKPOINTS)
    if checkpoints:
        parts.append(f"checkpoints up to agent-step {checkpoint_step(checkpoints[-1]):,}")
    parts += [name for name in (METRICS_FILE, CONFIG_FILE) if (Path(path) / name).exists()]
    return ", ".join(parts) or "files of a townlet run"


def prepare_run_dir(path: Path | str, overwrite: bool = False) -> Path:
    """Make `path` ready for a new run: a new or empty directory that can be written. A directory that holds a
    run is refused (its data would be lost) unless `overwrite`, which deletes that run first; a directory that
    holds anything townlet did not write is refused even then."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: is a file, not a directory; give --out a new (or empty) directory for the run")
    if path.is_dir():
        try:
            entries = sorted(p.name for p in path.iterdir())
        except OSError as e:
            raise RunDirError(f"{path}: cannot read the directory: {describe_os_error(e)}") from None
        foreign = [name for name in entries if name not in RUN_ENTRIES and not name.endswith(TEMP_SUFFIX)]
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise RunDirError(
                f"{path}: not empty and not (only) a townlet run: it holds {shown}; give --out a new or empty "
                "directory" + (" (--overwrite only replaces a townlet run directory)" if overwrite else ""))
        if entries and not overwrite:
            raise RunDirError(
                f"{path}: already holds a townlet run ({describe_run_dir(path)}); continue it with "
                f"`townlet train --resume {path}`, give --out a new directory, or add --overwrite to delete that "
                "run and start afresh")
        if entries:
            _clear_run_dir(path, entries)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{path}: cannot create the run directory: {describe_os_error(e)}; give --out a "
                          "directory you can write to") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".townlet-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"{path}: cannot write in the run directory: {describe_os_error(e)}; give --out a "
                          "directory you can write to") from None
    return path


def _clear_run_dir(path: Path, entries: list[str]) -> None:
    lock = RunLock(path)
    if not lock.acquire(wait_s=2.0):
        raise RunDirError(f"{path}: a process is training this run right now; stop it before --overwrite")
    try:
        for name in entries:
            entry = path / name
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
            except OSError as e:
                raise RunDirError(f"{entry}: cannot delete it for --overwrite: {describe_os_error(e)}") from None
    finally:
        lock.release()


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(old.keys() | new.keys())
                for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def check_resume_changes(old: RunConfig, new: RunConfig, source: str) -> None:
    """ConfigError naming every setting that `new` changes and a resume may not (see RESUME_MAY_CHANGE)."""
    fixed = [(key, a, b) for key, a, b in _differences(old.model_dump(mode="json"), new.model_dump(mode="json"))
             if key.split(".")[0] not in RESUME_MAY_CHANGE]
    if fixed:
        changes = ", ".join(f"{key} ({a!r} -> {b!r})" for key, a, b in fixed)
        raise ConfigError(
            f"{source}: cannot change {changes} when resuming: the checkpoint holds what the run built from them. "
            "A resume may change only the budget (--steps, --minutes), --device, compile_world and logging.*; to "
            "train with other settings, start a new run (--out NEW_DIR)")


@dataclass
class Run:
    """An opened run: its directory (None for a lone checkpoint file), its newest readable checkpoint (None if
    it has none yet), the run config and the level it trained on, and the newer checkpoints that could not be
    read (`skipped`: path and why)."""

    directory: Path | None
    checkpoint: Path | None
    config: RunConfig
    level: LevelConfig
    state: dict[str, Any] = field(repr=False, default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def step(self) -> int | None:
        """Agent-steps trained so far (at the checkpoint)."""
        return int(self.state["trainer"]["env_steps"]) if self.state else None

    def _require_checkpoint(self) -> dict[str, Any]:
        if not self.state:
            raise CheckpointError(f"{self.directory}: no checkpoints yet (ckpt_*.pt in {CHECKPOINTS}/)")
        return self.state

    def policy(self, device: torch.device | str = "cpu", level: LevelConfig | None = None) -> GreedyPolicy:
        """The trained network's greedy policy, for this run's level or another with the same observation size."""
        state = self._require_checkpoint()
        trained, wanted = ObsLayout.for_level(self.level), ObsLayout.for_level(level or self.level)
        if trained.dim != wanted.dim:
            raise CheckpointError(
                f"{self.checkpoint}: the agent was trained on {self.level.name} ({trained.dim} observation values) "
                f"and cannot play {(level or self.level).name} ({wanted.dim}); the level must have the same "
                "observation size")
        return make_greedy_policy(self.config, wanted, state["algorithm"]["network"], device)

    def resume(self, overrides: dict[str, Any] | None = None) -> Trainer:
        """A trainer that continues this run exactly where its checkpoint left it, on the level and config the
        run itself holds. `overrides` (a nested dict, as from `--set`) may change the budget, device,
        compile_world and logging; any other change is a ConfigError that names it."""
        from townlet.train.runner import Trainer

        state = self._require_checkpoint()
        if self.directory is None:
            raise CheckpointError(f"{self.checkpoint}: resume a run directory, not a lone checkpoint file")
        config = self.config
        if overrides:
            source = f"--resume {self.directory}"
            config = load_run_config_data(deep_merge(config.model_dump(mode="json"), overrides),
                                          f"{self.checkpoint} with --set/options")
            check_resume_changes(self.config, config, source)
        trainer = Trainer(config, self.directory, level=self.level, new_run=False)
        trainer.load_state_dict(state)
        trainer.last_checkpoint = self.checkpoint
        trainer.unreadable_checkpoints = [path for path, _ in self.skipped]
        return trainer


def open_run(path: Path | str, load: bool = True) -> Run:
    """A run directory (its newest readable checkpoint) or a checkpoint file. `load=False` reads only the
    config and level files (a run that has no checkpoint yet opens too). Opening a run directory that no
    process is training removes the temporary files of checkpoint writes that were interrupted."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    if path.is_file():
        state = load_checkpoint(path)
        directory = path.parent.parent if path.parent.name == CHECKPOINTS else None
        return Run(directory, path, *_config_and_level(state, path), state=state)
    if not (path / CHECKPOINTS).is_dir() and not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: not a townlet run directory (no {CHECKPOINTS}/ folder or {CONFIG_FILE})")
    tidy_run_dir(path)
    if load and list_checkpoints(path / CHECKPOINTS):
        checkpoint, state, skipped = _load_newest(path / CHECKPOINTS)
        if skipped:
            _warn_skipped(skipped, checkpoint)
        return Run(path, checkpoint, *_config_and_level(state, checkpoint), state=state, skipped=skipped)
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} and no checkpoint; is it a townlet run directory?")
    try:
        config = load_run_config_data(yaml.safe_load((path / CONFIG_FILE).read_text()), str(path / CONFIG_FILE))
        level = load_level(path / LEVEL_FILE if (path / LEVEL_FILE).is_file() else config.level)
    except (ConfigError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    checkpoints = list_checkpoints(path / CHECKPOINTS)
    return Run(path, checkpoints[-1] if checkpoints else None, config, level)


def _config_and_level(state: dict[str, Any], source: Path) -> tuple[RunConfig, LevelConfig]:
    """The run config and level a checkpoint carries (so a moved or edited level file does not matter)."""
    try:
        return RunConfig.model_validate(state["config"]), LevelConfig.model_validate(state["level"])
    except Exception as e:  # a hand-edited or foreign checkpoint
        raise CheckpointError(f"{source}: its run config or level does not validate: {e}") from None
