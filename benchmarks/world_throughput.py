"""World throughput: agent-steps/s of `World.step` per level and batch size, beside the plain batched
world yardstick (../shared/bench) measured in the same run on the same machine.

Actions are pre-sampled from the action mask; each figure is the median of several timed runs.
Goals on 2 CPU cores: L2_partial at N=4096 >= 3,000,000 agent-steps/s, and N=1 >= 10,000 steps/s.

    python benchmarks/world_throughput.py [--levels L1_full L2_partial] [--agents 1 4096] [--eager]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from townlet.world import LEVEL_NAMES, World, load_level

YARDSTICK = Path(__file__).resolve().parents[1].parent / "shared" / "bench"


def timed_rate(step, n_agents: int, seconds: float, repeats: int) -> float:
    """Median agent-steps/s of `step(k)` over `repeats` runs of about `seconds` each."""
    for k in range(10):
        step(k)
    rates = []
    for _ in range(repeats):
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step(steps)
            steps += 1
        rates.append(steps * n_agents / (time.perf_counter() - start))
    return statistics.median(rates)


def world_rate(level: str, n_agents: int, compiled: bool, seconds: float, repeats: int) -> float:
    # One world per process is the normal case; without a reset every earlier world's compiled variant
    # would be guard-checked first on each call.
    torch._dynamo.reset()
    world = World(load_level(level), n_agents, seed=0, compile=compiled)
    gen = torch.Generator().manual_seed(0)
    actions = []
    for _ in range(16):  # actions drawn from real masks along a trajectory
        mask = world.action_mask()
        actions.append((torch.rand(mask.shape, generator=gen) * mask).argmax(1))
        world.step(actions[-1])
    return timed_rate(lambda k: world.step(actions[k % 16]), n_agents, seconds, repeats)


def yardstick_rate(n_agents: int, seconds: float, repeats: int) -> float | None:
    if not (YARDSTICK / "plain_world.py").exists():
        return None
    sys.path.insert(0, str(YARDSTICK))
    import plain_world  # the yardstick lives outside the package, in ../shared/bench

    state = plain_world.make(n_agents)
    actions = [torch.randint(0, 5, (n_agents,)) for _ in range(8)]
    return timed_rate(lambda k: plain_world.step(state, actions[k % 8], 1), n_agents, seconds, repeats)


def machine_speed(n_agents: int) -> float | None:
    """A quick yardstick reading (about 2 s) that timed experiments record beside their results."""
    return yardstick_rate(n_agents, 0.5, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", default=list(LEVEL_NAMES))
    parser.add_argument("--agents", nargs="+", type=int, default=[1, 64, 1024, 4096, 16384])
    parser.add_argument("--eager", action="store_true", help="do not torch.compile the world")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, compiled={not args.eager}")
    base = {n: yardstick_rate(n, args.seconds, args.repeats) for n in args.agents}
    for n, rate in base.items():
        shown = f"{rate:>14,.0f}" if rate else "   (not found)"
        print(f"{'plain batched world (yardstick)':<34} N={n:>6} {shown} agent-steps/s")
    for level in args.levels:
        for n in args.agents:
            rate = world_rate(level, n, not args.eager, args.seconds, args.repeats)
            ratio = f"{rate / base[n]:5.2f}x yardstick" if base[n] else ""
            print(f"{level:<34} N={n:>6} {rate:>14,.0f} agent-steps/s  {ratio}", flush=True)


if __name__ == "__main__":
    main()
