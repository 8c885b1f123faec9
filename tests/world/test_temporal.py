"""Temporal mode: the clock, opening hours, multi-tick uses, completion bonus and abandonment."""

from __future__ import annotations

import math

import pytest
import torch

from tests.world.conftest import HY, MO, E, make_world, place

UP, DOWN, LEFT, RIGHT, INTERACT = range(5)
JOB, BAR, SHOWER, BED = (6, 6), (7, 0), (2, 2), (1, 1)


def temporal(n: int = 1):
    return make_world("L3_temporal_fixed", n=n)


def step(world, action: int):
    return world.step(torch.full((world.num_agents,), action))


def test_clock_starts_at_start_hour_and_wraps():
    world = temporal()
    assert world.hour.tolist() == [6]
    world.set_difficulty(depletion=0.0)
    place(world, (4, 4))
    hours = []
    for _ in range(24):
        step(world, INTERACT)
        hours.append(world.hour[0].item())
    assert hours == [*range(7, 24), *range(0, 7)]


@pytest.mark.parametrize(("hour", "is_open"), [(7, False), (8, True), (17, True), (18, False), (3, False)])
def test_job_opening_hours_in_mask_and_step(hour, is_open):
    world = temporal()
    place(world, JOB, [1, 1, 1, 0.5, 1, 1, 1, 1], hour=hour)
    assert world.action_mask()[0, INTERACT].item() == is_open
    _, _, _, _, info = step(world, INTERACT)  # the engine enforces the hours even if the mask is ignored
    assert info["invalid"][0].item() == (not is_open)
    assert (world.meters[0, MO].item() > 0.5) == is_open


@pytest.mark.parametrize("hour", range(24))
def test_bar_wraps_past_midnight(hour):
    world = temporal()
    place(world, BAR, [1, 1, 1, 1.0, 1, 1, 1, 1], hour=hour)
    assert world.action_mask()[0, INTERACT].item() == (hour >= 18 or hour < 4)


def test_multi_tick_use_pays_per_tick_and_adds_the_completion_bonus():
    world = temporal()
    world.set_difficulty(depletion=0.0)
    place(world, SHOWER, [1, 0.4, 1, 0.5, 1, 1, 1, 1], hour=10)
    layout = world.obs_layout
    hygiene, money, progress = [], [], []
    for _ in range(3):
        obs, _, _, _, info = step(world, INTERACT)
        hygiene.append(world.meters[0, HY].item())
        money.append(world.meters[0, MO].item())
        progress.append(obs[0, layout["progress"].start].item())
    # each tick .75 * .40 / 3 = .1 hygiene and $1; the last adds the .25 * .40 bonus
    assert hygiene == pytest.approx([0.5, 0.6, 0.8], abs=1e-6)
    assert money == pytest.approx([0.49, 0.48, 0.47], abs=1e-6)
    assert progress == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert info["completed"][0]


def test_job_over_four_ticks_earns_the_full_wage():
    world = temporal()
    world.set_difficulty(depletion=0.0)
    place(world, JOB, [1, 1, 1, 0.5, 1, 1, 1, 1], hour=8)
    completed = [step(world, INTERACT)[4]["completed"][0].item() for _ in range(4)]
    assert completed == [False, False, False, True]
    assert world.meters[0, MO].item() == pytest.approx(0.725, abs=1e-6)
    assert world.meters[0, E].item() == pytest.approx(0.85, abs=1e-6)


def test_moving_away_abandons_the_use_and_keeps_what_was_paid():
    world = temporal()
    world.set_difficulty(depletion=0.0)
    place(world, BED, [0.2, 1, 1, 0.5, 1, 1, 1, 1], hour=10)
    step(world, INTERACT)
    step(world, INTERACT)
    assert world.progress[0].item() == 2
    step(world, RIGHT)
    assert world.progress[0].item() == 0
    assert world.meters[0, MO].item() == pytest.approx(0.5 - 2 * 0.01, abs=1e-6)  # 2 ticks of $5 / 5
    step(world, LEFT)
    step(world, INTERACT)
    assert world.progress[0].item() == 1  # a new use starts from scratch


def test_closing_abandons_the_use():
    world = temporal()
    world.set_difficulty(depletion=0.0)
    place(world, JOB, [1, 1, 1, 0.5, 1, 1, 1, 1], hour=16)
    step(world, INTERACT)
    step(world, INTERACT)  # hour 17 -> 18: the Job closes
    assert world.hour[0].item() == 18
    assert world.progress[0].item() == 0
    _, _, _, _, info = step(world, INTERACT)
    assert info["invalid"][0]


def test_temporal_observation_extras():
    world = temporal()
    place(world, (4, 4), hour=6)
    obs = world.observe()
    time = world.obs_layout["time"].slice
    angle = 2 * math.pi * 6 / 24
    assert obs[0, time].tolist() == pytest.approx([math.sin(angle), math.cos(angle)], abs=1e-6)
    assert world.obs_dim == 403
