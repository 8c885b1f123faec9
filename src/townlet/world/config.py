"""Validated world configuration: every rule and number of a level lives in YAML and passes through here."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from townlet.config_files import ConfigError, format_validation_error, quote, read_extended_yaml, resolve_yaml_path

METER_NAMES: tuple[str, ...] = (
    "energy",
    "hygiene",
    "satiation",
    "money",
    "mood",
    "social",
    "health",
    "fitness",
)
MeterName = Literal["energy", "hygiene", "satiation", "money", "mood", "social", "health", "fitness"]
REWARD_MODES: tuple[str, ...] = ("milestone", "survival", "shaped")
RewardMode = Literal["milestone", "survival", "shaped"]
LEVEL_NAMES: tuple[str, ...] = (
    "L0_minimal",
    "L1_full",
    "L2_partial",
    "L2_partial_fixed",
    "L2_memory",
    "L3_temporal",
    "L3_temporal_fixed",
)


class _Strict(BaseModel):
    """Unknown fields are errors, and so are NaN and infinity (YAML .nan, .inf): no rule of the world means them."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


NAME_CHARS = 64  # names are shown in tables, plots and the live view


def _visible_name(name: str) -> str:
    """A level or affordance name must show: not blank, no spaces around it, no control characters."""
    if not name.strip() or name != name.strip() or not name.isprintable():
        raise ValueError("must be printable text, not blank and without spaces around it")
    return name


class MeterConfig(_Strict):
    """A need in [0, 1]: where it starts, what it loses every tick, and whether reaching 0 ends the episode."""

    start: float = Field(ge=0.0, le=1.0)
    drain: float = Field(default=0.0, ge=0.0, le=1.0)
    terminal: bool = False

    @model_validator(mode="after")
    def _alive_at_start(self) -> MeterConfig:
        if self.terminal and self.start == 0:
            raise ValueError("start: a terminal meter that starts at 0 ends every episode at once; allowed: (0, 1]")
        return self


class ModulationConfig(_Strict):
    """Target drains `base * (offset + scale * (1 - source))` per tick (health from fitness by default)."""

    source: MeterName = "fitness"
    target: MeterName = "health"
    base: float = Field(default=0.001, ge=0.0, le=1.0)
    offset: float = Field(default=0.5, ge=0.0)
    scale: float = Field(default=2.5, ge=0.0)


class CascadeConfig(_Strict):
    """While `source < threshold`, `target` loses `strength * (threshold - source) / threshold` per tick."""

    source: MeterName
    target: MeterName
    threshold: float = Field(default=0.3, gt=0.0, le=1.0)
    strength: float = Field(ge=0.0, le=1.0)


class AffordanceConfig(_Strict):
    """A place to INTERACT with. `cost` and a `money` effect are in dollars; other effects in meter units."""

    name: str = Field(min_length=1, max_length=NAME_CHARS)
    position: tuple[int, int] | None = None
    cost: float = Field(default=0.0, ge=0.0)
    effects: dict[MeterName, float] = Field(default_factory=dict)
    hours: tuple[int, int] | None = None
    ticks: int = Field(default=1, ge=1, le=100)

    @field_validator("name")
    @classmethod
    def _name_is_visible(cls, name: str) -> str:
        return _visible_name(name)


class ObservationConfig(_Strict):
    view: Literal["full", "partial"] = "full"
    vision_range: int = Field(default=2, ge=1, le=10)
    window_encoding: Literal["presence", "types"] = "types"


class TemporalConfig(_Strict):
    """Day/night clock: opening hours and multi-tick uses (the L3 rules)."""

    day_length: int = Field(default=24, ge=2, le=1000)
    start_hour: int = Field(default=6, ge=0, le=999)
    completion_bonus: float = Field(default=0.25, ge=0.0, le=1.0)


class MilestoneReward(_Strict):
    every: int = Field(default=10, ge=1)
    bonus: float = 0.5
    big_every: int = Field(default=100, ge=1)
    big_bonus: float = 5.0
    death: float = -100.0


class SurvivalReward(_Strict):
    per_tick: float = 0.01
    death: float = -1.0


class ShapedReward(_Strict):
    """`survival` plus `weight * min(energy, health)` per tick alive."""

    weight: float = 0.01


class RewardConfig(_Strict):
    mode: RewardMode = "milestone"
    milestone: MilestoneReward = MilestoneReward()
    survival: SurvivalReward = SurvivalReward()
    shaped: ShapedReward = ShapedReward()


