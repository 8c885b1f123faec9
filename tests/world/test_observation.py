"""Observation sizes, layouts and contents."""

from __future__ import annotations

import pytest
import torch

from tests.world.conftest import make_world, place
from townlet.world import LEVEL_NAMES, ObsLayout, World, load_level


@pytest.mark.parametrize(
    ("level", "dim"),
    [
        ("L0_minimal", 21),
        ("L1_full", 87),
        ("L2_partial", 400),
        ("L2_partial_fixed", 50),
        ("L2_memory", 160),
        ("L3_temporal", 403),
    ],
)
def test_observation_sizes(level, dim):
    world = make_world(level, n=3)
    assert world.obs_dim == dim
    assert world.observe().shape == (3, dim)
    assert world.observe().dtype == torch.float32


@pytest.mark.parametrize("level", LEVEL_NAMES)
def test_layout_fields_tile_the_vector(level):
    layout = ObsLayout.for_level(load_level(level))
    stops = [f.start for f in layout.fields[1:]]
    assert stops == [f.stop for f in layout.fields[:-1]]
    assert layout.fields[0].start == 0
    assert "total" in layout.describe()
    with pytest.raises(KeyError, match="fields"):
        layout["nope"]


def test_full_view_contents():
    world = make_world("L1_full")
    place(world, (3, 2), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    obs = world.observe()[0]
    lay = world.obs_layout
    cell = obs[lay["cell"].slice]
    assert cell.sum() == 1 and cell[2 * 8 + 3] == 1
    assert obs[lay["meters"].slice].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    here = obs[lay["here"].slice]
    assert here.sum() == 1 and here[0] == 1  # no affordance at (3, 2)
    place(world, (1, 1))
    here = world.observe()[0, lay["here"].slice]
    assert here[1 + world.affordance_names.index("Bed")] == 1


def test_presence_window_at_the_corner():
    world = make_world("L2_partial_fixed")
    place(world, (0, 0))
    obs = world.observe()[0]
    lay = world.obs_layout
    window = obs[lay["window"].slice].view(5, 5)  # rows y - 2 .. y + 2, columns x - 2 .. x + 2
    expected = torch.zeros(5, 5)
    expected[:2, :] = -1  # above the grid
    expected[:, :2] = -1  # left of the grid
    expected[3, 3] = 1  # Bed (1, 1)
    expected[3, 4] = 1  # LuxuryBed (2, 1)
    expected[4, 4] = 1  # Shower (2, 2)
    assert torch.equal(window, expected)
    assert obs[lay["position"].slice].tolist() == [0.0, 0.0]
    place(world, (7, 7))
    assert world.observe()[0, lay["position"].slice].tolist() == [1.0, 1.0]


def test_types_window_matches_the_layout_for_random_layouts():
    world = World("L2_partial", 16, seed=5)
    obs = world.observe()
    lay = world.obs_layout
    c, w = lay.window_channels, lay.window_side
    assert (c, w) == (15, 5)
    grid = world.affordance_grid()
    for i in range(16):
        window = obs[i, lay["window"].slice].view(c, w, w)
        x, y = world.positions[i].tolist()
        for row in range(w):
            for col in range(w):
                gx, gy = x + col - 2, y + row - 2
                hot = torch.zeros(c)
                if not (0 <= gx < 8 and 0 <= gy < 8):
                    hot[c - 1] = 1  # outside channel
                elif grid[i, gy, gx] >= 0:
                    hot[grid[i, gy, gx]] = 1
                assert torch.equal(window[:, row, col], hot), (i, row, col)


def test_random_layouts_are_distinct_cells_and_positions_agree():
    world = World("L2_partial", 64, seed=1)
    pos = world.affordance_positions
    assert pos.shape == (64, 14, 2)
    cells = pos[..., 1] * 8 + pos[..., 0]
    assert all(len(set(row.tolist())) == 14 for row in cells)
    grid = world.affordance_grid()
    for i in range(4):
        for a in range(14):
            x, y = pos[i, a].tolist()
            assert grid[i, y, x] == a
    assert len({tuple(row.tolist()) for row in cells}) > 50  # layouts differ between agents
