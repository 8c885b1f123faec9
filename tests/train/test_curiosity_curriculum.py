"""Curiosity and curriculum inside the training loop: they change what the agents experience."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from townlet.train import Trainer, load_run_config
from townlet.train.evaluate import greedy_stats
from townlet.train.metrics import read_metrics
from townlet.world import World

FAST = {
    "agents": 8,
    "learner": {"learning_starts": 300, "batch_size": 32, "replay_ratio": 1.0, "target_update_every": 50},
    "replay": {"capacity": 4000},
    "exploration": {"decay_steps": 1000},
    "logging": {"interval_steps": 400, "checkpoint_every": 10**9, "tensorboard": False},
}
CURRICULUM = {"kind": "adversarial", "window": 3, "min_episodes": 3, "entropy_gate": 0.9, "temperature": 0.01}


def short_level(tmp_path: Path) -> str:
    path = tmp_path / "L0_short.yaml"
    path.write_text("extends: L0_minimal\nname: L0_short\nmax_steps: 30\n")
    return str(path)


@pytest.mark.parametrize("gate", [{}, {"entropy_gate": 0.9, "temperature": 0.01}], ids=["default-open", "gated"])
def test_agents_advance_a_stage_and_the_world_follows(tmp_path, gate):
    curriculum = {"kind": "adversarial", "window": 3, "min_episodes": 3, **gate}
    config = load_run_config("L0_minimal", {**FAST, "level": short_level(tmp_path), "steps": 3200,
                                            "curriculum": curriculum})
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.curriculum.gated == bool(gate)
    if not gate:  # an open gate reads no entropy: none is computed on any step
        def no_entropy(temperature: float) -> torch.Tensor:
            raise AssertionError("action_entropy called with the gate open")

        trainer.algorithm.action_entropy = no_entropy
    assert torch.all(trainer.world.depletion == 0.2)  # stage 0 applied before the first step
    trainer.run()
    stage = trainer.curriculum.stage
    assert (stage >= 1).any()
    depletion = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])[stage]
    assert torch.allclose(trainer.world.depletion, depletion)  # decisions reached the world
    episodes, learner = read_metrics(tmp_path / "run")
    assert max(row["stage"] for row in episodes) >= 1
    assert learner[-1]["stage_mean"] == stage.float().mean().item()


@pytest.mark.parametrize("kind", ["rnd", "counts"])
def test_curiosity_rewards_are_stored_apart_and_logged(tmp_path, kind):
    config = load_run_config("L0_minimal", {**FAST, "steps": 2400, "learner": {**FAST["learner"], "n_step": 1},
                                            "curiosity": {"enabled": True, "kind": kind, "weight": 0.5}})
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    batch = trainer.algorithm.replay.sample(64, torch.Generator().manual_seed(0))
    assert batch.intrinsic is not None and (batch.intrinsic > 0).all()
    assert not torch.equal(batch.intrinsic, batch.rewards)
    if kind == "counts":
        assert trainer.algorithm.rnd is None and trainer.algorithm.counts.counts.sum() == trainer.env_steps  # every agent-step
        # a 1-step DQN batch holds single bonuses 1 / sqrt(N): N is a whole count, at most all steps so far
        n = batch.intrinsic.double().pow(-2)
        assert torch.allclose(n, n.round(), atol=1e-3) and (batch.intrinsic <= 1).all()
        assert n.max() <= trainer.env_steps and n.max() > 100  # the common pairs are well known by now
    else:
        assert trainer.algorithm.counts is None
    _, learner = read_metrics(tmp_path / "run")
    assert all(row["intrinsic_weight"] == 0.5 for row in learner)  # no consistent survival yet: no annealing
    assert all(row["intrinsic_reward"] > 0 for row in learner)


@pytest.mark.parametrize("kind", ["rnd", "counts"])
def test_resume_is_exact_with_curiosity_and_curriculum(tmp_path, kind):
    def config(steps: int):
        return load_run_config("L0_minimal", {**FAST, "level": short_level(tmp_path), "steps": steps,
                                              "curriculum": CURRICULUM,
                                              "curiosity": {"enabled": True, "kind": kind}})

    full = Trainer(config(3200), tmp_path / "full")
    full.run()
    part = Trainer(config(1600), tmp_path / "part")
    part.run()
    resumed = Trainer.resume(tmp_path / "part", {"steps": 3200})
    resumed.run()
    assert torch.equal(full.curriculum.stage, resumed.curriculum.stage)
    for a, b in zip(full.algorithm.network.state_dict().values(), resumed.algorithm.network.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert full.algorithm.annealing.weight == resumed.algorithm.annealing.weight
    assert read_metrics(tmp_path / "full")[0] == read_metrics(tmp_path / "part")[0]


def test_evaluation_runs_at_full_difficulty(tmp_path, monkeypatch):
    config = load_run_config("L0_minimal", {**FAST, "level": short_level(tmp_path), "steps": 1200,
                                            "curriculum": CURRICULUM})
    trainer = Trainer(config, tmp_path / "run")
    trainer.run()
    seen: list[World] = []
    import townlet.train.evaluate as evaluate_module

    real = evaluate_module.run_episodes
    monkeypatch.setattr(evaluate_module, "run_episodes", lambda w, *a, **k: seen.append(w) or real(w, *a, **k))
    greedy_stats(trainer.algorithm.greedy_policy(), trainer.level, 8, 4, 0)
    assert torch.all(seen[0].depletion == 1.0)
    assert torch.all(seen[0].reward_mode == 0)  # milestone
