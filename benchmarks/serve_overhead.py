"""What watching costs training: agent-steps/s of one training run (a level's default run config) in timed
windows without the live view, with `--serve`'s view running but unwatched, and with one websocket client (a
browser tab) watching it at the view's default 5 ticks/s and at 60 ticks/s.

The view is the child process `townlet train --serve` starts (`townlet.serve.start_beside`), playing the run's
checkpoint. The windows of one repeat follow each other within seconds, their order rotating from repeat to
repeat, and each is compared with the no-view window of its own repeat: on a shared machine whose load drifts,
these paired ratios are far steadier than rates of separate runs. Also printed: the CPU share the view's
process used in each window (from /proc). Goal: training at most 5% slower with the view watched.

    python benchmarks/serve_overhead.py [--level L1_full] [--seconds 15] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from townlet.serve import ViewerProcess, start_beside
from townlet.train import Trainer, load_run_config

ARMS = ("no view", "view, unwatched", "watched at 5 ticks/s", "watched at 60 ticks/s")
SPEEDS = {"watched at 5 ticks/s": 5, "watched at 60 ticks/s": 60}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Tab:
    """One browser tab's worth of websocket client: sets the view's speed and reads every frame until closed."""

    def __init__(self, url: str, speed: int) -> None:
        self.url, self.speed, self.frames = url.replace("http://", "ws://") + "ws", speed, 0
        self.ws = None
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(timeout=30):
            raise RuntimeError(f"{self.url}: no connection")

    def _read(self) -> None:
        with connect(self.url) as ws:
            self.ws = ws
            ws.send(json.dumps({"cmd": "speed", "value": self.speed}))
            self.ready.set()
            try:
                while True:
                    self.frames += json.loads(ws.recv()).get("type") == "frame"
            except ConnectionClosed:
                return

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        self.reader.join(timeout=5)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 without one)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_for(trainer: Trainer, seconds: float) -> float:
    """Agent-steps/s of the training loop (act, step, store, learn) over `seconds`."""
    start_steps, start = trainer.env_steps, time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.collect()
        trainer.algorithm.update()
        trainer.logbook.pending.clear()  # no metrics database in a benchmark
    return (trainer.env_steps - start_steps) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", default="L1_full")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of one timed window")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    run_dir = Path(tempfile.mkdtemp(prefix="townlet-serve-bench-"))
    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    ratios: dict[str, list[float]] = {arm: [] for arm in ARMS}
    cores: dict[str, list[float]] = {arm: [] for arm in ARMS}
    frames: dict[str, list[int]] = {arm: [] for arm in ARMS}
    try:
        config = load_run_config(args.level, {
            "steps": 10**12, "logging": {"tensorboard": False, "checkpoint_every": 10**12, "save_replay": False}})
        trainer = Trainer(config, run_dir)
        warmup = config.learner.learning_starts + 20 * config.agents
        print(f"{args.level}: {config.agents} agents, torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"warming up for {warmup:,} agent-steps", flush=True)
        while trainer.env_steps < warmup:
            trainer.collect()
            trainer.algorithm.update()
            trainer.logbook.pending.clear()
        trainer.save()  # the view plays this checkpoint
        for repeat in range(args.repeats):
            shift = repeat % (len(ARMS) - 1)
            with_view = list(ARMS[1:][shift:] + ARMS[1:][:shift])
            order = ["no view", *with_view] if repeat % 2 == 0 else [*with_view, "no view"]
            view: ViewerProcess | None = None
            measured: dict[str, float] = {}
            for arm in order:
                if arm == "no view" and view is not None:
                    view.stop()
                    view = None
                if arm != "no view" and view is None:
                    view = start_beside(trainer, free_port())
                    time.sleep(2.0)  # its start-up (imports, the checkpoint) is not what watching costs
                tab = Tab(view.url, SPEEDS[arm]) if arm in SPEEDS and view is not None else None
                time.sleep(0.5 if tab else 0.0)
                pid = view.process.pid if view is not None and view.process is not None else None
                cpu_before, start = cpu_seconds(pid), time.perf_counter()
                measured[arm] = train_for(trainer, args.seconds)
                cores[arm].append((cpu_seconds(pid) - cpu_before) / (time.perf_counter() - start))
                frames[arm].append(tab.frames if tab else 0)
                if tab is not None:
                    tab.close()
                print(f"repeat {repeat}: {arm:<24} {measured[arm]:>9,.0f} agent-steps/s  view CPU "
                      f"{100 * cores[arm][-1]:4.1f}% of a core, {frames[arm][-1]} frames", flush=True)
            if view is not None:
                view.stop()
            for arm, rate in measured.items():
                rates[arm].append(rate)
                ratios[arm].append(rate / measured["no view"])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\n{args.level} default run config, {args.repeats} repeats of {args.seconds:g} s windows (medians):")
    for arm in ARMS:
        ratio = statistics.median(ratios[arm])
        print(f"  {arm:<24} {statistics.median(rates[arm]):>9,.0f} agent-steps/s  {ratio:.3f}x the no-view "
              f"window of the same repeat ({100 * (1 - ratio):+.1f}% slower; spread {min(ratios[arm]):.3f}-"
              f"{max(ratios[arm]):.3f})  view CPU {100 * statistics.median(cores[arm]):.1f}% of a core, "
              f"{statistics.median(frames[arm]):.0f} frames")


if __name__ == "__main__":
    main()
