"""Episodic counts: 1 / sqrt(n) for the n-th visit of a cell (and low meters) within one agent's episode, kept
apart per agent, forgotten only for the agents whose episode ended, hashed when the key space is too big."""

from __future__ import annotations

import pytest
import torch

from townlet.explore.episodic import EpisodicCounts
from townlet.world import World


def placed(cells: list[tuple[int, int]]) -> World:
    world = World("L1_full", len(cells), seed=0)
    world.reset(positions=torch.tensor(cells))
    return world


def move(world: World, cells: list[tuple[int, int]]) -> None:
    world.positions.copy_(torch.tensor(cells))


def test_a_second_visit_pays_one_over_root_two_and_a_new_cell_pays_one() -> None:
    world = placed([(1, 1), (2, 3)])
    counts = EpisodicCounts(world.num_agents, world.grid_size)
    first = counts.bonus(world)
    assert first.dtype == torch.float32 and first.shape == (2,)
    assert torch.equal(first, torch.ones(2))
    assert torch.allclose(counts.bonus(world), torch.full((2,), 2 ** -0.5))
    assert torch.allclose(counts.bonus(world), torch.full((2,), 3 ** -0.5))
    move(world, [(1, 2), (2, 3)])  # agent 0 steps to a new cell, agent 1 stays
    assert torch.allclose(counts.bonus(world), torch.tensor([1.0, 4 ** -0.5]))
    move(world, [(1, 1), (2, 3)])  # agent 0 comes back: its fourth visit of (1, 1)
    assert torch.allclose(counts.bonus(world), torch.tensor([4 ** -0.5, 5 ** -0.5]))


def test_agents_count_apart_even_on_the_same_cell() -> None:
    world = placed([(4, 4), (4, 4), (0, 0)])
    counts = EpisodicCounts(world.num_agents, world.grid_size)
    counts.bonus(world)
    counts.bonus(world)
    move(world, [(4, 4), (0, 0), (4, 4)])  # agent 1 walks onto agent 2's cell, agent 2 onto 0's
    # shared cells: each agent has its own count, so no one is charged for another's visits
    assert torch.allclose(counts.bonus(world), torch.tensor([3 ** -0.5, 1.0, 1.0]))
    assert counts.visits().sum() == 9


def test_reset_forgets_only_the_agents_whose_episode_ended() -> None:
    world = placed([(1, 1), (1, 1), (5, 5)])
    counts = EpisodicCounts(world.num_agents, world.grid_size)
    for _ in range(3):
        counts.bonus(world)
    before = counts.visits()
    counts.reset(torch.tensor([False, True, False]))
    assert torch.equal(counts.visits()[[0, 2]], before[[0, 2]])
    assert counts.visits()[1].sum() == 0
    assert torch.allclose(counts.bonus(world), torch.tensor([4 ** -0.5, 1.0, 4 ** -0.5]))
    counts.reset(torch.zeros(3, dtype=torch.bool))  # nobody ended: nothing changes
    assert torch.allclose(counts.bonus(world), torch.tensor([5 ** -0.5, 2 ** -0.5, 5 ** -0.5]))


@pytest.mark.parametrize("done", [torch.zeros(2, dtype=torch.bool), torch.zeros(3, 1, dtype=torch.bool)])
def test_a_wrong_shaped_done_is_refused_by_name(done: torch.Tensor) -> None:
    counts = EpisodicCounts(3, 8)
    with pytest.raises(ValueError, match="done"):
        counts.reset(done)


def test_a_world_with_another_number_of_agents_is_refused() -> None:
    counts = EpisodicCounts(3, 8)
    with pytest.raises(ValueError, match="agents"):
        counts.bonus(placed([(0, 0)]))


