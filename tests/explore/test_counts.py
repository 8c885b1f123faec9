"""Count bonuses: 1 / sqrt(N) per (cell, affordance, low meters, action), counted over agents and steps, the same
key for an affordance wherever a random layout puts it, and a checkpoint that restores the counts exactly."""

from __future__ import annotations

import pytest
import torch

from townlet.explore.counts import VisitCounts
from townlet.world import World
from townlet.world.engine import INTERACT

UP, RIGHT = 0, 3


def placed(level: str, cells: list[tuple[int, int]], seed: int = 0) -> World:
    world = World(level, len(cells), seed=seed)
    world.reset(positions=torch.tensor(cells))
    return world


def test_bonus_is_one_over_root_count_and_counts_every_agent_of_a_step() -> None:
    world = placed("L1_full", [(6, 6), (6, 6), (6, 6), (0, 5)])  # three on the Job, one on an empty cell
    counts = VisitCounts(world.grid_size, world.num_affordances)
    actions = torch.tensor([INTERACT, INTERACT, UP, UP])
    first = counts.bonus(world, actions)
    # two agents worked at the Job in the same step: N = 2 for both; the others are alone in their pair
    assert torch.allclose(first, torch.tensor([2 ** -0.5, 2 ** -0.5, 1.0, 1.0]))
    second = counts.bonus(world, actions)
    assert torch.allclose(second, torch.tensor([4 ** -0.5, 4 ** -0.5, 2 ** -0.5, 2 ** -0.5]))
    assert counts.counts.sum() == 8 and first.dtype == torch.float32


def test_keys_separate_cells_affordances_and_actions() -> None:
    world = placed("L1_full", [(6, 6), (6, 6), (7, 6), (5, 5)])  # Job, Job, Labor, empty
    counts = VisitCounts(world.grid_size, world.num_affordances)
    keys = counts.keys(world, torch.tensor([INTERACT, RIGHT, INTERACT, INTERACT]))
    assert len(set(keys.tolist())) == 4
    assert keys.max() < counts.counts.numel() and keys.min() >= 0


def test_the_same_action_in_the_same_place_counts_apart_when_meters_are_low() -> None:
    """Working at the Job while broke is its own pair: the early random phase's work with money to spare does
    not make it familiar."""
    world = placed("L1_full", [(6, 6)] * 3)
    money = world.meter_names.index("money")
    world.meters[1, money] = 0.1  # broke
    world.meters[2, money] = 0.1
    world.meters[2, 0] = 0.2  # broke and tired
    counts = VisitCounts(world.grid_size, world.num_affordances, low_meter=0.3)
    work = torch.full((3,), INTERACT)
    keys = counts.keys(world, work)
    assert len(set(keys.tolist())) == 3
    assert keys[1] - keys[0] == (1 << money) * 5 and keys[2] - keys[1] == 1 * 5  # one bit per low meter
    rich_only = placed("L1_full", [(6, 6)] * 100)
    counts.bonus(rich_only, torch.full((100,), INTERACT))  # a hundred times while rich
    assert torch.allclose(counts.bonus(world, work), torch.tensor([101 ** -0.5, 1.0, 1.0]))


def test_an_affordance_keeps_its_key_on_its_cell_whatever_the_layout() -> None:
    """On a random layout the Job moves; the key of working there follows the (cell, Job) pair, and the same
    cell without the Job is another key."""
    world = World("L2_partial", 2, seed=3)
    world.reset()
    job = [a.name for a in world.config.affordances].index("Job")
    where = world.affordance_positions[:, job]  # [2, 2]: each agent's own layout
    assert not torch.equal(where[0], where[1])
    world.positions.copy_(where)  # stand on the Job without starting a new episode (and layout)
    assert torch.equal(world.affordance_here(), torch.tensor([job, job]))
    counts = VisitCounts(world.grid_size, world.num_affordances)
    keys = counts.keys(world, torch.tensor([INTERACT, INTERACT]))
    place = (where[:, 1] * world.grid_size + where[:, 0]) * (world.num_affordances + 1) + job + 1
    assert torch.equal(keys, (place << 8) * 5 + INTERACT)  # no meter is low at the start
    world.positions.copy_(where.flip(0))  # each agent on the other's Job cell, where its own layout has no Job
    assert not torch.equal(counts.keys(world, torch.tensor([INTERACT, INTERACT])), keys.flip(0))


def test_state_round_trips_and_a_mismatched_one_is_refused() -> None:
    world = placed("L1_full", [(1, 1), (2, 2)])
    counts = VisitCounts(world.grid_size, world.num_affordances)
    counts.bonus(world, torch.tensor([INTERACT, INTERACT]))
    restored = VisitCounts(world.grid_size, world.num_affordances)
    restored.load_state_dict(counts.state_dict())
    assert torch.equal(restored.counts, counts.counts)
    actions = torch.tensor([INTERACT, UP])
    assert torch.equal(restored.bonus(world, actions), counts.bonus(world, actions))
    with pytest.raises(ValueError, match="grid 3"):
        VisitCounts(3, world.num_affordances).load_state_dict(counts.state_dict())
    with pytest.raises(ValueError, match="more than"):
        VisitCounts(64, world.num_affordances)  # a 64x64 town: too many counts for a dense table
