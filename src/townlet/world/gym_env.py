"""Standard Gymnasium interfaces to the world: a single-agent `Env` and a native `VectorEnv`.

The batched torch `World` is the fast path; these wrappers exist so that any Gymnasium client (Stable-Baselines3,
CleanRL-style scripts, wrappers from `gymnasium.wrappers`) can use a townlet level unchanged:

    import gymnasium

    env = gymnasium.make("townlet:townlet/L1_full-v0")            # TownletEnv
    envs = gymnasium.make_vec("townlet/L1_full-v0", num_envs=64)  # TownletVectorEnv: one World, 64 agents

The `townlet:` prefix makes Gymnasium import the package, which registers `townlet/<LEVEL>-v0` for every
packaged level; after that (or after `import townlet`) the bare ids work. Gymnasium 1.x loads no entry-point
plugins, so without the prefix or the import a bare id is not found.

`TownletEnv` follows the single-agent contract: it does *not* auto-reset. When the episode ends, `step` returns
the final observation with `terminated`/`truncated` and the caller calls `reset()`. The episode length limit is
the level's `max_steps`, enforced by the world (truncation), not by a `TimeLimit` wrapper.

`TownletVectorEnv` steps `num_envs` agents of one `World` and auto-resets in the same step
(`AutoresetMode.SAME_STEP`): ended sub-environments already hold the next episode's first observation, and the
last observation of the ended episode is in `info["final_obs"]` (an object array, `None` where not done, with the
boolean mask `info["_final_obs"]`), as Gymnasium's own vector envs do.

Seeding: a seed fixes every layout and spawn of every later episode. `reset(seed=s)` restarts the streams;
`reset()` goes on with the next episode of the current stream. An env built with `seed=s` behaves as if its first
`reset()` were `reset(seed=s)`; with `seed=None` its stream is seeded from OS entropy (Gymnasium's convention).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, SupportsFloat

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from townlet.world.config import LEVEL_NAMES, LevelConfig, load_level
from townlet.world.engine import NUM_ACTIONS, World
from townlet.world.observation import ObsLayout

__all__ = [
    "ENV_IDS",
    "TownletEnv",
    "TownletVectorEnv",
    "env_id",
    "observation_bounds",
    "register_envs",
]

_ENTRY_POINT = "townlet.world.gym_env:TownletEnv"
_VECTOR_ENTRY_POINT = "townlet.world.gym_env:TownletVectorEnv"

# Value ranges of the known observation fields (see `ObsLayout`); `window` depends on its encoding.
_FIELD_BOUNDS: dict[str, tuple[float, float]] = {
    "cell": (0.0, 1.0),
    "position": (0.0, 1.0),
    "meters": (0.0, 1.0),
    "here": (0.0, 1.0),
    "time": (-1.0, 1.0),
    "progress": (0.0, 1.0),
}


def env_id(level: str) -> str:
    """The Gymnasium id of a packaged level: `townlet/<level>-v0`."""
    return f"townlet/{level}-v0"


ENV_IDS: tuple[str, ...] = tuple(env_id(name) for name in LEVEL_NAMES)


def register_envs() -> None:
    """Register `townlet/<LEVEL>-v0` for every packaged level (idempotent: ids already registered are kept).

    `gymnasium.make(id)` gives a `TownletEnv`; `gymnasium.make_vec(id, num_envs)` a native `TownletVectorEnv`
    (one `World`, `num_envs` agents). No `max_episode_steps`: the world truncates at the level's `max_steps`.
    """
    for name, gym_id in zip(LEVEL_NAMES, ENV_IDS, strict=True):
        if gym_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=gym_id,
            entry_point=_ENTRY_POINT,
            vector_entry_point=_VECTOR_ENTRY_POINT,
            kwargs={"level": name},
        )


def observation_bounds(layout: ObsLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per-element (low, high) float32 bounds of an observation with this layout."""
    low = np.empty(layout.dim, dtype=np.float32)
    high = np.empty(layout.dim, dtype=np.float32)
    for f in layout.fields:
        if f.name == "window":
            lo, hi = (-1.0, 1.0) if layout.window_channels == 1 else (0.0, 1.0)  # presence has -1 outside
        elif f.name in _FIELD_BOUNDS:
            lo, hi = _FIELD_BOUNDS[f.name]
        else:  # a field this module does not know yet: discrete fields are in {-1, 0, 1}, others unbounded
            lo, hi = (-1.0, 1.0) if f.discrete else (-np.inf, np.inf)
        low[f.slice], high[f.slice] = lo, hi
    return low, high