def test_low_meters_make_the_same_cell_another_key() -> None:
    world = placed([(3, 3), (3, 3)])
    money = world.meter_names.index("money")
    counts = EpisodicCounts(world.num_agents, world.grid_size, low_meter=0.3)
    assert counts.exact and counts.counts.shape == (2, world.grid_size ** 2 * 2 ** len(world.meter_names))
    counts.bonus(world)
    counts.bonus(world)
    world.meters[1, money] = 0.1  # agent 1 is broke now: (3, 3) while broke is new to it
    keys = counts.keys(world)
    assert keys[1] - keys[0] == 1 << money
    assert torch.allclose(counts.bonus(world), torch.tensor([3 ** -0.5, 1.0]))
    cells_only = EpisodicCounts(world.num_agents, world.grid_size)  # low_meter None: the meters are ignored
    assert cells_only.keys(world).tolist() == [3 * world.grid_size + 3] * 2


def test_a_key_space_too_big_is_hashed_into_max_keys_slots() -> None:
    world = placed([(x, y) for x in range(8) for y in range(8)])  # one agent per cell
    exact = EpisodicCounts(world.num_agents, world.grid_size, low_meter=0.3)
    hashed = EpisodicCounts(world.num_agents, world.grid_size, low_meter=0.3, max_keys=256)
    assert exact.exact and not hashed.exact and hashed.counts.shape == (64, 256)
    keys = hashed.keys(world)
    assert keys.min() >= 0 and keys.max() < 256
    assert len(set(keys.tolist())) > 48  # the multiplicative hash spreads the 64 cells well over 256 slots
    assert torch.equal(hashed.bonus(world), torch.ones(64))
    assert torch.allclose(hashed.bonus(world), torch.full((64,), 2 ** -0.5))
    with pytest.raises(ValueError, match="power of two"):
        EpisodicCounts(2, 8, max_keys=1000)


def test_state_round_trip_restores_the_counts_exactly() -> None:
    world = placed([(1, 1), (2, 2)])
    counts = EpisodicCounts(world.num_agents, world.grid_size)
    counts.reset(torch.tensor([True, False]))  # agent 0 in its second episode: the state carries which one
    counts.bonus(world)
    counts.bonus(world)
    state = counts.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    counts.bonus(world)  # the saved state is a copy: later counting does not leak into it
    restored = EpisodicCounts(world.num_agents, world.grid_size)
    restored.load_state_dict(state)
    assert torch.allclose(restored.bonus(world), torch.full((2,), 3 ** -0.5))
    with pytest.raises(ValueError, match="shape"):
        EpisodicCounts(3, world.grid_size).load_state_dict(state)


def test_a_count_from_an_earlier_episode_never_comes_back() -> None:
    world = placed([(1, 1), (2, 2)])
    counts = EpisodicCounts(world.num_agents, world.grid_size)
    for _ in range(3):
        counts.bonus(world)  # agent 0 counts (1, 1) three times in its first episode
    counts.reset(torch.tensor([True, False]))
    move(world, [(5, 5), (2, 2)])
    counts.bonus(world)
    counts.reset(torch.tensor([True, False]))  # a third episode, (1, 1) unvisited in the second
    move(world, [(1, 1), (2, 2)])
    assert torch.allclose(counts.bonus(world), torch.tensor([1.0, 5 ** -0.5]))
    assert counts.visits()[0].sum() == 1 and counts.visits()[1].sum() == 5


def test_the_state_of_earlier_versions_loads_as_the_current_episodes() -> None:
    world = placed([(1, 1), (2, 2)])
    counts = EpisodicCounts(world.num_agents, world.grid_size)
    counts.reset(torch.tensor([True, True]))
    old = torch.zeros_like(counts.counts)
    old[0, world.grid_size + 1] = 2  # agent 0 had visited (1, 1) twice; it kept only `counts`
    counts.load_state_dict({"counts": old})
    assert torch.equal(counts.visits(), old)
    assert torch.allclose(counts.bonus(world), torch.tensor([3 ** -0.5, 1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda() -> None:
    world = World("L1_full", 4, device="cuda", seed=0)
    counts = EpisodicCounts(4, world.grid_size, low_meter=0.3, max_keys=1 << 10, device="cuda")
    assert not counts.exact
    assert torch.equal(counts.bonus(world).cpu(), torch.ones(4))
    counts.reset(torch.tensor([True, False, False, False], device="cuda"))
    assert torch.allclose(counts.bonus(world).cpu(), torch.tensor([1.0, 2**-0.5, 2**-0.5, 2**-0.5]))
