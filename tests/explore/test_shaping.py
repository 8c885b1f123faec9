"""Potential-based shaping on the meters: Φ = weight · Σ √meter, F = γ Φ(s') − Φ(s) with Φ = 0 after a death, so
over an episode the shaping sums to γ^T Φ(last obs) − Φ(first obs) and to −Φ(first obs) for a death."""

from __future__ import annotations

import math

import pytest
import torch

from townlet.explore.shaping import MeterPotential
from townlet.world import World, load_level


def test_potential_is_the_weighted_sum_of_root_meters() -> None:
    world = World("L2_partial", 2, seed=0)
    obs = world.reset()
    meters = world.obs_layout["meters"].slice
    obs[0, meters] = torch.tensor([1.0, 0.25, 0.0, 0.5, 1.0, 0.04, 0.81, 0.09])
    obs[1, meters] = 0.0
    phi = MeterPotential(world.obs_layout, weight=2.0, gamma=0.9).potential(obs)
    assert phi.tolist() == pytest.approx([2.0 * (1 + 0.5 + 0 + math.sqrt(0.5) + 1 + 0.2 + 0.9 + 0.3), 0.0])


def test_raising_a_low_meter_pays_more_than_raising_a_high_one() -> None:
    """√ is concave: the same +0.45 satiation is worth more to a hungry agent, and a death costs Φ as well."""
    layout = World("L1_full", 1).obs_layout
    shaping = MeterPotential(layout, weight=1.0, gamma=1.0)
    before = torch.zeros(3, layout.dim)
    before[:, layout["meters"].slice] = 0.5
    before[0, layout["meters"].start + 2] = 0.1  # hungry
    after = before.clone()
    after[:2, layout["meters"].start + 2] += 0.45
    f = shaping.reward(before, after, torch.tensor([False, False, True]))
    assert f[0] > f[1] > 0
    assert f[2] == pytest.approx(-float(shaping.potential(before[2])))


@pytest.mark.parametrize("max_steps", [40, 500])
def test_shaping_telescopes_over_whole_episodes(max_steps: int) -> None:
    """Random play of 64 agents until each has ended an episode: the discounted shaping of each first episode is
    γ^T Φ(final obs) − Φ(first obs) if it was cut at max_steps, −Φ(first obs) if the agent died."""
    level = load_level("L1_full").model_copy(update={"max_steps": max_steps})
    world = World(level, 64, seed=3)
    gamma = 0.99
    shaping = MeterPotential(world.obs_layout, weight=3.0, gamma=gamma)
    obs = world.reset()
    first_phi = shaping.potential(obs)
    total = torch.zeros(64, dtype=torch.float64)
    ended = torch.zeros(64, dtype=torch.bool)
    expected = torch.zeros(64, dtype=torch.float64)
    cut = torch.zeros(64, dtype=torch.bool)
    t = 0
    while not ended.all():
        mask = world.action_mask()
        actions = (torch.rand(mask.shape) * mask).argmax(1)
        next_obs, _, terminated, truncated, info = world.step(actions)
        after = torch.where(info["done"].view(-1, 1), info["final_obs"], next_obs)
        f = shaping.reward(obs, after, terminated)
        total += torch.where(ended, 0.0, gamma**t * f.double())
        now = info["done"] & ~ended
        expected = torch.where(
            now, torch.where(terminated, 0.0, gamma ** (t + 1) * shaping.potential(after).double()), expected
        )
        cut |= now & truncated
        ended |= info["done"]
        obs, t = next_obs, t + 1
    assert torch.allclose(total, expected - first_phi.double(), atol=1e-3)
    assert cut.sum() > 50 if max_steps == 40 else not cut.any()  # random play dies at about tick 100


def test_bad_arguments_are_refused() -> None:
    layout = World("L1_full", 1).obs_layout
    with pytest.raises(ValueError, match="weight"):
        MeterPotential(layout, weight=0.0, gamma=0.9)
    with pytest.raises(ValueError, match="gamma"):
        MeterPotential(layout, weight=1.0, gamma=1.5)
