"""The ε schedule: endpoints, shape, clamping, validation."""

from __future__ import annotations

import itertools
import math

import pytest

from townlet.explore import EpsilonSchedule


def test_linear_decay() -> None:
    s = EpsilonSchedule(start=1.0, end=0.1, decay_steps=100)
    assert s(0) == 1.0
    assert s.value(50) == pytest.approx(0.55)
    assert s(100) == pytest.approx(0.1)
    assert s(10_000) == pytest.approx(0.1)
    values = [s(t) for t in range(0, 120, 5)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_exponential_decay_is_geometric() -> None:
    s = EpsilonSchedule(start=1.0, end=0.01, decay_steps=100, kind="exponential")
    assert s(0) == 1.0
    assert s(50) == pytest.approx(0.1)
    assert s(100) == pytest.approx(0.01)
    assert s(500) == pytest.approx(0.01)
    assert math.log(s(25)) == pytest.approx(0.25 * math.log(0.01))


def test_warmup_holds_start() -> None:
    s = EpsilonSchedule(start=0.9, end=0.1, decay_steps=10, warmup_steps=20)
    assert s(0) == s(20) == 0.9
    assert s(25) == pytest.approx(0.5)
    assert s(30) == pytest.approx(0.1)


def test_zero_decay_steps_jumps_to_end() -> None:
    assert EpsilonSchedule(start=1.0, end=0.2, decay_steps=0)(1) == 0.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": 1.5},
        {"end": -0.1},
        {"decay_steps": -1},
        {"warmup_steps": -1},
        {"kind": "cosine"},
        {"kind": "exponential", "end": 0.0},
    ],
)
def test_invalid_configs(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EpsilonSchedule(**kwargs)  # type: ignore[arg-type]


def test_agent_epsilons_spread_from_epsilon_down_geometrically() -> None:
    import torch

    from townlet.explore import agent_epsilons

    eps = agent_epsilons(0.4, 8, 7.0)
    assert eps.shape == (8,) and eps.dtype == torch.float32
    assert eps[0].item() == pytest.approx(0.4)
    assert eps[-1].item() == pytest.approx(0.4**8)
    assert torch.all(eps[1:] < eps[:-1])  # strictly decreasing with the agent's rank
    # log ε is linear in the rank: equal ratios between neighbours
    ratios = eps[1:] / eps[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.4 ** (7 / 7)))
    assert torch.equal(agent_epsilons(0.3, 5, 0.0), torch.full((5,), 0.3))
    assert torch.equal(agent_epsilons(1.0, 4, 7.0), torch.ones(4))  # before the decay: everyone explores
    assert agent_epsilons(0.5, 1, 7.0).item() == pytest.approx(0.5)  # one agent: no division by zero
    with pytest.raises(ValueError, match="spread"):
        agent_epsilons(0.5, 4, -1.0)
