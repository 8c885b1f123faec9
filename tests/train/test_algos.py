"""The Algorithm protocol: the loop drives any implementation alike; greedy policies act like the trained net."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from townlet.train import Trainer, load_run_config, open_run
from townlet.train.algos import ALGORITHMS, GreedyPolicy, Step, build_network, normalised_entropy
from townlet.train.metrics import read_metrics
from townlet.world import World, load_level
from townlet.world.gym_env import TownletVectorEnv

TINY = {"agents": 4, "compile_world": False, "steps": 400,
        "logging": {"interval_steps": 100, "checkpoint_every": 10**9, "tensorboard": False}}
RECURRENT = {
    "network": {"kind": "lstm", "lstm_hidden": 8},
    "replay": {"capacity": 400, "burn_in": 2, "train_len": 4, "stride": 2},
    "learner": {"learning_starts": 100, "batch_size": 4},
}


class RandomWalk:
    """A minimal algorithm: uniform valid actions, a counter of what it was shown, nothing learnt."""

    recurrent = False

    def __init__(self, config: Any, world: World, network: torch.nn.Module) -> None:
        self.network, self.n = network, world.num_agents
        self.gen = torch.Generator().manual_seed(config.seed)
        self.stored = 0
        self.firsts = 0
        self.intervals: list[list[int]] = []

    def act(self, obs, mask, first):
        self.firsts += int(first.sum())
        return (torch.rand(mask.shape, generator=self.gen) * mask).argmax(1)

    def store(self, step: Step) -> None:
        assert step.obs.shape[0] == self.n and step.env_steps == (self.stored + 1) * self.n
        assert torch.equal(step.done, step.terminated | step.truncated)
        self.stored += 1

    def update(self):
        return {}

    def metrics(self):
        return {"updates": 0, "epsilon": None, "loss": None}

    def end_interval(self, episode_lengths):
        self.intervals.append(list(episode_lengths))
        return {}

    def action_entropy(self, temperature):
        return torch.ones(self.n)

    @property
    def scripted(self):
        return None

    def greedy_policy(self):
        return GreedyPolicy(self.network, False, False)

    def state_dict(self, with_replay=True):
        return {"network": self.network.state_dict(), "stored": self.stored, "gen": self.gen.get_state()}

    def load_state_dict(self, state):
        self.stored = int(state["stored"])
        self.gen.set_state(state["gen"])


def test_the_loop_drives_any_algorithm_through_the_protocol(tmp_path, monkeypatch):
    """A new family plugs in through the factory's table alone: the trainer, checkpoints, the logbook and the
    evaluation never ask which algorithm they run."""
    monkeypatch.setitem(ALGORITHMS, "dqn", RandomWalk)
    trainer = Trainer(load_run_config("L0_minimal", TINY), tmp_path)
    assert isinstance(trainer.algorithm, RandomWalk)
    path = trainer.run()
    algo = trainer.algorithm
    assert algo.stored == 100 and algo.firsts >= 4  # every agent's first observation starts an episode
    episodes, learner = read_metrics(tmp_path)
    assert len(learner) == 4 and all(row["epsilon"] is None for row in learner)
    assert sum(len(x) for x in algo.intervals) == len(episodes) > 0  # every finished episode reaches it once
    assert path.exists() and open_run(tmp_path).state["algorithm"]["stored"] == 100
    assert Trainer.resume(tmp_path, {"steps": 800}).algorithm.stored == 100


def test_save_and_progress_work_before_run(tmp_path):
    trainer = Trainer(load_run_config("L0_minimal", TINY), tmp_path)
    for _ in range(30):
        trainer.collect()
        trainer.algorithm.update()
    assert trainer.progress().env_steps == 120
    path = trainer.save()
    assert path.name == "ckpt_000000000120.pt"
    assert read_metrics(tmp_path)[0] == [] or all(r["step"] <= 120 for r in read_metrics(tmp_path)[0])
    assert Trainer.resume(tmp_path).env_steps == 120


@pytest.mark.parametrize("extra", [{}, RECURRENT])
def test_greedy_policy_is_the_trained_network_acting_greedily(tmp_path, extra):
    level = "L2_partial_fixed" if extra else "L0_minimal"
    config = load_run_config(level, {**TINY, **extra})
    trainer = Trainer(config, tmp_path)
    trainer.run()
    policy = open_run(tmp_path).policy()
    world = World(load_level(level), 3, seed=1)
    obs, mask = world.observe(), world.action_mask()
    net = build_network(config, world.obs_layout)
    net.load_state_dict(trainer.algorithm.network.state_dict())
    first = torch.ones(3, dtype=torch.bool)
    with torch.no_grad():
        if extra:  # memory carried: the second step is the net's answer after the first observation
            q1, state = net(obs.unsqueeze(1), net.initial_state(3))
            assert torch.equal(policy.act(obs, mask, first), torch.where(mask, q1.squeeze(1), -1e9).argmax(1))
            q2, _ = net(obs.unsqueeze(1), state)
            assert torch.equal(policy.act(obs, mask, ~first), torch.where(mask, q2.squeeze(1), -1e9).argmax(1))
            assert torch.equal(policy.act(obs, mask, first), torch.where(mask, q1.squeeze(1), -1e9).argmax(1))
        else:
            assert torch.equal(policy.act(obs, mask, first), torch.where(mask, net(obs), -1e9).argmax(1))
    assert policy.memory == bool(extra)


@pytest.mark.parametrize("extra", [{}, RECURRENT])
def test_greedy_policy_decide_shows_what_act_decides_on(extra):
    """`decide` is `act` with the network's outputs and memory beside the actions, and moves memory as act does."""
    level = "L2_partial_fixed" if extra else "L0_minimal"
    config = load_run_config(level, {**TINY, **extra})
    world = World(load_level(level), 3, seed=1)
    net = build_network(config, world.obs_layout)
    shown, acting = (GreedyPolicy(net, bool(extra), bool(extra)) for _ in range(2))
    obs, mask, first = world.observe(), world.action_mask(), torch.ones(3, dtype=torch.bool)
    for _ in range(3):
        decision = shown.decide(obs, mask, first)
        assert torch.equal(decision.actions, acting.act(obs, mask, first))
        assert decision.values.shape == (3, 5) and shown.outputs == "q"
        assert torch.equal(decision.actions, torch.where(mask, decision.values, -torch.inf).argmax(1))
        if extra:
            assert torch.equal(decision.memory, shown._actor.h[-1]) and decision.memory.shape == (3, 8)
        else:
            assert decision.memory is None
            with torch.no_grad():
                assert torch.equal(decision.values, net(obs))
        obs, _, _, _, info = world.step(decision.actions)
        mask, first = world.action_mask(), info["done"]


