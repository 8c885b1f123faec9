"""The observation layout: named slices of each agent's flat float32 vector.

Networks and replay read this instead of hard-coding offsets, so a level change needs no code change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from townlet.world.config import METER_NAMES, LevelConfig


@dataclass(frozen=True)
class ObsField:
    """A contiguous run of the observation vector.

    `discrete` fields hold only -1, 0 or 1 (one-hots, presence), so they can be stored exactly as int8.
    """

    name: str
    start: int
    size: int
    discrete: bool

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class ObsLayout:
    """Fields in order. Full view: `cell`, `meters`, `here`. Partial view: `window`, `position`, `meters`,
    `here`. Temporal levels add `time` (sin, cos of the hour) and `progress` (fraction of the current use).

    `window` is channel-major: reshape it to [window_channels, window_side, window_side] (row = y).
    `presence` has one channel (1 affordance, 0 empty, -1 outside); `types` has one channel per affordance
    type (in the level's order) plus a last outside-the-grid channel. `cell` is the one-hot of y * grid + x.
    `here` is the one-hot of the affordance under the agent, index 0 meaning none.
    """

    fields: tuple[ObsField, ...]
    grid_size: int
    num_meters: int
    num_affordances: int
    window_side: int = 0
    window_channels: int = 0
    day_length: int = 0  # ticks per day on temporal levels (the `time` field's period), else 0

    @property
    def dim(self) -> int:
        return self.fields[-1].stop

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def __getitem__(self, name: str) -> ObsField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"observation has no field {name!r}; fields: {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)

    @property
    def is_partial(self) -> bool:
        return "window" in self

    @property
    def is_temporal(self) -> bool:
        return "time" in self

    def decode(self, row: Any) -> dict[str, Any]:
        """The agent's state read back from one observation row (a tensor, array or sequence of `dim` floats).

        Keys: `x`, `y` (cell), `meters` (tuple, rounded to 6 decimals), `here` (affordance id under the agent,
        -1 for none), `hour` (None unless temporal) and `progress` (fraction of the current use, 0.0 unless
        temporal).
        """
        values = torch.as_tensor(row).detach().to("cpu", torch.float64).view(-1)
        if values.numel() != self.dim:
            raise ValueError(f"an observation row has {self.dim} values, got {values.numel()}")
        g = self.grid_size
        if "cell" in self:
            cell = int(values[self["cell"].slice].argmax())
            x, y = cell % g, cell // g
        else:
            x, y = (round(v * (g - 1)) for v in values[self["position"].slice].tolist())
        hour, progress = None, 0.0
        if self.is_temporal:
            sin, cos = values[self["time"].slice].tolist()
            hour = round(math.atan2(sin, cos) * self.day_length / (2 * math.pi)) % self.day_length
            progress = float(values[self["progress"].slice][0])
        return {
            "x": x,
            "y": y,
            "meters": tuple(round(v, 6) for v in values[self["meters"].slice].tolist()),
            "here": int(values[self["here"].slice].argmax()) - 1,
            "hour": hour,
            "progress": progress,
        }

    def describe(self) -> str:
        """A human-readable table of the layout."""
        rows = [f"{f.name:<9} [{f.start:>4}:{f.stop:<4}] {'discrete' if f.discrete else 'float'}" for f in self.fields]
        return "\n".join([*rows, f"total     {self.dim}"])

    @classmethod
    def for_level(cls, config: LevelConfig) -> ObsLayout:
        g, a, m = config.grid_size, config.num_affordances, len(METER_NAMES)
        parts: list[tuple[str, int, bool]] = []
        side = channels = 0
        if config.observation.view == "full":
            parts.append(("cell", g * g, True))
        else:
            side = 2 * config.observation.vision_range + 1
            channels = 1 if config.observation.window_encoding == "presence" else a + 1
            parts += [("window", channels * side * side, True), ("position", 2, False)]
        parts += [("meters", m, False), ("here", a + 1, True)]
        if config.is_temporal:
            parts += [("time", 2, False), ("progress", 1, False)]
        fields, start = [], 0
        for name, size, discrete in parts:
            fields.append(ObsField(name, start, size, discrete))
            start += size
        day = config.temporal.day_length if config.temporal is not None else 0
        return cls(tuple(fields), g, m, a, side, channels, day)
