"""The world's step and observation compiled ahead of time: `torch.export` + AOTInductor.

Why: `torch.compile` wraps its generated code in guards and runtime wrappers whose cost grows with the number
of inputs and outputs; at small batches they take longer than the code itself. An exported program has a fixed
signature and is called straight through its C++ runner. A compiled program is kept on disk (under Inductor's
cache directory), keyed by everything it was traced from, so the next world with the same level, number of
agents and engine source loads it instead of compiling again.

What goes in as an input and what is baked in as a constant: everything that evolves or that the seed or the
user can change between steps (the state, per-agent difficulty and random starts, the layout pool and the
random streams' offsets) is an input; the level's rule tables and the number of agents are constants.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from townlet.world.engine import World

STATE = ("positions", "meters", "steps", "hour", "progress", "layout_id", "episode", "episode_return", "exploring")
SETTINGS = ("depletion", "reward_mode", "random_starts")
LAYOUT = ("_pool_aff1", "_pool_window", "_pool_positions", "_draw_offsets")  # rebuilt when the seed changes
INFO = ("done", "episode_length", "episode_return", "invalid", "completed")
OBSERVED = ("positions", "meters", "hour", "progress", "layout_id")

_SOURCES = ("engine.py", "observation.py", "rng.py", "config.py", "aot.py")  # what a traced program depends on


def cache_dir() -> Path:
    """Where compiled programs are kept: `townlet-aot` in Inductor's cache directory (TORCHINDUCTOR_CACHE_DIR)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return Path(inductor_cache_dir()) / "townlet-aot"


class _Graph(torch.nn.Module):
    """`fn` of the world with the named world attributes taken from the inputs, for `torch.export`."""

    def __init__(self, world: World, names: Sequence[str], fn: Callable[[], tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.world, self.names, self.fn = world, tuple(names), fn

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for name, value in zip(self.names, inputs, strict=True):
            setattr(self.world, name, value)
        return self.fn()


class _Program:
    """One exported function of a world: its input names and, once loaded, its runner."""

    def __init__(self, kind: str, names: tuple[str, ...], fn: Callable[[], tuple[torch.Tensor, ...]]) -> None:
        self.kind, self.names, self.fn = kind, names, fn
        self._runners: dict[bool, Any] = {}  # by variant

    def variant(self, world: World) -> bool:
        """Whether the step draws exploring starts: the traced code differs (the observation's does not)."""
        return self.kind == "step" and world._random_starts_on

    def run(self, world: World, leading: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Outputs for inputs `leading` (the first names) and the world's attributes named by the rest."""
        inputs = [*leading, *(getattr(world, name) for name in self.names[len(leading):])]
        variant = self.variant(world)
        runner = self._runners.get(variant)
        if runner is None:
            runner = self._runners[variant] = _load_or_build(world, self, inputs)
        # the runner's own entry (the loaded model's __call__ re-parses its signature on every call)
        return runner.loader.run(inputs)


def step_program(world: World) -> _Program:
    """world._advance(actions) as a program: inputs (actions, *names), outputs (obs, reward, terminated,
    truncated, *INFO, *last state, *new STATE)."""

    def fn() -> tuple[torch.Tensor, ...]:
        obs, reward, terminated, truncated, info, last = world._advance(world._traced_actions)
        return (obs, reward, terminated, truncated, *(info[k] for k in INFO), *last,
                *(getattr(world, name) for name in STATE))

    names = ("_traced_actions", *STATE, *SETTINGS, *_layout_names(world))
    return _Program("step", names, fn)


def observe_program(world: World) -> _Program:
    """world._observe of the state given as inputs (OBSERVED, then the layout tables)."""

    def fn() -> tuple[torch.Tensor, ...]:
        return (world._observe(*(getattr(world, "_traced_" + name) for name in OBSERVED)),)

    names = (*("_traced_" + name for name in OBSERVED), *_layout_names(world))
    return _Program("observe", names, fn)


def _layout_names(world: World) -> tuple[str, ...]:
    return tuple(name for name in LAYOUT if hasattr(world, name))


def _key(world: World, program: _Program, example: Sequence[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    signature = [(tuple(t.shape), str(t.dtype)) for t in example]
    parts = (torch.__version__, world.device.type, program.kind, world.num_agents, program.variant(world),
             world.config.model_dump_json(), signature)
    digest.update(repr(parts).encode())
    return digest.hexdigest()[:32]


def _load_or_build(world: World, program: _Program, example: Sequence[torch.Tensor]) -> Any:
    folder = cache_dir()
    path = folder / f"{program.kind}-{_key(world, program, example)}.pt2"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # compiled under a name of its own, then renamed: a crash or a second process never leaves half a file
        partial = folder / f".{path.stem}.{uuid.uuid4().hex}.pt2"
        try:
            with warnings.catch_warnings():
                # torch's own deprecation notice from inside export; and the world's attributes that the traced
                # function assigns from its inputs, which export reports as side effects (they are undone)
                warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
                warnings.filterwarnings("ignore", message=".*side effects happened.*", category=UserWarning)
                exported = _export(world, program, example)
                torch._inductor.aoti_compile_and_package(exported, package_path=str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return torch._inductor.aoti_load_package(str(path))


def _export(world: World, program: _Program, example: Sequence[torch.Tensor]) -> Any:
    """Trace `program` (tracing assigns the world's attributes, so they are put back afterwards)."""
    saved = dict(vars(world))
    try:
        graph = _Graph(world, program.names, program.fn)
        return torch.export.export(graph, tuple(example), strict=True)
    finally:
        vars(world).clear()
        vars(world).update(saved)
