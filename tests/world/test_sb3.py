"""TownletVecEnv: SB3's VecEnv contract on one batched World, agreement with the World step for step, seeding,
SB3's PPO and DQN and sb3-contrib's MaskablePPO and RecurrentPPO training through it, the evaluation adapter, and
benchmarks/sb3_baselines.py end to end on a tiny budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from tests.benchmark_scripts import load_script
from townlet.world.config import load_level
from townlet.world.engine import World
from townlet.world.sb3 import SB3Policy, TownletVecEnv, evaluate_model

ENERGY = 0  # meter index


def _short_level(max_steps: int):
    return load_level("L0_minimal").model_copy(update={"max_steps": max_steps})


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny nets: more threads only add overhead on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Capture(KVWriter):
    """Keeps every row SB3's logger dumps, to check what a training run logged."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append(dict(key_values))

    def close(self) -> None:
        pass


def _capture_logs(model: Any) -> _Capture:
    capture = _Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    return capture


# ---------------------------------------------------------------------------------------------- the contract
def test_spaces_and_step_outputs_follow_the_vecenv_contract() -> None:
    env = TownletVecEnv(_short_level(6), num_envs=4, seed=0)
    d = env.world.obs_dim
    assert isinstance(env, VecEnv) and env.num_envs == 4
    assert env.observation_space.shape == (d,) and env.observation_space.dtype == np.float32
    assert env.action_space == spaces.Discrete(5)
    assert env.render_mode is None
    obs = env.reset()
    assert obs.shape == (4, d) and obs.dtype == np.float32
    assert all(env.observation_space.contains(row) for row in obs)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(13):
        obs, rewards, dones, infos = env.step(rng.integers(0, 5, size=4))
        assert obs.shape == (4, d) and obs.dtype == np.float32
        assert all(env.observation_space.contains(row) for row in obs)
        assert rewards.shape == (4,) and rewards.dtype == np.float32
        assert dones.shape == (4,) and dones.dtype == np.bool_
        assert isinstance(infos, list) and len(infos) == 4
        for done, info in zip(dones, infos, strict=True):
            assert type(info["TimeLimit.truncated"]) is bool
            if not done:
                assert set(info) == {"TimeLimit.truncated"}
                continue
            ended += 1
            assert set(info) == {"TimeLimit.truncated", "terminal_observation", "episode", "cause"}
            last = info["terminal_observation"]
            assert last.shape == (d,) and last.dtype == np.float32 and env.observation_space.contains(last)
            assert set(info["episode"]) == {"r", "l", "t"}
            assert type(info["episode"]["l"]) is int and 1 <= info["episode"]["l"] <= 6
            assert isinstance(info["episode"]["r"], float) and info["episode"]["t"] >= 0.0
            assert info["TimeLimit.truncated"] == (info["cause"] == "truncated")
    assert ended >= 8  # every env truncates at ticks 6 and 12, if not dead before


def test_steps_match_the_native_world_with_the_same_seed_and_actions() -> None:
    cfg, n, seed = _short_level(9), 5, 11
    env, world = TownletVecEnv(cfg, num_envs=n, seed=seed), World(cfg, n, seed=seed)
    obs = env.reset()
    assert np.array_equal(obs, world.observe().numpy())  # the first observations
    assert np.array_equal(env.action_masks(), world.action_mask().numpy())
    rng = np.random.default_rng(0)
    causes = set()
    for t in range(40):
        if t in (3, 17):  # agent 1 dies (terminated) in between the truncations of the others
            env.world.meters[1, ENERGY] = world.meters[1, ENERGY] = 0.001
        actions = rng.integers(0, 5, size=n)
        obs, rewards, dones, infos = env.step(actions)
        w_obs, w_reward, w_term, w_trunc, w_info = world.step(torch.as_tensor(actions))
        assert np.array_equal(obs, w_obs.numpy())  # ended envs already show their next episode
        assert np.array_equal(rewards, w_reward.numpy())
        assert np.array_equal(dones, (w_term | w_trunc).numpy())
        assert np.array_equal(env.action_masks(), world.action_mask().numpy())
        assert [info["TimeLimit.truncated"] for info in infos] == w_trunc.tolist()
        final_obs = w_info["final_obs"].numpy()
        for i in np.flatnonzero(dones):
            info = infos[i]
            assert np.array_equal(info["terminal_observation"], final_obs[i])
            assert info["episode"]["l"] == int(w_info["episode_length"][i])
            assert info["episode"]["r"] == pytest.approx(float(w_info["episode_return"][i]), abs=1e-6)
            assert info["cause"] == world.CAUSES[int(w_info["cause"][i])]
            causes.add(info["cause"])
    assert "truncated" in causes and causes & {"energy", "health"}  # both kinds of episode end were compared


