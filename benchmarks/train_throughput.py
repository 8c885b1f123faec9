"""End-to-end training throughput: agent-steps/s of `Trainer` (act, step the world, store, learn) at a level's
default run config, with the updates the learner made per 1,000 agent-steps.

The baseline, measured in the same run: the plain batched world yardstick (../shared/bench) stepping the
same number of agents with no learning at all. Goals on 2 CPU cores: >= 50,000 agent-steps/s on L1_full and
>= 10,000 on L2_partial.

    python benchmarks/train_throughput.py [--levels L1_full L2_partial] [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from townlet.train import Trainer, load_run_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from world_throughput import yardstick_rate  # sibling benchmark script


def measure(level: str, seconds: float, repeats: int) -> tuple[list[float], float, int, int]:
    """(rates of each timed window, updates per 1k agent-steps, agents, warm-up steps) after warming up."""
    run_dir = Path(tempfile.mkdtemp(prefix="townlet-bench-"))
    try:
        base = load_run_config(level)
        config = load_run_config(
            level,
            {"steps": 10**12, "logging": {"tensorboard": False, "checkpoint_every": 10**12,
                                         "interval_steps": 10**12}},
        )
        trainer = Trainer(config, run_dir)
        warmup = base.learner.learning_starts + 20 * config.agents
        while trainer.env_steps < warmup:
            trainer.collect()
            trainer.algorithm.update()
            trainer.logbook.pending.clear()  # no metrics database in a benchmark
        rates = []
        steps0, updates0 = trainer.env_steps, trainer.algorithm.metrics()["updates"]
        for _ in range(repeats):
            start_steps, start = trainer.env_steps, time.perf_counter()
            while time.perf_counter() - start < seconds:
                trainer.collect()
                trainer.algorithm.update()
                trainer.logbook.pending.clear()
            rates.append((trainer.env_steps - start_steps) / (time.perf_counter() - start))
        updates = trainer.algorithm.metrics()["updates"] - updates0
        return rates, 1000 * updates / (trainer.env_steps - steps0), config.agents, warmup
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", default=["L1_full", "L2_partial"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for level in args.levels:
        rates, per_k, agents, warmup = measure(level, args.seconds, args.repeats)
        plain = yardstick_rate(agents, 1.0, 3)
        median = statistics.median(rates)
        versus = f"  plain world alone at N={agents}: {plain:,.0f} ({median / plain:.3f}x)" if plain else ""
        print(f"{level:<12} N={agents:<5} train {median:>10,.0f} agent-steps/s (median of {len(rates)} x "
              f"{args.seconds:.0f}s after {warmup:,} warm-up steps)  {per_k:.2f} updates per 1k agent-steps{versus}",
              flush=True)


if __name__ == "__main__":
    main()
