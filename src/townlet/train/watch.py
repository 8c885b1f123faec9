"""Watch one agent live: a greedy episode shown in the terminal (rich) and/or recorded as a GIF.

`greedy_episode` plays one masked-greedy episode on a one-agent world and yields a `Frame` per tick (the
start state first); `report.py` uses it for its meters plot. `render_rich` / `render_line` / `render_image`
draw a frame for a live terminal, a log without a terminal, and a GIF.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from townlet.train.algos import GreedyPolicy
from townlet.train.checkpoint import CheckpointError, atomic_write
from townlet.train.rundir import open_run
from townlet.world import ACTION_NAMES, METER_NAMES, ConfigError, LevelConfig, World, load_level
from townlet.world.config import hour_is_open

FILE_MODE = 0o644  # atomic_write's temporary files are created 0600; reports and GIFs are for reading


@contextlib.contextmanager
def few_threads(device: str | torch.device, threads: int = 1) -> Iterator[None]:
    """Limit torch's CPU threads while small worlds (1 to a few hundred agents) are stepped on the CPU.

    On tensors this small, intra-op threads cost far more in synchronisation than they save in work, so
    a step is much faster on one thread. The previous setting is restored.
    """
    before = torch.get_num_threads()
    limit = torch.device(device).type == "cpu" and before > threads
    if limit:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if limit:
            torch.set_num_threads(before)


class WatchError(ValueError):
    """A run path, level or output that cannot be watched; the message says which and why."""


@dataclass(frozen=True)
class Scene:
    """What stays fixed during one episode: the level and the layout the agent lives in."""

    level: LevelConfig
    grid: list[list[int]]  # [y][x] affordance id, -1 empty
    names: tuple[str, ...]
    abbrevs: tuple[str, ...]
    terminal: tuple[bool, ...]  # per meter: the episode ends when it empties
    title: str = ""

    @property
    def size(self) -> int:
        return len(self.grid)

    @property
    def day(self) -> int | None:
        return self.level.temporal.day_length if self.level.temporal else None

    def is_open(self, affordance: int, hour: int | None) -> bool:
        if hour is None or self.level.temporal is None:
            return True
        return hour_is_open(self.level.affordances[affordance].hours, hour)

    def in_view(self, x: int, y: int, ax: int, ay: int) -> bool:
        obs = self.level.observation
        if obs.view != "partial":
            return True
        return abs(x - ax) <= obs.vision_range and abs(y - ay) <= obs.vision_range


@dataclass(frozen=True)
class Frame:
    """The state after `tick` ticks (tick 0: the start), with the action that led to it."""

    tick: int
    x: int
    y: int
    meters: tuple[float, ...]
    here: int  # affordance id under the agent, -1 for none
    hour: int | None
    progress: float  # fraction of the current multi-tick use
    action: str | None = None
    invalid: bool = False
    reward: float = 0.0
    episode_return: float = 0.0
    done: bool = False
    cause: str | None = None  # the world's cause name when done ("energy", "health", ..., "truncated")


@dataclass
class WatchResult:
    ticks: int
    cause: str | None  # None: still alive when --steps ran out (or stopped by Ctrl-C)
    episode_return: float
    frames: int = 0  # frames in the GIF, when recording
    record: Path | None = None
    level: str = ""
    meters: dict[str, float] = field(default_factory=dict)


def abbreviations(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Short unique labels: the capitals of a CamelCase name ("HomeMeal" -> "HM"), else its first two letters."""
    out: list[str] = []
    for name in names:
        caps = "".join(c for c in name if c.isupper())
        base = caps if len(caps) >= 2 else name[:2].capitalize()
        label, i = base[:3], 1
        while label in out:
            i += 1
            label = f"{base[:2]}{i}"
        out.append(label)
    return tuple(out)


def make_scene(world: World, title: str = "") -> Scene:
    """The scene of agent 0's current episode."""
    level = world.config
    return Scene(
        level=level,
        grid=world.affordance_grid()[0].tolist(),
        names=tuple(world.affordance_names),
        abbrevs=abbreviations(world.affordance_names),
        terminal=tuple(level.meters[m].terminal for m in METER_NAMES),
        title=title,
    )


def _decode(world: World, obs: torch.Tensor) -> dict:
    """Position, meters, hour, progress and the affordance here, read back from one observation row."""
    return world.obs_layout.decode(obs)


