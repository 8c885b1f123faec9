"""World throughput: agent-steps/s of `World.step` and of the single-agent Gymnasium env (each as it comes,
and compiled), beside the plain batched world yardstick (../shared/bench) measured in the same run.

The arms take turns in short windows (yardstick, world, compiled world, env, yardstick, ...), so a machine
shared with other work slows them alike; each window's rate is divided by the yardstick's of the same round,
and the figure quoted is the median of those ratios (with the median rate). Actions are pre-sampled from the
action mask along a real trajectory; compiling happens before the timed windows.

    python benchmarks/world_throughput.py [--level L2_partial] [--agents 1 4096] [--rounds 9] [--window 0.4]
                                          [--no-compile] [--out benchmarks/results/world-throughput.txt]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from townlet.world import World, load_level
from townlet.world.gym_env import TownletEnv

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


def _plain_world():
    if not (YARDSTICK / "plain_world.py").exists():
        return None
    sys.path.insert(0, str(YARDSTICK))
    threads = torch.get_num_threads()
    import plain_world  # the yardstick lives outside the package, in ../shared/bench

    # importing it sets torch's threads for the whole process: a trial that reads the yardstick before training
    # would then train with more threads than its share of the machine (two trials on two cores: 4 threads)
    torch.set_num_threads(threads)
    return plain_world


def yardstick_step(n_agents: int) -> Callable[[int], object] | None:
    """One step of the plain batched world for `n_agents`, as `step(k)`; None where ../shared/bench is missing."""
    plain_world = _plain_world()
    if plain_world is None:
        return None
    state = plain_world.make(n_agents)
    actions = [torch.randint(0, 5, (n_agents,)) for _ in range(8)]
    return lambda k: plain_world.step(state, actions[k % 8], 1)


def yardstick_rate(n_agents: int, seconds: float, repeats: int) -> float | None:
    step = yardstick_step(n_agents)
    return None if step is None else timed_rate(step, n_agents, seconds, repeats)


def machine_speed(n_agents: int) -> float | None:
    """A quick yardstick reading (about 2 s) that timed experiments record beside their results."""
    return yardstick_rate(n_agents, 0.5, 3)


def world_step(level: str, n_agents: int, compiled: bool) -> Callable[[int], object]:
    """`World.step` on actions drawn from real masks along a trajectory (16 of them, replayed in turn)."""
    torch._dynamo.reset()  # one compiled world per process is the normal case: no earlier variants to guard
    world = World(load_level(level), n_agents, seed=0, compile=compiled)
    gen = torch.Generator().manual_seed(0)
    actions = []
    for _ in range(16):
        mask = world.action_mask()
        actions.append((torch.rand(mask.shape, generator=gen) * mask).argmax(1))
        world.step(actions[-1])
    return lambda k: world.step(actions[k % 16])


def env_step(level: str, compiled: bool = False) -> Callable[[int], object]:
    """`TownletEnv.step` (resetting when an episode ends) on uniformly drawn actions, as a Gymnasium user
    or Stable-Baselines3 drives it."""
    env = TownletEnv(level, seed=0, compile=compiled)
    env.reset()
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 5, 64)]

    def step(k: int) -> None:
        _, _, terminated, truncated, _ = env.step(actions[k % 64])
        if terminated or truncated:
            env.reset()

    return step


def cpu_name() -> str:
    """The processor's model name where Linux reports it, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def window_rate(step: Callable[[int], object], n_agents: int, seconds: float) -> float:
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(steps)
        steps += 1
    return steps * n_agents / (time.perf_counter() - start)


def compare(arms: dict[str, Callable[[int], object]], n_agents: int, rounds: int, seconds: float) -> dict:
    """Interleaved windows; per arm the median rate and the median (and range) of its ratio to the
    yardstick's window in the same round."""
    for step in arms.values():
        for k in range(20):  # warm-up (allocations, caches, a compiled graph's first calls)
            step(k)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            rates[name].append(window_rate(arms[name], n_agents, seconds))
    result = {}
    for name in names:
        ratios = [a / b for a, b in zip(rates[name], rates["yardstick"], strict=True)]
        result[name] = (statistics.median(rates[name]), statistics.median(ratios), min(ratios), max(ratios))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="L2_partial")
    parser.add_argument("--agents", nargs="+", type=int, default=[1, 4096])
    parser.add_argument("--rounds", type=int, default=9, help="windows per arm, taken in turn")
    parser.add_argument("--window", type=float, default=0.4, help="seconds per window")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled world")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(2)

    lines = [
        f"$ python {' '.join(sys.argv)}",
        f"{datetime.date.today().isoformat()}, {cpu_name()} ({os.cpu_count()} cores), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, level {args.level}, "
        f"{args.rounds} rounds of {args.window} s windows",
        f"{'arm':<28} {'N':>6} {'agent-steps/s':>14} {'ratio to yardstick (median, range)':>38}",
    ]
    print("\n".join(lines), flush=True)
    for n in args.agents:
        yardstick = yardstick_step(n)
        if yardstick is None:
            raise SystemExit(f"the yardstick {YARDSTICK / 'plain_world.py'} is missing")
        arms = {"yardstick": yardstick, "World (default)": world_step(args.level, n, compiled=False)}
        if not args.no_compile:
            start = time.perf_counter()
            arms["World (compile=True)"] = world_step(args.level, n, compiled=True)
            arms["World (compile=True)"](0)  # the first call compiles
            lines.append(f"(compiled for N={n} in {time.perf_counter() - start:.0f} s, or loaded if compiled before)")
            print(lines[-1], flush=True)
        if n == 1:
            arms["TownletEnv (Gymnasium)"] = env_step(args.level)
            if not args.no_compile:
                arms["TownletEnv (compile=True)"] = env_step(args.level, compiled=True)
        for name, (rate, ratio, low, high) in compare(arms, n, args.rounds, args.window).items():
            line = f"{name:<28} {n:>6} {rate:>14,.0f} {ratio:>20.2f}x ({low:.2f}-{high:.2f})"
            lines.append(line)
            print(line, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_suffix(".tmp")
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(args.out)


if __name__ == "__main__":
    main()
