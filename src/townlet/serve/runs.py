"""Many runs behind one server: `townlet serve runs/` lists the run directories of a runs root and shows each at
`/run/<name>`.

`RunsRoot` finds the runs, re-reading the directory on every request (runs that appear later are listed) and
resolving a name only to a subdirectory that really lies inside the root. `RunViewers` makes a run's `Viewer`
on its first visit and shares it between every tab watching that run; it keeps at most `limit` of them alive,
stopping the one left unwatched longest to make room for another, and stops any left unwatched for
`idle_stop_s`, so a crawler walking every run's page cannot start a simulation thread per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from townlet.serve.viewer import Viewer
from townlet.train.rundir import CHECKPOINTS, CONFIG_FILE, LEVEL_FILE, METRICS_FILE, checkpoint_step, list_checkpoints

MAX_VIEWERS = 4  # simulations one server keeps alive at once
IDLE_STOP_S = 300.0  # a run's simulation nobody has watched for this long is stopped (made again on the next visit)


class RunUnavailable(Exception):
    """A run the server cannot show: the page's status, title and a message that says why and what to do."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def is_run_dir(path: Path) -> bool:
    """A townlet run directory: what `open_run` accepts (its config file, or a checkpoints folder)."""
    return (path / CONFIG_FILE).is_file() or (path / CHECKPOINTS).is_dir()


def is_runs_root(path: Path) -> bool:
    """A directory that is not a run itself but holds at least one run directory."""
    if not path.is_dir() or is_run_dir(path):
        return False
    with contextlib.suppress(OSError):
        return any(child.is_dir() and is_run_dir(child) for child in path.iterdir())
    return False


@dataclass(frozen=True)
class RunSummary:
    """One run as the index lists it: `steps` is its newest checkpoint's agent-steps (None: no checkpoint yet),
    `modified` the newest time any of its files changed, `problem` why its config could not be read."""

    name: str
    path: Path
    level: str
    algorithm: str
    steps: int | None
    modified: float
    problem: str | None = None


