"""εz-greedy: a random valid action repeated for exactly its sampled duration, durations distributed as a
truncated zeta n^-mu, never an invalid action, repeats ended by a new episode or by their action becoming
invalid, exactly greedy at ε = 0, and a checkpoint that resumes the repeats in progress."""

from __future__ import annotations

import pytest
import torch

from townlet.explore.ez_greedy import EzGreedy, zeta_probs
from townlet.learn.targets import masked_argmax

A = 5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def no(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.bool)


def q_preferring(actions: torch.Tensor) -> torch.Tensor:
    """Q-values whose argmax is `actions` [N]."""
    return torch.nn.functional.one_hot(actions, A).float()


def test_a_repeat_lasts_exactly_its_sampled_duration_then_the_agent_is_greedy() -> None:
    n = 64
    ez = EzGreedy(n, mu=2.0, max_duration=10, generator=gen())
    mask = torch.ones(n, A, dtype=torch.bool)
    first = ez.select(torch.zeros(n, A), mask, 1.0, torch.ones(n, dtype=torch.bool))
    durations = ez.duration.clone()
    assert durations.min() >= 1 and durations.max() <= 10 and (durations >= 3).sum() >= 5
    assert torch.equal(ez.remaining, durations - 1)
    other = (first + 1) % A  # greedy never coincides with the repeated action, so the repeat's end is visible
    for t in range(1, 12):
        actions = ez.select(q_preferring(other), mask, 0.0, no(n))
        in_repeat = t < durations
        assert torch.equal(actions[in_repeat], first[in_repeat]), t
        assert torch.equal(actions[~in_repeat], other[~in_repeat]), t
        assert torch.equal(ez.remaining, (durations - 1 - t).clamp(min=0)), t


@pytest.mark.parametrize(("mu", "max_duration"), [(2.0, 10), (1.5, 4)])
def test_durations_follow_the_truncated_zeta_distribution(mu: float, max_duration: int) -> None:
    n = 100_000
    ez = EzGreedy(n, mu=mu, max_duration=max_duration, generator=gen(1))
    ez.select(torch.zeros(n, A), torch.ones(n, A, dtype=torch.bool), 1.0, no(n))  # every agent starts a repeat
    freq = torch.bincount(ez.duration, minlength=max_duration + 1)[1:].double() / n
    expected = torch.arange(1, max_duration + 1, dtype=torch.float64).pow(-mu)
    expected /= expected.sum()
    assert torch.allclose(zeta_probs(mu, max_duration), expected)
    assert ez.duration.min() >= 1 and ez.duration.max() <= max_duration
    # binomial standard error is at most 0.0016 here: 4 of them
    assert (freq - expected).abs().max() < 0.0065, (freq, expected)
    sampled = torch.bincount(ez.sample_durations(n), minlength=max_duration + 1)[1:].double() / n
    assert (sampled - expected).abs().max() < 0.0065


def test_never_an_invalid_action_whatever_the_masks_and_epsilons() -> None:
    n, g = 256, gen(2)
    ez = EzGreedy(n, mu=1.5, max_duration=10, generator=gen(3))
    epsilon = torch.rand(n, generator=g)
    repeated = 0
    previous = None
    for _ in range(200):
        mask = torch.rand(n, A, generator=g) < 0.8  # a given action stays valid for ~4 steps in a row
        mask[torch.arange(n), torch.randint(A, (n,), generator=g)] = True  # at least one valid action
        first = torch.rand(n, generator=g) < 0.05
        actions = ez.select(torch.randn(n, A, generator=g), mask, epsilon, first)
        assert mask.gather(1, actions.unsqueeze(1)).all()
        if previous is not None:
            repeated += int((actions == previous).sum())
        previous = actions
    assert repeated > 0


def test_a_repeat_whose_action_becomes_invalid_ends_and_the_agent_acts_greedily() -> None:
    ez = EzGreedy(2, generator=gen())
    ez.load_state_dict({"action": torch.tensor([2, 2]), "remaining": torch.tensor([5, 5]),
                        "duration": torch.tensor([6, 6])})
    mask = torch.ones(2, A, dtype=torch.bool)
    mask[0, 2] = False  # agent 0's repeated action is blocked (a wall)
    greedy = torch.tensor([4, 4])
    assert ez.select(q_preferring(greedy), mask, 0.0, no(2)).tolist() == [4, 2]
    assert ez.remaining.tolist() == [0, 4]
    everything = torch.ones(2, A, dtype=torch.bool)  # the action is valid again, but the repeat is over
    assert ez.select(q_preferring(greedy), everything, 0.0, no(2)).tolist() == [4, 2]


