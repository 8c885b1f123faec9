"""The DQN learner end to end: the chain, value-iteration Q-values, and the update's bookkeeping."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from tests.learn.synthetic_envs import ChainEnv
from townlet.agents import QNetwork
from townlet.explore import EpsilonSchedule
from townlet.learn import DQNConfig, DQNLearner, masked_epsilon_greedy, masked_greedy
from townlet.replay import TransitionReplay


@dataclass
class Batch:
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    next_mask: Tensor
    terminated: Tensor
    truncated: Tensor
    steps: Tensor
    weights: Tensor


def dqn_config(**changes: object) -> DQNConfig:
    """Every field, typical values, with `changes` applied."""
    fields: dict = {
        "gamma": 0.99, "lr": 2.5e-4, "adam_eps": 1e-5, "grad_clip": 10.0, "huber_delta": 1.0, "double": True,
        "target_update_every": 1000, "tau": None, "value_rescale": False,
    }  # fmt: skip
    return DQNConfig(**(fields | changes))


def test_dqn_solves_the_chain_with_n_step_replay() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 32
    learner = DQNLearner(
        QNetwork(ChainEnv.obs_dim, hidden=(32,)),
        dqn_config(gamma=0.9, lr=3e-3, adam_eps=1e-8, target_update_every=25),
    )
    replay = TransitionReplay(n * 64, n, ChainEnv.obs_dim, n_step=2, gamma=0.9)
    env, epsilon = ChainEnv(n), EpsilonSchedule(1.0, 0.1, 150)
    for step in range(300):
        obs, mask = env.obs(), env.mask()
        with torch.no_grad():
            actions = masked_epsilon_greedy(learner.online(obs), mask, epsilon(step), g)
        out = env.step(actions)
        replay.add(obs, mask, actions, out.rewards, out.final_obs, out.final_mask, out.terminated, out.truncated)
        if len(replay) >= 64:
            learner.update(replay.sample(64, g))
    states = torch.eye(3)
    masks = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 1]], dtype=torch.bool)
    with torch.no_grad():
        q = learner.online(states)
    assert torch.equal(masked_greedy(q, masks), ChainEnv.optimal)
    best = q.where(masks, -1e9).amax(1)
    torch.testing.assert_close(best, torch.tensor([0.81, 0.9, 1.0]), atol=0.05, rtol=0)


def random_mdp(seed: int, states: int = 6, actions: int = 5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Deterministic MDP: next state [S, A], reward [S, A] in [0.2, 1], terminal [S, A], mask [S, A]."""
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, states, (states, actions), generator=g)
    reward = 0.2 + 0.8 * torch.rand(states, actions, generator=g)
    terminal = torch.rand(states, actions, generator=g) < 0.15
    mask = torch.rand(states, actions, generator=g) < 0.7
    mask[:, :2] = True  # at least two valid actions everywhere
    return nxt, reward, terminal, mask


def value_iteration(nxt: Tensor, reward: Tensor, terminal: Tensor, mask: Tensor, gamma: float) -> Tensor:
    q = torch.zeros(reward.shape, dtype=torch.float64)
    for _ in range(2000):
        v = q.where(mask, -torch.inf).amax(1)
        q = reward.double() + gamma * (~terminal) * v[nxt]
    return q.float()