class RunsRoot:
    """The run directories directly under `root`, found anew at every call."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._real = self.root.resolve()
        self._configs: dict[str, tuple[int, tuple[str, str, str | None]]] = {}  # name -> (config mtime, fields)

    def scan(self) -> list[RunSummary]:
        """Every run, the most recently changed first."""
        try:
            children = sorted(self.root.iterdir())
        except OSError:
            return []
        runs = [run for run in map(self._summary, children) if run is not None]
        return sorted(runs, key=lambda r: (-r.modified, r.name))

    def find(self, name: str) -> RunSummary | None:
        """The run called `name`, or None: a name is one plain path component (no `/`, `..` or leading dot) of a
        run directory inside the root, symbolic links followed and kept inside it."""
        if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            return None
        return self._summary(self.root / name)

    def _summary(self, path: Path) -> RunSummary | None:
        if path.name.startswith("."):
            return None
        try:
            real = path.resolve()
            inside = real != self._real and real.is_relative_to(self._real)
            if not inside or not path.is_dir() or not is_run_dir(path):
                return None
            checkpoints = list_checkpoints(path / CHECKPOINTS)
            newest = checkpoints[-1] if checkpoints else None
            stamps = [path.stat().st_mtime]
            stamps += [p.stat().st_mtime for p in (path / CONFIG_FILE, path / METRICS_FILE, newest)
                       if p is not None and p.exists()]
        except (OSError, RuntimeError):  # vanished meanwhile, unreadable, or a symbolic-link loop
            return None
        level, algorithm, problem = self._config_fields(path)
        return RunSummary(path.name, path, level, algorithm, checkpoint_step(newest) if newest else None,
                          max(stamps), problem)

    def _config_fields(self, path: Path) -> tuple[str, str, str | None]:
        """(level, algorithm, problem) from the run's config file, re-read only when it changes."""
        config_path = path / CONFIG_FILE
        try:
            mtime = config_path.stat().st_mtime_ns
        except OSError:
            return "?", "?", f"no {CONFIG_FILE}"
        cached = self._configs.get(path.name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            config = yaml.safe_load(config_path.read_text())
            if not isinstance(config, dict):
                raise ValueError("not a mapping")
            level = str(config.get("level", "?"))
            if level.endswith((".yaml", ".yml")) and (path / LEVEL_FILE).is_file():  # a level file: its own name
                level = str((yaml.safe_load((path / LEVEL_FILE).read_text()) or {}).get("name", level))
            fields: tuple[str, str, str | None] = (level, str(config.get("algorithm", "?")), None)
        except (OSError, ValueError, AttributeError, yaml.YAMLError) as e:
            fields = ("?", "?", f"{CONFIG_FILE} unreadable: {type(e).__name__}")
        self._configs[path.name] = (mtime, fields)
        return fields


class RunViewers:
    """The live simulations of a runs root's runs: one per run, made on its first visit (by `make`, in a worker
    thread, one at a time) and shared by every tab watching it; at most `limit` alive at once.

    Loop side only: `start(loop)`, `await get(run)`, `stop()`. A run's simulation nobody watches idles (its
    thread steps nothing); one unwatched for `idle_stop_s` is stopped, and so is the longest-unwatched one when
    another run needs its place. When all `limit` are watched, another run is refused (503) until a tab closes.
    """

    def __init__(
        self,
        root: RunsRoot,
        make: Callable[[Path], Viewer],
        agents: int,
        limit: int = MAX_VIEWERS,
        idle_stop_s: float = IDLE_STOP_S,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit: {limit}; at least 1 live simulation")
        self.root, self.make, self.agents, self.limit, self.idle_stop_s = root, make, agents, limit, idle_stop_s
        self.viewers: dict[str, Viewer] = {}
        self.made = 0  # simulations made so far
        self.retired = 0  # simulations stopped to make room or for want of watchers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._making: asyncio.Lock | None = None
        self._reaper: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._making = asyncio.Lock()
        self._reaper = loop.create_task(self._stop_idle())

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for viewer in self.viewers.values():
            viewer.stop(wait=False)
        for viewer in self.viewers.values():
            viewer.stop()
        self.viewers.clear()

    async def get(self, run: RunSummary) -> Viewer:
        """The live simulation of `run`, made if it has none; RunUnavailable says why a run cannot be shown."""
        viewer = self.viewers.get(run.name)
        if viewer is not None:
            return viewer
        assert self._making is not None and self._loop is not None, "start(loop) first"
        async with self._making:
            viewer = self.viewers.get(run.name)  # made while this request waited for the one before it
            if viewer is not None:
                return viewer
            self._make_room(run.name, dry_run=True)  # refused before a checkpoint is loaded for nothing
            try:
                viewer = await asyncio.to_thread(self.make, run.path)
            except RunUnavailable:
                raise
            except ValueError as e:  # ServeError, SimulationError: a config or option this run cannot take
                raise RunUnavailable(500, "cannot show this run", f"run {run.name}: {e}") from None
            self._make_room(run.name)
            viewer.start(self._loop)
            self.viewers[run.name] = viewer
            self.made += 1
            return viewer

    def watchers(self, name: str) -> int | None:
        """How many tabs watch run `name` (None: it has no live simulation)."""
        viewer = self.viewers.get(name)
        return None if viewer is None else len(viewer.clients)

    def _unwatched(self) -> list[str]:
        """The live simulations nobody watches, the longest unwatched first."""
        idle = [name for name, viewer in self.viewers.items() if not viewer.clients]
        return sorted(idle, key=lambda name: self.viewers[name].last_watched)

    def _make_room(self, wanted: str, dry_run: bool = False) -> None:
        unwatched = self._unwatched()
        excess = len(self.viewers) + 1 - self.limit
        if excess > len(unwatched):
            watched = ", ".join(sorted(set(self.viewers) - set(unwatched)))
            raise RunUnavailable(
                503, "too many runs watched",
                f"run {wanted}: this server plays at most {self.limit} runs at once, and tabs are watching all of "
                f"them ({watched}); close the tab of one of those and reload this page")
        if not dry_run:
            for name in unwatched[:max(excess, 0)]:
                self._retire(name)

    def _retire(self, name: str) -> None:
        self.viewers.pop(name).stop(wait=False)
        self.retired += 1

    async def _stop_idle(self) -> None:
        while True:
            await asyncio.sleep(min(max(self.idle_stop_s / 4, 0.02), 5.0))
            now = time.monotonic()
            for name in self._unwatched():
                if now - self.viewers[name].last_watched >= self.idle_stop_s:
                    self._retire(name)
