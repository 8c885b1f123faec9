"""Stable-Baselines3 on the batched world: a `VecEnv` backed by one `World`, and SB3 models under townlet's
evaluation protocol.

SB3 wraps a single-agent env in `DummyVecEnv`, which steps its sub-environments one by one in Python. A
`TownletVecEnv` instead steps all `num_envs` agents of one `World` as tensors and converts each output to numpy
once per step for the whole batch, so every SB3 and sb3-contrib algorithm trains at the world's batched speed:

    from stable_baselines3 import PPO
    from townlet.world.sb3 import TownletVecEnv

    env = TownletVecEnv("L1_full", num_envs=64, seed=0)
    model = PPO("MlpPolicy", env, seed=0).learn(200_000)

It keeps SB3's conventions, those of `DummyVecEnv` over `Monitor`-wrapped envs: sub-environments auto-reset in
the step that ends their episode; `infos[i]` holds `TimeLimit.truncated` on every step and, for an env whose
episode just ended, `terminal_observation` (its last observation), `episode` = {"r", "l", "t"} as `Monitor`
writes it (so SB3 logs `ep_rew_mean` / `ep_len_mean`; `env_is_wrapped(Monitor)` is therefore True) and `cause`
(what ended it: a meter's name or "truncated"). `action_masks()` is sb3-contrib's masking hook (MaskablePPO).
See docs/sb3.md.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

try:
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import VecEnv
    from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn
except ImportError as e:  # an optional dependency: say how to get it
    raise ImportError(
        "townlet.world.sb3 needs Stable-Baselines3: pip install 'townlet[sb3]' (stable-baselines3, sb3-contrib)"
    ) from e

from townlet.world.config import LevelConfig, load_level
from townlet.world.engine import NUM_ACTIONS, World
from townlet.world.evaluate import run_episodes
from townlet.world.gym_env import _ansi, _check_seed, _entropy_seed, observation_bounds

__all__ = ["SB3Policy", "TownletVecEnv", "evaluate_model"]


def _level_config(level: str | Path | LevelConfig) -> LevelConfig:
    return level if isinstance(level, LevelConfig) else load_level(level)


class TownletVecEnv(VecEnv):
    """`num_envs` agents of one `World` as an SB3 `VecEnv` (see the module docstring for the conventions).

    Observations are float32 [num_envs, D] laid out as `obs_layout` says and bounded per field by
    `observation_space`; actions are `Discrete(5)` (UP, DOWN, LEFT, RIGHT, INTERACT), invalid ones are no-ops.
    Rewards are float32, dones bool.

    Seeding follows `World`: a seed fixes every layout and spawn of every later episode. `seed(s)` makes the next
    `reset()` restart the streams from `s` (as SB3's `model.set_random_seed` / `PPO(..., seed=s)` do); a
    seedless `reset()` begins the next episode of every sub-environment. The env built with `seed=s` hands out
    the episodes of `World(level, num_envs, seed=s)`, its first `reset()` included; `seed=None` draws the seed
    from OS entropy.

    One `World` backs every sub-environment, so `get_attr`, `set_attr` and `env_method` reach this object: an
    attribute is the same for all of them, and `set_attr` or a method that acts on the whole world only takes
    every index at once. `action_masks` and `render` return one row per sub-environment, also through
    `env_method` (which is how MaskablePPO asks for masks).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    # Methods whose result has one entry per sub-environment: env_method hands each index its own.
    _PER_ENV_METHODS: ClassVar[frozenset[str]] = frozenset({"action_masks", "render"})

    def __init__(
        self,
        level: str | Path | LevelConfig = "L1_full",
        num_envs: int = 64,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        reward_mode: str | None = None,
        depletion: float | None = None,
        render_mode: str | None = None,
        compile: bool = False,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} unknown; allowed: {self.metadata['render_modes']}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
        seed = _check_seed(seed)
        self.world = World(
            _level_config(level), int(num_envs), device=device, seed=_entropy_seed() if seed is None else seed,
            validate_actions=False,  # step_async checks the numpy actions; the world need not sync to check again
            compile=compile,
        )
        if reward_mode is not None or depletion is not None:
            self.world.set_difficulty(depletion=depletion, reward_mode=reward_mode)
        self.config = self.world.config
        self.obs_layout = self.world.obs_layout
        self.render_mode = render_mode
        low, high = observation_bounds(self.obs_layout)
        super().__init__(
            int(num_envs),
            spaces.Box(low=low, high=high, shape=(self.obs_layout.dim,), dtype=np.float32),
            spaces.Discrete(NUM_ACTIONS),
        )
        self.metadata = {"render_modes": list(type(self).metadata["render_modes"])}
        self._causes = self.world.CAUSES
        self._actions: torch.Tensor | None = None
        self._mask: np.ndarray | None = None  # action masks of the current state, computed when first asked
        self._unused_episode = True  # the world began its first episodes at construction; reset() hands them out
        self._closed = False
        self._t_start = time.time()  # Monitor's clock: `episode["t"]` is seconds since the env was made

    # ------------------------------------------------------------------ VecEnv API
    def reset(self) -> np.ndarray:
        """Begin a new episode in every sub-environment; the streams restart from a seed given to `seed()`."""
        self._check_open()
        seed = self._seeds[0]
        # The world began fresh episodes at construction: the first seedless reset hands them out unchanged.
        obs = self.world.observe() if seed is None and self._unused_episode else self.world.reset(seed=seed)
        self._unused_episode = False
        self._mask = None
        self._actions = None
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs.cpu().numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._check_open()
        n = self.num_envs
        a = np.asarray(actions)
        if a.size != n or a.ndim > 2 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"actions must be {n} ints (an int array of shape ({n},)), got {a.dtype} {a.shape}")
        a = a.reshape(n)
        low, high = a.min(), a.max()
        if low < 0 or high >= NUM_ACTIONS:
            raise ValueError(f"actions must be in [0, {NUM_ACTIONS - 1}] (UP, DOWN, LEFT, RIGHT, INTERACT)")
        self._actions = torch.tensor(a, dtype=torch.long, device=self.world.device)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions) first")
        obs, reward, _, truncated, info = self.world.step(self._actions)
        self._actions = None
        self._unused_episode = False
        self._mask = None
        obs_np = obs.cpu().numpy()
        done = info["done"].cpu().numpy()
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": t} for t in truncated.cpu().numpy().tolist()]
        ended = np.flatnonzero(done)
        if ended.size:
            self._add_episode_ends(infos, info, ended)
        return obs_np, reward.cpu().numpy(), done, infos

    def close(self) -> None:
        """Release the world; the env cannot be stepped afterwards."""
        self._closed = True
        self._actions = None
        self._mask = None

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next `reset()` (a fresh seed from OS entropy when None). Every sub-environment shares the
        world's seed, each agent drawing from its own stream, so the list holds the same seed `num_envs` times."""
        seed = _entropy_seed() if seed is None else _check_seed(seed)
        self._seeds = [seed] * self.num_envs
        return list(self._seeds)

    def set_options(self, options: list[dict] | dict | None = None) -> None:
        """Per-env reset options are not supported: the world resets every sub-environment at once."""
        if options and (isinstance(options, dict) or any(options)):
            raise ValueError(f"TownletVecEnv takes no reset options (it resets every sub-env at once), got {options!r}")

    def action_masks(self) -> np.ndarray:
        """bool [num_envs, 5]: the valid actions of every sub-environment in the state of the last observation
        (sb3-contrib's masking hook; MaskablePPO calls it, through `env_method`, before every step)."""
        self._check_open()
        if self._mask is None:
            self._mask = self.world.action_mask().cpu().numpy()
        return self._mask.copy()

    def render(self, mode: str | None = None) -> list[str] | None:
        """With `render_mode="ansi"`, one text picture per sub-environment (its grid and meters)."""
        mode = mode or self.render_mode
        if mode is None:
            return super().render(mode)  # SB3 warns that no render_mode was given
        if mode != self.render_mode:
            raise ValueError(f"render mode {mode!r} differs from the env's render_mode {self.render_mode!r}")
        w = self.world
        grids, obs, steps = w.affordance_grid().cpu().numpy(), w.observe().cpu().numpy(), w.steps.cpu().numpy()
        return [_ansi(w, grids[i], obs[i], int(steps[i]), "running") for i in range(self.num_envs)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The attribute of this env (shared by every sub-environment), once per index."""
        value = getattr(self, attr_name)  # AttributeError when missing, as has_attr expects
        return [value] * len(self._index_list(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of this env: every sub-environment shares it, so only all indices at once."""
        self._require_all(indices, f"set_attr({attr_name!r})")
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a method of this env once. `action_masks` and `render` give each index its own row; any other
        method acts on the whole world, so it takes every index at once and each gets the same result."""
        index = self._index_list(indices)
        method = getattr(self, method_name)
        if method_name in self._PER_ENV_METHODS:
            result = method(*method_args, **method_kwargs)
            return [None] * len(index) if result is None else [result[i] for i in index]
        self._require_all(indices, f"env_method({method_name!r})")
        return [method(*method_args, **method_kwargs)] * len(index)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """No Gymnasium wrapper is involved, but the env records episodes as a `Monitor` does: for `Monitor` (or a
        base class of it) the answer is True, as for `Monitor`-wrapped envs, so `evaluate_policy` reads
        `info["episode"]`."""
        wrapped = isinstance(wrapper_class, type) and issubclass(Monitor, wrapper_class)
        return [wrapped] * len(self._index_list(indices))

    # ------------------------------------------------------------------ helpers
    def _add_episode_ends(self, infos: list[dict[str, Any]], info: Any, ended: np.ndarray) -> None:
        """`terminal_observation`, Monitor's `episode` and the `cause` into the infos of the envs that ended."""
        final_obs = info["final_obs"].cpu().numpy()
        lengths = info["episode_length"].cpu().numpy()
        returns = info["episode_return"].cpu().numpy()
        causes = info["cause"].cpu().numpy()
        elapsed = round(time.time() - self._t_start, 6)
        for i in ended.tolist():  # only the envs whose episode ended: SB3 wants one dict per env
            infos[i]["terminal_observation"] = final_obs[i]
            infos[i]["episode"] = {"r": round(float(returns[i]), 6), "l": int(lengths[i]), "t": elapsed}
            infos[i]["cause"] = self._causes[causes[i]]

    def _index_list(self, indices: VecEnvIndices) -> list[int]:
        index = list(self._get_indices(indices))
        bad = [i for i in index if not 0 <= int(i) < self.num_envs]
        if bad:
            raise IndexError(f"sub-environment indices must be in [0, {self.num_envs - 1}], got {bad}")
        return [int(i) for i in index]

    def _require_all(self, indices: VecEnvIndices, what: str) -> None:
        if sorted(set(self._index_list(indices))) != list(range(self.num_envs)):
            raise ValueError(
                f"{what}: one World backs every sub-environment of a TownletVecEnv, so it applies to all "
                f"{self.num_envs} at once; pass indices=None"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this TownletVecEnv is closed")


class SB3Policy:
    """An SB3 (or sb3-contrib) model acting on a batched `World`: `act(obs, world)` and `on_step(info)` as
    `townlet.world.evaluate.run_episodes` takes them.

    One `predict` call per step for the whole batch. Deterministic by default (greedy). A recurrent model
    (RecurrentPPO) keeps its LSTM state across steps, restarted where an episode began; a model whose `predict`
    takes `action_masks` (MaskablePPO) gets the world's mask, the others act unmasked as they were trained
    (an invalid action is a no-op and counts in the evaluation's `invalid_rate`).
    """

    def __init__(self, model: Any, deterministic: bool = True, masked: bool | None = None) -> None:
        self.model = model
        self.deterministic = deterministic
        self.masked = "action_masks" in inspect.signature(model.predict).parameters if masked is None else masked
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state: every agent's next step begins an episode."""
        self._state: Any = None
        self._episode_start: np.ndarray | None = None

    def act(self, obs: torch.Tensor, world: World) -> torch.Tensor:
        if self._episode_start is None or len(self._episode_start) != world.num_agents:
            self._state, self._episode_start = None, np.ones(world.num_agents, dtype=bool)
        extra = {"action_masks": world.action_mask().cpu().numpy()} if self.masked else {}
        actions, self._state = self.model.predict(
            obs.cpu().numpy(), state=self._state, episode_start=self._episode_start,
            deterministic=self.deterministic, **extra,
        )
        return torch.as_tensor(np.asarray(actions).reshape(-1), dtype=torch.long, device=world.device)

    def on_step(self, info: dict[str, torch.Tensor]) -> None:
        self._episode_start = info["done"].cpu().numpy()


def evaluate_model(
    model: Any, level: str | Path | LevelConfig, episodes: int = 1000, agents: int = 250, seed: int = 12345,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """townlet's evaluation protocol for an SB3 model: greedy play on a fresh `World(level, agents, seed)` at
    full difficulty (depletion 1, the level's reward) for `episodes` episodes; `EpisodeStats.summary()`
    (survival_mean, median, p10, ci95, cap_rate, causes, invalid_rate, ...), as `townlet eval` reports it."""
    config = _level_config(level)
    agents = min(agents, episodes)
    world = World(config, agents, device=device, seed=seed)
    policy = SB3Policy(model)
    return run_episodes(world, policy.act, episodes, on_step=policy.on_step).summary()
