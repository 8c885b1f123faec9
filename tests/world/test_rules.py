"""Hand-computed meter values after scripted actions, against the numbers in world-spec.md."""

from __future__ import annotations

import pytest
import torch

from tests.world.conftest import FI, HY, MD, MO, SA, SO, E, H, act, make_world, place

UP, DOWN, LEFT, RIGHT, INTERACT = range(5)
EMPTY_CELL = (4, 4)  # no affordance there in the fixed layout
ATOL = 1e-6

# Passive drain per tick, spec order (health comes from the modulation).
DRAIN = [0.005, 0.003, 0.004, 0.0, 0.001, 0.006, 0.0, 0.002]


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=ATOL, rtol=0)


def test_one_move_pays_move_cost_then_drain_and_modulation(l1):
    place(l1, (3, 3), [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    act(l1, UP)
    assert l1.positions[0].tolist() == [3, 2]
    # energy 1 - .005 move - .005 drain; health drains .001 * (.5 + 2.5 * 0) at full fitness
    close(l1.meters[0], [0.99, 0.994, 0.992, 0.5, 0.999, 0.994, 0.9995, 0.998])


def test_bed_restores_energy_and_charges_five_dollars(l1):
    place(l1, (1, 1), [0.4, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    _, _, _, _, info = act(l1, INTERACT)
    assert not info["invalid"][0] and info["completed"][0]
    # energy .4 + .5 - .005; health 1 + .02 clamps to 1 then - .0005; money .5 - .05
    close(l1.meters[0], [0.895, 0.997, 0.996, 0.45, 0.999, 0.994, 0.9995, 0.998])


def test_job_pays_and_tires(l1):
    place(l1, (6, 6), [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    act(l1, INTERACT)
    close(l1.meters[0], [0.845, 0.997, 0.996, 0.725, 0.999, 0.994, 0.9695, 0.998])


# name: (position, cost in $, effects as {meter index: delta}) typed from the spec's table
SPEC_AFFORDANCES = {
    "Bed": ((1, 1), 5, {E: 0.50, H: 0.02}),
    "LuxuryBed": ((2, 1), 11, {E: 0.75, H: 0.05}),
    "Shower": ((2, 2), 3, {HY: 0.40}),
    "HomeMeal": ((1, 3), 3, {SA: 0.45, H: 0.03}),
    "FastFood": ((5, 6), 10, {SA: 0.45, E: 0.15, SO: 0.01, FI: -0.03, H: -0.02}),
    "Job": ((6, 6), 0, {MO: 0.225, E: -0.15, SO: 0.02, H: -0.03}),
    "Labor": ((7, 6), 0, {MO: 0.30, E: -0.20, FI: -0.05, H: -0.05, SO: 0.01}),
    "Gym": ((7, 3), 8, {FI: 0.30, E: -0.08}),
    "Bar": ((7, 0), 15, {SO: 0.50, MD: 0.25, SA: 0.30, E: -0.20, HY: -0.15, H: -0.05}),
    "Park": ((0, 4), 0, {FI: 0.20, SO: 0.15, MD: 0.15, E: -0.15}),
    "Recreation": ((0, 7), 6, {MD: 0.25, E: 0.12}),
    "Therapist": ((1, 7), 15, {MD: 0.40}),
    "Doctor": ((5, 1), 8, {H: 0.25}),
    "Hospital": ((6, 1), 15, {H: 0.40}),
}


@pytest.mark.parametrize("name", list(SPEC_AFFORDANCES))
def test_every_instant_affordance(name):
    world = make_world("L1_full")
    (x, y), dollars, effects = SPEC_AFFORDANCES[name]
    start = [0.6] * 8
    place(world, (x, y), start)
    assert world.affordance_names[world.affordance_here()[0]] == name
    _, _, _, _, info = act(world, INTERACT)
    assert not info["invalid"][0]
    after_use = [min(1.0, max(0.0, start[i] + effects.get(i, 0.0))) for i in range(8)]
    after_use[MO] = min(1.0, after_use[MO] - dollars / 100)
    health_drain = 0.001 * (0.5 + 2.5 * (1 - after_use[FI]))
    drain = [*DRAIN[:H], health_drain, DRAIN[FI]]
    expected = [max(0.0, v - d) for v, d in zip(after_use, drain, strict=True)]
    assert min(expected) >= 0.3  # no cascade fires in this set-up
    close(world.meters[0], expected)


def test_cannot_pay_is_invalid_and_exact_cost_is_affordable(l1):
    place(l1, (1, 1), [0.5, 1, 1, 0.04, 1, 1, 1, 1])
    assert not l1.action_mask()[0, INTERACT]
    _, _, _, _, info = act(l1, INTERACT)
    assert info["invalid"][0]
    assert l1.meters[0, E].item() == pytest.approx(0.495)  # only the drain
    assert l1.meters[0, MO].item() == pytest.approx(0.04)
    place(l1, (1, 1), [0.5, 1, 1, 0.05, 1, 1, 1, 1])  # a $5 Bed stays affordable at $5
    assert l1.action_mask()[0, INTERACT]
    act(l1, INTERACT)
    assert l1.meters[0, MO].item() == pytest.approx(0.0, abs=ATOL)


def test_move_off_grid_is_a_counted_noop(l1):
    place(l1, (0, 0), [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    assert l1.action_mask()[0].tolist() == [False, True, False, True, False]
    _, _, _, _, info = act(l1, UP)
    assert info["invalid"][0]
    assert l1.positions[0].tolist() == [0, 0]
    close(l1.meters[0], [0.995, 0.997, 0.996, 0.5, 0.999, 0.994, 0.9995, 0.998])


def idle_without_drain(world):
    """Step with an invalid INTERACT on an empty cell and no passive drain: only cascades act."""
    world.set_difficulty(depletion=0.0)
    place(world, EMPTY_CELL)
    return act(world, INTERACT)


@pytest.mark.parametrize(
    ("meters", "expected"),
    [
        # satiation exactly at the threshold: nothing fires
        ([0.8, 0.8, 0.3, 0.5, 0.8, 0.8, 0.8, 0.8], [0.8, 0.8, 0.3, 0.5, 0.8, 0.8, 0.8, 0.8]),
        # satiation half-way below: health -.004 * .5, energy -.005 * .5
        ([0.8, 0.8, 0.15, 0.5, 0.8, 0.8, 0.8, 0.8], [0.7975, 0.8, 0.15, 0.5, 0.8, 0.8, 0.798, 0.8]),
        # hygiene empty: satiation -.002, fitness -.002, mood -.003, health -.0005, energy -.0005
        ([0.8, 0.0, 0.8, 0.5, 0.8, 0.8, 0.8, 0.8], [0.7995, 0.0, 0.798, 0.5, 0.797, 0.8, 0.7995, 0.798]),
        # social at .06 (80% short): mood -.004 * .8, energy -.0008 * .8
        ([0.8, 0.8, 0.8, 0.5, 0.8, 0.06, 0.8, 0.8], [0.79936, 0.8, 0.8, 0.5, 0.7968, 0.06, 0.8, 0.8]),
        # mood just below: energy -.005 * (.01 / .3)
        ([0.8, 0.8, 0.8, 0.5, 0.29, 0.8, 0.8, 0.8], [0.8 - 0.005 / 30, 0.8, 0.8, 0.5, 0.29, 0.8, 0.8, 0.8]),
        # all computed from the same meters: satiation .2 is hit by hygiene but health sees .2
        (
            [0.8, 0.0, 0.2, 0.5, 0.8, 0.8, 0.8, 0.8],
            [0.8 - 0.005 / 3 - 0.0005, 0.0, 0.198, 0.5, 0.797, 0.8, 0.8 - 0.004 / 3 - 0.0005, 0.798],
        ),
    ],
)
def test_cascades_at_and_around_thresholds(meters, expected):
    world = make_world("L1_full")
    place(world, EMPTY_CELL, meters)
    idle_without_drain(world)
    close(world.meters[0], expected)


@pytest.mark.parametrize(("fitness", "health_drain"), [(1.0, 0.0005), (0.5, 0.00175), (0.0, 0.003)])
def test_fitness_modulates_health_drain(fitness, health_drain):
    world = make_world("L1_full")
    place(world, EMPTY_CELL, [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, fitness])
    act(world, INTERACT)
    assert world.meters[0, H].item() == pytest.approx(1.0 - health_drain, abs=ATOL)
    assert world.meters[0, FI].item() == pytest.approx(max(0.0, fitness - 0.002), abs=ATOL)


def test_depletion_multiplier_scales_drain_per_agent():
    world = make_world("L1_full", n=2)
    world.set_difficulty(depletion=torch.tensor([0.2, 1.0]))
    place(world, EMPTY_CELL, [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.0])
    act(world, INTERACT)
    assert world.meters[0, E].item() == pytest.approx(1 - 0.2 * 0.005, abs=ATOL)
    assert world.meters[1, E].item() == pytest.approx(1 - 0.005, abs=ATOL)
    assert world.meters[0, H].item() == pytest.approx(1 - 0.2 * 0.003, abs=ATOL)
    assert world.meters[1, H].item() == pytest.approx(1 - 0.003, abs=ATOL)


def test_death_by_energy_resets_the_agent():
    world = make_world("L1_full", n=2)
    place(world, [(3, 3), (3, 3)], [[0.004, 1, 1, 0.5, 1, 1, 1, 1], [0.5, 1, 1, 0.5, 1, 1, 1, 1]])
    world.steps = torch.tensor([41, 41])
    obs, reward, terminated, truncated, info = act(world, UP)
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert world.CAUSES[info["cause"][0]] == "energy" and info["cause"][1] == 0
    assert reward[0].item() == -100.0
    assert info["episode_length"][0].item() == 42
    assert info["final_obs"][0, world.obs_layout["meters"].start + E].item() == 0.0
    # agent 0 starts over; agent 1 carries on
    assert world.meters[0].tolist() == [1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert world.steps.tolist() == [0, 42]
    torch.testing.assert_close(obs, world.observe())
    assert world.positions[1].tolist() == [3, 2]


def test_death_by_health_and_the_rounding_slack():
    world = make_world("L1_full", n=3)
    # health drains .0005 at full fitness: the first reaches 0, the second stays under 1e-5, the third lives
    place(world, EMPTY_CELL, [[1, 1, 1, 0.5, 1, 1, h, 1] for h in (0.0004, 0.000505, 0.00055)])
    _, _, terminated, _, info = act(world, INTERACT)
    assert terminated.tolist() == [True, True, False]
    assert [world.CAUSES[c] for c in info["cause"][:2]] == ["health", "health"]


def test_truncation_at_max_steps_is_not_termination():
    world = make_world("L1_full", max_steps=5)
    world.set_difficulty(depletion=0.0)
    place(world, EMPTY_CELL)
    for t in range(1, 6):
        _, _, terminated, truncated, info = act(world, INTERACT)
        assert not terminated.any()
        assert truncated[0].item() == (t == 5)
    assert world.CAUSES[info["cause"][0]] == "truncated"
    assert info["episode_length"][0].item() == 5
    assert world.steps[0].item() == 0


def test_milestone_rewards():
    world = make_world("L1_full")
    world.set_difficulty(depletion=0.0)
    place(world, EMPTY_CELL)
    rewards = [act(world, INTERACT)[1][0].item() for _ in range(200)]
    expected = [0.0] * 200
    for t in range(10, 201, 10):
        expected[t - 1] = 0.5 + (5.0 if t % 100 == 0 else 0.0)
    assert rewards == pytest.approx(expected)
    assert rewards[99] == pytest.approx(5.5)


def test_survival_and_shaped_rewards_per_agent():
    world = make_world("L1_full", n=3)
    world.set_difficulty(reward_mode=torch.tensor([1, 2, 2]))
    place(world, EMPTY_CELL, [[1, 1, 1, 0.5, 1, 1, 1, 1], [0.6, 1, 1, 0.5, 1, 1, 0.8, 1], [0.004, 1, 1, 0.5, 1, 1, 1, 1]])
    _, reward, terminated, _, _ = act(world, INTERACT)
    assert reward[0].item() == pytest.approx(0.01)
    assert reward[1].item() == pytest.approx(0.01 + 0.01 * 0.595)  # min(energy .595, health .7995)
    assert terminated[2] and reward[2].item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="allowed: milestone, survival, shaped"):
        world.set_difficulty(reward_mode="easy")


def test_episode_return_is_the_sum_of_rewards():
    world = make_world("L1_full", n=4, seed=3)
    total = torch.zeros(4)
    returns = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        mask = world.action_mask()
        _, reward, _, _, info = world.step((torch.rand(mask.shape, generator=gen) * mask).argmax(1))
        total += reward
        done = info["done"]
        returns += [(info["episode_return"][i].item(), total[i].item()) for i in range(4) if done[i]]
        total[done] = 0
    assert returns
    for got, want in returns:
        assert got == pytest.approx(want, abs=1e-3)
