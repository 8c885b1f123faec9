"""Training: run configs, the algorithms, the loop, run directories, evaluation and reports."""

from townlet.train.algos import Algorithm, GreedyPolicy, make_algorithm
from townlet.train.config import RunConfig, load_run_config, parse_overrides
from townlet.train.rundir import Run, open_run
from townlet.train.runner import Trainer, build_run

__all__ = [
    "Algorithm",
    "GreedyPolicy",
    "Run",
    "RunConfig",
    "Trainer",
    "build_run",
    "load_run_config",
    "make_algorithm",
    "open_run",
    "parse_overrides",
]
