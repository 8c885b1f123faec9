"""The Gymnasium interfaces: API conformance, seeding, terminal observations, same-step autoreset, SB3."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from townlet.world.config import LEVEL_NAMES, load_level
from townlet.world.engine import World
from townlet.world.gym_env import (
    ENV_IDS,
    TownletEnv,
    TownletVectorEnv,
    env_id,
    observation_bounds,
    register_envs,
)

UP, DOWN, LEFT, RIGHT, INTERACT = range(5)
ENERGY = 0  # meter index


def _short_level(max_steps: int):
    return load_level("L0_minimal").model_copy(update={"max_steps": max_steps})


def _small_pool_level(name: str = "L2_partial"):
    """A random-layout level with a small layout pool: seeded resets rebuild the pool, 16384 layouts by default."""
    return load_level(name).model_copy(update={"layout_pool": 64})


def _meters(env: TownletEnv, obs: np.ndarray) -> np.ndarray:
    return obs[env.obs_layout["meters"].slice]


# ---------------------------------------------------------------------------------------------- registration
def test_register_envs_is_idempotent_and_sets_no_time_limit() -> None:
    register_envs()
    register_envs()
    for name in LEVEL_NAMES:
        spec = gymnasium.spec(env_id(name))
        assert spec.id in ENV_IDS
        assert spec.kwargs == {"level": name}
        assert spec.max_episode_steps is None  # the world truncates itself at config.max_steps


def test_make_with_module_prefix_and_make_vec_gives_native_vector_env() -> None:
    env = gymnasium.make("townlet.world.gym_env:townlet/L0_minimal-v0")
    assert isinstance(env.unwrapped, TownletEnv)
    envs = gymnasium.make_vec("townlet/L0_minimal-v0", num_envs=3, seed=4)
    assert isinstance(envs.unwrapped, TownletVectorEnv)
    assert envs.unwrapped.world.num_agents == 3 and envs.unwrapped.world.seed == 4
    sync = gymnasium.make_vec("townlet/L0_minimal-v0", num_envs=2, vectorization_mode="sync")
    obs, _ = sync.reset(seed=0)
    assert obs.shape == (2, envs.single_observation_space.shape[0])
    sync.close()


def test_a_fresh_interpreter_makes_an_env_with_the_townlet_prefix_without_importing_townlet() -> None:
    """Gymnasium 1.x loads no entry-point plugins: `gymnasium.make("townlet:townlet/L1_full-v0")` imports the
    package (which registers every level) by itself, and the bare id names the missing import."""
    import townlet

    script = (
        "import sys, gymnasium\n"
        "assert 'townlet' not in sys.modules\n"
        "try:\n"
        "    gymnasium.make('townlet/L1_full-v0')\n"
        "except gymnasium.error.NamespaceNotFound:\n"
        "    print('bare id: not registered yet')\n"
        "env = gymnasium.make('townlet:townlet/L1_full-v0')\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(type(env.unwrapped).__name__, obs.shape, gymnasium.make('townlet/L0_minimal-v0').spec.id)\n"
    )
    source = str(Path(townlet.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["bare id: not registered yet", "TownletEnv (87,) townlet/L0_minimal-v0"]


# ---------------------------------------------------------------------------------------------- single agent
@pytest.mark.parametrize("name", LEVEL_NAMES)
def test_check_env_passes_for_every_level(name: str) -> None:
    env = gymnasium.make(env_id(name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # made through the registry: the spec's render modes and close() are checked too
        if name == "L0_minimal":  # the made env itself, through gymnasium's checker wrappers (same env code)
            check_env(env)
    # The only expected message: check_env(env) notes that the made env carries gymnasium's own wrappers.
    problems = [str(w.message) for w in caught if "different from the unwrapped version" not in str(w.message)]
    assert problems == []
    assert env.action_space == gymnasium.spaces.Discrete(5)
    assert env.observation_space.shape == (env.unwrapped.world.obs_dim,)
    assert env.observation_space.dtype == np.float32


@pytest.mark.parametrize("name", LEVEL_NAMES)
def test_observation_bounds_follow_the_fields_and_hold_on_a_rollout(name: str) -> None:
    env = TownletEnv(name, seed=1)
    lay, space = env.obs_layout, env.observation_space
    low, high = observation_bounds(lay)
    assert np.array_equal(space.low, low) and np.array_equal(space.high, high)
    assert (space.low[lay["meters"].slice] == 0).all() and (space.high[lay["meters"].slice] == 1).all()
    if "time" in lay:
        assert (space.low[lay["time"].slice] == -1).all()
    if "window" in lay:
        presence = lay.window_channels == 1
        assert (space.low[lay["window"].slice] == (-1 if presence else 0)).all()
    obs, _ = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(60):
        assert space.contains(obs), name
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(5)))
        if terminated or truncated:
            obs, _ = env.reset()


def test_presence_window_reaches_its_lower_bound_at_the_edge() -> None:
    env = TownletEnv("L2_partial_fixed", seed=0)
    obs, _ = env.reset(options={"position": (0, 0)})
    window = obs[env.obs_layout["window"].slice]
    assert window.min() == -1 and env.observation_space.contains(obs)


def _rollout(env: TownletEnv, actions: np.ndarray, seed: int | None) -> list[np.ndarray]:
    """Observations and rewards of a fixed action sequence, resetting (without a seed) at episode ends."""
    obs, info = env.reset(seed=seed)
    out = [obs, info["action_mask"]]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(int(a))
        out += [obs, np.float32(reward), info["action_mask"]]
        if terminated or truncated:
            obs, info = env.reset()
            out += [obs, info["action_mask"]]
    return out


def test_reset_with_seed_reproduces_episodes_and_seedless_reset_continues_the_stream() -> None:
    actions = np.random.default_rng(0).integers(0, 5, size=200)
    env = TownletEnv(_short_level(30), seed=123)
    first = _rollout(env, actions, seed=9)
    again = _rollout(env, actions, seed=9)
    assert len(first) == len(again)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    # A fresh env built with seed=s behaves as one reset with seed=s.
    assert all(
        np.array_equal(a, b)
        for a, b in zip(first, _rollout(TownletEnv(_short_level(30), seed=9), actions, None), strict=True)
    )

    # Seedless resets draw new episodes (random layouts differ), deterministically after a seeded reset.
    random_layout = TownletEnv(_small_pool_level(), seed=0)
    starts = [random_layout.reset(seed=5)[0], random_layout.reset()[0], random_layout.reset()[0]]
    assert not np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[1], starts[2])
    repeat = [random_layout.reset(seed=5)[0], random_layout.reset()[0], random_layout.reset()[0]]
    assert all(np.array_equal(a, b) for a, b in zip(starts, repeat, strict=True))
    assert not np.array_equal(random_layout.reset(seed=6)[0], starts[0])


def test_a_compiled_env_plays_the_same_episodes() -> None:
    """`compile=True` reaches the world; episodes, seeded resets (a new layout pool) and masks are unchanged."""
    actions = np.random.default_rng(2).integers(0, 5, size=150)
    cfg = _small_pool_level().model_copy(update={"max_steps": 40})
    eager, compiled = TownletEnv(cfg, seed=4), TownletEnv(cfg, seed=4, compile=True)
    assert compiled.world._step_fn != compiled.world._advance
    for seed in (None, 7):
        a, b = _rollout(eager, actions, seed=seed), _rollout(compiled, actions, seed=seed)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    vector = TownletVectorEnv(cfg, num_envs=1, seed=4, compile=True)  # the same programs, from disk
    assert vector.world._step_fn != vector.world._advance


def test_single_env_episodes_match_the_world_agent() -> None:
    """The env hands out the world's own episodes: same stream as a one-agent World with that seed."""
    cfg = _short_level(6)
    env, world = TownletEnv(cfg, seed=3), World(cfg, 1, seed=3)
    obs, _ = env.reset()
    assert np.array_equal(obs, world.observe()[0].numpy())
    for a in np.random.default_rng(1).integers(0, 5, size=20):
        obs, reward, terminated, truncated, info = env.step(int(a))
        w_obs, w_reward, _, _, w_info = world.step(torch.tensor([a]))
        assert reward == float(w_reward[0])
        if terminated or truncated:
            assert np.array_equal(obs, w_info["final_obs"][0].numpy())
            assert np.array_equal(info["action_mask"], w_info["final_mask"][0].numpy())
            obs, info = env.reset()
        assert np.array_equal(obs, w_obs[0].numpy())
        assert np.array_equal(info["action_mask"], world.action_mask()[0].numpy())