def test_greedy_policy_plays_a_gymnasium_env_through_sb3_predict(tmp_path):
    """What an SB3 user does with a model: predict(obs, state, episode_start) in a loop over a vector env. The
    actions equal the policy's own tensor `act` with the same memory resets, and the masks are respected."""
    Trainer(load_run_config("L2_partial_fixed", {**TINY, **RECURRENT}), tmp_path).run()
    run = open_run(tmp_path)
    sb3_style, reference = run.policy(), run.policy()
    env = TownletVectorEnv(run.level, num_envs=3, seed=0)
    obs, _ = env.reset()
    state, starts = None, np.ones(3, dtype=bool)
    for _ in range(40):
        masks = env.action_masks()
        actions, state = sb3_style.predict(obs, state=state, episode_start=starts, action_masks=masks)
        expected = reference.act(torch.as_tensor(obs), torch.as_tensor(masks), torch.as_tensor(starts))
        assert np.array_equal(actions, expected.numpy()) and masks[np.arange(3), actions].all()
        assert state is not None and state[0].shape == (1, 3, 8)
        obs, _, terminated, truncated, _ = env.step(actions)
        starts = terminated | truncated
    single, _ = sb3_style.predict(obs[0], episode_start=np.ones(1, dtype=bool))
    assert np.ndim(single) == 0
    with pytest.raises(ValueError, match="deterministic"):
        sb3_style.predict(obs, deterministic=False)


def test_normalised_entropy_is_zero_when_certain_and_one_when_uniform():
    q = torch.tensor([[1.0] * 5, [10.0, 0, 0, 0, 0], [0.0, 5.0, 0, 0, 0]])
    mask = torch.tensor([[True] * 5, [True] * 5, [False, True, False, False, False]])
    h = normalised_entropy(q, mask, temperature=1.0)
    assert torch.allclose(h[0], torch.tensor(1.0)) and h[1] < 0.01 and h[2] == 0.0


def test_resumed_trainer_and_cli_resume_are_one_path(tmp_path):
    """`Trainer.resume` and `townlet train --resume` both go through `Run.resume`: same overrides, same result."""
    from typer.testing import CliRunner

    from townlet.cli import app

    for name in ("a", "b"):
        Trainer(load_run_config("L0_minimal", TINY), tmp_path / name).run()
    Trainer.resume(tmp_path / "a", {"steps": 600}).run()
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "b"), "--steps", "600", "--quiet"])
    assert result.exit_code == 0, result.output
    a, b = open_run(tmp_path / "a"), open_run(tmp_path / "b")
    assert a.step == b.step == 600
    for x, y in zip(a.state["algorithm"]["network"].values(), b.state["algorithm"]["network"].values(), strict=True):
        assert torch.equal(x, y)
    assert read_metrics(Path(tmp_path / "a"))[0] == read_metrics(Path(tmp_path / "b"))[0]
