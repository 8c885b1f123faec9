"""The simulation thread behind a live view: it plays a `Simulation` at the chosen speed, applies the clients'
commands, reloads the network when its run writes a newer checkpoint, and fans each frame out to every client.

Every client has its own small queue that drops its oldest frame when full, and the thread never waits on a
client: a slow or closed browser tab costs the others nothing. The thread idles while nobody watches, and
`last_watched` says since when, so that a server showing many runs can stop the ones nobody has watched lately.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from townlet.config_files import ConfigError
from townlet.serve.sim import Simulation, SimulationError
from townlet.train.algos import GreedyPolicy
from townlet.train.checkpoint import CheckpointError
from townlet.train.rundir import CHECKPOINTS, list_checkpoints, open_run
from townlet.world import LevelConfig

SPEED_RANGE = (1, 60)  # ticks per second a client may ask for
COMMANDS = ("pause", "resume", "step", "speed", "next_episode", "policy")


def compact_json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


class CheckpointWatcher:
    """The newest checkpoint of a run directory: `poll` loads its greedy policy when a newer file appears.

    A file that cannot be read (a foreign or damaged one) is reported in `error` and not retried until a
    newer one replaces it; the policy already playing stays.
    """

    def __init__(self, run_dir: Path, level: LevelConfig, device: str | torch.device = "cpu") -> None:
        self.directory = Path(run_dir) / CHECKPOINTS
        self.level = level
        self.device = device
        self.seen: tuple[str, int] | None = None  # (name, mtime in ns) of the newest file looked at
        self.error: str | None = None

    def poll(self) -> tuple[GreedyPolicy, str] | None:
        """(policy, label) of a checkpoint newer than the last one looked at, else None."""
        checkpoints = list_checkpoints(self.directory)
        if not checkpoints:
            return None
        newest = checkpoints[-1]
        try:
            key = (newest.name, newest.stat().st_mtime_ns)
        except FileNotFoundError:  # replaced between the listing and now: the next poll sees its successor
            return None
        if key == self.seen:
            return None
        self.seen = key
        try:
            run = open_run(newest)
            policy = run.policy(self.device, self.level)
        except (CheckpointError, ConfigError, OSError) as e:
            self.error = str(e)
            return None
        self.error = None
        return policy, f"{newest.name} ({run.step:,} agent-steps)"


@dataclass(eq=False)  # clients are told apart by identity (kept in a set)
class Client:
    """One connected tab: the frames waiting for it (oldest dropped when full) and how many it lost."""

    frames: asyncio.Queue[str]
    dropped: int = 0


class Viewer:
    """Runs `simulation` in a thread of its own and serves its frames to clients on one asyncio loop.

    Loop side: `start(loop)`, `connect()`, `disconnect(client)`, `command(text)`, `stop()`. The thread
    owns the simulation: commands reach it through a queue, frames leave it as JSON text.
    """

    def __init__(
        self,
        simulation: Simulation,
        source: str = "",
        watcher: CheckpointWatcher | None = None,
        speed: int = 10,
        queue_size: int = 4,
        reload_every_s: float = 2.0,
        cpu_share: float | None = None,
    ) -> None:
        if not SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]:
            raise SimulationError(f"speed: {speed} ticks/s; allowed {SPEED_RANGE[0]} to {SPEED_RANGE[1]}")
        if cpu_share is not None and not 0 < cpu_share <= 1:
            raise SimulationError(f"cpu share: {cpu_share}; a fraction of one core, above 0 and at most 1")
        self.simulation = simulation
        self.source = source
        self.watcher = watcher
        self.speed = speed
        self.paused = False
        self.queue_size = queue_size
        self.reload_every_s = reload_every_s
        self.cpu_share = cpu_share  # beside training: the most of one core this process may use, so fast speeds slow
        self.capped = False  # whether the last tick came later than the speed asked, to keep to cpu_share
        self.hello_text = compact_json(simulation.hello(source))
        self.latest = ""  # the newest frame, sent first to a client that connects
        self.clients: set[Client] = set()
        self.last_watched = time.monotonic()  # when a client last came or left (a viewer never watched: its making)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commands: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ the loop's side
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load the newest checkpoint (if any), publish the first frame and start the simulation thread."""
        self._loop = loop
        if self.watcher is not None:
            self._reload()
        self._publish()
        self._thread = threading.Thread(target=self._run, name="townlet-serve-simulation", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """End the simulation thread; `wait=False` only tells it to (it ends after the tick it may be playing), so
        that the loop is never held up by a viewer it retires."""
        self._stopping = True
        self._commands.put(None)
        if wait and self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def running(self) -> bool:
        """Whether the simulation thread is alive (started and not yet ended)."""
        return self._thread is not None and self._thread.is_alive()

    def connect(self) -> Client:
        client = Client(asyncio.Queue(maxsize=self.queue_size))
        if self.latest:
            client.frames.put_nowait(self.latest)
        self.clients.add(client)
        self.last_watched = time.monotonic()
        self._commands.put({"cmd": "wake"})  # a paced thread idling for want of clients starts again
        return client

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        self.last_watched = time.monotonic()

    def command(self, text: str) -> str | None:
        """Check a client's command and queue it for the simulation; an error message (JSON) if it is bad."""
        try:
            message = json.loads(text)
        except json.JSONDecodeError:
            return command_error(f"not JSON: {text[:80]!r}")
        if not isinstance(message, dict) or message.get("cmd") not in COMMANDS:
            got = message.get("cmd") if isinstance(message, dict) else message
            return command_error(f"unknown command {got!r}; allowed: {', '.join(COMMANDS)}")
        cmd, value = message["cmd"], message.get("value")
        if cmd == "speed":
            low, high = SPEED_RANGE
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                return command_error(f"speed: {value!r}; a whole number of ticks per second from {low} to {high}")
        if cmd == "policy" and value not in self.simulation.policies:
            return command_error(f"policy: {value!r}; allowed: {', '.join(self.simulation.policies)}")
        self._commands.put({"cmd": cmd, "value": value})
        return None

    def _deliver(self, text: str) -> None:
        """On the loop: hand a frame to every client, dropping a slow client's oldest one to make room."""
        for client in self.clients:
            if client.frames.full():
                client.frames.get_nowait()
                client.dropped += 1
            client.frames.put_nowait(text)

    # ------------------------------------------------------------------ the simulation thread
    def _publish(self) -> None:
        frame = self.simulation.frame()
        frame.update(paused=self.paused, speed=self.speed, capped=self.capped,
                     notice=self.watcher.error if self.watcher is not None else None)
        self.latest = text = compact_json(frame)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the server is shutting down
                loop.call_soon_threadsafe(self._deliver, text)

    def _reload(self) -> bool:
        """Play a newer checkpoint if one appeared; whether the page should hear of it (a new network or a new
        error)."""
        if self.watcher is None:
            return False
        error = self.watcher.error
        loaded = self.watcher.poll()
        if loaded is not None:
            self.simulation.set_network(*loaded)
        return loaded is not None or self.watcher.error != error

    def _apply(self, command: dict[str, Any]) -> bool:
        """Carry out one command; whether it changed what a client should see now."""
        cmd, value, sim = command["cmd"], command.get("value"), self.simulation
        if cmd == "pause":
            self.paused = True
        elif cmd == "resume":
            self.paused = False
        elif cmd == "step":  # one tick, and stay paused
            self.paused = True
            sim.step()
        elif cmd == "speed":
            self.speed = int(value)
        elif cmd == "next_episode":
            sim.next_episode()
        elif cmd == "policy":
            sim.set_policy(value)
        else:  # wake: nothing changes
            return False
        return True

    def _cpu_paced(self, next_tick: float, now: float, cpu_before: float) -> float:
        """`next_tick`, put off so that the CPU this process spent since the last tick (stepping, encoding,
        sending) stays within `cpu_share` of the wall time between ticks."""
        if self.cpu_share is None:
            return next_tick
        earliest = now + (time.process_time() - cpu_before) / self.cpu_share
        self.capped = earliest > next_tick
        return max(next_tick, earliest)

    def _run(self) -> None:
        next_tick = time.monotonic()
        next_poll = next_tick + self.reload_every_s
        cpu_mark = time.process_time()
        while not self._stopping:
            now = time.monotonic()
            changed = False
            if now >= next_poll:
                next_poll = now + self.reload_every_s
                changed = self._reload()
            playing = not self.paused and bool(self.clients)
            if playing and now >= next_tick:
                self.simulation.step()
                changed = True
                next_tick += 1.0 / self.speed
                if next_tick <= now:  # behind (a slow tick, or idle until now): go on from here, no burst
                    next_tick = now + 1.0 / self.speed
                next_tick = self._cpu_paced(next_tick, now, cpu_mark)
                cpu_mark = time.process_time()
            if changed:
                self._publish()
            wait = min(next_poll, next_tick if playing else next_poll) - time.monotonic()
            try:
                command = self._commands.get(timeout=max(wait, 0.0))
            except queue.Empty:
                continue
            changed = False
            while command is not None:
                changed |= self._apply(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
            if changed:
                self._publish()
            if self.paused:
                next_tick = time.monotonic()


def command_error(message: str) -> str:
    return compact_json({"type": "error", "message": message})