def _observation_space(layout: ObsLayout) -> spaces.Box:
    low, high = observation_bounds(layout)
    return spaces.Box(low=low, high=high, shape=(layout.dim,), dtype=np.float32)


def _level_config(level: str | Path | LevelConfig) -> LevelConfig:
    return level if isinstance(level, LevelConfig) else load_level(level)


def _entropy_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])


def _make_world(
    level: str | Path | LevelConfig,
    num_agents: int,
    seed: int | None,
    device: str | torch.device,
    reward_mode: str | None,
    depletion: float | None,
    compile: bool,
) -> World:
    seed = _entropy_seed() if seed is None else int(seed)
    world = World(_level_config(level), num_agents, device=device, seed=seed, compile=compile)
    if reward_mode is not None or depletion is not None:
        world.set_difficulty(depletion=depletion, reward_mode=reward_mode)
    return world


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    return int(seed)


def _affordance_symbols(count: int) -> str:
    symbols = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return symbols[:count] + "#" * max(0, count - len(symbols))


def _ansi(world: World, grid: np.ndarray, obs: np.ndarray, steps: int, cause: str) -> str:
    """A text picture of one agent's world: the grid (`@` the agent, letters the affordances) and its meters,
    as its observation row `obs` shows them (see `ObsLayout.decode`)."""
    state = world.obs_layout.decode(obs)
    x, y, here = state["x"], state["y"], state["here"]
    symbols = _affordance_symbols(world.num_affordances)
    g = grid.shape[0]
    head = f"step {steps}/{world.config.max_steps}"
    if state["hour"] is not None:
        head += f"  hour {state['hour']:02d}"
    if cause != "running":
        head += f"  ended: {cause}"
    lines = [head, "+" + "-" * (2 * g + 1) + "+"]
    for row in range(g):
        cells = []
        for col in range(g):
            aff = int(grid[row, col])
            mark = symbols[aff] if aff >= 0 else "."
            cells.append("@" if (col, row) == (x, y) else mark)
        lines.append("| " + " ".join(cells) + " |")
    lines.append("+" + "-" * (2 * g + 1) + "+")
    lines.append(f"at ({x}, {y}) on {world.affordance_names[here] if here >= 0 else 'nothing'}")
    lines.append("  ".join(f"{symbols[i]}={name}" for i, name in enumerate(world.affordance_names)))
    lines.append("  ".join(f"{name} {v:.2f}" for name, v in zip(world.meter_names, state["meters"], strict=True)))
    return "\n".join(lines) + "\n"


