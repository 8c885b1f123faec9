"""Training runs: run configs, the training loop, metrics, checkpoints, evaluation and reports."""

from townlet.train.config import RunConfig, load_run_config, parse_overrides
from townlet.train.runner import Trainer, build_network

__all__ = ["RunConfig", "Trainer", "build_network", "load_run_config", "parse_overrides"]