def test_seeding_reproduces_episodes_and_a_seedless_reset_begins_new_ones() -> None:
    cfg = load_level("L2_partial").model_copy(update={"layout_pool": 64})  # random layouts, a quick rebuild
    actions = [np.random.default_rng(1).integers(0, 5, size=6) for _ in range(25)]

    def rollout(env: TownletVecEnv) -> list[np.ndarray]:
        return [env.reset(), *(np.concatenate([o, r[:, None]], axis=1) for o, r, _, _ in map(env.step, actions))]

    env = TownletVecEnv(cfg, num_envs=6, seed=3)
    first = rollout(env)
    assert np.array_equal(first[0], World(cfg, 6, seed=3).observe().numpy())
    assert env.seed(3) == [3] * 6
    again = rollout(env)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    fresh = rollout(TownletVecEnv(cfg, num_envs=6, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(first, fresh, strict=True))
    env.seed(4)
    assert not np.array_equal(env.reset(), first[0])

    env = TownletVecEnv(cfg, num_envs=6, seed=3)
    env.reset()
    world = World(cfg, 6, seed=3)
    nxt = env.reset()  # a seedless reset: every sub-env begins its next episode of the same stream
    assert np.array_equal(nxt, world.reset().numpy()) and not np.array_equal(nxt, first[0])
    drawn = env.seed()  # None: a seed from OS entropy, shared by all
    assert len(set(drawn)) == 1 and isinstance(drawn[0], int)


def test_attribute_and_method_access_and_wrapping() -> None:
    env = TownletVecEnv("L0_minimal", num_envs=3, seed=0)
    env.reset()
    masks = env.action_masks()
    assert masks.shape == (3, 5) and masks.dtype == np.bool_
    assert np.array_equal(np.stack(env.env_method("action_masks")), masks)
    assert np.array_equal(env.env_method("action_masks", indices=[2])[0], masks[2])
    assert is_masking_supported(env) and np.array_equal(get_action_masks(env), masks)  # what MaskablePPO calls
    assert env.has_attr("action_masks") and not env.has_attr("no_such_attribute")
    assert env.get_attr("render_mode") == [None, None, None]
    assert env.get_attr("config", indices=1) == [env.config]
    env.set_attr("note", 5)
    assert env.get_attr("note", indices=[0, 2]) == [5, 5]
    with pytest.raises(ValueError, match="all 3 at once"):
        env.set_attr("note", 1, indices=[0])
    with pytest.raises(ValueError, match="all 3 at once"):
        env.env_method("reset", indices=[1])
    with pytest.raises(IndexError, match=r"\[0, 2\]"):
        env.get_attr("config", indices=[3])
    assert env.env_is_wrapped(Monitor) == [True] * 3  # it records episodes as Monitor does
    assert env.env_is_wrapped(gymnasium.wrappers.TimeLimit, indices=[0]) == [False]


def test_bad_input_render_and_close() -> None:
    env = TownletVecEnv("L0_minimal", num_envs=2, seed=0)
    env.reset()
    with pytest.raises(ValueError, match="2 ints"):
        env.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="2 ints"):
        env.step(np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 4\]"):
        env.step(np.array([0, 5]))
    with pytest.raises(RuntimeError, match="step_async"):
        env.step_wait()
    assert env.step(np.array([[1], [2]]))[0].shape == (2, env.world.obs_dim)  # (n, 1) as some callers send
    with pytest.raises(ValueError, match="no reset options"):
        env.set_options({"position": (0, 0)})
    env.set_options(None)  # what SB3 itself may pass
    with pytest.raises(ValueError, match="render_mode"):
        TownletVecEnv("L0_minimal", num_envs=2, render_mode="human")
    with pytest.raises(ValueError, match="num_envs"):
        TownletVecEnv("L0_minimal", num_envs=0)
    with pytest.raises(ValueError, match="seed"):
        TownletVecEnv("L0_minimal", num_envs=1, seed=-1)
    frames = TownletVecEnv("L0_minimal", num_envs=2, seed=0, render_mode="ansi").render()
    assert len(frames) == 2 and all("@" in f and "energy" in f for f in frames)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None
    easy = TownletVecEnv("L0_minimal", num_envs=2, seed=0, reward_mode="survival", depletion=0.5)
    assert easy.world.depletion.tolist() == [0.5, 0.5]
    _, rewards, _, _ = easy.step(np.array([0, 1]))
    assert rewards.tolist() == pytest.approx([easy.config.rewards.survival.per_tick] * 2)
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(np.array([0, 0]))


