"""The batched survival world: N independent episodes stepped at once as tensors.

Every rule comes from the level config (see `../shared/world-spec.md` for the reference numbers). One code
path serves instant and temporal levels: an instant level is a temporal one whose uses all take one tick
and whose affordances never close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from townlet.world.config import METER_NAMES, REWARD_MODES, LevelConfig, hour_is_open, load_level
from townlet.world.observation import ObsLayout
from townlet.world.rng import agent_randint, agent_uniform, stream_offset

NUM_ACTIONS = 5
ACTION_NAMES = ("UP", "DOWN", "LEFT", "RIGHT", "INTERACT")
INTERACT = 4
_EPS = 1e-5  # float32 slack: "can pay" and "meter is empty" (spec: rounding must not change the rules)

# Layout streams of the per-agent counter RNG.
_STREAM_LAYOUT, _STREAM_SPAWN = 1, 2
_STREAM_START = 3  # exploring starts: stream 3 picks, the next draw each meter, the last the spawn affordance


class StepInfo(dict):
    """The per-agent step info. `final_obs` and `final_mask` (the last observation and action mask of the
    episodes that just ended; rows of other agents are don't-care) are computed on first access, so a
    caller that does not need them does not pay for them."""

    LAZY = ("final_obs", "final_mask")

    def __init__(self, values: dict[str, torch.Tensor], world: World, last: tuple[torch.Tensor, ...]) -> None:
        super().__init__(values)
        self._world, self._last = world, last

    def __missing__(self, key: str) -> torch.Tensor:
        if key == "final_obs":
            value = self._world._observe_fn(*self._last)
        elif key == "final_mask":
            positions, meters, hour, _, layout_id = self._last
            value = self._world._mask(positions, meters, hour, layout_id)
        else:
            raise KeyError(key)
        self[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.LAZY or super().__contains__(key)


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
        self.grid_size = config.grid_size
        self.num_affordances = config.num_affordances
        self.affordance_names = tuple(config.affordance_names)
        self.meter_names = METER_NAMES
        terminal = [i for i, name in enumerate(METER_NAMES) if config.meters[name].terminal]
        self.CAUSES = ("running", *(METER_NAMES[i] for i in terminal), "truncated")
        self._build_constants(terminal)
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
        self._agent_ids = torch.arange(n, device=dev)
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
        streams = range(_STREAM_START, _STREAM_START + 2 + len(METER_NAMES))
        self._start_offsets = torch.tensor([stream_offset(self.seed, s) for s in streams], device=self.device)
        self._cell_ids = torch.arange(g * g, device=self.device).view(1, -1)
        self._here_ids = torch.arange(a + 1, device=self.device).view(1, -1)

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
            else:
                modes = torch.as_tensor(reward_mode, device=self.device)
                if modes.shape != (self.num_agents,) or modes.is_floating_point():
                    raise ValueError(f"reward_mode tensor must be int [{self.num_agents}], got {modes.shape}")
                if bool(((modes < 0) | (modes >= len(REWARD_MODES))).any()):
                    raise ValueError(f"reward_mode indices must be in [0, {len(REWARD_MODES) - 1}]")
                self.reward_mode.copy_(modes)

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

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, StepInfo]:
        """Advance every agent one tick. Returns (obs, reward, terminated, truncated, info).

        Invalid actions (off the grid, INTERACT where nothing applies) are no-ops flagged in `info["invalid"]`.
        Agents whose episode ended are already reset in `obs`; see the class docstring for `info`.
        """
        if self.validate_actions:
            self._check_actions(actions)
        obs, reward, terminated, truncated, info, last = self._step_fn(actions)
        return obs, reward, terminated, truncated, StepInfo(info, self, last)

    def compile(self) -> World:
        """Compile the step and observation code with `torch.compile` (fewer, fused ops; first call is slow)."""
        # Every World compiles the same methods with its own shapes and constants: allow many variants.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        # The C++ wrapper calls the generated kernels without Python in between: it halves N=1 overhead.
        options = {"cpp_wrapper": self.device.type == "cpu"}
        self._step_fn = torch.compile(self._advance, fullgraph=True, dynamic=False, options=options)
        self._observe_fn = torch.compile(self._observe, fullgraph=True, dynamic=False, options=options)
        return self

    # ------------------------------------------------------------------ internals
    def _advance(self, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t = self._tables
        aff = self._affordance_id(self.positions, self.layout_id) + 1
        valid = self._mask(self.positions, self.meters, self.hour, self.layout_id).gather(1, actions.view(-1, 1))
        valid = valid.squeeze(1)
        moved = valid & (actions < INTERACT)
        used = valid & (actions == INTERACT)

        # Phase 1: the action.
        positions = self.positions + self._moves[actions] * moved.view(-1, 1)
        progress = torch.where(used, self.progress + 1, 0)
        completed = used & (progress >= t.ticks[aff])
        progress = torch.where(completed, 0, progress)
        meters = (
            self.meters
            - moved.view(-1, 1) * self._move_cost
            + used.view(-1, 1) * t.use_delta[aff]
            + completed.view(-1, 1) * t.bonus[aff]
        ).clamp(0.0, 1.0)

        # Phase 2: passive drain and modulation, from the meters after phase 1.
        src, _, base, offset, scale = self._mod
        modulation = base * (offset + scale * (1.0 - meters[:, src]))
        drain = self._drain + modulation.view(-1, 1) * self._mod_target_onehot
        meters = (meters - self.depletion.view(-1, 1) * drain).clamp(0.0, 1.0)

        # Phase 3: cascades, all from the meters after phase 2.
        shortfall = (self._casc_thr - meters[:, self._casc_src]).clamp(min=0.0) / self._casc_thr
        meters = (meters - (self._casc_strength * shortfall) @ self._casc_to_target).clamp(0.0, 1.0)

        # Phase 4: death, reward, counters, clock.
        empty = meters[:, self._terminal] < _EPS
        terminated = empty.any(dim=1)
        steps = self.steps + 1
        truncated = (steps >= self._max_steps) & ~terminated
        reward = self._reward(terminated, steps, meters)
        episode_return = self.episode_return + reward
        hour = self.hour
        if self._temporal:
            hour = (hour + 1) % self._day
            # A use is abandoned when its affordance closes.
            still_open = t.open_at[self._affordance_id(positions, self.layout_id) + 1, hour]
            progress = torch.where(still_open, progress, 0)

        done = terminated | truncated
        cause = torch.where(
            terminated,
            empty.to(torch.int8).argmax(dim=1) + 1,
            torch.where(truncated, len(self.CAUSES) - 1, 0),
        )
        info = {
            "done": done,
            "terminated": terminated,
            "truncated": truncated,
            "cause": cause,
            "episode_length": steps,
            "episode_return": episode_return,
            "invalid": ~valid,
            "completed": completed,
        }
        last = (positions, meters, hour, progress, self.layout_id)
        self.positions, self.meters, self.hour, self.progress = positions, meters, hour, progress
        self.steps, self.episode_return = steps, episode_return
        self._begin_episodes(done)
        return self._observe(*self._state()), reward, terminated, truncated, info, last

    def _state(self) -> tuple[torch.Tensor, ...]:
        return self.positions, self.meters, self.hour, self.progress, self.layout_id

    def _check_actions(self, actions: torch.Tensor) -> None:
        if not isinstance(actions, torch.Tensor):
            raise ValueError(f"actions must be a torch.Tensor of shape [{self.num_agents}], got {type(actions)}")
        if actions.shape != (self.num_agents,):
            raise ValueError(f"actions must have shape [{self.num_agents}], got {list(actions.shape)}")
        if actions.dtype != torch.int64:
            raise ValueError(f"actions must be an int64 (torch.long) tensor, got dtype {actions.dtype}")
        if actions.device != self.device:
            raise ValueError(f"actions must be on {self.device}, got {actions.device}")
        low, high = torch.aminmax(actions)
        if low < 0 or high >= NUM_ACTIONS:
            raise ValueError(f"actions must be in [0, {NUM_ACTIONS - 1}] ({', '.join(ACTION_NAMES)})")

    def _affordance_id(self, positions: torch.Tensor, layout_id: torch.Tensor) -> torch.Tensor:
        g = self.grid_size
        return self._pool_grid.view(-1)[layout_id * g * g + positions[:, 1] * g + positions[:, 0]].long()

    def _mask(
        self, positions: torch.Tensor, meters: torch.Tensor, hour: torch.Tensor, layout_id: torch.Tensor
    ) -> torch.Tensor:
        t, g = self._tables, self.grid_size
        aff = self._affordance_id(positions, layout_id) + 1
        x, y = positions[:, 0], positions[:, 1]
        can_pay = meters[:, self._money] >= t.cost_tick[aff] - _EPS
        usable = (aff > 0) & can_pay & t.open_at[aff, hour]
        return torch.stack([y > 0, y < g - 1, x > 0, x < g - 1, usable], dim=1)

    def _reward(self, died: torch.Tensor, t: torch.Tensor, meters: torch.Tensor) -> torch.Tensor:
        every, bonus, big_every, big_bonus, milestone_death, per_tick, survival_death, weight = self._reward_numbers
        milestone = bonus * (t % every == 0) + big_bonus * (t % big_every == 0)
        alive = torch.full_like(self.depletion, per_tick)
        shaped = alive + weight * torch.minimum(meters[:, self._energy], meters[:, self._health])
        table = torch.stack([milestone.float(), alive, shaped], dim=1)
        reward = table.gather(1, self.reward_mode.view(-1, 1)).squeeze(1)
        death = torch.where(self.reward_mode == 0, milestone_death, survival_death)
        return torch.where(died, death, reward)

    def _begin_episodes(self, starting: torch.Tensor) -> None:
        """Reset the agents in the bool mask `starting` [N] to a fresh episode (batched, no host sync)."""
        self.episode += starting.long()
        pool = agent_randint(self.seed, self._agent_ids, self.episode, _STREAM_LAYOUT, self._pool_size)
        self.layout_id = torch.where(starting, pool, self.layout_id)
        g = self.grid_size
        cell = agent_randint(self.seed, self._agent_ids, self.episode, _STREAM_SPAWN, g * g)
        spawn = torch.stack([cell % g, cell // g], dim=1)
        keep = starting.view(-1, 1)
        start = self._start.expand_as(self.meters)
        if self._random_starts_on:
            draw = agent_uniform(self._agent_ids, self.episode, self._start_offsets)  # [N, 2 + M]
            exploring = draw[:, 0] < self.random_starts
            low = self._random_low
            start = torch.where(exploring.view(-1, 1), low + draw[:, 1:-1] * (1.0 - low), start)
            which = (draw[:, -1] * self.num_affordances).long().clamp(max=self.num_affordances - 1)
            on_affordance = self._pool_positions[self.layout_id, which]  # [N, 2]
            spawn = torch.where(exploring.view(-1, 1), on_affordance, spawn)
            self.exploring = torch.where(starting, exploring, self.exploring)
        self.positions = torch.where(keep, spawn, self.positions)
        self.meters = torch.where(keep, start, self.meters)
        self.steps = torch.where(starting, 0, self.steps)
        self.hour = torch.where(starting, self._start_hour, self.hour)
        self.progress = torch.where(starting, 0, self.progress)
        self.episode_return = torch.where(starting, 0.0, self.episode_return)

    def _observe(
        self,
        positions: torch.Tensor,
        meters: torch.Tensor,
        hour: torch.Tensor,
        progress: torch.Tensor,
        layout_id: torch.Tensor,
    ) -> torch.Tensor:
        """Observation of the given state, built from comparisons and one cat so it compiles to one pass."""
        lay, g = self.obs_layout, self.grid_size
        x, y = positions[:, 0], positions[:, 1]
        aff = self._affordance_id(positions, layout_id) + 1
        parts: list[torch.Tensor] = []
        if lay.is_partial:
            side = self._padded_side
            base = (layout_id * side * side + y * side + x).view(-1, 1)
            cells = self._pool_window.view(-1)[base + self._win_offsets]  # [N, W*W]
            if lay.window_channels == 1:
                parts.append(cells)
            else:  # channel-major one-hot [N, C, W*W]; an empty cell writes 0 into its own outside slot
                chan = cells.long()
                area = cells.shape[1]
                index = chan.clamp(max=lay.window_channels - 1) * area + self._window_cells
                window = torch.zeros(cells.shape[0], lay.window_channels * area, device=cells.device)
                parts.append(window.scatter_(1, index, (chan < lay.window_channels).float()))
            parts.append(positions.float() / (g - 1))
        else:
            parts.append(((y * g + x).view(-1, 1) == self._cell_ids).float())
        parts.append(meters)
        parts.append((aff.view(-1, 1) == self._here_ids).float())
        if lay.is_temporal:
            angle = (hour.float() * (2 * math.pi / self._day)).view(-1, 1)
            ticks = self._tables.ticks[aff].float().view(-1, 1)
            parts += [torch.sin(angle), torch.cos(angle), progress.float().view(-1, 1) / ticks]
        return torch.cat(parts, dim=1)
