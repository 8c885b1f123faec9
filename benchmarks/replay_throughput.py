"""Replay throughput: `add` of one step of N agents and `sample` of a learner batch, for both buffers.

Each figure is the median over repeats (the best repeat in brackets: on a shared machine it is the better
estimate of the uncontended cost), next to a baseline timed alternately with it in the same run: one plain
`torch.Tensor.copy_` of the same number of bytes (for `add`, the bytes it reads from its arguments; for
`sample`, the bytes of the returned batch). ratio = our rate / plain-copy rate (from the medians).

    .venv/bin/python benchmarks/replay_throughput.py [--agents 4096] [--device cpu] [--repeats 9] [--threads 2]

On an oversubscribed CPU, ops big enough to run in parallel wait for the descheduled second thread (a
scheduler time slice, ~10 ms): compare `best` with the median, or run with `--threads 1`, to tell.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from townlet.replay import SequenceReplay, TransitionReplay
from townlet.world.config import load_level
from townlet.world.observation import ObsLayout

NUM_ACTIONS = 5
BURN_IN, TRAIN_LEN, HIDDEN = 8, 16, 256


@dataclass
class Timing:
    """Seconds per call of ours and of the plain copy, median and best over the repeats."""

    median: float
    best: float
    copy_median: float
    copy_best: float


def paired_timing(fn: Callable[[], object], nbytes: int, device: torch.device, repeats: int, inner: int) -> Timing:
    """Time `fn` and a plain `copy_` of `nbytes` alternately per repeat (so both see the same machine
    load), each over `inner` back-to-back calls after a warm-up."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.zeros_like(src)

    def copy() -> None:
        dst.copy_(src)

    def timed(f: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(inner):
            f()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / inner

    timed(fn)
    timed(copy)
    ours, base = [], []
    for _ in range(repeats):
        ours.append(timed(fn))
        base.append(timed(copy))
    return Timing(statistics.median(ours), min(ours), statistics.median(base), min(base))


def step_inputs(layout: ObsLayout, n: int, device: torch.device, g: torch.Generator) -> dict[str, Tensor]:
    """One realistic step of n agents: discrete fields in {-1, 0, 1}, float fields in [0, 1)."""

    def obs() -> Tensor:
        out = torch.rand(n, layout.dim, generator=g)
        for f in layout.fields:
            if f.discrete:
                out[:, f.slice] = torch.randint(-1, 2, (n, f.size), generator=g).float()
        return out.to(device)

    mask = (torch.rand(n, NUM_ACTIONS, generator=g) < 0.8).to(device)
    return {
        "obs": obs(),
        "mask": mask,
        "actions": torch.randint(0, NUM_ACTIONS, (n,), generator=g).to(device),
        "rewards": torch.rand(n, generator=g).to(device),
        "next_obs": obs(),
        "next_mask": mask.clone(),
        "terminated": (torch.rand(n, generator=g) < 0.01).to(device),
        "truncated": (torch.rand(n, generator=g) < 0.002).to(device),
    }


def batch_bytes(batch: object) -> int:
    return sum(v.numel() * v.element_size() for v in vars(batch).values())


def report(what: str, items: int, unit: str, t: Timing, nbytes: int) -> None:
    print(
        f"  {what:<35} {items / t.median / 1e6:7.3f} M {unit}/s (best {items / t.best / 1e6:7.3f})"
        f"  {t.median * 1e3:7.3f} ms/call, {nbytes / 1e6:6.2f} MB"
        f"  | plain copy_ {t.copy_median * 1e3:7.3f} ms (best {t.copy_best * 1e3:6.3f})"
        f"  ratio {t.copy_median / t.median:5.2f}"
    )


def bench_level(level: str, n: int, device: torch.device, repeats: int, rows: int) -> None:
    layout = ObsLayout.for_level(load_level(level))
    g = torch.Generator().manual_seed(0)
    step = step_inputs(layout, n, device, g)
    h = torch.zeros(1, n, HIDDEN, device=device)
    gen = torch.Generator(device=device).manual_seed(1)
    print(f"\n{level}: obs dim {layout.dim}, {n} agents, {rows} rows ({rows * n:,} transitions stored)")

    tr = TransitionReplay(rows * n, n, layout, n_step=3, device=device)
    for _ in range(rows):  # one lap first: every page of the ring is touched before timing (steady state)
        tr.add(**step)
    add_bytes = sum(t.numel() * t.element_size() for t in step.values())
    timing = paired_timing(lambda tr=tr: tr.add(**step), add_bytes, device, repeats, 32)
    report("TransitionReplay.add", n, "transitions", timing, add_bytes)
    print(f"  {'':<35} nbytes {tr.nbytes / 1e6:.1f} MB = {tr.nbytes / tr.capacity:.1f} B/transition")
    nb = batch_bytes(tr.sample(256, gen))
    timing = paired_timing(lambda tr=tr: tr.sample(256, gen), nb, device, repeats, 50)
    report("TransitionReplay.sample(256), n=3", 256, "transitions", timing, nb)
    del tr

    seq_args = {k: step[k] for k in ("obs", "mask", "actions", "rewards", "terminated", "truncated")}
    seq_args |= {"final_obs": step["next_obs"], "final_mask": step["next_mask"], "h": h, "c": h}
    # bytes read per add: the step's tensors, plus h and c once per stride (sequence start)
    seq_bytes = add_bytes + 2 * h.numel() * h.element_size() // TRAIN_LEN
    for prioritized in (False, True):
        sr = SequenceReplay(
            rows * n, n, layout, burn_in=BURN_IN, train_len=TRAIN_LEN, hidden_size=HIDDEN,
            prioritized=prioritized, device=device,
        )  # fmt: skip
        for _ in range(rows):
            sr.add(**seq_args)
        tag = "prioritized" if prioritized else "uniform"
        if not prioritized:
            timing = paired_timing(lambda sr=sr: sr.add(**seq_args), seq_bytes, device, repeats, 32)
            report("SequenceReplay.add", n, "transitions", timing, seq_bytes)
            print(f"  {'':<35} nbytes {sr.nbytes / 1e6:.1f} MB = {sr.nbytes / sr.capacity:.1f} B/transition")
        else:  # spread the priorities of a few sequences so the draw is not uniform
            b = sr.sample(256, gen)
            td = torch.rand(256, TRAIN_LEN, generator=gen, device=device)
            sr.update_priorities(b.indices, td, b.valid[:, BURN_IN:])
        nb = batch_bytes(sr.sample(32, gen))
        timing = paired_timing(lambda sr=sr: sr.sample(32, gen), nb, device, repeats, 50)
        report(f"SequenceReplay.sample(32) {tag}", 32 * (BURN_IN + TRAIN_LEN), "seq steps", timing, nb)
        print(f"  {'':<35} = {32 / timing.median:,.0f} sequences/s ({BURN_IN} burn-in + {TRAIN_LEN} train)")
        del sr


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=256, help="ring rows: capacity = rows * agents")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--levels", nargs="+", default=["L2_partial", "L1_full"])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the project standard is 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
    except OSError:
        load = "?"
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, load average {load}, "
        f"medians of {args.repeats} repeats"
    )
    for level in args.levels:
        bench_level(level, args.agents, device, args.repeats, args.rows)


if __name__ == "__main__":
    main()