def greedy_episode(
    policy: GreedyPolicy, level: LevelConfig, seed: int = 0, max_ticks: int | None = None,
    device: str | torch.device = "cpu", world: World | None = None,
) -> Iterator[Frame]:
    """One masked-greedy episode of a single agent: the start frame, then one frame per tick until the
    episode ends or `max_ticks` ticks were played. Recurrent agents carry their memory across ticks.

    Pass `world` (one agent, on `device`) to read its scene with `make_scene` before iterating."""
    world = world or World(level, 1, device=device, seed=seed)
    obs = world.observe()
    policy.reset()
    first = torch.ones(1, dtype=torch.bool, device=world.device)
    yield Frame(tick=0, **_decode(world, obs[0]))
    limit = max_ticks if max_ticks is not None else level.max_steps
    tick = 0
    episode_return = 0.0
    while tick < limit:
        actions = policy.act(obs, world.action_mask(), first)
        first = torch.zeros_like(first)
        obs, reward, _, _, info = world.step(actions)
        tick += 1
        episode_return += float(reward[0])
        done = bool(info["done"][0])
        state = _decode(world, info["final_obs"][0] if done else obs[0])
        yield Frame(
            tick=tick, action=ACTION_NAMES[int(actions[0])], invalid=bool(info["invalid"][0]),
            reward=float(reward[0]), episode_return=episode_return, done=done,
            cause=world.CAUSES[int(info["cause"][0])] if done else None, **state,
        )
        if done:
            return


# ---------------------------------------------------------------------- terminal rendering
def _meter_style(value: float) -> str:
    return "green" if value >= 0.5 else "yellow" if value >= 0.2 else "red"


def _status(scene: Scene, frame: Frame, max_ticks: int | None) -> str:
    if frame.done:
        if frame.cause == "truncated":
            return f"survived to the level's cap ({scene.level.max_steps} ticks)"
        return f"died: {frame.cause} ran out after {frame.tick} ticks"
    if max_ticks is not None and frame.tick >= max_ticks:
        return f"alive after {frame.tick} ticks (--steps reached)"
    return "alive"


