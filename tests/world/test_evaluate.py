"""Survival summaries: the Student-t interval, the cap rate, and the scripted-policy table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from townlet.world import EpisodeStats, load_level, mean_ci95, scripted_policies, scripted_stats, survival_summary
from townlet.world.evaluate import t95


def test_ci_of_a_known_sample_is_the_t_interval_by_hand() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # mean 2, sample sd 1, t(0.975, 2 df) = 4.303
    assert mean == 2.0
    assert half == pytest.approx(4.303 / math.sqrt(3), rel=1e-6)
    sample = [float(v) for v in range(1, 26)]  # 1..25: mean 13, sample variance 25 * 26 / 12 = 54.1667
    mean, half = mean_ci95(sample)
    assert mean == 13.0
    assert half == pytest.approx(2.0639 * math.sqrt(54.1667) / 5, rel=1e-4)  # t(0.975, 24 df) = 2.0639


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (4, 2.776), (10, 2.228), (11, 2.201), (15, 2.131),
                                              (20, 2.086), (30, 2.042), (60, 2.000), (120, 1.980), (10**6, 1.960)])
def test_t_quantiles_match_the_tables_and_tend_to_the_normal(df: int, quantile: float) -> None:
    assert t95(df) == pytest.approx(quantile, abs=6e-4)
    with pytest.raises(ValueError, match="degree of freedom"):
        t95(0)


def test_summary_of_known_lengths() -> None:
    lengths = [100.0, 200.0, 300.0, 500.0, 500.0]
    s = survival_summary(np.array(lengths), cap=500)
    mean, half = mean_ci95(lengths)
    assert s["episodes"] == 5
    assert s["survival_mean"] == 320.0 and s["survival_median"] == 300.0
    assert s["survival_p10"] == pytest.approx(140.0)  # linear interpolation between the two shortest
    assert s["survival_ci95"] == pytest.approx([mean - half, mean + half])
    assert s["survival_ci95"][1] - s["survival_ci95"][0] == pytest.approx(2 * 2.776 * np.std(lengths, ddof=1) / 5**0.5)


def test_cap_rate_counts_the_episodes_at_the_cap() -> None:
    assert survival_summary([500.0, 500.0, 120.0, 499.0], cap=500)["cap_rate"] == 0.5
    assert survival_summary(torch.tensor([500.0, 500.0, 500.0]), cap=500)["cap_rate"] == 1.0
    assert survival_summary([10.0, 20.0], cap=500)["cap_rate"] == 0.0
    assert survival_summary([10.0, 20.0])["cap_rate"] is None  # no cap known


def test_one_episode_has_a_nan_interval_and_none_has_nan_statistics() -> None:
    mean, half = mean_ci95([42.0])
    assert mean == 42.0 and math.isnan(half)
    one = survival_summary([42.0], cap=500)
    assert one["episodes"] == 1 and one["survival_mean"] == one["survival_median"] == one["survival_p10"] == 42.0
    assert all(math.isnan(v) for v in one["survival_ci95"])
    none = survival_summary([], cap=500)
    assert none["episodes"] == 0
    assert math.isnan(none["survival_mean"]) and math.isnan(none["survival_median"])
    assert math.isnan(none["cap_rate"])


def test_episode_stats_summary_builds_on_the_survival_summary() -> None:
    stats = EpisodeStats(
        lengths=torch.tensor([50.0, 500.0, 80.0, 500.0]), returns=torch.tensor([1.0, 2.0, 3.0, 4.0]),
        causes=torch.tensor([1, 3, 2, 3]), cause_names=("running", "energy", "health", "truncated"),
        invalid_rate=0.25, max_steps=500, uses_per_episode={"Bed": 1.5},
    )
    s = stats.summary()
    expected = survival_summary([50.0, 500.0, 80.0, 500.0], cap=500)
    assert {k: s[k] for k in expected} == expected
    assert s["cap_rate"] == 0.5 and s["survival_median"] == 290.0
    assert s["return_mean"] == 2.5
    assert s["causes"] == {"energy": 1, "health": 1, "truncated": 2}
    assert s["invalid_rate"] == 0.25 and s["uses_per_episode"] == {"Bed": 1.5}


def test_scripted_stats_summarises_every_scripted_policy_reproducibly() -> None:
    level = load_level("L0_minimal")
    stats = scripted_stats(level, episodes=4, agents=2, seed=3)
    assert list(stats) == list(scripted_policies(level))
    for summary in stats.values():
        assert summary["episodes"] == 4
        assert 0 < summary["survival_mean"] <= level.max_steps
    assert scripted_stats(level, episodes=4, agents=2, seed=3) == stats
