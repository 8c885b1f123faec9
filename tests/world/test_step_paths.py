"""The step's input types and its alternative code paths: each path must give the same trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from townlet.world import World


def trajectory(world: World, steps: int, convert=lambda a: a, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = [world.observe()]
    for _ in range(steps):
        actions = torch.randint(0, 5, (world.num_agents,), generator=gen)
        obs, reward, terminated, truncated, info = world.step(convert(actions))
        out += [obs, reward, terminated, truncated, info["invalid"], info["cause"], world.meters, world.positions]
    return out


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a.to(torch.int8),
        lambda a: a.to(torch.int16),
        lambda a: a.to(torch.int32),
        lambda a: a.to(torch.uint8),
        lambda a: a.numpy(),
        lambda a: a.numpy().astype(np.int32),
        lambda a: a.numpy().astype(np.uint8),
    ],
    ids=["int8", "int16", "int32", "uint8", "numpy-int64", "numpy-int32", "numpy-uint8"],
)
def test_any_integer_actions_play_as_int64(convert):
    reference = trajectory(World("L1_full", 6, seed=2), 40)
    assert same(trajectory(World("L1_full", 6, seed=2), 40, convert), reference)
    unchecked = World("L1_full", 6, seed=2, validate_actions=False)
    assert same(trajectory(unchecked, 40, convert), reference)


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        (torch.zeros(2, dtype=torch.bool), "int64 or any int dtype"),
        (torch.zeros(2, dtype=torch.float64), "int64 or any int dtype"),
        (np.zeros(2, dtype=np.float32), "int64 or any int dtype"),
        (np.zeros(2, dtype=bool), "int64 or any int dtype"),
        (np.array([0, 5]), r"\[0, 4\]"),
        (np.array([-1, 0], dtype=np.int8), r"\[0, 4\]"),
        (torch.tensor([0, 200], dtype=torch.uint8), r"\[0, 4\]"),
        (np.zeros(3, dtype=np.int64), "shape"),
        ((0, 1), "torch.Tensor"),
    ],
)
def test_bad_actions_of_any_type_raise_and_leave_state_unchanged(actions, message):
    world = World("L1_full", 2, seed=0)
    before = world.state_dict()
    with pytest.raises(ValueError, match=message):
        world.step(actions)
    for name, value in world.state_dict().items():
        assert value == before[name] if name == "seed" else torch.equal(value, before[name])


def test_single_agent_range_check():
    world = World("L0_minimal", 1)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        world.step(torch.tensor([5]))
    world.step(torch.tensor([4], dtype=torch.int16))


@pytest.mark.parametrize("level", ["L1_full", "L2_partial", "L2_partial_fixed", "L2_memory", "L3_temporal"])
def test_dense_resets_and_concatenated_observations_equal_the_cpu_paths(level):
    """Off the CPU, resets run for every agent under a mask; small batches concatenate their observation
    and large ones write it field by field. Each path gives exactly the same trajectories."""
    n = 40
    default = World(level, n, seed=5)
    default.set_random_starts(0.3)
    default._CONCAT_BELOW = 0  # every observation written field by field
    forced = World(level, n, seed=5)
    forced.set_random_starts(0.3)
    forced._host_reads_free = False  # resets as on a device: for all agents, kept by a mask
    forced._CONCAT_BELOW = 1 << 30  # every observation concatenated from its fields
    assert same(trajectory(default, 150, seed=1), trajectory(forced, 150, seed=1))


def test_a_held_observation_is_never_overwritten():
    """Large observations reuse the last one's memory only when nothing refers to it any more."""
    world = World("L2_partial", 100, seed=0)
    assert 100 * world.obs_dim > World._CONCAT_BELOW
    twin = World("L2_partial", 100, seed=0)
    gen = torch.Generator().manual_seed(0)
    held, copies, views = [], [], []
    for step in range(30):
        actions = torch.randint(0, 5, (100,), generator=gen)
        obs, *_ = world.step(actions)
        expected = twin.step(actions)[0]
        assert torch.equal(obs, expected)
        if step % 3 == 0:
            held.append(obs)
            copies.append(obs.clone())
        elif step % 3 == 1:
            views.append((obs[5], obs[5].clone()))
            array = obs.numpy()
            views.append((torch.from_numpy(array[7]), obs[7].clone()))
        del obs
    assert all(torch.equal(a, b) for a, b in zip(held, copies, strict=True))
    assert all(torch.equal(v, c) for v, c in views)


@pytest.mark.parametrize("level", ["L2_partial", "L2_partial_fixed", "L2_memory"])
def test_windows_indexed_cell_by_cell_equal_the_table_of_windows(level, monkeypatch):
    """A level whose table of every layout's windows would be too large indexes each window cell by cell;
    both give the same observations."""
    table = World(level, 40, seed=3)
    assert table._window_of_cell is not None
    monkeypatch.setattr(World, "_WINDOW_TABLE_BYTES", 0)
    cells = World(level, 40, seed=3)
    assert cells._window_of_cell is None
    table.set_random_starts(0.3)
    cells.set_random_starts(0.3)
    assert same(trajectory(table, 150, seed=2), trajectory(cells, 150, seed=2))
