"""CompactObs: runs of same-kind fields, int8 for discrete ones, exact gathers of any index shape."""

from __future__ import annotations

import torch

from townlet.replay.compact import CompactObs, _runs, action_dtype
from townlet.world.config import load_level
from townlet.world.observation import ObsLayout


def test_adjacent_fields_of_a_kind_merge_into_runs(l2_layout) -> None:
    dim, runs, disc, floats = _runs(l2_layout)
    # window (discrete) | position + meters (float) | here (discrete)
    assert (dim, disc, floats) == (400, 375 + 15, 10)
    assert runs == [(0, 375, True, 0), (375, 385, False, 0), (385, 400, True, 375)]
    assert _runs(7) == (7, [(0, 7, False, 0)], 0, 7)


def test_gather_round_trips_exactly_for_any_index_shape() -> None:
    layout = ObsLayout.for_level(load_level("L1_full"))
    store = CompactObs(4, 3, layout, torch.device("cpu"))
    assert store.discrete.dtype == torch.int8 and store.discrete.shape == (4, 3, 64 + 15)
    g = torch.Generator().manual_seed(0)
    written = torch.empty(4, 3, layout.dim)
    for row in range(4):
        obs = torch.randn(3, layout.dim, generator=g) * 1e3
        for f in layout.fields:
            if f.discrete:
                obs[:, f.slice] = torch.randint(-1, 2, (3, f.size), generator=g).float()
        store.write(row, obs)
        written[row] = obs
    flat = torch.tensor([[11, 0, 5], [5, 7, 3]])
    got = store.gather(flat)
    assert got.shape == (2, 3, layout.dim) and got.dtype == torch.float32
    assert torch.equal(got, written.view(12, -1)[flat])


def test_action_dtype_is_the_smallest_exact_one() -> None:
    assert action_dtype(5) == torch.uint8 and action_dtype(256) == torch.uint8
    assert action_dtype(257) == torch.int16 and action_dtype(40000) == torch.int32