def render_rich(scene: Scene, frame: Frame, max_ticks: int | None = None):
    """A rich renderable of one frame: grid with legend, meters as bars, clock, action and status."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 0))
    for _ in range(scene.size):
        grid.add_column(justify="center", width=5)
    for y in range(scene.size):
        cells = []
        for x in range(scene.size):
            aff = scene.grid[y][x]
            label = scene.abbrevs[aff] if aff >= 0 else "·"
            style = "bold cyan" if aff >= 0 else "grey50"
            if aff >= 0 and not scene.is_open(aff, frame.hour):
                style = "grey42 strike"
            if not scene.in_view(x, y, frame.x, frame.y):
                style = "grey23"
            if (x, y) == (frame.x, frame.y):
                label = f"@{label}" if aff >= 0 else "@"
                style = "bold black on yellow"
            cells.append(Text(f" {label} ", style=style))
        grid.add_row(*cells)
    legend = Text("@ agent  ", style="bold")
    for i, (abbr, name) in enumerate(zip(scene.abbrevs, scene.names, strict=True)):
        hours = scene.level.affordances[i].hours if scene.level.temporal else None
        legend.append(f"{abbr} {name}" + (f" {hours[0]}-{hours[1]}h" if hours else ""), style="cyan")
        legend.append("  ")

    meters = Table.grid(padding=(0, 1))
    meters.add_column(justify="left")
    meters.add_column()
    meters.add_column(justify="right")
    width = 24
    for name, value, terminal in zip(METER_NAMES, frame.meters, scene.terminal, strict=True):
        filled = round(max(0.0, min(1.0, value)) * width)
        bar = Text("█" * filled, style=_meter_style(value)) + Text("░" * (width - filled), style="grey35")
        meters.add_row(Text(name + (" *" if terminal else ""), style="bold" if terminal else ""), bar,
                       f"{value:.2f}")

    here = scene.names[frame.here] if frame.here >= 0 else "-"
    if frame.here >= 0 and frame.progress > 0:
        here += f" (use {frame.progress:.0%})"
    clock = f"hour {frame.hour:02d}:00 / {scene.day}   " if frame.hour is not None else ""
    action = frame.action or "-"
    if frame.invalid:
        action += " (invalid: no-op)"
    info = Text.assemble(
        ("tick ", "bold"), f"{frame.tick}" + (f"/{max_ticks}" if max_ticks else ""), "   ",
        clock, ("action ", "bold"), action, "   ", ("here ", "bold"), here, "   ",
        ("return ", "bold"), f"{frame.episode_return:.1f}",
    )
    status = _status(scene, frame, max_ticks)
    status_style = "bold red" if frame.done and frame.cause != "truncated" else "bold green"
    body = Table.grid(padding=(0, 4))
    body.add_row(grid, meters)
    return Panel(
        Group(body, legend, Text("* the episode ends when this meter empties", style="grey50"), info,
              Text(f"survival so far: {frame.tick} ticks — {status}", style=status_style)),
        title=scene.title or scene.level.name, border_style="blue",
    )


def render_line(scene: Scene, frame: Frame) -> str:
    """One log line per tick for output that is not a terminal."""
    meters = " ".join(f"{n[:3]}={v:.2f}" for n, v in zip(METER_NAMES, frame.meters, strict=True))
    hour = f" h={frame.hour:02d}" if frame.hour is not None else ""
    here = scene.names[frame.here] if frame.here >= 0 else "-"
    end = f" END {frame.cause}" if frame.done else ""
    return f"tick {frame.tick:4d}{hour} {frame.action or '-':8s} at ({frame.x},{frame.y}) {here:10s} {meters}{end}"


# ---------------------------------------------------------------------- GIF rendering
# A fixed palette: frames are drawn straight into palette mode (1 byte per pixel, no quantizing).
_COLORS = {
    "bg": (250, 250, 247), "grid": (200, 200, 195), "cell": (236, 236, 230), "aff": (120, 170, 220),
    "closed": (175, 175, 175), "fog": (212, 212, 206), "aff_fog": (190, 208, 226), "agent": (230, 120, 30),
    "text": (30, 30, 30),
    "dim": (130, 130, 130), "green": (70, 170, 80), "yellow": (230, 190, 40), "red": (210, 60, 50),
    "track": (225, 225, 220), "white": (255, 255, 255),
}
_INDEX = {name: i for i, name in enumerate(_COLORS)}
_PALETTE = [c for rgb in _COLORS.values() for c in rgb]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


class ImageRenderer:
    """Draws frames as palette images: the grid on the left, the meters on the right, a status line above."""

    def __init__(self, scene: Scene, cell: int | None = None) -> None:
        self.scene = scene
        self.cell = cell or max(26, min(56, 240 // scene.size))
        self.font = _font(12)
        self.small = _font(10)
        self.top = 40
        self.grid_px = self.cell * scene.size
        self.width = 16 + self.grid_px + 20 + 250
        self.height = max(self.top + self.grid_px + 16, self.top + 9 * 22 + 8)

    def __call__(self, frame: Frame, max_ticks: int | None = None):
        from PIL import Image, ImageDraw

        c, s, idx = self.cell, self.scene, _INDEX
        img = Image.new("P", (self.width, self.height), idx["bg"])
        img.putpalette(_PALETTE)
        draw = ImageDraw.Draw(img)
        draw.fontmode = "1"  # no anti-aliasing: palette indices must not be blended
        clock = f"  {frame.hour:02d}:00" if frame.hour is not None else ""
        head = f"{s.title or s.level.name}   tick {frame.tick}{clock}   {frame.action or '-'}"
        draw.text((10, 6), head, fill=idx["text"], font=self.font)
        status = _status(s, frame, max_ticks)
        bad = frame.done and frame.cause != "truncated"
        draw.text((10, 22), f"return {frame.episode_return:.1f}   {status}", fill=idx["red" if bad else "dim"],
                  font=self.small)
        x0, y0 = 10, self.top
        for y in range(s.size):
            for x in range(s.size):
                aff = s.grid[y][x]
                box = (x0 + x * c, y0 + y * c, x0 + (x + 1) * c - 1, y0 + (y + 1) * c - 1)
                seen = s.in_view(x, y, frame.x, frame.y)
                fill = "cell" if seen else "fog"
                if aff >= 0:
                    fill = ("aff" if seen else "aff_fog") if s.is_open(aff, frame.hour) else "closed"
                draw.rectangle(box, fill=idx[fill], outline=idx["grid"])
                if (x, y) == (frame.x, frame.y):
                    m = max(3, c // 6)
                    draw.ellipse((box[0] + m, box[1] + m, box[2] - m, box[3] - m), fill=idx["agent"])
                if aff >= 0:
                    draw.text((box[0] + 3, box[1] + 2), s.abbrevs[aff], fill=idx["text"], font=self.small)
        mx = x0 + self.grid_px + 20
        bar_x, bar_w = mx + 78, 120
        for i, (name, value) in enumerate(zip(METER_NAMES, frame.meters, strict=True)):
            ty = self.top + i * 22
            label = name + ("*" if s.terminal[i] else "")
            draw.text((mx, ty + 2), label, fill=idx["text"], font=self.small)
            draw.rectangle((bar_x, ty + 3, bar_x + bar_w, ty + 15), fill=idx["track"])
            v = max(0.0, min(1.0, value))
            if v > 0:
                draw.rectangle((bar_x, ty + 3, bar_x + round(v * bar_w), ty + 15), fill=idx[_meter_style(value)])
            draw.text((bar_x + bar_w + 6, ty + 2), f"{value:.2f}", fill=idx["text"], font=self.small)
        notes = ["blue: open", "grey: closed"] if s.level.temporal else []
        if s.level.observation.view == "partial":
            notes.append("pale: out of view")
        if notes:
            draw.text((mx, self.top + 8 * 22 + 2), "   ".join(notes), fill=idx["dim"], font=self.small)
        return img


def write_gif(path: Path, frames: list, fps: float) -> None:
    """Write palette frames as a looping GIF, atomically (a temporary file renamed into place)."""
    duration = max(20, round(1000 / fps)) if fps > 0 else 100

    def write(tmp: Path) -> None:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0,
                       optimize=False, disposal=1)
        tmp.chmod(FILE_MODE)

    atomic_write(path, write)


# ---------------------------------------------------------------------- the command's work
def load_watchable(path: Path, level: str | None = None, device: str = "cpu") -> tuple[LevelConfig, GreedyPolicy]:
    """(level, greedy policy) for `path` (run directory or checkpoint file), with errors worth reading."""
    try:
        run = open_run(path)
        level_config = load_level(level) if level is not None else run.level
        return level_config, run.policy(device, level_config)
    except (ConfigError, CheckpointError) as e:
        raise WatchError(str(e)) from None


def watch(
    path: Path, level: str | None = None, speed: float = 10.0, steps: int = 500, seed: int = 0,
    record: Path | None = None, display: bool = True, console=None, device: str = "cpu",
) -> WatchResult:
    """Play one greedy episode (at most `steps` ticks); show it live on a terminal, as log lines otherwise,
    and record it as a GIF (`record`: start frame plus one frame per tick) when asked."""
    from rich.console import Console

    if record is not None and Path(record).suffix.lower() != ".gif":
        raise WatchError(f"--record {record}: expected a .gif file name")
    level_config, policy = load_watchable(Path(path), level, device)
    console = console or Console()
    world = World(level_config, 1, device=device, seed=seed)
    source = Path(path)
    scene = make_scene(world, title=f"{level_config.name} · {source.name}")
    renderer = ImageRenderer(scene) if record is not None else None
    images: list = []
    live = None
    if display and console.is_terminal:
        from rich.live import Live

        live = Live(console=console, auto_refresh=False, transient=False)
        live.start()
    delay = 1.0 / speed if speed > 0 else 0.0
    frame = None
    try:
        with few_threads(device):
            for frame in greedy_episode(policy, level_config, seed, steps, device, world=world):
                if renderer is not None:
                    images.append(renderer(frame, steps))
                if live is not None:
                    live.update(render_rich(scene, frame, steps), refresh=True)
                    if delay and not frame.done and frame.tick < steps:
                        time.sleep(delay)
                elif display:
                    console.print(render_line(scene, frame), highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    assert frame is not None
    if display and live is None:
        console.print(render_rich(scene, frame, steps))
    result = WatchResult(
        ticks=frame.tick, cause=frame.cause, episode_return=frame.episode_return, level=level_config.name,
        meters=dict(zip(METER_NAMES, frame.meters, strict=True)),
    )
    if record is not None and images:
        write_gif(Path(record), images, speed)
        result.frames, result.record = len(images), Path(record)
    return result
