"""Intrinsic-weight annealing: decays only on a full window of stable AND long episodes, never below floor."""

from __future__ import annotations

import io

import pytest
import torch

from townlet.explore import IntrinsicAnnealing


def make(**kwargs) -> IntrinsicAnnealing:
    args = {"decay": 0.5, "window": 4, "variance_threshold": 100.0, "min_survival_fraction": 0.5, "max_steps": 500}
    return IntrinsicAnnealing(**{**args, **kwargs})


def test_stable_long_episodes_decay_once_per_observe_call() -> None:
    a = make()
    assert a.weight == 1.0
    assert a.observe([400, 401, 399]) == 1.0  # window not full yet
    assert a.observe([400]) == 0.5  # full: variance 0.5 < 100, mean 400 > 250
    assert a.observe(torch.tensor([400, 402, 398])) == 0.25  # one decay per call, however many episodes
    assert a.decays == 2
    assert a.observe([]) == 0.25  # no finished episodes: no decay


def test_consistently_dying_early_never_anneals() -> None:
    a = make()
    for _ in range(20):
        a.observe([50, 51, 49, 50])  # low variance, low mean
    assert a.variance < a.variance_threshold and a.mean < 250
    assert a.weight == 1.0 and a.decays == 0


def test_unstable_long_episodes_do_not_anneal() -> None:
    a = make()
    for _ in range(20):
        a.observe([300, 500, 320, 480])  # mean 400 > 250 but variance 8200 > 100
    assert a.weight == 1.0
    a.observe([400, 400, 400, 400])  # the window is all stable now
    assert a.weight == 0.5


def test_the_window_slides_over_the_last_episodes() -> None:
    a = make(window=3)
    a.observe([10, 10])
    assert not a.full and a.weight == 1.0
    a.observe([400])  # full, but [10, 10, 400] is neither stable nor long
    assert a.full and a.weight == 1.0
    a.observe([400, 400])  # the two short ones slid out
    assert a.mean == 400 and a.weight == 0.5


def test_thresholds_are_strict_and_use_max_steps() -> None:
    a = make(max_steps=100, min_survival_fraction=0.5, variance_threshold=1.0)
    a.observe([50, 50, 50, 50])  # mean == 50: not > 50
    assert a.weight == 1.0
    a.observe([51, 51, 51, 51])
    assert a.weight == 0.5
    b = make(variance_threshold=1.0)
    b.observe([400, 402, 400, 402])  # population variance exactly 1: not < 1
    assert b.variance == 1.0 and b.weight == 1.0


def test_weight_never_falls_below_floor() -> None:
    a = make(initial=2.0, decay=0.1, floor=0.05)
    weights = [a.observe([450] * 4) for _ in range(5)]
    assert weights == pytest.approx([0.2, 0.05, 0.05, 0.05, 0.05])
    assert min(weights) == 0.05


def test_state_dict_round_trip_continues_identically() -> None:
    a = make()
    a.observe([400, 401, 402, 400, 399])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make()
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.weight == a.weight and b.decays == a.decays and b.mean == a.mean
    for lengths in ([400], [10], [400, 400, 400, 400], [400]):
        assert a.observe(lengths) == b.observe(lengths)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"decay": 0.0}, "decay"),
        ({"decay": 1.5}, "decay"),
        ({"window": 1}, "window"),
        ({"max_steps": 0}, "max_steps"),
        ({"floor": 2.0}, "floor"),
        ({"floor": -0.1}, "floor"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IntrinsicAnnealing(**kwargs)


def test_defaults() -> None:
    a = IntrinsicAnnealing()
    assert (a.weight, a.decay, a.window, a.variance_threshold) == (1.0, 0.99, 100, 100.0)
    a.observe([300] * 99)
    assert a.weight == 1.0
    a.observe([300])
    assert a.weight == pytest.approx(0.99)


def test_end_interval_observes_the_episodes_and_reports_the_weight_and_the_mean_bonus() -> None:
    annealing = IntrinsicAnnealing(initial=0.5, decay=0.5, window=2, variance_threshold=10.0, max_steps=100)
    row = annealing.end_interval([90], torch.tensor(3.0), 4)
    assert row == {"intrinsic_weight": 0.5, "intrinsic_reward": 0.75}  # window not full yet: no decay
    row = annealing.end_interval([91, 92], torch.tensor(0.0), 0)  # no steps: no division by zero
    assert row == {"intrinsic_weight": 0.25, "intrinsic_reward": 0.0} and annealing.decays == 1
