"""Observation sizes, layouts and contents."""

from __future__ import annotations

import pytest
import torch

from tests.world.conftest import make_world, place
from townlet.world import LEVEL_NAMES, LevelConfig, ObsLayout, World, load_level


@pytest.mark.parametrize(
    ("level", "dim"),
    [
        ("L0_minimal", 21),
        ("L1_full", 87),
        ("L2_partial", 400),
        ("L2_partial_fixed", 50),
        ("L2_memory", 80),
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


def crowded_level() -> LevelConfig:
    """L2_partial on a 10x10 grid with every affordance six times over (84) and a 21x21 window: the window's
    one-hot has more columns than int16 holds."""
    base = load_level("L2_partial").model_dump()
    affordances = [
        {**a, "name": f"{a['name']}{copy}", "position": [(6 * i + copy) % 10, (6 * i + copy) // 10]}
        for i, a in enumerate(base["affordances"])
        for copy in range(6)
    ]
    return LevelConfig.model_validate(
        {**base, "name": "crowded", "grid_size": 10, "layout_pool": 8, "affordances": affordances,
         "observation": {"view": "partial", "vision_range": 10, "window_encoding": "types"}}
    )


@pytest.mark.parametrize(
    ("level", "n", "table"),
    [("L2_partial", 16, True), ("L2_partial", 120, True), ("L2_partial", 120, False), ("L2_memory", 300, True),
     ("crowded", 30, True), ("crowded", 30, False)],
    ids=["small-batch", "large-batch", "no-table", "L2_memory", "crowded", "crowded-no-table"],
)
def test_types_window_matches_the_layout_for_random_layouts(level, n, table, monkeypatch):
    """Every cell's channel is hot exactly where the layout says, on small batches (compared) and large ones
    (written as their 1s), with and without the table of windows."""
    if not table:
        monkeypatch.setattr(World, "_WINDOW_TABLE_BYTES", 0)
    world = World(crowded_level() if level == "crowded" else level, n, seed=5)
    assert (world._window_of_cell is not None) == table
    world.step(torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(1)))  # agents spread out
    obs = world.observe()
    lay, g = world.obs_layout, world.grid_size
    c, w = lay.window_channels, lay.window_side
    assert c == world.num_affordances + 1
    r = w // 2
    padded = torch.full((n, g + 2 * r, g + 2 * r), c - 1)  # the outside channel
    padded[:, r : r + g, r : r + g] = world.affordance_grid()  # id, or -1 where empty
    hot = torch.nn.functional.one_hot(padded + 1, c + 1)[..., 1:].permute(0, 3, 1, 2).float()  # [N, C, G+2r, G+2r]
    for i in range(n):
        x, y = world.positions[i].tolist()
        window = obs[i, lay["window"].slice].view(c, w, w)
        assert torch.equal(window, hot[i, :, y : y + w, x : x + w]), i
    assert obs[:, lay["position"].slice].mul(g - 1).round().long().tolist() == world.positions.tolist()


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


def _temporal_full_view() -> World:
    level = load_level("L3_temporal_fixed")
    return World(level.model_copy(update={"observation": level.observation.model_copy(update={"view": "full"})}), 1)


@pytest.mark.parametrize("view", ["full", "partial"])
def test_decoding_gives_back_the_placed_state(view):
    world = make_world("L1_full" if view == "full" else "L2_partial_fixed")
    meters = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    place(world, (3, 2), meters)
    state = world.obs_layout.decode(world.observe()[0])
    assert (state["x"], state["y"], state["here"]) == (3, 2, -1)  # nothing at (3, 2)
    assert state["meters"] == pytest.approx(meters)
    assert state["hour"] is None and state["progress"] == 0.0
    place(world, (7, 7))
    state = world.obs_layout.decode(world.observe()[0].numpy())  # an array row decodes the same
    assert (state["x"], state["y"]) == (7, 7)
    place(world, (2, 2))
    assert world.obs_layout.decode(world.observe()[0])["here"] == world.affordance_names.index("Shower")
    with pytest.raises(ValueError, match="observation row"):
        world.obs_layout.decode(world.observe()[0, :-1])


@pytest.mark.parametrize("view", ["full", "partial"])
def test_decoding_gives_back_the_hour_and_progress_on_a_temporal_level(view):
    world = _temporal_full_view() if view == "full" else make_world("L3_temporal_fixed")
    assert world.obs_layout.is_partial == (view == "partial")
    for hour in range(world.config.temporal.day_length):
        place(world, (5, 4), hour=hour)
        assert world.obs_layout.decode(world.observe()[0])["hour"] == hour
    place(world, (2, 2), hour=10)  # the Shower: a three-tick use
    world.progress = torch.tensor([2])
    state = world.obs_layout.decode(world.observe()[0])
    assert (state["x"], state["y"], state["hour"]) == (2, 2, 10)
    assert state["here"] == world.affordance_names.index("Shower")
    assert state["progress"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("level", LEVEL_NAMES)
def test_decoding_every_agent_gives_its_world_state(level):
    world = World(level, 32, seed=7)
    moves = torch.Generator().manual_seed(1)
    for _ in range(5):  # a few random moves away from the spawn cells
        world.step(torch.randint(0, 4, (32,), generator=moves))
    obs = world.observe()
    here = world.affordance_here().tolist()
    for i in range(32):
        state = world.obs_layout.decode(obs[i])
        assert [state["x"], state["y"]] == world.positions[i].tolist()
        assert state["meters"] == pytest.approx(world.meters[i].tolist(), abs=1e-6)
        assert state["here"] == here[i]
        assert state["hour"] == (world.hour[i].item() if world.config.is_temporal else None)
