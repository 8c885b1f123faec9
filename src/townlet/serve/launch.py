"""Starting a live view: what a target names (run directory, directory of runs, checkpoint file or level), the
server in the foreground for `townlet serve`, and a server in a child process beside `townlet train --serve`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from townlet.config_files import ConfigError
from townlet.serve.app import ServeError, bind, run, url_of
from townlet.serve.runs import RunsRoot, RunUnavailable, RunViewers, is_run_dir, is_runs_root
from townlet.serve.sim import NETWORK, Simulation, SimulationError
from townlet.serve.viewer import SPEED_RANGE, CheckpointWatcher, Viewer
from townlet.train.checkpoint import CheckpointError
from townlet.train.rundir import CHECKPOINTS, CONFIG_FILE, open_run, write_run_files
from townlet.world import LEVEL_NAMES, SCRIPTED_POLICIES, load_level

if TYPE_CHECKING:
    from townlet.train.runner import Trainer

MAX_AGENTS = 64
SIDE_CPU_SHARE = 0.05  # of one core: a view beside training plays slower rather than take more from it
LOG_FILE = "serve.log"  # the child server's output, in the run directory


def make_viewer(
    target: str | Path, agents: int = 4, policy: str | None = None, seed: int = 0, device: str = "cpu",
    speed: int = 10, cpu_share: float | None = None,
) -> Viewer:
    """A viewer for `target`: a run directory (its newest checkpoint, reloaded as newer ones appear; random
    play until the first), a checkpoint file, or a level (name or YAML) played by a scripted policy. (A
    directory of runs is `serve_runs`'.)"""
    if not 1 <= agents <= MAX_AGENTS:
        raise ServeError(f"--agents {agents}: choose 1 to {MAX_AGENTS}")
    path = Path(target)
    try:
        if path.is_dir():
            if not is_run_dir(path):
                raise ServeError(f"{target}: neither a run directory (no {CONFIG_FILE} or {CHECKPOINTS}/) nor a "
                                 "directory of runs (no subdirectory is a run directory)")
            opened = open_run(path, load=False)
            level = opened.level
            sim = Simulation(level, agents, seed, device, policy, wants_network=True)
            watcher = CheckpointWatcher(path, level, device)
            return Viewer(sim, f"run {path}", watcher, speed=speed, cpu_share=cpu_share)
        if path.is_file() and path.suffix == ".pt":
            opened = open_run(path)
            sim = Simulation(opened.level, agents, seed, device, policy, opened.policy(device),
                             f"{path.name} ({opened.step:,} agent-steps)")
            return Viewer(sim, f"checkpoint {path}", speed=speed, cpu_share=cpu_share)
        if not path.exists() and str(target) not in LEVEL_NAMES and path.suffix not in (".yaml", ".yml"):
            raise ServeError(f"{target}: no such run directory, checkpoint file or level; levels: "
                             f"{', '.join(LEVEL_NAMES)} (or a level YAML)")
        level = load_level(target)
        if policy == NETWORK:
            raise ServeError(f"--policy network: {target} is a level, with no trained network; give a run "
                             "directory, or a scripted policy")
        return Viewer(Simulation(level, agents, seed, device, policy), f"level {level.name}", speed=speed,
                      cpu_share=cpu_share)
    except (CheckpointError, ConfigError, SimulationError) as e:
        raise ServeError(str(e)) from None


def make_run_viewer(
    run_dir: Path, agents: int = 4, policy: str | None = None, seed: int = 0, device: str = "cpu", speed: int = 10,
) -> Viewer:
    """A viewer of one run of a runs root, its network loaded: the newest readable checkpoint (an older one
    where the newest is damaged, which the page then names). A run with none is refused (RunUnavailable)
    rather than played at random: among many runs, a page of random play would pass for a trained agent."""
    name = Path(run_dir).name
    viewer = make_viewer(run_dir, agents, policy, seed, device, speed)
    watcher = viewer.watcher
    assert watcher is not None
    loaded = watcher.poll()
    if loaded is None:
        try:
            opened = open_run(run_dir)  # tries every checkpoint, the newest first
        except CheckpointError as e:
            raise RunUnavailable(404, "no loadable checkpoint", f"run {name}: no checkpoint of it can be read ({e}); "
                                 f"resume it from an earlier one or train it again") from None
        if opened.checkpoint is None or opened.step is None:
            raise RunUnavailable(
                404, "no checkpoint yet",
                f"run {name} has no checkpoint yet ({CHECKPOINTS}/ckpt_*.pt), so there is no trained agent to "
                "show. A run writes one every logging.checkpoint_every agent-steps and when it ends (Ctrl-C "
                f"included): train it with townlet train LEVEL --out {run_dir}, or wait for its first "
                "checkpoint, then reload this page")
        try:
            loaded = opened.policy(device, watcher.level), f"{opened.checkpoint.name} ({opened.step:,} agent-steps)"
        except CheckpointError as e:
            raise RunUnavailable(404, "no loadable checkpoint", f"run {name}: {e}") from None
    viewer.simulation.set_network(*loaded)
    return viewer


def serve(
    target: str | Path, host: str = "127.0.0.1", port: int = 8000, agents: int = 4, policy: str | None = None,
    speed: int = 10, seed: int = 0, device: str = "cpu", echo: Callable[[str], None] = print,
    limit: int | None = None, cpu_share: float | None = None,
) -> None:
    """`townlet serve`: bind, say where to look, and serve until Ctrl-C. The simulation is a few agents:
    one torch thread steps it fastest. A directory of runs is served as an index of its runs, each shown on
    its first visit (at most `limit` at once)."""
    served: Viewer | RunViewers
    if is_runs_root(Path(target)):
        served = runs = serve_runs(target, agents, policy, seed, device, speed, limit)
        about = f"the runs in {target} ({len(runs.root.scan())} now; at most {runs.limit} played at once)"
    else:
        served = viewer = make_viewer(target, agents, policy, seed, device, speed, cpu_share)
        about = f"{viewer.source} ({viewer.simulation.level.name}, {agents} agent(s))"
    sock = bind(host, port)
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    echo(f"townlet serve: {about} at {url_of(sock)}   Ctrl-C stops")
    run(served, sock)


def serve_runs(
    root: str | Path, agents: int = 4, policy: str | None = None, seed: int = 0, device: str = "cpu",
    speed: int = 10, limit: int | None = None,
) -> RunViewers:
    """The runs of a runs root, each made into a viewer on its first visit (options checked now, not then)."""
    if not 1 <= agents <= MAX_AGENTS:
        raise ServeError(f"--agents {agents}: choose 1 to {MAX_AGENTS}")
    if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
        raise ServeError(f"--speed {speed}: choose {SPEED_RANGE[0]} to {SPEED_RANGE[1]} ticks/s")
    if policy is not None and policy not in (NETWORK, *SCRIPTED_POLICIES):
        raise ServeError(f"--policy {policy}: allowed: {', '.join((NETWORK, *SCRIPTED_POLICIES))}")
    make = partial(make_run_viewer, agents=agents, policy=policy, seed=seed, device=device, speed=speed)
    try:
        return RunViewers(RunsRoot(root), make, agents, **({"limit": limit} if limit is not None else {}))
    except ValueError as e:
        raise ServeError(str(e)) from None


class ViewerProcess:
    """`townlet serve RUN_DIR` in a child process beside a training run: its own interpreter with one torch
    thread, at a lower CPU priority, a low default speed and at most `cpu_share` of one core, so that watching
    costs training little. Its output goes to RUN_DIR/serve.log."""

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", port: int = 8000, speed: int = 5,
                 agents: int = 4, cpu_share: float = SIDE_CPU_SHARE) -> None:
        self.run_dir = Path(run_dir)
        self.host, self.port, self.speed, self.agents = host, port, speed, agents
        self.cpu_share = cpu_share
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the child and wait until it answers; its URL. A child that fails says why (ServeError)."""
        bind(self.host, self.port).close()  # a busy port or bad host: said now, not after the child has started
        log_path = self.run_dir / LOG_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "townlet.serve", str(self.run_dir), "--host", self.host,
                   "--port", str(self.port), "--speed", str(self.speed), "--agents", str(self.agents), "--nice", "10",
                   "--cpu-share", str(self.cpu_share)]
        with open(log_path, "wb") as log:
            # a session of its own: Ctrl-C in the terminal stops training, which then stops the view
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"http://{host}:{self.port}/"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                lines = log_path.read_text(errors="replace").strip().splitlines()
                raise ServeError(f"the live view did not start: {lines[-1] if lines else 'no output'} "
                                 f"(see {log_path})")
            with (contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                  urllib.request.urlopen(url, timeout=1) as response):
                if response.status == 200:
                    self.url = url
                    return url
            time.sleep(0.2)
        self.stop()
        raise ServeError(f"the live view did not answer at {url} within {timeout_s:.0f} s (see {log_path})")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_beside(trainer: Trainer, port: int = 8000, host: str = "127.0.0.1") -> ViewerProcess:
    """A live view of `trainer`'s run in a child process, started (the run's files written first, so the
    child can read its level before the first checkpoint)."""
    write_run_files(trainer.run_dir, trainer.config, trainer.level)
    viewer = ViewerProcess(trainer.run_dir, host, port)
    viewer.start()
    return viewer


def serve_in_background(argv: list[str] | None = None) -> None:
    """The child's entry point (`python -m townlet.serve`): `townlet serve`'s options plus `--nice`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m townlet.serve", description=ViewerProcess.__doc__)
    parser.add_argument("target")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--speed", type=int, default=5)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--nice", type=int, default=10, help="added to the CPU niceness (lower priority)")
    parser.add_argument("--cpu-share", type=float, default=SIDE_CPU_SHARE,
                        help="the most of one core the view may use; fast speeds play slower to keep to it")
    args = parser.parse_args(argv)
    os.nice(args.nice)
    try:
        serve(args.target, args.host, args.port, args.agents, speed=args.speed, echo=lambda s: print(s, flush=True),
              cpu_share=args.cpu_share)
    except ServeError as e:
        print(f"error: {e}", flush=True)
        raise SystemExit(2) from None