def test_truncation_returns_the_final_observation_and_requires_reset() -> None:
    env = TownletEnv(_short_level(5), seed=0)
    obs, _ = env.reset(options={"position": (1, 1)})
    for t in range(1, 6):
        obs, _, terminated, truncated, info = env.step(INTERACT)  # nothing at (1, 1): an invalid no-op
        assert info["invalid"] and info["episode_length"] == t
        assert terminated is False and truncated is (t == 5)
    assert info["cause"] == "truncated"
    # Not auto-reset: the observation is the last state of the episode (drained meters, same cell), while the
    # world itself already holds a fresh episode.
    start = np.asarray([m.start for m in env.config.meters.values()], dtype=np.float32)
    assert (_meters(env, obs)[ENERGY] < start[ENERGY]) and obs[env.obs_layout["cell"].slice][4] == 1
    assert np.array_equal(env.world.meters[0].numpy(), start)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(UP)
    obs, info = env.reset()
    assert np.array_equal(obs, env.world.observe()[0].numpy())
    assert np.array_equal(_meters(env, obs), start)
    obs, *_ = env.step(UP)  # stepping works again after the reset


def test_death_is_terminated_with_the_final_observation() -> None:
    env = TownletEnv("L1_full", seed=0)
    env.reset(seed=0, options={"position": (4, 4)})
    env.world.meters[0, ENERGY] = 0.004  # the passive drain (0.005) empties it this tick
    obs, reward, terminated, truncated, info = env.step(INTERACT)
    assert terminated is True and truncated is False
    assert info["cause"] == "energy" and info["episode_length"] == 1
    assert reward == pytest.approx(-100.0)
    assert _meters(env, obs)[ENERGY] == 0.0
    assert obs[env.obs_layout["cell"].slice].argmax() == 4 * 8 + 4
    assert env.observation_space.contains(obs)