def test_dqn_converges_to_value_iteration_q_values() -> None:
    """Uniform batches over all valid (s, a); 30% of rows are flagged truncated, which must still bootstrap
    (treating them as terminal would pull those values far below the VI ones)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    gamma, s_count = 0.9, 6
    nxt, reward, terminal, mask = random_mdp(3, s_count)
    q_star = value_iteration(nxt, reward, terminal, mask, gamma)
    pairs = mask.nonzero()  # valid (s, a)
    eye = torch.eye(s_count)
    learner = DQNLearner(
        QNetwork(s_count, hidden=(64, 64)),
        dqn_config(gamma=gamma, lr=2e-3, adam_eps=1e-8, target_update_every=100, grad_clip=10.0),
    )
    for _ in range(3000):
        i = pairs[torch.randint(len(pairs), (128,), generator=g)]
        s, a = i[:, 0], i[:, 1]
        s2 = nxt[s, a]
        batch = Batch(
            obs=eye[s],
            actions=a,
            rewards=reward[s, a],
            next_obs=eye[s2],
            next_mask=mask[s2],
            terminated=terminal[s, a],
            truncated=~terminal[s, a] & (torch.rand(128, generator=g) < 0.3),
            steps=torch.ones(128, dtype=torch.long),
            weights=torch.ones(128),
        )
        learner.update(batch)
    with torch.no_grad():
        q = learner.online(eye)
    rel = ((q - q_star).abs() / q_star.abs())[mask]
    assert float(rel.max()) < 0.05, f"max relative error {float(rel.max()):.3f}"


def small_batch(b: int = 8, dim: int = 4, g: torch.Generator | None = None) -> Batch:
    g = g or torch.Generator().manual_seed(0)
    return Batch(
        obs=torch.randn(b, dim, generator=g),
        actions=torch.randint(0, 5, (b,), generator=g),
        rewards=torch.randn(b, generator=g),
        next_obs=torch.randn(b, dim, generator=g),
        next_mask=torch.ones(b, 5, dtype=torch.bool),
        terminated=torch.zeros(b, dtype=torch.bool),
        truncated=torch.zeros(b, dtype=torch.bool),
        steps=torch.ones(b, dtype=torch.long),
        weights=torch.ones(b),
    )


def test_update_returns_detached_tensor_stats() -> None:
    torch.manual_seed(0)
    learner = DQNLearner(QNetwork(4, hidden=(8,)), dqn_config())
    stats = learner.update(small_batch())
    assert set(stats) == {"loss", "q_mean", "target_mean", "td_abs", "td_abs_mean", "grad_norm"}
    for v in stats.values():
        assert isinstance(v, Tensor) and not v.requires_grad
    assert stats["td_abs"].shape == (8,)
    assert learner.updates == 1


def test_importance_weights_scale_each_sample() -> None:
    """A zero-weight sample contributes no gradient; doubling all weights doubles the loss."""
    torch.manual_seed(0)
    net = QNetwork(4, hidden=(8,))
    learner = DQNLearner(net, dqn_config(lr=0.0, grad_clip=None))
    batch = small_batch(2)
    batch.weights = torch.tensor([1.0, 0.0])
    learner.update(batch)
    grads_weighted = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    only_first = small_batch(2)
    for f in ("obs", "actions", "rewards", "next_obs", "next_mask", "terminated", "truncated", "steps"):
        setattr(only_first, f, getattr(batch, f)[:1])
    only_first.weights = torch.ones(1)
    learner.update(only_first)
    for g1, p in zip(grads_weighted, net.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(g1, p.grad / 2)  # mean over 2 rows vs 1 row
    base = learner.update(small_batch())["loss"]
    doubled = small_batch()
    doubled.weights = torch.full((8,), 2.0)
    torch.testing.assert_close(learner.update(doubled)["loss"], 2 * base)


@pytest.mark.parametrize("tau", [None, 0.1])
def test_target_network_schedule(tau: float | None) -> None:
    torch.manual_seed(0)
    learner = DQNLearner(QNetwork(4, hidden=(8,)), dqn_config(lr=1e-2, target_update_every=3, tau=tau))
    first = [p.clone() for p in learner.target.parameters()]
    assert all(not p.requires_grad for p in learner.target.parameters())
    for _ in range(2):
        learner.update(small_batch())
    assert all(torch.equal(a, b) for a, b in zip(first, learner.target.parameters(), strict=True))
    before = [p.clone() for p in learner.target.parameters()]
    learner.update(small_batch())  # the third update syncs
    for old, new, online in zip(before, learner.target.parameters(), learner.online.parameters(), strict=True):
        expected = online.detach() if tau is None else old + tau * (online.detach() - old)
        torch.testing.assert_close(new, expected)


def test_checkpoint_round_trip() -> None:
    torch.manual_seed(0)
    a = DQNLearner(QNetwork(4, hidden=(8,)), dqn_config(target_update_every=2))
    for _ in range(3):
        a.update(small_batch())
    b = DQNLearner(QNetwork(4, hidden=(8,)), dqn_config(target_update_every=2))
    b.load_state_dict(a.state_dict())
    assert b.updates == 3
    sa, sb = a.update(small_batch()), b.update(small_batch())
    torch.testing.assert_close(sa["loss"], sb["loss"])
    for p, q in zip(a.online.parameters(), b.online.parameters(), strict=True):
        torch.testing.assert_close(p, q)
