"""Target-network updates: hard copies and Polyak averaging, parameters and buffers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from townlet.learn import TargetSync, hard_update, polyak_update


def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # moves the BatchNorm running stats (buffers)
    return online, target


def test_hard_update_copies_parameters_and_buffers() -> None:
    online, target = pair()
    hard_update(target, online)
    for a, b in zip(target.state_dict().values(), online.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_polyak_update_interpolates_parameters_and_copies_buffers() -> None:
    online, target = pair()
    old = [p.clone() for p in target.parameters()]
    polyak_update(target, online, 0.25)
    for o, t, p in zip(old, target.parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * o + 0.25 * p.detach())
    for a, b in zip(target.buffers(), online.buffers(), strict=True):
        assert torch.equal(a, b)


def test_sync_period() -> None:
    online, target = pair()
    sync = TargetSync(every=3)
    assert [sync(target, online, k) for k in range(1, 7)] == [False, False, True, False, False, True]
    assert torch.equal(target[0].weight, online[0].weight)


@pytest.mark.parametrize(("every", "tau"), [(0, None), (1, 0.0), (1, 1.5)])
def test_invalid_sync(every: int, tau: float | None) -> None:
    with pytest.raises(ValueError):
        TargetSync(every, tau)
