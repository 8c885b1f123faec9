"""The batched survival world: N independent episodes stepped at once as tensors.

Every rule comes from the level config (see `../shared/world-spec.md` for the reference numbers). One code
path serves instant and temporal levels: an instant level is a temporal one whose uses all take one tick
and whose affordances never close.

Speed: a step is a few dozen tensor operations whatever the batch size, so at small batches their fixed cost
is what counts. Everything that depends only on the level (where a move from a cell leads, what a use or a
move does to the meters, which uses a cell, an hour and an action allow, milestone rewards, the clock's
sine and cosine) is a lookup table built at construction; intermediate tensors are updated in place; and the
observation is written field by field into one fresh tensor. On the CPU, where reading a tensor's value costs
no device round trip, the resets and their random draws run only in steps where an episode ended.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from townlet.world import aot
from townlet.world.config import METER_NAMES, REWARD_MODES, LevelConfig, hour_is_open, load_level
from townlet.world.observation import ObsLayout
from townlet.world.rng import agent_bits, agent_term, bits_to_uniform, stream_offset

NUM_ACTIONS = 5
ACTION_NAMES = ("UP", "DOWN", "LEFT", "RIGHT", "INTERACT")
INTERACT = 4
_EPS = 1e-5  # float32 slack: "can pay" and "meter is empty" (spec: rounding must not change the rules)

# Layout streams of the per-agent counter RNG.
_STREAM_LAYOUT, _STREAM_SPAWN = 1, 2
_STREAM_START = 3  # exploring starts: stream 3 picks, the next draw each meter, the last the spawn affordance

_ACTION_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32)
_MILESTONE_TABLE_MAX = 1 << 16  # milestone rewards repeat with period lcm(every, big_every): a table up to this


class StepInfo(dict):
    """The per-agent step info. `final_obs` and `final_mask` (the last observation and action mask of the
    episodes that just ended; rows of other agents are don't-care) and `cause` are computed on first access,
    so a caller that does not need them does not pay for them."""

    LAZY = ("final_obs", "final_mask", "cause")

    def __init__(self, values: dict[str, torch.Tensor], world: World, last: tuple[torch.Tensor, ...]) -> None:
        super().__init__(values)
        self._world, self._last = world, last

    def __missing__(self, key: str) -> torch.Tensor:
        if key == "final_obs":
            value = self._world._observe_fn(*self._last)
        elif key == "final_mask":
            positions, meters, hour, _, layout_id = self._last
            value = self._world._mask(positions, meters, hour, layout_id)
        elif key == "cause":
            value = self._world._cause(self._last[1], super().__getitem__("truncated"))
        else:
            raise KeyError(key)
        self[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.LAZY or super().__contains__(key)


@dataclass(frozen=True)
class _Scalars:
    """The step's scalar operands: 0-dim tensors when it runs eagerly (an operand that needs no wrapping costs
    less per call than a Python number) and plain numbers when it is compiled (Inductor folds them)."""

    one: Any
    zero: Any
    zero_float: Any
    float_one: Any
    eps: Any
    use_row0: Any  # the first use row of the meter-change table
    day: Any
    max_steps: Any
    start_hour: Any
    mod_scale: Any
    mod_offset: Any
    mod_base: Any
    per_tick: Any
    shaped_weight: Any
    death_milestone: Any
    death_survival: Any
    milestone_period: Any


@dataclass(frozen=True)
class _Tables:
    """Per-affordance rule tables, indexed by affordance id + 1 (row 0 = no affordance)."""

    use_delta: torch.Tensor  # [A+1, M] meter change per valid INTERACT tick (cost included)
    bonus: torch.Tensor  # [A+1, M] completion bonus on the last tick of a use
    cost_tick: torch.Tensor  # [A+1] money paid per tick
    ticks: torch.Tensor  # [A+1] ticks per use
    open_at: torch.Tensor  # [A+1, day] bool


class World:
    """`num_agents` independent copies of one level, stepped together.

    State is readable (and writable, for tests and tools) as tensors: `meters` [N, 8] in the spec's order,
    `positions` [N, 2] as (x, y), `hour` [N], `progress` [N], `steps` [N], `layout_id` [N]; the layout via
    `affordance_positions` / `affordance_grid()`. Per-agent difficulty (`depletion`, `reward_mode`) can be
    changed between steps with `set_difficulty`.

    `step` auto-resets agents whose episode ended. Its `info` holds, per agent: `done`, `terminated`,
    `truncated`, `cause` (index into `CAUSES`), `episode_length` and `episode_return` (meaningful where
    done), `final_obs` and `final_mask` (the last observation and action mask of an ended episode),
    `invalid` (the action was a no-op because it was not allowed) and `completed` (a use finished).
    The observation layout is `obs_layout` (see `ObsLayout`: names and slices).
    """

    def __init__(
        self,
        config: LevelConfig | str,
        num_agents: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        validate_actions: bool = True,
        compile: bool = False,
    ) -> None:
        if isinstance(config, str):
            config = load_level(config)
        if num_agents < 1:
            raise ValueError(f"num_agents must be >= 1, got {num_agents}")
        self.config = config
        self.num_agents = n = num_agents
        self.device = torch.device(device)
        self.seed = seed
        self.validate_actions = validate_actions
        self.obs_layout = ObsLayout.for_level(config)
        self._ones = {}
        self.grid_size = config.grid_size
        self.num_affordances = config.num_affordances
        self.affordance_names = tuple(config.affordance_names)
        self.meter_names = METER_NAMES
        terminal = [i for i, name in enumerate(METER_NAMES) if config.meters[name].terminal]
        self.CAUSES = ("running", *(METER_NAMES[i] for i in terminal), "truncated")
        self._build_constants(terminal)
        self._build_step_tables(terminal)
        self._build_layouts()

        dev = self.device
        self.positions = torch.zeros(n, 2, dtype=torch.long, device=dev)
        self.meters = torch.zeros(n, len(METER_NAMES), device=dev)
        self.steps = torch.zeros(n, dtype=torch.long, device=dev)
        self.hour = torch.zeros(n, dtype=torch.long, device=dev)
        self.progress = torch.zeros(n, dtype=torch.long, device=dev)
        self.layout_id = torch.zeros(n, dtype=torch.long, device=dev)
        self.episode = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.episode_return = torch.zeros(n, device=dev)
        self.depletion = torch.ones(n, device=dev)
        self.random_starts = torch.zeros(n, device=dev)  # see set_random_starts
        self.exploring = torch.zeros(n, dtype=torch.bool, device=dev)  # this episode began as a random start
        self.reward_mode = torch.full(
            (n,), REWARD_MODES.index(config.rewards.mode), dtype=torch.long, device=dev
        )
        self._note_uniform_mode(REWARD_MODES.index(config.rewards.mode))
        self._agent_ids = torch.arange(n, device=dev)
        self._agent_terms = agent_term(self._agent_ids)
        self._agent_rows3 = self._agent_ids * 3  # flat index of each agent's row in an [N, 3] table
        self._alive = torch.full((n,), self.config.rewards.survival.per_tick, device=dev)
        self._flag_column = torch.ones(n, 1, dtype=torch.bool, device=dev)  # see _advance: the cause
        # Reading a CPU tensor's value costs no device round trip: the step may then skip work nobody needs.
        self._host_reads_free = self.device.type == "cpu"
        self._step_fn = self._advance
        self._observe_fn = self._observe
        if compile:
            self.compile()
        self.reset()

    # ------------------------------------------------------------------ construction
    def _build_constants(self, terminal: list[int]) -> None:
        cfg, dev = self.config, self.device
        m_index = {name: i for i, name in enumerate(METER_NAMES)}
        a = cfg.num_affordances
        temporal = cfg.temporal
        day = temporal.day_length if temporal else 1
        bonus_frac = temporal.completion_bonus if temporal else 0.0

        effect = torch.zeros(a + 1, len(METER_NAMES), dtype=torch.float64)
        cost = torch.zeros(a + 1, dtype=torch.float64)
        ticks = torch.ones(a + 1, dtype=torch.long)
        open_at = torch.zeros(a + 1, day, dtype=torch.bool)
        for i, aff in enumerate(cfg.affordances, start=1):
            for meter, value in aff.effects.items():
                effect[i, m_index[meter]] = value / cfg.money_scale if meter == "money" else value
            cost[i] = aff.cost / cfg.money_scale
            ticks[i] = aff.ticks if temporal else 1
            for h in range(day):
                open_at[i, h] = hour_is_open(aff.hours, h) if temporal else True
        per_tick = ticks.to(torch.float64)
        cost_tick = cost / per_tick
        use_delta = (1.0 - bonus_frac) * effect / per_tick[:, None]
        use_delta[:, m_index["money"]] -= cost_tick
        self._tables = _Tables(
            use_delta=use_delta.float().to(dev),
            bonus=(bonus_frac * effect).float().to(dev),
            cost_tick=cost_tick.float().to(dev),
            ticks=ticks.to(dev),
            open_at=open_at.to(dev),
        )
        self._day = day
        self._temporal = temporal is not None
        self._start_hour = temporal.start_hour if temporal else 0

        self._start = torch.tensor([cfg.meters[m].start for m in METER_NAMES], device=dev)
        self._drain = torch.tensor([cfg.meters[m].drain for m in METER_NAMES], device=dev)
        self._move_cost = torch.tensor([cfg.move_cost.get(m, 0.0) for m in METER_NAMES], device=dev)
        mod = cfg.modulation
        self._mod = (m_index[mod.source], m_index[mod.target], mod.base, mod.offset, mod.scale)
        self._mod_target_onehot = torch.zeros(len(METER_NAMES), device=dev)
        self._mod_target_onehot[m_index[mod.target]] = 1.0
        c = cfg.cascades
        self._casc_src = torch.tensor([m_index[x.source] for x in c], dtype=torch.long, device=dev)
        self._casc_thr = torch.tensor([x.threshold for x in c], device=dev)
        self._casc_strength = torch.tensor([x.strength for x in c], device=dev)
        to_target = torch.zeros(len(c), len(METER_NAMES))
        for i, x in enumerate(c):
            to_target[i, m_index[x.target]] = 1.0
        self._casc_to_target = to_target.to(dev)
        self._terminal = torch.tensor(terminal, dtype=torch.long, device=dev)
        self._money = m_index["money"]
        self._energy, self._health = m_index["energy"], m_index["health"]
        self._moves = torch.tensor([[0, -1], [0, 1], [-1, 0], [1, 0], [0, 0]], dtype=torch.long, device=dev)
        r = cfg.rewards  # plain numbers: the compiled step then guards on few, cheap values
        self._reward_numbers = (
            r.milestone.every, r.milestone.bonus, r.milestone.big_every, r.milestone.big_bonus, r.milestone.death,
            r.survival.per_tick, r.survival.death, r.shaped.weight,
        )
        self._max_steps = cfg.max_steps

    def _build_step_tables(self, terminal: list[int]) -> None:
        """Lookup tables for the step: each turns several small tensor operations per step into one gather.
        Their values are computed with the same float32 operations the rules state, so results are exact."""
        dev, g, a, day = self.device, self.grid_size, self.num_affordances, self._day
        t = self._tables
        cells = g * g
        xs, ys = torch.arange(cells) % g, torch.arange(cells) // g
        self._xy_of_cell = torch.stack([xs, ys], dim=1).to(dev)  # [G*G, 2] (x, y)
        # Moves, indexed by cell * 5 + action: whether the action moves the agent, and the cell it ends on.
        moves = self._moves.cpu()
        nx, ny = xs.view(-1, 1) + moves[:, 0], ys.view(-1, 1) + moves[:, 1]
        moves_ok = (nx >= 0) & (nx < g) & (ny >= 0) & (ny < g)
        moves_ok[:, INTERACT] = False
        self._move_ok = moves_ok.reshape(-1).to(dev)
        self._move_target = torch.where(moves_ok, ny * g + nx, torch.arange(cells).view(-1, 1)).reshape(-1).to(dev)
        # The action mask, indexed by cell * 2 + (INTERACT applies): the four moves, then INTERACT.
        usable_column = torch.tensor([False, True]).repeat(cells).view(-1, 1)
        self._mask_rows = torch.cat([moves_ok[:, :INTERACT].repeat_interleave(2, dim=0), usable_column], 1).to(dev)
        # Money needed to use the affordance (id + 1) at an hour, by aff1 * day + hour: +inf where nothing
        # applies, so "can use" is one comparison; and the same per action (+inf unless INTERACT).
        floor = torch.where(t.open_at.cpu(), (t.cost_tick - _EPS).cpu().view(-1, 1), math.inf)  # row 0 never open
        self._usable_floor = floor.reshape(-1).to(dev)
        per_action = torch.full((a + 1, day, NUM_ACTIONS), math.inf)
        per_action[:, :, INTERACT] = floor
        self._use_floor = per_action.reshape(-1).to(dev)
        # Meter change of an action, one row per (cell * 5 + action) for moves, then one per affordance for uses.
        move_rows = torch.where(moves_ok.reshape(-1, 1), -self._move_cost.cpu(), 0.0)
        self._deltas = torch.cat([move_rows, t.use_delta.cpu()]).to(dev)
        self._open_flat = t.open_at.reshape(-1)  # by aff1 * day + hour
        self._ticks_float = t.ticks.float()
        # Termination: the first empty terminal meter names the cause (see _advance).
        # by column of [empty terminal meters..., truncated, always set]: 1..T, "truncated", "running"
        self._cause_of = torch.tensor([*range(1, len(terminal) + 1), len(self.CAUSES) - 1, 0], device=dev)
        # Rewards.
        every, bonus, big_every, big_bonus, milestone_death, per_tick, survival_death, weight = self._reward_numbers
        period = math.lcm(every, big_every)
        self._milestone_period = period if period <= _MILESTONE_TABLE_MAX else None
        if self._milestone_period is not None:
            ticks = torch.arange(period, device=dev)
            self._milestone_table = bonus * (ticks % every == 0) + big_bonus * (ticks % big_every == 0)
        self._death_by_mode = torch.tensor([milestone_death, survival_death, survival_death], device=dev)
        _, _, base, offset, scale = self._mod
        self._numbers = _Scalars(
            one=1, zero=0, zero_float=0.0, float_one=1.0, eps=_EPS, use_row0=cells * NUM_ACTIONS, day=day,
            max_steps=self._max_steps, start_hour=self._start_hour, mod_scale=scale, mod_offset=offset,
            mod_base=base, per_tick=per_tick, shaped_weight=weight, death_milestone=milestone_death,
            death_survival=survival_death, milestone_period=period,
        )
        self._scalars = _Scalars(**{k: torch.tensor(v, device=dev) for k, v in vars(self._numbers).items()})
        self._position_obs = self._xy_of_cell.float() / (g - 1)  # the partial view's `position`, by cell
        angle = torch.arange(day).float() * (2 * math.pi / day)
        self._clock = torch.stack([torch.sin(angle), torch.cos(angle)], dim=1).to(dev)  # [day, 2]
        self._cell_ids = torch.arange(cells, device=dev).view(1, -1)
        self._here_ids = torch.arange(a + 1, device=dev).view(1, -1)

    def _build_layouts(self) -> None:
        """All layouts an episode can draw, as tensors: one for `fixed`, a seeded pool for `random`."""
        cfg, g, a = self.config, self.grid_size, self.num_affordances
        if cfg.layout == "fixed":
            cells = torch.tensor([[p.position[1] * g + p.position[0] for p in cfg.affordances]])
        else:
            gen = torch.Generator().manual_seed(self.seed)
            cells = torch.rand(cfg.layout_pool, g * g, generator=gen).argsort(dim=1)[:, :a]
        pool = cells.shape[0]
        self._pool_size = pool
        positions = torch.stack([cells % g, cells // g], dim=-1)  # [P, A, 2] (x, y)
        grid = torch.full((pool, g * g), -1, dtype=torch.long)
        grid.scatter_(1, cells, torch.arange(a).expand(pool, a))
        self._pool_positions = positions.to(self.device)
        self._pool_grid = grid.to(torch.int16 if a < 32000 else torch.long).to(self.device)  # id or -1
        self._pool_aff1 = (grid + 1).view(-1).to(self.device)  # id + 1 (0: none) by layout * G*G + cell

        obs = cfg.observation
        if obs.view == "partial":
            r = obs.vision_range
            gp = g + 2 * r
            padded = torch.full((pool, gp, gp), -2, dtype=torch.long)  # -2 outside, -1 empty, id
            padded[:, r : r + g, r : r + g] = grid.view(pool, g, g)
            padded = padded.view(pool, gp * gp)
            w = 2 * r + 1
            dy, dx = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
            self._win_offsets = (dy * gp + dx).reshape(1, w * w).to(self.device)
            self._padded_side = gp
            if obs.window_encoding == "presence":
                value = torch.where(padded >= 0, 1.0, torch.where(padded == -2, -1.0, 0.0))
                self._pool_window = value.to(self.device)
            else:
                # channel per cell: affordance id, `a` for outside, `a + 1` for empty (written as 0)
                chan = torch.where(padded >= 0, padded, torch.where(padded == -2, a, a + 1))
                self._pool_window = chan.to(torch.int16).to(self.device)
                self._window_cells = torch.arange(w * w, device=self.device).view(1, -1)
                # the one-hot's columns as [1, C, W*W]: the eager window holds, per cell, the column of its 1
                channels, area = a + 1, w * w
                dtype = torch.int16 if (channels + 1) * area <= torch.iinfo(torch.int16).max else torch.int32
                columns = torch.arange(channels * area, dtype=dtype, device=self.device)
                self._window_columns = columns.view(1, channels, area)
            # every cell's window of every layout as one row (its values, or the columns of its one-hot's 1s),
            # so that the eager step gathers one row an agent; a table too large to keep is left out, and the
            # window is then indexed cell by cell
            self._window_of_cell = None
            if pool * g * g * w * w * self._pool_window.element_size() <= self._WINDOW_TABLE_BYTES:
                windows = self._pool_window.view(pool, gp, gp).unfold(1, w, 1).unfold(2, w, 1)  # [P, G, G, W, W]
                self._window_of_cell = self._eager_window_(windows.reshape(pool * g * g, w * w))  # a copy
        streams = range(_STREAM_START, _STREAM_START + 2 + len(METER_NAMES))
        # Every draw of a new episode in one pass: layout, spawn cell, then the exploring-start draws.
        offsets = [stream_offset(self.seed, s) for s in (_STREAM_LAYOUT, _STREAM_SPAWN, *streams)]
        self._draw_offsets = torch.tensor(offsets, device=self.device)
        self._draw_high = torch.tensor([pool, g * g], device=self.device)

    # ------------------------------------------------------------------ public API
    @property
    def obs_dim(self) -> int:
        return self.obs_layout.dim

    @property
    def affordance_positions(self) -> torch.Tensor:
        """[N, A, 2] (x, y) of every affordance in each agent's current layout, in the level's order."""
        return self._pool_positions[self.layout_id]

    def affordance_grid(self) -> torch.Tensor:
        """[N, G, G] affordance id per cell (row = y), -1 where empty."""
        g = self.grid_size
        return self._pool_grid[self.layout_id].long().view(-1, g, g)

    def affordance_here(self) -> torch.Tensor:
        """[N] id of the affordance under each agent, -1 for none."""
        return self._affordance_id(self.positions, self.layout_id)

    def is_open(self, affordance: int) -> torch.Tensor:
        """[N] bool: whether affordance `affordance` (an id) is open at each agent's current hour."""
        return self._tables.open_at[affordance + 1, self.hour]

    def set_difficulty(
        self,
        depletion: torch.Tensor | float | None = None,
        reward_mode: torch.Tensor | str | None = None,
        validate: bool = True,
    ) -> None:
        """Per-agent depletion multiplier (scales passive drain and modulation) and reward mode.

        `reward_mode` is a name from `REWARD_MODES` for all agents or an int tensor [N] of indices into it.
        Takes effect from the next step. `validate=False` skips the range checks (they sync with the device):
        for callers such as the curriculum whose values are valid by construction.
        """
        if not validate:
            if depletion is not None:
                self.depletion = torch.as_tensor(depletion, dtype=torch.float32, device=self.device).expand(
                    self.num_agents).clone()
            if reward_mode is not None:
                self.reward_mode = torch.as_tensor(reward_mode, device=self.device).long().expand(
                    self.num_agents).clone()
            return
        if depletion is not None:
            value = torch.as_tensor(depletion, dtype=torch.float32, device=self.device)
            if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != self.num_agents):
                raise ValueError(f"depletion must be a float or shape [{self.num_agents}], got {value.shape}")
            if bool((value < 0).any()):
                raise ValueError("depletion must be >= 0")
            self.depletion.copy_(value.expand(self.num_agents))
        if reward_mode is not None:
            if isinstance(reward_mode, str):
                if reward_mode not in REWARD_MODES:
                    raise ValueError(f"reward_mode {reward_mode!r} unknown; allowed: {', '.join(REWARD_MODES)}")
                self.reward_mode.fill_(REWARD_MODES.index(reward_mode))
                self._note_uniform_mode(REWARD_MODES.index(reward_mode))
            else:
                modes = torch.as_tensor(reward_mode, device=self.device)
                if modes.shape != (self.num_agents,) or modes.is_floating_point():
                    raise ValueError(f"reward_mode tensor must be int [{self.num_agents}], got {modes.shape}")
                low, high = (int(v) for v in torch.aminmax(modes))
                if low < 0 or high >= len(REWARD_MODES):
                    raise ValueError(f"reward_mode indices must be in [0, {len(REWARD_MODES) - 1}]")
                self.reward_mode.copy_(modes)
                self._note_uniform_mode(low if low == high else None)

    RANDOM_START_LOW = 0.2  # a random start draws each meter from [0.2, 1], money from [0, 1]

    def set_random_starts(self, probability: torch.Tensor | float) -> None:
        """Per-agent probability [N] (or one for all) that an episode is an exploring start: random meters
        (each uniform in [RANDOM_START_LOW, 1], money in [0, 1]) instead of the level's, and the agent placed
        on a random affordance of its layout, all from the agent's own stream; `exploring` [N] marks such
        episodes. For training: an agent then meets being broke, dirty or unfit at the Job, the Shower or the
        Gym from its first episodes on, not only late in long ones (a learner can make its first action there
        random, so every affordance is tried in every kind of state). Evaluation worlds keep 0."""
        value = torch.as_tensor(probability, dtype=torch.float32, device=self.device)
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != self.num_agents):
            raise ValueError(
                f"random start probability must be a float or shape [{self.num_agents}], got {list(value.shape)}"
            )
        if bool(((value < 0) | (value > 1)).any()):
            raise ValueError("random start probability must be in [0, 1]")
        self.random_starts = value.expand(self.num_agents).clone()
        self._random_starts_on = bool((value > 0).any())
        self._random_low = torch.full_like(self._start, self.RANDOM_START_LOW)
        self._random_low[self._money] = 0.0

    _random_starts_on = False  # a plain bool, so worlds without random starts trace no draw at all

    def reset(self, positions: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """Start a new episode for every agent; returns the first observations [N, D].

        `positions` [N, 2] (x, y) places agents where a test or user wants them; otherwise each agent spawns
        on a cell drawn from its own stream. `seed` restarts all streams (same seed, same trajectories).
        """
        if seed is not None:
            if seed != self.seed:
                self.seed = seed
                self._build_layouts()
            self.episode.fill_(-1)
        everyone = torch.ones(self.num_agents, dtype=torch.bool, device=self.device)
        self._begin_episodes(everyone)
        if positions is not None:
            pos = torch.as_tensor(positions, device=self.device)
            if pos.shape != (self.num_agents, 2) or pos.is_floating_point():
                raise ValueError(f"positions must be an int tensor [{self.num_agents}, 2] (x, y), got {pos.shape}")
            if bool(((pos < 0) | (pos >= self.grid_size)).any()):
                raise ValueError(f"positions must lie on the grid: x and y in [0, {self.grid_size - 1}]")
            self.positions.copy_(pos)
        return self.observe()

    _STATE_FIELDS = (
        "positions", "meters", "steps", "hour", "progress", "layout_id", "episode", "episode_return",
        "depletion", "reward_mode", "exploring",
    )

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Everything that evolves: restoring it (same config) continues every episode exactly."""
        return {"seed": self.seed, **{name: getattr(self, name).clone() for name in self._STATE_FIELDS}}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        if int(state["seed"]) != self.seed:
            self.seed = int(state["seed"])
            self._build_layouts()
        for name in self._STATE_FIELDS:
            value = state[name]
            current = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.shape != current.shape or value.dtype != current.dtype:
                raise ValueError(f"world state {name!r}: expected {current.dtype} {list(current.shape)}")
            setattr(self, name, value.to(self.device).clone())

    def action_mask(self) -> torch.Tensor:
        """[N, 5] bool: which actions are allowed now (moves that stay on the grid, INTERACT that applies)."""
        return self._mask(self.positions, self.meters, self.hour, self.layout_id)

    def observe(self) -> torch.Tensor:
        """[N, D] observation of the current state (a fresh tensor)."""
        return self._observe_fn(self.positions, self.meters, self.hour, self.progress, self.layout_id)

    def step(self, actions: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, StepInfo]:
        """Advance every agent one tick. Returns (obs, reward, terminated, truncated, info).

        `actions` [N]: a torch tensor (any integer dtype, any device: it is moved to the world's) or a numpy
        integer array, each in [0, 4] (see `ACTION_NAMES`). Invalid actions (off the grid, INTERACT where
        nothing applies) are no-ops flagged in `info["invalid"]`. Agents whose episode ended are already reset
        in `obs`; see the class docstring for `info`.
        """
        actions = self._check_actions(actions)
        obs, reward, terminated, truncated, info, last = self._step_fn(actions)
        return obs, reward, terminated, truncated, StepInfo(info, self, last)

    def compile(self) -> World:
        """Compile the step and observation code (fewer, fused ops; the first call compiles, which is slow).

        On the CPU they are exported and compiled ahead of time (`townlet.world.aot`), which calls the
        generated code with far less overhead per step than `torch.compile`, and keeps it on disk for the next
        world of the same level and size; other devices use `torch.compile`."""
        if self.device.type == "cpu":
            self._step_program, self._observe_program = aot.step_program(self), aot.observe_program(self)
            self._step_fn, self._observe_fn = self._advance_exported, self._observe_exported
            return self
        # Every World compiles the same methods with its own shapes and constants: allow many variants.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # The C++ wrapper calls the generated kernels without Python in between: it halves N=1 overhead.
        options = {"cpp_wrapper": self.device.type == "cpu"}
        self._step_fn = torch.compile(self._advance, fullgraph=True, dynamic=False, options=options)
        self._observe_fn = torch.compile(self._observe, fullgraph=True, dynamic=False, options=options)
        return self

    # ------------------------------------------------------------------ internals
    def _advance_exported(self, actions: torch.Tensor) -> tuple[Any, ...]:
        """`_advance` through the ahead-of-time compiled program (see `compile`)."""
        out = self._step_program.run(self, (actions,))
        obs, reward, terminated, truncated = out[:4]
        done, length, episode_return, invalid, completed = out[4:9]
        info = {"done": done, "terminated": terminated, "truncated": truncated, "episode_length": length,
                "episode_return": episode_return, "invalid": invalid, "completed": completed}
        last = tuple(out[9:14])
        for name, value in zip(aot.STATE, out[14:], strict=True):
            setattr(self, name, value)
        return obs, reward, terminated, truncated, info, last

    def _observe_exported(self, *state: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        """`_observe` through the ahead-of-time compiled program (`cell` is recomputed there)."""
        return self._observe_program.run(self, state)[0]

    def _advance(self, actions: torch.Tensor) -> tuple[Any, ...]:
        """One tick for every agent; `actions` is a valid int64 tensor on the world's device."""
        *outputs, cell = self._rules(actions)
        return self._observe(*self._state(), cell=cell), *outputs

    def _rules(self, actions: torch.Tensor) -> tuple[Any, ...]:
        """The tick without the observation: (reward, terminated, truncated, info, last state, cell of each
        agent now or None)."""
        traced = _tracing()
        t, k = self._tables, self._numbers if traced else self._scalars
        meters, hour = self.meters, self.hour
        cell, aff1 = self._locate(self.positions, self.layout_id)
        move_key = torch.add(actions, cell, alpha=NUM_ACTIONS)
        moved = self._move_ok.index_select(0, move_key)
        new_cell = self._move_target.index_select(0, move_key)
        # INTERACT is used when something is here, open now and affordable (+inf floors rule out the rest)
        use_key = torch.add(hour, aff1, alpha=self._day) if self._temporal else aff1
        use_key = torch.add(actions, use_key, alpha=NUM_ACTIONS)
        used = torch.ge(meters.select(1, self._money), self._use_floor.index_select(0, use_key))
        invalid = torch.eq(moved, used)  # neither (both never: a move is not a use)

        # Phase 1: the action. A move pays the move cost, a use its meter change (cost included).
        positions = self._xy_of_cell.index_select(0, new_cell)
        delta_row = torch.where(used, aff1 + k.use_row0, move_key)
        meters = meters + self._deltas.index_select(0, delta_row)
        if self._temporal:
            progress = (self.progress + k.one).mul_(used)
            completed = torch.ge(progress, t.ticks.index_select(0, aff1))
            meters += t.bonus.index_select(0, aff1 * completed)
        else:  # every use takes one tick
            progress, completed = torch.zeros_like(self.progress), used
        meters.clamp_(0.0, 1.0)

        # Phase 2: passive drain and modulation, from the meters after phase 1.
        modulation = torch.rsub(meters.narrow(1, self._mod[0], 1), k.float_one)  # [N, 1]
        modulation.mul_(k.mod_scale).add_(k.mod_offset).mul_(k.mod_base)
        drain = torch.addcmul(self._drain, modulation, self._mod_target_onehot)
        meters.sub_(drain.mul_(self.depletion.unsqueeze(1))).clamp_(0.0, 1.0)

        # Phase 3: cascades, all from the meters after phase 2.
        shortfall = torch.sub(self._casc_thr, meters.index_select(1, self._casc_src))
        shortfall.clamp_(min=0.0).div_(self._casc_thr).mul_(self._casc_strength)
        meters.sub_(shortfall @ self._casc_to_target).clamp_(0.0, 1.0)

        # Phase 4: death, reward, counters, clock.
        terminated = torch.lt(meters.index_select(1, self._terminal).amin(dim=1), k.eps)  # any meter empty
        steps = self.steps + k.one
        truncated = torch.ge(steps, k.max_steps).gt_(terminated)  # and not terminated
        reward = self._reward(terminated, steps, meters, traced, k)
        episode_return = self.episode_return + reward
        if self._temporal:
            hour = torch.remainder(hour + k.one, k.day)
            # A use is abandoned when its affordance closes (a use never moves: aff1 is still the one here).
            still_open = self._open_flat.index_select(0, torch.add(hour, aff1, alpha=self._day))
            progress.mul_(still_open.gt_(completed))
        done = terminated | truncated
        info = {
            "done": done,
            "terminated": terminated,
            "truncated": truncated,
            "episode_length": steps,
            "episode_return": episode_return,
            "invalid": invalid,
            "completed": completed,
        }
        last = (positions, meters, hour, progress, self.layout_id)
        self.positions, self.meters, self.hour, self.progress = positions, meters, hour, progress
        self.steps, self.episode_return = steps, episode_return
        if traced or not self._host_reads_free or bool(done.any()):
            self._begin_episodes(done)
            new_cell = None  # some agents moved to a new start: recompute
        return reward, terminated, truncated, info, last, new_cell

    def _cause(self, meters: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        """[N] index into `CAUSES` of a step that ended with these meters: the first empty terminal meter,
        else truncation, else running (the first set column of [empty meters, truncated, always set])."""
        empty = torch.lt(meters.index_select(1, self._terminal), _EPS)
        flags = torch.cat([empty, truncated.unsqueeze(1), self._flag_column], dim=1)
        return self._cause_of.index_select(0, flags.to(torch.uint8).argmax(dim=1))

    def _state(self) -> tuple[torch.Tensor, ...]:
        return self.positions, self.meters, self.hour, self.progress, self.layout_id

    def _check_actions(self, actions: Any) -> torch.Tensor:
        """`actions` as an int64 tensor on the world's device; with `validate_actions`, checked first."""
        n = self.num_agents
        if isinstance(actions, np.ndarray):
            if actions.dtype.kind not in "iu":
                raise ValueError(f"actions must be integers (int64 or any int dtype), got numpy {actions.dtype}")
            if actions.shape != (n,):
                raise ValueError(f"actions must have shape [{n}], got {list(actions.shape)}")
            if self.validate_actions and (actions.min() < 0 or actions.max() >= NUM_ACTIONS):
                raise ValueError(f"actions must be in [0, {NUM_ACTIONS - 1}] ({', '.join(ACTION_NAMES)})")
            return torch.as_tensor(actions, dtype=torch.long, device=self.device)
        if not isinstance(actions, torch.Tensor):
            raise ValueError(
                f"actions must be a torch.Tensor (or numpy array) of ints of shape [{n}], got {type(actions)}"
            )
        if self.validate_actions:
            if actions.shape != (n,):
                raise ValueError(f"actions must have shape [{n}], got {list(actions.shape)}")
            if actions.dtype not in _ACTION_DTYPES:
                raise ValueError(f"actions must be integers (int64 or any int dtype), got dtype {actions.dtype}")
            if n == 1:
                low = high = actions.item()
            else:
                low, high = (v.item() for v in torch.aminmax(actions))
            if low < 0 or high >= NUM_ACTIONS:
                raise ValueError(f"actions must be in [0, {NUM_ACTIONS - 1}] ({', '.join(ACTION_NAMES)})")
        if actions.dtype != torch.long or actions.device != self.device:
            actions = actions.to(self.device, torch.long)
        return actions

    _located: tuple[Any, ...] | None = None

    def _locate(
        self, positions: torch.Tensor, layout_id: torch.Tensor, cell: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] cell (y * G + x) and [N] affordance id + 1 there (0: none); `cell` when the caller has it.

        Run eagerly, the last answer is kept while neither tensor is replaced or written to (their version
        counters say so), so a step, the mask after it and the next step look agents up once between them."""
        traced = _tracing()
        if not traced:
            known = self._located
            if (known is not None and known[0] is positions and known[1] is layout_id
                    and known[2] == positions._version and known[3] == layout_id._version):
                return known[4], known[5]
        g = self.grid_size
        if cell is None:
            cell = torch.add(positions.select(1, 0), positions.select(1, 1), alpha=g)
        aff1 = self._pool_aff1.index_select(0, torch.add(cell, layout_id, alpha=g * g))
        if not traced:
            self._located = (positions, layout_id, positions._version, layout_id._version, cell, aff1)
        return cell, aff1

    def _affordance_id(self, positions: torch.Tensor, layout_id: torch.Tensor) -> torch.Tensor:
        g = self.grid_size
        return self._pool_grid.view(-1)[layout_id * g * g + positions[:, 1] * g + positions[:, 0]].long()

    def _mask(
        self, positions: torch.Tensor, meters: torch.Tensor, hour: torch.Tensor, layout_id: torch.Tensor
    ) -> torch.Tensor:
        cell, aff1 = self._locate(positions, layout_id)
        key = torch.add(hour, aff1, alpha=self._day) if self._temporal else aff1
        usable = torch.ge(meters.select(1, self._money), self._usable_floor.index_select(0, key))
        return self._mask_rows.index_select(0, torch.add(usable, cell, alpha=2))

    def _uniform_mode(self) -> int:
        """The reward mode every agent has, when known without reading the tensor (else -1)."""
        known = self._known_mode
        if known is not None and known[0] is self.reward_mode and known[1] == self.reward_mode._version:
            return known[2]
        return -1

    def _note_uniform_mode(self, mode: int | None) -> None:
        self._known_mode = None if mode is None else (self.reward_mode, self.reward_mode._version, mode)

    def _milestone(self, t: torch.Tensor, k: _Scalars) -> torch.Tensor:
        if self._milestone_period is not None:
            return self._milestone_table.index_select(0, torch.remainder(t, k.milestone_period))
        every, bonus, big_every, big_bonus = self._reward_numbers[:4]
        return bonus * (t % every == 0) + big_bonus * (t % big_every == 0)

    def _reward(
        self, died: torch.Tensor, t: torch.Tensor, meters: torch.Tensor, traced: bool, k: _Scalars
    ) -> torch.Tensor:
        mode = -1 if traced else self._uniform_mode()
        if mode == 0:
            return torch.where(died, k.death_milestone, self._milestone(t, k))
        if mode == 1:
            return torch.where(died, k.death_survival, self._alive)
        shaped = torch.minimum(meters.select(1, self._energy), meters.select(1, self._health))
        shaped.mul_(k.shaped_weight).add_(k.per_tick)
        if mode == 2:
            return torch.where(died, k.death_survival, shaped)
        table = torch.stack([self._milestone(t, k), self._alive, shaped], dim=1)
        reward = torch.take(table, self._agent_rows3 + self.reward_mode)
        return torch.where(died, self._death_by_mode.index_select(0, self.reward_mode), reward)

    def _begin_episodes(self, starting: torch.Tensor) -> None:
        """Reset the agents in the bool mask `starting` [N] to a fresh episode (batched, no host sync)."""
        self.episode += starting
        offsets = self._draw_offsets if self._random_starts_on else self._draw_offsets[:2]
        # The new episodes' values are computed for `rows` and written in with `put`: on the CPU for the
        # starting agents only (finding them costs no device round trip), elsewhere for all, kept by a where.
        if self._host_reads_free and not _tracing():
            rows = starting.nonzero().view(-1)
            count = rows.shape[0]

            def pick(values: torch.Tensor) -> torch.Tensor:
                return values.index_select(0, rows)

            def put(state: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
                return state.clone().index_copy_(0, rows, values.expand(count, *state.shape[1:]))
        else:
            rows, count = None, self.num_agents

            def pick(values: torch.Tensor) -> torch.Tensor:
                return values

            def put(state: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
                return torch.where(starting.view(-1, *[1] * (state.dim() - 1)), values, state)

        bits = agent_bits(pick(self._agent_terms), pick(self.episode), offsets, plain=rows is None)  # [count, K]
        draws = bits[:, :2] % self._draw_high
        layout = draws[:, 0]
        spawn = self._xy_of_cell.index_select(0, draws[:, 1])
        start = self._start
        if self._random_starts_on:
            draw = bits_to_uniform(bits[:, 2:])  # [count, 2 + M]
            exploring = draw[:, 0] < pick(self.random_starts)
            low = self._random_low
            start = torch.where(exploring.view(-1, 1), low + draw[:, 1:-1] * (1.0 - low), start)
            which = (draw[:, -1] * self.num_affordances).long().clamp(max=self.num_affordances - 1)
            on_affordance = self._pool_positions[layout, which]  # [count, 2]
            spawn = torch.where(exploring.view(-1, 1), on_affordance, spawn)
            self.exploring = put(self.exploring, exploring)
        self.layout_id = put(self.layout_id, layout)
        self.positions = put(self.positions, spawn)
        self.meters = put(self.meters, start)
        k = self._scalars if rows is not None else self._numbers
        self.steps = put(self.steps, k.zero)
        self.hour = put(self.hour, k.start_hour)
        self.progress = put(self.progress, k.zero)
        self.episode_return = put(self.episode_return, k.zero_float)

    def _observe(
        self,
        positions: torch.Tensor,
        meters: torch.Tensor,
        hour: torch.Tensor,
        progress: torch.Tensor,
        layout_id: torch.Tensor,
        cell: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Observation of the given state (`cell`: y * G + x of `positions`, when the caller has it).

        Each field is a comparison, a division or a copy. Run eagerly, each writes its slice of one fresh
        tensor (no intermediate the size of the observation); compiled, they are concatenated (Inductor then
        writes them in one pass)."""
        lay, g = self.obs_layout, self.grid_size
        n = positions.shape[0]
        cell, aff1 = self._locate(positions, layout_id, cell)
        # (kind, shape, a, b) per field in order: "eq" the one-hot a == b (b: its columns in order; a: [N, 1, ...]
        # the column of each 1), "div" a / b, "take" the rows b of table a, "copy" a itself
        fields: list[tuple[str, tuple[int, ...], torch.Tensor, torch.Tensor | None]] = []
        if lay.is_partial:
            side = self._padded_side
            traced = _tracing()
            if self._window_of_cell is not None and not traced:
                window = self._window_of_cell.index_select(0, torch.add(cell, layout_id, alpha=g * g))  # [N, W*W]
            else:  # traced, an index Inductor computes in its loop (no table); eagerly, a gather of each cell
                corner = layout_id * (side * side) + positions[:, 1] * side + positions[:, 0]
                cells = self._pool_window.view(-1)[corner.unsqueeze(1) + self._win_offsets]
                window = cells if traced else self._eager_window_(cells)
            if lay.window_channels == 1:
                fields.append(("copy", window.shape, window, None))
            elif not traced:  # channel-major one-hot [N, C, W*W] of each cell's column (see `_eager_window_`)
                columns = self._window_columns
                fields.append(("eq", (n, *columns.shape[1:]), window.unsqueeze(1), columns))
            else:
                fields.append(("window", (n, lay.window_channels * window.shape[1]), window, None))
            # written right after the window: its first column takes the 1s of empty cells (see `_eager_window_`)
            fields.append(("take", (n, 2), self._position_obs, cell))
        else:
            fields.append(("eq", (n, g * g), cell.unsqueeze(1), self._cell_ids))
        fields.append(("copy", (n, meters.shape[1]), meters, None))
        fields.append(("eq", (n, self.num_affordances + 1), aff1.unsqueeze(1), self._here_ids))
        if lay.is_temporal:
            fields.append(("take", (n, 2), self._clock, hour))
            fields.append(("div", (n,), progress, self._ticks_float.index_select(0, aff1)))
        if _tracing():
            parts = []
            for kind, _, a, b in fields:
                if kind == "window":
                    # Inductor would gather each cell once per channel for a comparison; scattering one value
                    # per cell does not (an empty cell, channel C, writes its 0 into the outside channel)
                    channel = a.long()
                    area, channels = channel.shape[1], lay.window_channels
                    index = channel.clamp(max=channels - 1) * area + self._window_cells
                    window = torch.zeros(n, channels * area, device=a.device)
                    parts.append(window.scatter_(1, index, (channel < channels).float()))
                else:
                    parts.append(self._field(kind, a, b).float().view(n, -1))
            return torch.cat(parts, dim=1)
        if n * lay.dim <= self._CONCAT_BELOW:
            # small batches: fewer operations count more than one more pass over a small tensor
            parts = []
            for i, (kind, shape, a, b) in enumerate(fields):
                if kind in ("eq", "div"):  # written into a kept buffer: [N, size] and its view as `shape`
                    flat, shaped = self._scratch(i, shape)
                    self._field(kind, a, b, shaped)
                    parts.append(flat)
                else:
                    parts.append(self._field(kind, a, b))
            return torch.cat(parts, dim=1)
        obs = self._output_buffer(n, lay.dim)
        start = 0
        for kind, shape, a, b in fields:
            size = math.prod(shape[1:])
            if kind == "eq":  # with the next field's first column, which takes the 1s of a window's empty cells
                width = min(size + 1, lay.dim - start)
                self._write_ones(obs.narrow(1, start, width), size, a.reshape(n, -1).long())
                start += size
                continue
            out = obs.narrow(1, start, size).view(shape) if len(shape) != 1 else obs.select(1, start)
            if kind == "copy":
                out.copy_(a)
            else:
                self._field(kind, a, b, out)
            start += size
        return obs

    def _eager_window_(self, cells: torch.Tensor) -> torch.Tensor:
        """What the eager step reads for windows of `_pool_window` cells [..., W*W], in place on a tensor the
        caller owns: presence values as they are; for one-hot types, the column of each cell's 1 in the
        channel-major one-hot [C * W*W], and for an empty cell (channel C) column C * W*W, just past the window,
        which the next field then overwrites (see `_write_ones`)."""
        channels = self.obs_layout.window_channels
        if channels == 1:
            return cells
        area, first_row = cells.shape[-1], self._window_columns[0, 0]  # the first channel's columns: 0 .. W*W-1
        cells = cells.to(first_row.dtype)
        return cells.mul_(area).add_(first_row).clamp_(max=channels * area)

    def _write_ones(self, out: torch.Tensor, size: int, columns: torch.Tensor) -> None:
        """A one-hot into `out`'s first `size` columns: zeros, then a 1 at each of `columns` [N, K] (for the
        window, column `size`, the one after it, takes the 1s of empty cells). On a large batch this beats
        comparing every column with its index, which PyTorch runs as many short rows (docs/speed.md)."""
        out.narrow(1, 0, size).zero_()
        ones = self._ones.get(columns.shape)
        if ones is None:
            ones = self._ones[columns.shape] = torch.ones(columns.shape, device=columns.device)
        out.scatter_(1, columns, ones)

    def _output_buffer(self, n: int, dim: int) -> torch.Tensor:
        """A tensor for a large observation: the one returned last time when nothing refers to it any more
        (the caller dropped it and holds no view, array or alias of it), else a new one. On the CPU a fresh
        multi-megabyte tensor costs page faults on every step; a recycled one that no one can see does not."""
        spare = self._spare_output
        if not (
            self._host_reads_free and spare is not None and spare.shape == (n, dim) and not spare.requires_grad
            # references: this local, the attribute, the argument; and no other tensor on its memory
            and sys.getrefcount(spare) == 3 and spare._use_count() == 1
            and torch._C._storage_Use_Count(spare.untyped_storage()._cdata) == 2
        ):
            spare = torch.empty(n, dim, device=self.device)
        self._spare_output = spare
        return spare

    _spare_output: torch.Tensor | None = None
    _ones: dict[torch.Size, torch.Tensor]  # kept tensors of 1s to scatter, by shape (set in __init__)
    _CONCAT_BELOW = 1 << 15  # observations of at most this many numbers are concatenated from their fields
    _WINDOW_TABLE_BYTES = 1 << 27  # the most memory the table of every layout's windows may take

    @staticmethod
    def _field(kind: str, a: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        if kind == "eq":
            return torch.eq(a, b) if out is None else torch.eq(a, b, out=out)
        if kind == "div":
            return torch.div(a, b) if out is None else torch.div(a, b, out=out)
        if kind == "take":
            return a.index_select(0, b) if out is None else torch.index_select(a, 0, b, out=out)
        return a

    def _scratch(self, index: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """A float32 buffer kept for field `index` of small observations, as [N, size] and viewed as `shape`."""
        buffers = self.__dict__.setdefault("_scratch_buffers", {})
        key = (index, shape)
        if key not in buffers:
            flat = torch.empty(shape[0], math.prod(shape[1:]), device=self.device)
            buffers[key] = (flat, flat.view(shape))
        return buffers[key]


def _tracing() -> bool:
    """Whether the step is being traced into a graph (torch.compile or torch.export), not run eagerly."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()