# ---------------------------------------------------------------------------------------------- SB3 training
def test_ppo_trains_logs_episodes_and_evaluates_like_sb3s_own_evaluation(one_thread: None) -> None:
    env = TownletVecEnv("L0_minimal", num_envs=8, seed=0)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=256, n_epochs=4, seed=0, device="cpu",
                policy_kwargs={"net_arch": [64, 64]})
    logs = _capture_logs(model)
    model.learn(total_timesteps=2048)
    assert model.num_timesteps == 2048
    episodes = list(model.ep_info_buffer)
    assert episodes and all(1 <= e["l"] <= 500 for e in episodes)
    assert any("rollout/ep_rew_mean" in row and "rollout/ep_len_mean" in row for row in logs.rows)
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (8,) and ((actions >= 0) & (actions < 5)).all()

    result = evaluate_model(model, "L0_minimal", episodes=16, agents=8, seed=5)
    # SB3's evaluate_policy on the same world plays the same episodes: each env's first two after one reset
    check = TownletVecEnv("L0_minimal", num_envs=8, seed=5)
    check.reset()
    _, lengths = evaluate_policy(model, check, n_eval_episodes=16, deterministic=True, return_episode_rewards=True)
    assert result["episodes"] == 16 == len(lengths)
    assert result["survival_mean"] == pytest.approx(np.mean(lengths))
    assert result["survival_median"] == pytest.approx(np.median(lengths))


def test_dqn_trains_with_timeouts_marked_in_its_replay(one_thread: None) -> None:
    env = TownletVecEnv(_short_level(40), num_envs=4, seed=0)
    model = DQN("MlpPolicy", env, learning_starts=500, buffer_size=10_000, batch_size=64, train_freq=1,
                target_update_interval=500, exploration_fraction=0.3, exploration_final_eps=0.05, seed=0,
                device="cpu", policy_kwargs={"net_arch": [64, 64]})
    logs = _capture_logs(model)
    model.learn(total_timesteps=2000)
    assert model.num_timesteps == 2000 and model.exploration_rate == pytest.approx(0.05)
    assert any("rollout/ep_rew_mean" in row for row in logs.rows)
    assert all(1 <= e["l"] <= 40 for e in model.ep_info_buffer)
    buffer = model.replay_buffer
    stored = slice(0, buffer.pos)
    timeouts, dones = buffer.timeouts[stored], buffer.dones[stored]
    assert timeouts.any() and (dones[timeouts.astype(bool)] == 1).all()  # TimeLimit.truncated reached the buffer
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (4,) and ((actions >= 0) & (actions < 5)).all()


class _MaskAudit(VecEnvWrapper):
    """Checks every action SB3 sends against the env's mask at that moment."""

    def __init__(self, venv: TownletVecEnv) -> None:
        super().__init__(venv)
        self.checked = self.masked_picks = 0

    def reset(self) -> np.ndarray:
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        mask = self.venv.action_masks()
        self.masked_picks += int((~mask[np.arange(len(actions)), actions]).sum())
        self.checked += len(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        return self.venv.step_wait()


def test_maskable_ppo_never_picks_a_masked_action(one_thread: None) -> None:
    env = _MaskAudit(TownletVecEnv("L0_minimal", num_envs=8, seed=0))
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=256, n_epochs=4, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [64, 64]})
    logs = _capture_logs(model)
    model.learn(total_timesteps=2048)
    assert env.checked == model.num_timesteps == 2048 and env.masked_picks == 0
    assert any("rollout/ep_rew_mean" in row for row in logs.rows)
    policy = SB3Policy(model)
    assert policy.masked
    result = evaluate_model(model, "L0_minimal", episodes=16, agents=8, seed=5)
    assert result["episodes"] == 16 and result["invalid_rate"] == 0.0  # greedy and masked: never invalid
    assert 1 <= result["survival_mean"] <= 500