class TownletEnv(gymnasium.Env[np.ndarray, np.int64]):
    """One agent in a townlet level, through the standard single-agent Gymnasium API.

    Backed by a `World` with one agent (`self.world`). Observations are float32 vectors laid out as
    `self.obs_layout` describes, bounded per field by `observation_space`; actions are `Discrete(5)`
    (UP, DOWN, LEFT, RIGHT, INTERACT). Invalid actions are allowed and act as no-ops.

    `info` (reset and step) holds `action_mask` (bool [5]: which actions are valid now); step adds `invalid`,
    `completed` (a use finished), `cause` ("running", the meter that killed the agent, or "truncated"),
    `episode_length` and `episode_return` (of the current episode so far; the totals on its last step).
    When an episode ends the observation and mask are those of its last state: call `reset()` to go on.
    (The world has already begun the next episode by then, and a seedless `reset()` hands that one out, so the
    env's episodes are exactly those of agent 0 of `World(level, 1, seed=seed)`; state written into `self.world`
    between the end of an episode and `reset()` therefore carries over.)

    `reset(options={"position": (x, y)})` places the agent. `reward_mode` / `depletion` set the world's
    difficulty (see `World.set_difficulty`); `render_mode="ansi"` makes `render()` return a text picture;
    `compile=True` compiles the world's step (`World.compile`: slow once, then much faster steps).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        level: str | Path | LevelConfig = "L1_full",
        render_mode: str | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        reward_mode: str | None = None,
        depletion: float | None = None,
        compile: bool = False,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} unknown; allowed: {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.world = _make_world(level, 1, _check_seed(seed), device, reward_mode, depletion, compile)
        self.config = self.world.config
        self.obs_layout = self.world.obs_layout
        self.observation_space = _observation_space(self.obs_layout)
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        # The world's current episode has not been stepped yet, so a seedless reset() may hand it out as is.
        self._unused_episode = True
        self._ended = False
        self._begin_render_state(self.world.observe()[0].cpu().numpy())
        self._mask = self.world.action_mask()[0].cpu().numpy()
        # one tensor per action, made once: a step then creates no tensor from a Python number
        self._action_tensors = [torch.tensor([a], device=self.world.device) for a in range(NUM_ACTIONS)]

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        seed = _check_seed(seed)
        options = dict(options or {})
        position = options.pop("position", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; allowed: 'position'")
        world = self.world
        if position is not None:
            positions = torch.as_tensor(position, dtype=torch.long, device=world.device).view(1, 2)
            obs = world.reset(positions=positions, seed=seed)
        elif seed is not None or not self._unused_episode:
            obs = world.reset(seed=seed)
        else:  # the world already started a fresh episode (at construction or when the last one ended)
            obs = world.observe()
        self._unused_episode = False
        self._ended = False
        obs_np = obs[0].cpu().numpy()
        self._begin_render_state(obs_np)
        self._mask = world.action_mask()[0].cpu().numpy()
        return obs_np, {"action_mask": self._mask.copy()}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._ended:
            raise RuntimeError("the episode has ended (terminated or truncated): call reset() before step()")
        world = self.world
        obs, reward, terminated, truncated, info = world.step(self._action_tensors[self._action_index(action)])
        # one agent: every tensor holds one value, read with .item() (no indexing operation first)
        if info["done"].item():
            obs, mask = info["final_obs"], info["final_mask"]
            cause = world.CAUSES[info["cause"].item()]
            self._ended = True
            self._unused_episode = True  # the world has begun the next episode; reset() hands it out
        else:
            mask, cause = world.action_mask(), world.CAUSES[0]
        obs_np = obs.cpu().numpy()[0]
        self._mask = mask.cpu().numpy()[0]
        step_info = {
            "action_mask": self._mask.copy(),
            "invalid": info["invalid"].item(),
            "completed": info["completed"].item(),
            "cause": cause,
            "episode_length": info["episode_length"].item(),
            "episode_return": info["episode_return"].item(),
        }
        self._render_obs, self._render_steps, self._render_cause = obs_np, step_info["episode_length"], cause
        return obs_np, reward.item(), terminated.item(), truncated.item(), step_info

    def render(self) -> str | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; create the env with render_mode='ansi'")
            return None
        return _ansi(self.world, self._render_grid, self._render_obs, self._render_steps, self._render_cause)

    def action_masks(self) -> np.ndarray:
        """bool [5]: the valid actions in the state of the last observation (sb3-contrib's masking hook)."""
        return self._mask.copy()

    # ------------------------------------------------------------------ helpers
    def _action_index(self, action: Any) -> int:
        if type(action) is int and 0 <= action < NUM_ACTIONS:  # the common case, checked without numpy
            return action
        a = np.asarray(action)
        if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"action must be one int in [0, {NUM_ACTIONS - 1}], got {action!r}")
        index = int(a.reshape(()))
        if not 0 <= index < NUM_ACTIONS:
            raise ValueError(f"action must be in [0, {NUM_ACTIONS - 1}], got {index}")
        return index

    def _begin_render_state(self, obs: np.ndarray) -> None:
        self._render_obs, self._render_steps, self._render_cause = obs, 0, "running"
        # The layout is fixed for an episode, so the grid captured at its start serves its final frame too.
        self._render_grid = self.world.affordance_grid()[0].cpu().numpy() if self.render_mode else None


