"""A fingerprint of a seeded training run's metrics rows, to show that a change to the code left training alone.

Trains a level's default run config for a fixed number of agent-steps (seed 7, one thread, world not compiled),
then prints a SHA-256 of every episode row and every learner row (wall-clock columns left out). Run it before and
after a refactor on the same machine: equal hashes mean the same episodes, losses and Q-values.

    python benchmarks/metrics_fingerprint.py L1_full L2_partial_fixed --steps 200000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

from townlet.train import Trainer, load_run_config
from townlet.train.metrics import read_metrics


def fingerprint(level: str, steps: int, run_dir: Path) -> tuple[str, int, int]:
    """(sha256 of the rows, episode rows, learner rows) of a fresh seeded run."""
    config = load_run_config(level, {"steps": steps, "seed": 7, "compile_world": False,
                                     "logging": {"interval_steps": 20_000, "tensorboard": False}})
    Trainer(config, run_dir).run()
    episodes, learner = read_metrics(run_dir)
    for row in learner:
        row.pop("wall_s")
        row.pop("steps_per_s")
    text = json.dumps({"episodes": episodes, "learner": learner}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), len(episodes), len(learner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("levels", nargs="+")
    parser.add_argument("--steps", type=int, default=200_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for level in args.levels:
        with tempfile.TemporaryDirectory(prefix="townlet-fingerprint-") as tmp:
            sha, episodes, rows = fingerprint(level, args.steps, Path(tmp) / "run")
        print(f"{level:<18} {args.steps:,} agent-steps  {episodes} episodes  {rows} learner rows  sha256 {sha[:16]}")


if __name__ == "__main__":
    main()