def test_action_mask_in_info_and_invalid_actions() -> None:
    env = TownletEnv("L0_minimal", seed=0)
    obs, info = env.reset(options={"position": (0, 0)})  # on the Bed, top-left corner, $50 in hand
    expected = np.array([False, True, False, True, True])
    assert info["action_mask"].dtype == np.bool_ and np.array_equal(info["action_mask"], expected)
    assert np.array_equal(env.action_masks(), expected)
    obs2, _, _, _, info = env.step(UP)
    assert info["invalid"] and not info["completed"]
    assert np.array_equal(obs2[env.obs_layout["cell"].slice], obs[env.obs_layout["cell"].slice])
    _, _, _, _, info = env.step(INTERACT)
    assert not info["invalid"] and info["completed"] and info["cause"] == "running"
    _, _, _, _, info = env.step(RIGHT)
    assert np.array_equal(info["action_mask"], [False, True, True, True, False])  # (1, 0): nothing to use
    with pytest.raises(ValueError):
        env.step(5)


def test_render_ansi_shows_the_grid_and_the_final_frame() -> None:
    env = gymnasium.make("townlet/L0_minimal-v0", render_mode="ansi")
    env.reset(seed=0, options={"position": (2, 2)})
    frame = env.render()
    assert isinstance(frame, str)
    lines = frame.splitlines()
    assert lines[2] == "| A . B |" and lines[4] == "| . C @ |"
    assert "energy 1.00" in frame
    short = TownletEnv(_short_level(2), render_mode="ansi", seed=0)
    short.reset(options={"position": (1, 1)})
    short.step(DOWN)
    short.step(RIGHT)
    final = short.render()
    assert "ended: truncated" in final and "| . C @ |" in final  # the last state, not the auto-reset one