class LevelConfig(_Strict):
    """One level of the world. Defaults are the spec's numbers; a level YAML overrides what it changes."""

    name: str = Field(min_length=1, max_length=NAME_CHARS)
    description: str = ""
    grid_size: int = Field(default=8, ge=2, le=64)
    max_steps: int = Field(default=500, ge=1, le=1_000_000)
    layout: Literal["fixed", "random"] = "fixed"
    layout_pool: int = Field(default=16384, ge=1, le=1_000_000)
    observation: ObservationConfig = ObservationConfig()
    temporal: TemporalConfig | None = None
    rewards: RewardConfig = RewardConfig()
    money_scale: float = Field(default=100.0, gt=0.0)
    meters: dict[MeterName, MeterConfig]
    move_cost: dict[MeterName, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    modulation: ModulationConfig = ModulationConfig()
    cascades: list[CascadeConfig] = Field(default_factory=list)
    affordances: list[AffordanceConfig] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name_is_visible(cls, name: str) -> str:
        return _visible_name(name)

    @model_validator(mode="after")
    def _check(self) -> LevelConfig:
        missing = [m for m in METER_NAMES if m not in self.meters]
        if missing:
            raise ValueError(f"meters: missing {missing}; all of {list(METER_NAMES)} are required")
        if not any(m.terminal for m in self.meters.values()):
            raise ValueError("meters: at least one meter must be terminal (episodes could never end early)")
        names = [a.name for a in self.affordances]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"affordances: duplicate names {quote(dup)}; every affordance needs a name of its own")
        if len(self.affordances) > self.grid_size**2:
            raise ValueError(
                f"affordances: {len(self.affordances)} do not fit on a {self.grid_size}x{self.grid_size} grid"
            )
        for i, aff in enumerate(self.affordances):
            where = f"affordances.{i}.{aff.name}"
            if aff.position is not None:
                x, y = aff.position
                if not (0 <= x < self.grid_size and 0 <= y < self.grid_size):
                    raise ValueError(
                        f"{where}.position: {quote(aff.position)} is off the grid; x and y must be in "
                        f"[0, {self.grid_size - 1}]"
                    )
            elif self.layout == "fixed":
                raise ValueError(f"{where}.position: required when layout is 'fixed'")
            if aff.cost > self.money_scale:
                raise ValueError(
                    f"{where}.cost: ${aff.cost:g} can never be paid: an agent holds at most money_scale "
                    f"${self.money_scale:g}; allowed: 0 to {self.money_scale:g}"
                )
            if aff.hours is not None:
                day = self.temporal.day_length if self.temporal else 24
                if not all(0 <= h <= day for h in aff.hours):
                    raise ValueError(f"{where}.hours: {quote(aff.hours)} must be hours of the day; allowed: 0 to {day}")
        pairs = [(c.source, c.target) for c in self.cascades]
        repeated = sorted({p for p in pairs if pairs.count(p) > 1})
        if repeated:
            raise ValueError(
                f"cascades: {', '.join(f'{s} -> {t}' for s, t in repeated)} given more than once; give each "
                "source and target one cascade (strengths would add up)"
            )
        if self.layout == "fixed":
            cells = [a.position for a in self.affordances]
            clash = sorted({c for c in cells if cells.count(c) > 1})
            if clash:
                raise ValueError(f"affordances: two affordances share the cell(s) {quote(clash)}")
        if self.temporal is not None and self.temporal.start_hour >= self.temporal.day_length:
            raise ValueError(
                f"temporal.start_hour: {self.temporal.start_hour} must be < day_length "
                f"{self.temporal.day_length}"
            )
        if self.observation.view == "partial" and 2 * self.observation.vision_range + 1 > 4 * self.grid_size:
            raise ValueError(
                f"observation.vision_range: {self.observation.vision_range} is far larger than the "
                f"{self.grid_size}x{self.grid_size} grid; allowed: 1 to {(4 * self.grid_size - 1) // 2}"
            )
        return self

    @property
    def num_affordances(self) -> int:
        return len(self.affordances)

    @property
    def affordance_names(self) -> list[str]:
        return [a.name for a in self.affordances]

    @property
    def is_temporal(self) -> bool:
        return self.temporal is not None


def level_from_dict(data: dict[str, Any], source: str = "<dict>") -> LevelConfig:
    try:
        return LevelConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e, LevelConfig)) from None


def level_path(name: str) -> Path:
    """Path of a packaged level YAML."""
    return Path(str(resources.files("townlet.world") / "levels" / f"{name}.yaml"))


def _resolve_level_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    return resolve_yaml_path(name_or_path, relative_to, level_path, "level")


def load_level(name_or_path: str | Path) -> LevelConfig:
    """A packaged level by name (`L1_full`) or any level YAML file by path (which may `extends:` another)."""
    path = _resolve_level_path(name_or_path)
    return level_from_dict(read_extended_yaml(path, _resolve_level_path), str(path))


def hour_is_open(hours: tuple[int, int] | None, hour: int) -> bool:
    """`a <= hour < b`, wrapping past midnight when a > b; None means always open."""
    if hours is None:
        return True
    a, b = hours
    if a == b:
        return True
    return a <= hour < b if a < b else (hour >= a or hour < b)


__all__ = [
    "LEVEL_NAMES",
    "METER_NAMES",
    "REWARD_MODES",
    "AffordanceConfig",
    "CascadeConfig",
    "ConfigError",
    "LevelConfig",
    "MeterConfig",
    "ObservationConfig",
    "TemporalConfig",
    "hour_is_open",
    "load_level",
]
