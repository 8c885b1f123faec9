"""`algorithm: ppo` as a first-class family: it trains through the Trainer, evaluates through `townlet eval`,
and the run config accepts its fields and rejects the Q-learning ones by name."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from townlet.agents import ActorCritic
from townlet.cli import app
from townlet.train import Trainer, open_run
from townlet.train.algos import build_network
from townlet.train.algos.ppo import PPO
from townlet.train.config import load_run_config_data
from townlet.train.metrics import read_metrics
from townlet.world import ConfigError, World, load_level

TINY_PPO = {
    "level": "L0_minimal", "algorithm": "ppo", "agents": 8, "steps": 800, "compile_world": False,
    "network": {"kind": "lstm", "hidden": [32], "lstm_hidden": 16},
    "ppo": {"rollout_len": 16, "minibatches": 2},
    "logging": {"interval_steps": 200, "checkpoint_every": 10**9, "tensorboard": False},
}  # fmt: skip


def ppo_config(**changes: object):
    return load_run_config_data({**TINY_PPO, **changes}, "test")


def test_a_ppo_run_trains_through_the_trainer_and_evaluates(tmp_path):
    trainer = Trainer(ppo_config(), tmp_path / "run")
    assert isinstance(trainer.algorithm, PPO) and isinstance(trainer.algorithm.network, ActorCritic)
    before = [p.detach().clone() for p in trainer.algorithm.network.parameters()]
    trainer.run()
    algo = trainer.algorithm
    assert algo.learner.updates == 800 // 8 // 16  # one PPO update per full rollout
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.network.parameters(), strict=True))
    episodes, learner = read_metrics(tmp_path / "run")
    assert len(learner) == 4 and len(episodes) > 0
    assert all(row["epsilon"] is None for row in learner)
    assert all(row["loss"] is not None and row["q_mean"] is not None and row["grad_norm"] is not None
               for row in learner[1:])  # fmt: skip
    assert learner[-1]["updates"] == algo.learner.updates
    # the stored policy is the network acting greedily, memory carried and restarted per episode
    policy = open_run(tmp_path / "run").policy()
    assert policy.recurrent and policy.memory
    world = World(load_level("L0_minimal"), 3, seed=1)
    obs, mask = world.observe(), world.action_mask()
    net = build_network(trainer.config, world.obs_layout)
    net.load_state_dict(algo.network.state_dict())
    with torch.no_grad():
        logits, _ = net(obs.unsqueeze(1), net.initial_state(3))
    expected = torch.where(mask, logits.squeeze(1), -1e9).argmax(1)
    assert torch.equal(policy.act(obs, mask, torch.ones(3, dtype=torch.bool)), expected)
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--episodes", "4", "--agents", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["episodes"] == 4 and 1 <= summary["survival_mean"] <= 500


def test_the_feedforward_ablation_has_no_memory_to_wipe(tmp_path):
    trainer = Trainer(ppo_config(steps=256, network={"kind": "feedforward", "hidden": [16], "lstm_hidden": 8}),
                      tmp_path)  # fmt: skip
    trainer.run()
    assert trainer.algorithm.learner.updates == 2 and not trainer.algorithm.network.memory
    assert not open_run(tmp_path).policy().memory


def test_ppo_fields_and_q_learning_fields_are_rejected_by_name():
    with pytest.raises(ConfigError, match=r"replay\.burn_in: only algorithm 'r2d2' reads it, and this run's "
                                          r"algorithm is 'ppo'"):  # fmt: skip
        ppo_config(replay={"burn_in": 4})
    with pytest.raises(ConfigError, match=r"exploration\.start: only algorithms 'dqn', 'r2d2' read it, and this "
                                          r"run's algorithm is 'ppo'; remove it or set algorithm: dqn or r2d2"):
        ppo_config(exploration={"start": 0.5})
    for section, field, value in [("learner", "batch_size", 32), ("learner", "learning_starts", 0),
                                  ("replay", "capacity", 10), ("guides", "fraction", 0.1),
                                  ("curiosity", "hidden", 8), ("shaping", "weight", 1.0),
                                  ("exploring_starts", "probability", 0.5), ("network", "head_hidden", 8)]:
        with pytest.raises(ConfigError, match=rf"{section}\.{field}: only algorithm.* 'ppo'"):
            ppo_config(**{section: {**TINY_PPO.get(section, {}), field: value}})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"curiosity\.kind: algorithm 'ppo' takes only 'episodic'.*got 'rnd'"):
        ppo_config(curiosity={"enabled": True, "kind": "rnd"})
    with pytest.raises(ConfigError, match=r"network\.kind: 'mlp' is not a network of algorithm 'ppo'"):
        ppo_config(network={"kind": "mlp"})
    with pytest.raises(ConfigError, match=r"ppo\.minibatches: 16 minibatches of whole agents"):
        ppo_config(ppo={"minibatches": 16})
    with pytest.raises(ConfigError, match=r"ppo\.epochs: only algorithm 'ppo' reads it, and this run's algorithm "
                                          r"is 'r2d2'"):  # fmt: skip
        load_run_config_data({"algorithm": "r2d2", "network": {"kind": "lstm"}, "ppo": {"epochs": 2}}, "test")
    # what PPO reads (the shared learner fields, the LSTM size) is accepted; defaults are no mention
    config = ppo_config(learner={"lr": 1e-3, "lr_end": 1e-4, "gamma": 0.95, "grad_clip": 0.5, "adam_eps": 1e-5})
    assert config.ppo.rollout_len == 16 and config.ppo.epochs == 3 and config.ppo.normalize_returns
    assert load_run_config_data(config.model_dump(mode="json"), "resolved") == config


def test_episodic_curiosity_adds_its_annealed_count_bonus_to_the_rollout_rewards(tmp_path):
    """Same seed with and without the bonus: the same actions and world rewards, and the stored rewards differ
    by weight / sqrt(n) for a situation met the n-th time this episode (1 at an episode's first step)."""
    curious = {"enabled": True, "kind": "episodic", "weight": 0.5}
    runs = [Trainer(ppo_config(**extra), tmp_path / name) for name, extra in
            [("plain", {}), ("curious", {"curiosity": curious})]]  # fmt: skip
    plain, with_bonus = runs
    assert plain.algorithm.episodic is None and with_bonus.algorithm.episodic is not None
    for _ in range(10):
        for trainer in runs:
            trainer.collect()
    rollout = [t.algorithm.learner for t in runs]
    assert torch.equal(rollout[0].actions[:10], rollout[1].actions[:10])
    bonus = (rollout[1].rewards[:10] - rollout[0].rewards[:10]) / 0.5
    assert torch.allclose(bonus[0], torch.ones(8))  # every agent's first step: a situation met once
    assert torch.allclose(bonus[rollout[1].first[:10]], torch.tensor(1.0))
    met = (1.0 / bonus.square()).round()  # n, the times the situation was met this episode
    assert torch.allclose(bonus, met.rsqrt(), atol=1e-5) and (met >= 1).all() and (met > 1).any()
    with_bonus.run()
    rows = read_metrics(tmp_path / "curious")[1]
    assert all(row["intrinsic_weight"] == 0.5 and 0 < row["intrinsic_reward"] <= 1 for row in rows)