def test_render_ansi_decodes_position_and_hour_on_a_partial_temporal_level() -> None:
    env = TownletEnv("L3_temporal_fixed", render_mode="ansi", seed=0)
    env.reset(options={"position": (3, 4)})
    lines = env.render().splitlines()
    assert lines[0].startswith("step 0/") and "hour 06" in lines[0]
    assert lines[2 + 4][2 + 2 * 3] == "@"  # row y = 4, column x = 3 of "| c c c ... |"
    for _ in range(5):
        env.step(RIGHT)
    lines = env.render().splitlines()
    assert "hour 11" in lines[0] and lines[2 + 4][2 + 2 * 7] == "@"  # four moves to the east edge, then a no-op
    with pytest.warns(UserWarning, match="render_mode"):
        assert TownletEnv("L0_minimal").render() is None


def test_reward_mode_and_reset_option_errors() -> None:
    env = TownletEnv("L0_minimal", seed=0, reward_mode="survival")
    env.reset()
    _, reward, *_ = env.step(INTERACT)
    assert reward == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"bogus": 1})
    with pytest.raises(ValueError, match="render_mode"):
        TownletEnv("L0_minimal", render_mode="human")


def test_stable_baselines3_env_checker_accepts_the_env() -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(TownletEnv(_small_pool_level("L3_temporal"), seed=0))
    assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------------------------------------- vector env
def test_vector_env_spaces_and_metadata() -> None:
    envs = TownletVectorEnv(_small_pool_level(), num_envs=4, seed=0)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    d = envs.world.obs_dim
    assert envs.single_observation_space.shape == (d,)
    assert envs.observation_space.shape == (4, d) and envs.observation_space.dtype == np.float32
    assert envs.single_action_space == gymnasium.spaces.Discrete(5)
    assert envs.action_space == gymnasium.spaces.MultiDiscrete([5, 5, 5, 5])
    obs, info = envs.reset(seed=1)
    assert obs.shape == (4, d) and envs.observation_space.contains(obs)
    assert info["action_mask"].shape == (4, 5) and info["action_mask"].dtype == np.bool_
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
    assert envs.observation_space.contains(obs)
    assert reward.shape == (4,) and terminated.dtype == np.bool_ and truncated.dtype == np.bool_
    assert np.array_equal(envs.action_masks(), info["action_mask"])
    with pytest.raises(ValueError, match="shape"):
        envs.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="in \\[0, 4\\]"):
        envs.step(np.full(4, 7))
    with pytest.raises(ValueError, match="one int"):
        envs.reset(seed=[1, 2, 3, 4])


def test_vector_env_same_step_autoreset_matches_the_world() -> None:
    cfg, n, seed = _short_level(9), 5, 11
    envs, world = TownletVectorEnv(cfg, num_envs=n, seed=seed), World(cfg, n, seed=seed)
    obs, info = envs.reset()
    assert np.array_equal(obs, world.observe().numpy())
    rng = np.random.default_rng(0)
    ended = 0
    for t in range(40):
        if t in (3, 17):  # make agent 1 die (terminated) in between the truncations of the others
            envs.world.meters[1, ENERGY] = world.meters[1, ENERGY] = 0.001
        actions = rng.integers(0, 5, size=n)
        obs, reward, terminated, truncated, info = envs.step(actions)
        w_obs, w_reward, w_term, w_trunc, w_info = world.step(torch.as_tensor(actions))
        done = w_info["done"].numpy()
        assert np.array_equal(obs, w_obs.numpy())  # ended envs already show the next episode
        assert np.array_equal(reward, w_reward.numpy().astype(np.float64))
        assert np.array_equal(terminated, w_term.numpy()) and np.array_equal(truncated, w_trunc.numpy())
        assert np.array_equal(info["action_mask"], world.action_mask().numpy())
        assert np.array_equal(info["invalid"], w_info["invalid"].numpy())
        if not done.any():
            assert "final_obs" not in info and "episode" not in info
            continue
        ended += int(done.sum())
        assert np.array_equal(info["_final_obs"], done) and np.array_equal(info["_final_info"], done)
        final_obs, final_mask = w_info["final_obs"].numpy(), w_info["final_mask"].numpy()
        for i in range(n):
            if done[i]:
                assert np.array_equal(info["final_obs"][i], final_obs[i])
                assert np.array_equal(info["final_info"]["action_mask"][i], final_mask[i])
                assert info["final_info"]["cause"][i] == world.CAUSES[int(w_info["cause"][i])]
            else:
                assert info["final_obs"][i] is None
        assert np.array_equal(info["_episode"], done)
        assert np.array_equal(info["episode"]["l"][done], w_info["episode_length"].numpy()[done])
        assert np.allclose(info["episode"]["r"][done], w_info["episode_return"].numpy()[done])
    assert ended > n


