"""Masked acting never picks a masked action; the recurrent actor's memory is per agent and reset per agent."""

from __future__ import annotations

import torch

from townlet.agents import RecurrentQNetwork
from townlet.learn import RecurrentActor, masked_epsilon_greedy, masked_greedy, masked_random


def random_masks(n: int, g: torch.Generator) -> torch.Tensor:
    mask = torch.rand(n, 5, generator=g) < 0.5
    mask[torch.arange(n), torch.randint(0, 5, (n,), generator=g)] = True  # at least one valid
    return mask


def test_greedy_takes_the_best_valid_action() -> None:
    q = torch.tensor([[5.0, 1.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0, 9.0]])
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert masked_greedy(q, mask).tolist() == [2, 0]


def test_random_is_uniform_over_valid_actions_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 0, 1, 0, 1]], dtype=torch.bool).expand(30_000, 5)
    a = masked_random(mask, g)
    counts = torch.bincount(a, minlength=5).float() / len(a)
    assert counts[1] == 0 and counts[3] == 0
    torch.testing.assert_close(counts[[0, 2, 4]], torch.full((3,), 1 / 3), atol=0.015, rtol=0)
    same = masked_random(mask, torch.Generator().manual_seed(0))
    assert torch.equal(a, same)
    # a row with no valid action falls back to any action rather than failing
    assert 0 <= int(masked_random(torch.zeros(1, 5, dtype=torch.bool), g)) < 5


def test_epsilon_greedy_never_picks_a_masked_action() -> None:
    g = torch.Generator().manual_seed(0)
    for eps in (0.0, 0.3, 1.0):
        for _ in range(20):
            mask = random_masks(512, g)
            q = torch.randn(512, 5, generator=g) * 10
            a = masked_epsilon_greedy(q, mask, eps, g)
            assert bool(mask[torch.arange(512), a].all())
    q = torch.randn(512, 5, generator=g)
    mask = random_masks(512, g)
    assert torch.equal(masked_epsilon_greedy(q, mask, 0.0, g), masked_greedy(q, mask))


def test_per_agent_epsilon() -> None:
    g = torch.Generator().manual_seed(0)
    n = 4000
    q = torch.zeros(n, 5)
    q[:, 1] = 1.0
    mask = torch.ones(n, 5, dtype=torch.bool)
    eps = torch.cat([torch.zeros(n // 2), torch.ones(n // 2)])
    a = masked_epsilon_greedy(q, mask, eps, g)
    assert bool((a[: n // 2] == 1).all())
    share = (a[n // 2 :] == 1).float().mean()
    assert 0.15 < float(share) < 0.25  # uniform: 1 in 5


def test_recurrent_actor_carries_exposes_and_resets_memory() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n, steps = 6, 5
    net = RecurrentQNetwork(4, hidden_size=8, lstm_layers=2, encoder_hidden=(8,), head_hidden=None)
    actor = RecurrentActor(net, n, generator=g)
    h0, c0 = actor.state
    assert h0.shape == (2, n, 8) and not h0.any() and not c0.any()
    obs = torch.randn(n, steps, 4)
    mask = torch.ones(n, 5, dtype=torch.bool)
    befores = []
    qs = []
    for t in range(steps):
        before = actor.state
        step = actor.act(obs[:, t], mask, 0.0)
        assert step.h is before[0] and step.c is before[1]  # the state BEFORE this obs
        befores.append(step.h.clone())
        qs.append(step.q)
    with torch.no_grad():
        q_seq, (h_end, c_end) = net(obs)
    torch.testing.assert_close(actor.c, c_end)
    torch.testing.assert_close(torch.stack(qs, 1), q_seq)  # memory carried, same as one sequence call
    torch.testing.assert_close(actor.h, h_end)
    assert not torch.equal(befores[1], befores[2])

    h_prev, c_prev = actor.state
    done = torch.tensor([True, False, False, True, False, False])
    actor.reset(done)
    assert not actor.h[:, done].any() and not actor.c[:, done].any()
    assert torch.equal(actor.h[:, ~done], h_prev[:, ~done]) and torch.equal(actor.c[:, ~done], c_prev[:, ~done])
    assert h_prev[:, done].any()  # the returned old state was not modified in place
    step = actor.act(obs[:, 0], mask, 1.0)
    assert bool(mask[torch.arange(n), step.actions].all())