def test_recurrent_ppo_trains_and_its_memory_restarts_with_each_episode(one_thread: None) -> None:
    env = TownletVecEnv("L0_minimal", num_envs=8, seed=0)
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=64, batch_size=256, n_epochs=2, seed=0, device="cpu",
                         policy_kwargs={"net_arch": [32], "lstm_hidden_size": 32})
    logs = _capture_logs(model)
    model.learn(total_timesteps=1024)
    assert model.num_timesteps == 1024 and len(model.ep_info_buffer) > 0
    assert any("rollout/ep_len_mean" in row for row in logs.rows)
    policy = SB3Policy(model)
    world = World("L0_minimal", 8, seed=5)
    policy.act(world.reset(), world)
    assert policy._state is not None  # the LSTM state is carried to the next step

    result = evaluate_model(model, "L0_minimal", episodes=16, agents=8, seed=5)
    check = TownletVecEnv("L0_minimal", num_envs=8, seed=5)
    check.reset()
    _, lengths = evaluate_policy(model, check, n_eval_episodes=16, deterministic=True, return_episode_rewards=True)
    assert result["survival_mean"] == pytest.approx(np.mean(lengths))  # same episode starts as SB3's own loop


# ---------------------------------------------------------------------------------------------- the benchmark
def test_sb3_baselines_script_end_to_end_on_a_tiny_budget(tmp_path: Path, one_thread: None) -> None:
    script = load_script("sb3_baselines")
    learning = tmp_path / "learning.json"
    learning.write_text(json.dumps({"rows": [{
        "name": "L0_minimal", "level": "L0_minimal", "seeds": [0, 1], "minutes": 2.0, "steps": None,
        "survival_mean": 321.0, "ci95_half": 4.0, "ci_over": "seeds", "survival_median": 330.0, "cap_rate": 0.25,
        "env_steps": 1.5e6, "goal": "mean survival >= 300",
    }]}))
    code = script.main(["L0_minimal", "--steps", "512", "--episodes", "8", "--algos", "ppo,maskable_ppo",
                        "--num-envs", "4", "--out", str(tmp_path), "--learning-json", str(learning)])
    assert code == 0
    payload = json.loads((tmp_path / "sb3-L0_minimal.json").read_text())
    assert [r["algo"] for r in payload["runs"]] == ["ppo", "maskable_ppo"]
    random_mean = payload["random"]["survival_mean"]
    for run in payload["runs"]:
        assert run["env_steps"] >= 512 and run["num_envs"] == 4 and run["eval"]["episodes"] == 8
        assert run["vs_random"] == pytest.approx(run["eval"]["survival_mean"] / random_mean)
    assert payload["runs"][1]["eval"]["invalid_rate"] == 0.0
    assert payload["townlet"]["survival_mean"] == 321.0
    table = (tmp_path / "sb3-L0_minimal.md").read_text()
    assert "| SB3 PPO | 0.000512 M steps | 4 | 512 |" in table  # one rollout of 128 steps x 4 envs
    assert "| townlet default (2 seeds, recorded) | 2 min | — | 1,500,000 |" in table
    assert "321.0 ± 4.0 (seeds)" in table
    assert "random valid actions (this run)" in table
    best = max(payload["runs"], key=lambda r: r["eval"]["survival_mean"])
    assert f"lives {321.0 / best['eval']['survival_mean']:.2f}× as long as the best peer here, {best['label']}" in table
    (tmp_path / "sb3-L0_minimal.md").unlink()
    assert script.main(["L0_minimal", "--replot", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sb3-L0_minimal.md").read_text() == table
    with pytest.raises(SystemExit):
        script.main(["L0_minimal", "--algos", "ppo,a2c"])