class TownletVectorEnv(VectorEnv):
    """`num_envs` agents of one `World` through Gymnasium's `VectorEnv` API, auto-resetting in the same step.

    `step(actions)` takes an int array [num_envs] and returns numpy arrays: observations float32
    [num_envs, D], rewards float64, terminations and truncations bool. Ended sub-environments are already reset
    (`metadata["autoreset_mode"]` is `AutoresetMode.SAME_STEP`); when any ended, `infos` holds
    `final_obs` (object array of the last observations, `None` elsewhere) and `final_info` (a dict of arrays:
    `action_mask`, `cause`, `episode_length`, `episode_return`), each with Gymnasium's boolean `_key` mask, and,
    unless `episode_stats=False`, `episode` = {"r", "l", "t"} with `_episode` as `RecordEpisodeStatistics` writes
    it (pass `episode_stats=False` to use that wrapper instead). Every step's `infos` also hold `action_mask`
    [num_envs, 5] (of the current state, so of the new episode where one just began), `invalid` and `completed`.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["ansi"],
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(
        self,
        level: str | Path | LevelConfig = "L1_full",
        num_envs: int = 1,
        render_mode: str | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        reward_mode: str | None = None,
        depletion: float | None = None,
        episode_stats: bool = True,
        compile: bool = False,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} unknown; allowed: {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.num_envs = int(num_envs)
        self.world = _make_world(level, self.num_envs, _check_seed(seed), device, reward_mode, depletion, compile)
        self.config = self.world.config
        self.obs_layout = self.world.obs_layout
        self.episode_stats = episode_stats
        self.single_observation_space = _observation_space(self.obs_layout)
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._causes = np.array(self.world.CAUSES)
        self._unused_episode = True
        self._episode_start = np.full(self.num_envs, time.perf_counter())

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None and not isinstance(seed, int | np.integer):
            raise ValueError(f"seed must be one int for all sub-environments (one World), got {seed!r}")
        super().reset(seed=seed)
        seed = _check_seed(seed)
        if options:
            raise ValueError(
                f"reset options {sorted(options)} are not supported (the world resets every sub-environment at once)"
            )
        fresh = seed is None and self._unused_episode  # hand out the episode the world already began
        obs = self.world.observe() if fresh else self.world.reset(seed=seed)
        self._unused_episode = False
        self._episode_start[:] = time.perf_counter()
        return obs.cpu().numpy(), {"action_mask": self.world.action_mask().cpu().numpy(), "_action_mask": self._every()}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        world, n = self.world, self.num_envs
        a = np.asarray(actions)
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must be an int array of shape ({n},), got {a.dtype} {a.shape}")
        if n and (a.min() < 0 or a.max() >= NUM_ACTIONS):
            raise ValueError(f"actions must be in [0, {NUM_ACTIONS - 1}]")
        obs, reward, terminated, truncated, info = world.step(torch.as_tensor(a, dtype=torch.long, device=world.device))
        self._unused_episode = False
        done = info["done"].cpu().numpy()
        infos: dict[str, Any] = {
            "action_mask": world.action_mask().cpu().numpy(),
            "_action_mask": self._every(),
            "invalid": info["invalid"].cpu().numpy(),
            "_invalid": self._every(),
            "completed": info["completed"].cpu().numpy(),
            "_completed": self._every(),
        }
        if done.any():
            self._add_final(infos, info, done)
        return (
            obs.cpu().numpy(),
            reward.cpu().numpy().astype(np.float64),
            terminated.cpu().numpy(),
            truncated.cpu().numpy(),
            infos,
        )

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode is None:
            gymnasium.logger.warn("render() called without a render_mode; create the env with render_mode='ansi'")
            return None
        w = self.world
        grids, obs, steps = w.affordance_grid().cpu().numpy(), w.observe().cpu().numpy(), w.steps.cpu().numpy()
        return tuple(_ansi(w, grids[i], obs[i], int(steps[i]), "running") for i in range(self.num_envs))

    def action_masks(self) -> np.ndarray:
        """bool [num_envs, 5]: the valid actions of every sub-environment now."""
        return self.world.action_mask().cpu().numpy()

    def _every(self) -> np.ndarray:
        """A fresh all-true `_key` mask (Gymnasium's "every sub-environment has this info")."""
        return np.ones(self.num_envs, dtype=bool)

    def _add_final(self, infos: dict[str, Any], info: Any, done: np.ndarray) -> None:
        final_obs = info["final_obs"].cpu().numpy()
        objects = np.full(self.num_envs, None, dtype=object)
        for i in np.flatnonzero(done):
            objects[i] = final_obs[i]
        length = info["episode_length"].cpu().numpy()
        ret = info["episode_return"].cpu().numpy()
        final_info = {
            "action_mask": info["final_mask"].cpu().numpy(),
            "cause": self._causes[info["cause"].cpu().numpy()],
            "episode_length": length,
            "episode_return": ret,
        }
        for key in list(final_info):
            final_info[f"_{key}"] = done.copy()
        infos.update(final_obs=objects, _final_obs=done.copy(), final_info=final_info, _final_info=done.copy())
        if self.episode_stats:
            now = time.perf_counter()
            infos["episode"] = {
                "r": np.where(done, ret.astype(np.float64), 0.0),
                "l": np.where(done, length, 0),
                "t": np.where(done, np.round(now - self._episode_start, 6), 0.0),
            }
            infos["_episode"] = done
            self._episode_start[done] = now


register_envs()