def test_vector_env_episode_stats_agree_with_record_episode_statistics() -> None:
    cfg = _short_level(12)
    native = TownletVectorEnv(cfg, num_envs=3, seed=2)
    wrapped = gymnasium.wrappers.vector.RecordEpisodeStatistics(
        TownletVectorEnv(cfg, num_envs=3, seed=2, episode_stats=False)
    )
    native.reset()
    wrapped.reset()
    rng = np.random.default_rng(3)
    seen = 0
    for _ in range(30):
        actions = rng.integers(0, 5, size=3)
        *_, a = native.step(actions)
        *_, b = wrapped.step(actions)
        assert ("episode" in a) == ("episode" in b)
        if "episode" in a:
            seen += 1
            assert np.array_equal(a["_episode"], b["_episode"])
            assert np.array_equal(a["episode"]["l"], b["episode"]["l"])
            assert np.allclose(a["episode"]["r"], b["episode"]["r"], atol=1e-4)
    assert seen >= 2


def test_vector_env_infos_convert_to_per_env_dicts() -> None:
    envs = gymnasium.wrappers.vector.DictInfoToList(TownletVectorEnv(_short_level(2), num_envs=2, seed=0))
    envs.reset()
    envs.step(np.array([0, 1]))
    *_, infos = envs.step(np.array([4, 4]))
    assert len(infos) == 2
    for info in infos:
        assert info["final_obs"].shape == envs.single_observation_space.shape
        assert info["final_info"]["cause"] == "truncated" and info["episode"]["l"] == 2


def test_vector_env_render_ansi() -> None:
    envs = TownletVectorEnv("L3_temporal", num_envs=2, seed=0, render_mode="ansi")
    envs.reset()
    frames = envs.render()
    assert len(frames) == 2 and all("@" in f and "hour 06" in f for f in frames)


# ---------------------------------------------------------------------------------------------- a real client
def test_stable_baselines3_dqn_trains_through_the_standard_api() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: more threads only add overhead on a shared machine
    try:
        _train_and_evaluate_dqn()
    finally:
        torch.set_num_threads(threads)


def _train_and_evaluate_dqn() -> None:
    """What an outside client does: make the registered env, train SB3's DQN on it, run the greedy policy."""
    from stable_baselines3 import DQN

    env = gymnasium.make("townlet/L0_minimal-v0")
    model = DQN(
        "MlpPolicy",
        env,
        learning_starts=500,
        buffer_size=10_000,
        batch_size=64,
        train_freq=4,
        target_update_interval=250,
        exploration_fraction=0.3,
        exploration_final_eps=0.05,
        policy_kwargs={"net_arch": [64, 64]},
        seed=0,
        device="cpu",
    )
    model.learn(total_timesteps=3000)
    assert model.num_timesteps == 3000

    evaluation = gymnasium.make("townlet/L0_minimal-v0")
    lengths = []
    for episode in range(3):
        obs, _ = evaluation.reset(seed=1000 + episode)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = evaluation.step(action)
            done = terminated or truncated
        lengths.append(info["episode_length"])
    # Far above a policy that works itself to death at the Job (~7 ticks); at most the level's cap.
    assert 20 < np.mean(lengths) <= evaluation.unwrapped.config.max_steps