def test_a_new_episode_ends_the_repeat() -> None:
    ez = EzGreedy(3, generator=gen())
    ez.load_state_dict({"action": torch.tensor([1, 1, 1]), "remaining": torch.tensor([3, 3, 0]),
                        "duration": torch.tensor([4, 4, 1])})
    greedy = torch.tensor([0, 0, 0])
    first = torch.tensor([True, False, False])
    actions = ez.select(q_preferring(greedy), torch.ones(3, A, dtype=torch.bool), 0.0, first)
    assert actions.tolist() == [0, 1, 0]
    assert ez.remaining.tolist() == [0, 2, 0]


@pytest.mark.parametrize("epsilon", [0.0, torch.zeros(32)])
def test_epsilon_zero_is_exactly_greedy(epsilon: float | torch.Tensor) -> None:
    n, g = 32, gen(4)
    ez = EzGreedy(n, generator=gen(5))
    for _ in range(50):
        q = torch.randn(n, A, generator=g)
        mask = torch.rand(n, A, generator=g) < 0.5
        mask[:, 0] |= ~mask.any(dim=1)
        assert torch.equal(ez.select(q, mask, epsilon, no(n)), masked_argmax(q, mask))
    assert ez.duration.eq(0).all()


def test_per_agent_epsilon() -> None:
    ez = EzGreedy(2, max_duration=1, generator=gen())  # max_duration 1: plain ε-greedy
    starts = 0
    for _ in range(50):
        actions = ez.select(q_preferring(torch.tensor([0, 0])), torch.ones(2, A, dtype=torch.bool),
                            torch.tensor([1.0, 0.0]), no(2))
        assert actions[1] == 0 and ez.remaining.eq(0).all()
        starts += int(actions[0] != 0)
    assert starts > 25 and ez.duration.tolist() == [1, 0]


def test_state_round_trip_resumes_the_repeats_in_progress() -> None:
    n, g = 16, gen(6)
    ez = EzGreedy(n, generator=gen(7))
    mask = torch.ones(n, A, dtype=torch.bool)
    for _ in range(3):
        ez.select(torch.randn(n, A, generator=g), mask, 0.5, no(n))
    state = ez.state_dict()
    assert set(state) == {"action", "remaining", "duration"}
    generator_state = ez.generator.get_state()
    restored = EzGreedy(n, generator=torch.Generator().manual_seed(99))
    restored.load_state_dict(state)
    restored.generator.set_state(generator_state)
    for _ in range(10):
        q = torch.randn(n, A, generator=g)
        assert torch.equal(ez.select(q, mask, 0.5, no(n)), restored.select(q, mask, 0.5, no(n)))
    assert torch.equal(ez.remaining, restored.remaining)
    with pytest.raises(ValueError, match="remaining"):
        EzGreedy(n).load_state_dict({**state, "remaining": torch.zeros(n + 1, dtype=torch.long)})


def test_wrong_shapes_are_refused_by_name() -> None:
    ez = EzGreedy(4)
    q, mask = torch.zeros(4, A), torch.ones(4, A, dtype=torch.bool)
    with pytest.raises(ValueError, match="first"):
        ez.select(q, mask, 0.1, no(3))
    with pytest.raises(ValueError, match="mask"):
        ez.select(q, mask[:, :3], 0.1, no(4))
    with pytest.raises(ValueError, match="q must"):
        ez.select(torch.zeros(3, A), mask, 0.1, no(4))
    with pytest.raises(ValueError, match="epsilon"):
        ez.select(q, mask, torch.zeros(3), no(4))
    with pytest.raises(ValueError, match="max_duration"):
        EzGreedy(4, max_duration=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_a_device_generator() -> None:
    n, dev = 1024, torch.device("cuda")
    ez = EzGreedy(n, device=dev, generator=torch.Generator(dev).manual_seed(0))
    mask = torch.rand(n, A, device=dev) < 0.7
    mask[:, 0] = True
    for _ in range(20):
        actions = ez.select(torch.randn(n, A, device=dev), mask, torch.full((n,), 0.3, device=dev),
                            torch.zeros(n, dtype=torch.bool, device=dev))
        assert actions.device.type == "cuda" and mask.gather(1, actions.unsqueeze(1)).all()
