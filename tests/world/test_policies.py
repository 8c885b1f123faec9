"""Scripted reference policies and the episode runner."""

from __future__ import annotations

import pytest
import torch

from townlet.world import NeedsPolicy, RandomPolicy, World, make_policy, run_episodes


@pytest.mark.parametrize("level", ["L1_full", "L3_temporal_fixed"])
def test_needs_policy_reaches_the_cap(level):
    world = World(level, 100, seed=0)
    policy = NeedsPolicy(world)
    stats = run_episodes(world, lambda obs, w: policy.act(w), 200)
    summary = stats.summary()
    assert summary["episodes"] == 200
    assert summary["cap_rate"] >= 0.95
    assert summary["invalid_rate"] == 0.0


def test_random_policy_lives_about_a_hundred_ticks_and_never_acts_invalidly():
    world = World("L1_full", 200, seed=0)
    policy = RandomPolicy(seed=0)
    stats = run_episodes(world, lambda obs, w: policy.act(w), 400)
    summary = stats.summary()
    assert 85 <= summary["survival_mean"] <= 120
    lo, hi = summary["survival_ci95"]
    assert lo < summary["survival_mean"] < hi
    assert summary["invalid_rate"] == 0.0
    assert summary["causes"]["energy"] + summary["causes"]["health"] == 400
    assert summary["survival_p10"] <= summary["survival_median"]


def test_run_episodes_counts_invalid_actions_and_each_agents_first_episodes():
    world = World("L1_full", 4, seed=0, )
    stats = run_episodes(world, lambda obs, w: torch.zeros(4, dtype=torch.long), 8)  # always UP
    assert stats.lengths.numel() == 8
    assert stats.invalid_rate > 0.9  # stuck against the top wall after a few steps
    seen: list[int] = []
    stats = run_episodes(world, lambda obs, w: torch.full((4,), 4), 5, on_step=lambda info: seen.append(1))
    assert stats.lengths.numel() == 5 and seen


def test_make_policy_rejects_unknown_names():
    world = World("L0_minimal", 2)
    assert make_policy("needs", world).name == "needs"
    with pytest.raises(ValueError, match="allowed: random, needs"):
        make_policy("oracle", world)
