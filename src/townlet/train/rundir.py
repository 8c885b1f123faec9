"""A run directory, and the one way to open one (to resume, evaluate, watch or report).

Layout: `config.yaml` (the resolved run config), `level.yaml` (the level as trained), `metrics.sqlite`, `tb/`
(TensorBoard), and `checkpoints/ckpt_<agent-steps>.pt` (the newest k, each written atomically).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from townlet.config_files import ConfigError, deep_merge
from townlet.train.algos import GreedyPolicy, make_greedy_policy
from townlet.train.checkpoint import CheckpointError, atomic_write, atomic_write_text, load_checkpoint
from townlet.train.config import RunConfig, load_run_config_data
from townlet.world import LevelConfig, ObsLayout, load_level

if TYPE_CHECKING:
    from townlet.train.runner import Trainer

CONFIG_FILE, LEVEL_FILE, METRICS_FILE, CHECKPOINTS = "config.yaml", "level.yaml", "metrics.sqlite", "checkpoints"
_NAME = re.compile(r"^ckpt_(\d{12})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:012d}.pt"


def checkpoint_step(path: Path) -> int:
    """The agent-steps a checkpoint file was written at, from its name."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise CheckpointError(f"{path}: not a checkpoint file name (ckpt_<12 digits>.pt)")
    return int(match.group(1))


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


def write_run_files(run_dir: Path, config: RunConfig, level: LevelConfig) -> None:
    """The resolved run config and level, beside the checkpoints (readable without loading one)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.model_dump(mode="json")))
    atomic_write_text(run_dir / LEVEL_FILE, yaml.safe_dump(level.model_dump(mode="json")))


@dataclass
class Run:
    """An opened run: its directory (None for a lone checkpoint file), its newest readable checkpoint (None if
    it has none yet), the run config and the level it trained on."""

    directory: Path | None
    checkpoint: Path | None
    config: RunConfig
    level: LevelConfig
    state: dict[str, Any] = field(repr=False, default_factory=dict)

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
        """A trainer that continues this run exactly where its checkpoint left it; `overrides` (a nested dict,
        as from `--set`) change the config, e.g. a larger step budget."""
        from townlet.train.runner import Trainer

        state = self._require_checkpoint()
        if self.directory is None:
            raise CheckpointError(f"{self.checkpoint}: resume a run directory, not a lone checkpoint file")
        config = self.config
        if overrides:
            source = f"{self.checkpoint} with --set/options"
            config = load_run_config_data(deep_merge(config.model_dump(mode="json"), overrides), source)
        trainer = Trainer(config, self.directory)
        trainer.load_state_dict(state)
        return trainer


def open_run(path: Path | str, load: bool = True) -> Run:
    """A run directory (its newest readable checkpoint) or a checkpoint file. `load=False` reads only the
    config and level files (a run that has no checkpoint yet opens too)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    if path.is_file():
        state = load_checkpoint(path)
        directory = path.parent.parent if path.parent.name == CHECKPOINTS else None
        return Run(directory, path, *_config_and_level(state, path), state=state)
    if not (path / CHECKPOINTS).is_dir() and not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path}: not a townlet run directory (no {CHECKPOINTS}/ folder or {CONFIG_FILE})")
    if load and list_checkpoints(path / CHECKPOINTS):
        checkpoint, state = load_latest(path / CHECKPOINTS)
        return Run(path, checkpoint, *_config_and_level(state, checkpoint), state=state)
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
