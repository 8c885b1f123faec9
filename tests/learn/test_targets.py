"""Hand-built batches prove the target math: bootstrap through truncation and at window ends, never
through termination, Double DQN over valid actions, and no leakage across an episode boundary."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor, nn

from townlet.agents import RecurrentQNetwork
from townlet.learn import (
    R2D2Config,
    RecurrentLearner,
    compute_sequence_targets,
    compute_targets,
    double_q_targets,
    join_continuation,
    large_margin_loss,
    masked_argmax,
    sequence_loss,
    sequence_td,
)
from townlet.learn.r2d2 import SequenceTD

GAMMA = 0.9


class TableQ(nn.Module):
    """Q = one-hot obs @ table: exact, known Q-values."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, obs: Tensor) -> Tensor:
        return obs @ self.table


@dataclass
class TBatch:
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    next_mask: Tensor
    terminated: Tensor
    truncated: Tensor
    steps: Tensor
    weights: Tensor


def transition_batch() -> TBatch:
    """Four rows, all with next state 1: plain, truncated, terminated, 3-step."""
    eye = torch.eye(3)
    return TBatch(
        obs=eye[[0, 0, 0, 0]],
        actions=torch.tensor([0, 1, 2, 3]),
        rewards=torch.tensor([1.0, 2.0, 3.0, 4.0]),
        next_obs=eye[[1, 1, 1, 1]],
        next_mask=torch.tensor([[1, 1, 0, 1, 1]] * 4, dtype=torch.bool),
        terminated=torch.tensor([False, False, True, False]),
        truncated=torch.tensor([False, True, False, False]),
        steps=torch.tensor([1, 1, 1, 3]),
        weights=torch.ones(4),
    )


# In state 1 the online net prefers action 2 (masked), then 4; the target net prefers 0.
ONLINE = torch.zeros(3, 5)
ONLINE[1] = torch.tensor([0.0, 1.0, 9.0, 2.0, 5.0])
TARGET = torch.zeros(3, 5)
TARGET[1] = torch.tensor([7.0, 1.0, 8.0, 3.0, 0.5])


def test_dqn_targets_double_masked_truncation_termination_n_step() -> None:
    y = compute_targets(transition_batch(), TableQ(ONLINE), TableQ(TARGET), GAMMA)
    # online argmax over VALID actions is 4 (2 is masked); the target net evaluates it: 0.5
    expected = torch.tensor([1.0 + GAMMA * 0.5, 2.0 + GAMMA * 0.5, 3.0, 4.0 + GAMMA**3 * 0.5])
    torch.testing.assert_close(y, expected)


def test_rescaled_targets_bootstrap_in_the_unscaled_space() -> None:
    """With value rescaling the nets hold h(Q): y = h(r + γ^n h⁻¹(Q_target(s')[a*])), deaths bootstrap nothing."""
    from townlet.learn.value_rescale import h, h_inv

    y = compute_targets(transition_batch(), TableQ(ONLINE), TableQ(TARGET), GAMMA, rescale=True)
    next_v = h_inv(torch.tensor(0.5))
    expected = h(torch.tensor([1.0 + GAMMA * next_v, 2.0 + GAMMA * next_v, 3.0, 4.0 + GAMMA**3 * next_v]))
    torch.testing.assert_close(y, expected)
    assert y[2] < 3.0  # a death's target is compressed too, not left in Q's own units


def test_plain_dqn_uses_the_target_max_over_valid_actions() -> None:
    y = compute_targets(transition_batch(), TableQ(ONLINE), TableQ(TARGET), GAMMA, double=False)
    torch.testing.assert_close(y[0], torch.tensor(1.0 + GAMMA * 7.0))  # 8.0 is masked


def test_termination_blocks_non_finite_next_values_and_empty_masks() -> None:
    rewards = torch.tensor([1.0, 2.0])
    nan_q = torch.full((2, 5), torch.nan)
    y = double_q_targets(rewards, torch.tensor([True, True]), GAMMA, nan_q, nan_q, torch.zeros(2, 5, dtype=torch.bool))
    torch.testing.assert_close(y, rewards)
    # a row with no valid action falls back to all actions
    assert masked_argmax(torch.tensor([[1.0, 3.0, 2.0]]), torch.zeros(1, 3, dtype=torch.bool)).item() == 1


# ----------------------------------------------------------------------------- sequences

B, BURN, TRAIN, D, H = 4, 3, 4, 5, 8
T = BURN + TRAIN


@dataclass
class SBatch:
    obs: Tensor
    masks: Tensor
    actions: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    valid: Tensor
    h0: Tensor
    c0: Tensor
    weights: Tensor
    continuation: None = None
    start: None = None
    demo: Tensor | None = None
    advice: Tensor | None = None


def nets() -> tuple[RecurrentQNetwork, RecurrentQNetwork]:
    torch.manual_seed(0)
    online = RecurrentQNetwork(D, hidden_size=H, encoder_hidden=(8,), head_hidden=8)
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return online, target


def sequence_batch() -> SBatch:
    """Row 0: no episode end (the window end must bootstrap). Row 1: terminated at step 4 (train 1).
    Row 2: truncated at step 5 (train 2), obs[:, 6] is the final obs. Row 3: ended in the burn-in."""
    g = torch.Generator().manual_seed(1)
    terminated = torch.zeros(B, T, dtype=torch.bool)
    truncated = torch.zeros(B, T, dtype=torch.bool)
    terminated[1, 4] = True
    truncated[2, 5] = True
    terminated[3, 1] = True
    done = terminated | truncated
    valid = done.cumsum(1) - done.long() == 0
    masks = torch.rand(B, T + 1, 5, generator=g) < 0.6
    masks[..., 0] = True
    return SBatch(
        obs=torch.randn(B, T + 1, D, generator=g),
        masks=masks,
        actions=torch.randint(0, 5, (B, T), generator=g),
        rewards=torch.randn(B, T, generator=g),
        terminated=terminated,
        truncated=truncated,
        valid=valid,
        h0=0.5 * torch.randn(1, B, H, generator=g),
        c0=0.5 * torch.randn(1, B, H, generator=g),
        weights=torch.rand(B, generator=g) + 0.5,
    )


def stepwise_q(net: RecurrentQNetwork, batch: SBatch) -> Tensor:
    """Reference: Q for every obs, one step at a time from the stored state. [B, T + 1, A]."""
    state = (batch.h0, batch.c0)
    out = []
    with torch.no_grad():
        for t in range(T + 1):
            q, state = net(batch.obs[:, t : t + 1], state)
            out.append(q)
    return torch.cat(out, 1)


def test_sequence_targets_match_a_stepwise_reference() -> None:
    online, target = nets()
    batch = sequence_batch()
    y, q_taken, valid = compute_sequence_targets(batch, online, target, BURN, GAMMA)
    q_on, q_tg = stepwise_q(online, batch), stepwise_q(target, batch)
    for b in range(B):
        for j in range(TRAIN):
            t = BURN + j
            if not batch.valid[b, t]:
                assert not valid[b, j] and y[b, j] == 0
                continue
            best = masked_argmax(q_on[b, t + 1], batch.masks[b, t + 1])
            boot = 0.0 if batch.terminated[b, t] else GAMMA * float(q_tg[b, t + 1, best])
            assert float(y[b, j]) == pytest.approx(float(batch.rewards[b, t]) + boot, abs=1e-5), (b, j)
            assert float(q_taken[b, j]) == pytest.approx(float(q_on[b, t, batch.actions[b, t]]), abs=1e-5)
    # the window end bootstraps: not a terminal step
    assert float(y[0, -1]) != pytest.approx(float(batch.rewards[0, -1]))
    # termination: reward only; truncation: bootstraps from the final obs
    assert float(y[1, 1]) == pytest.approx(float(batch.rewards[1, 4]))
    assert float(y[2, 2]) != pytest.approx(float(batch.rewards[2, 5]))
    assert valid.tolist() == [[True] * 4, [True, True, False, False], [True, True, True, False], [False] * 4]


@pytest.mark.parametrize("n_step", [2, 3, 10])
def test_n_step_sequence_targets_match_a_stepwise_reference(n_step: int) -> None:
    """y_t sums up to n rewards and bootstraps gamma^m later, stopping at the window end and the episode end
    (no bootstrap after a termination; a truncation bootstraps from the final obs)."""
    online, target = nets()
    batch = sequence_batch()
    y, _, valid = compute_sequence_targets(batch, online, target, BURN, GAMMA, n_step=n_step)
    q_on, q_tg = stepwise_q(online, batch), stepwise_q(target, batch)
    for b in range(B):
        for j in range(TRAIN):
            t = BURN + j
            if not valid[b, j]:
                continue
            ret, k = 0.0, 0
            while True:  # walk forward: at most n steps, not past the window, stop at an episode end
                ret += GAMMA**k * float(batch.rewards[b, t + k])
                k += 1
                ended = bool(batch.terminated[b, t + k - 1] or batch.truncated[b, t + k - 1])
                if k == n_step or t + k == T or ended:
                    break
            last = t + k - 1
            best = masked_argmax(q_on[b, last + 1], batch.masks[b, last + 1])
            boot = 0.0 if batch.terminated[b, last] else GAMMA**k * float(q_tg[b, last + 1, best])
            assert float(y[b, j]) == pytest.approx(ret + boot, abs=1e-5), (b, j, n_step)
    # n-step differs from 1-step where more than one reward fits before the window or episode end
    y1 = compute_sequence_targets(batch, online, target, BURN, GAMMA)[0]
    assert not torch.allclose(y[0, :-1], y1[0, :-1])
    torch.testing.assert_close(y[0, -1], y1[0, -1])  # the last step's window end leaves one reward
    torch.testing.assert_close(y[1, 1], y1[1, 1])  # the terminal step itself: its reward only


def test_without_stored_state_sequences_start_from_zeros() -> None:
    online, target = nets()
    batch = sequence_batch()
    zero = replace(batch, h0=torch.zeros_like(batch.h0), c0=torch.zeros_like(batch.c0))
    ignored = sequence_td(batch, online, target, BURN, GAMMA, stored_state=False)
    reference = sequence_td(zero, online, target, BURN, GAMMA)
    torch.testing.assert_close(ignored.targets, reference.targets, rtol=0, atol=0)
    torch.testing.assert_close(ignored.q_taken, reference.q_taken, rtol=0, atol=0)
    stored = sequence_td(batch, online, target, BURN, GAMMA)
    assert not torch.allclose(stored.q_taken, reference.q_taken)
    with pytest.raises(ValueError, match="n_step"):
        sequence_td(batch, online, target, BURN, GAMMA, n_step=0)


def perturb_after_ends(batch: SBatch, nan: bool) -> SBatch:
    """Change everything after each row's first episode end (obs/masks after e + 1, the rest after e)."""
    g = torch.Generator().manual_seed(7)
    out = replace(batch, **{f: getattr(batch, f).clone() for f in ("obs", "masks", "actions", "rewards", "terminated")})
    for b, e in [(1, 4), (2, 5), (3, 1)]:
        out.obs[b, e + 2 :] = torch.nan if nan else torch.randn(T - e - 1, D, generator=g) * 5
        out.masks[b, e + 2 :] = torch.rand(T - e - 1, 5, generator=g) < 0.5
        out.actions[b, e + 1 :] = torch.randint(0, 5, (T - e - 1,), generator=g)
        out.rewards[b, e + 1 :] = torch.nan if nan else 100.0
        out.terminated[b, e + 1 :] = True
    return out


@pytest.mark.parametrize("nan", [False, True])
def test_nothing_leaks_across_an_episode_boundary(nan: bool) -> None:
    online, target = nets()
    batch = sequence_batch()
    changed = perturb_after_ends(batch, nan)

    def run(b: SBatch) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        online.zero_grad()
        td = sequence_td(b, online, target, BURN, GAMMA)
        loss, td_abs = sequence_loss(td, b.weights)
        loss.backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in online.parameters()]
        return td.targets, loss, td_abs, grads

    y1, loss1, td1, g1 = run(batch)
    y2, loss2, td2, g2 = run(changed)
    assert torch.isfinite(loss2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    torch.testing.assert_close(td1, td2, rtol=0, atol=0)
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_burn_in_only_warms_the_state() -> None:
    """Burn-in actions/rewards do not matter, burn-in obs and the stored state do (through the state),
    and no gradient flows into the stored state or through the burn-in."""
    online, target = nets()
    batch = sequence_batch()
    base = compute_sequence_targets(batch, online, target, BURN, GAMMA)
    same = replace(batch, actions=batch.actions.clone(), rewards=batch.rewards.clone())
    same.actions[:, :BURN] = (same.actions[:, :BURN] + 1) % 5
    same.rewards[:, :BURN] = 50.0
    for a, b in zip(base, compute_sequence_targets(same, online, target, BURN, GAMMA), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other_obs = replace(batch, obs=batch.obs.clone())
    other_obs.obs[0, 0] += 1.0
    assert not torch.allclose(compute_sequence_targets(other_obs, online, target, BURN, GAMMA)[1][0], base[1][0])
    other_state = replace(batch, h0=batch.h0 + 1.0)
    assert not torch.allclose(compute_sequence_targets(other_state, online, target, BURN, GAMMA)[0][0], base[0][0])

    h0 = batch.h0.clone().requires_grad_(True)
    obs = batch.obs.clone().requires_grad_(True)
    td = sequence_td(replace(batch, h0=h0, obs=obs), online, target, BURN, GAMMA)
    sequence_loss(td, batch.weights)[0].backward()
    assert h0.grad is None  # burn-in ran without gradient; the target net never has one
    assert obs.grad is not None
    assert not obs.grad[:, :BURN].any() and obs.grad[0, BURN:].any()


def test_without_burn_in_the_stored_state_is_used_directly() -> None:
    online, target = nets()
    batch = sequence_batch()
    y, q_taken, _ = compute_sequence_targets(batch, online, target, 0, GAMMA)
    q_on = stepwise_q(online, batch)
    torch.testing.assert_close(q_taken[0], q_on[0, torch.arange(T), batch.actions[0]])
    assert y.shape == (B, T)
    with pytest.raises(ValueError, match="burn_in"):
        compute_sequence_targets(batch, online, target, T, GAMMA)


def test_sequence_loss_is_a_weighted_mean_over_valid_steps() -> None:
    online, target = nets()
    batch = sequence_batch()
    td = sequence_td(batch, online, target, BURN, GAMMA)
    loss, td_abs = sequence_loss(td, batch.weights, delta=1.0)
    err = (td.targets - td.q_taken).detach()
    huber = torch.where(err.abs() < 1, 0.5 * err**2, err.abs() - 0.5)
    expected = (huber * batch.weights[:, None] * td.valid).sum() / td.valid.sum()
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(td_abs, (err.abs() * td.valid))


def test_recurrent_update_stats_and_target_sync() -> None:
    online, _ = nets()
    learner = RecurrentLearner(online, R2D2Config(
        gamma=0.99, lr=1e-4, adam_eps=1e-3, grad_clip=40.0, huber_delta=1.0, double=True, target_update_every=2,
        tau=0.5, burn_in=BURN, n_step=1, stored_state=True, imitation_weight=0.0, margin=0.8, value_rescale=False,
    ))
    batch = sequence_batch()
    stats = learner.update(batch)
    assert stats["td_abs"].shape == stats["valid"].shape == (B, TRAIN)
    assert all(not v.requires_grad for v in stats.values())
    assert not stats["td_abs"][3].any()  # no valid step: no priority signal
    before = [p.clone() for p in learner.target.parameters()]
    learner.update(batch)
    for old, new, on in zip(before, learner.target.parameters(), learner.online.parameters(), strict=True):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * on.detach())


def test_join_continuation_fills_the_steps_after_the_first_episode_end() -> None:
    """burn_in 3, 4 training steps (T = 7). Row 0 ends at step 3 and again 2 steps later; row 1 never ends;
    row 2 ended in the burn-in (step 1), so all its training steps come from the continuation."""
    own = torch.tensor([[10.0, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]])
    nxt = torch.arange(21.0).view(3, 7) + 100
    td = SequenceTD(own, -own, torch.tensor([[True, False, False, False], [True] * 4, [False] * 4]), own / 5, own / 10,
                    own, own.long() % 2 == 0)  # fmt: skip
    next_valid = torch.tensor([[True, True, False, False, False, False, False], [False] * 7, [True] * 5 + [False] * 2])
    joined = join_continuation(td, SequenceTD(nxt, -nxt, next_valid, nxt / 5, nxt / 10, nxt, nxt.long() % 2 == 0),
                               torch.tensor([4, 7, 2]), 3)  # fmt: skip
    assert joined.valid.tolist() == [[True, True, True, False], [True] * 4, [True] * 4]
    want = torch.tensor([[10.0, 100, 101], [20, 21, 22], [115, 116, 117]])
    assert torch.equal(joined.q_taken[:, :3], want) and torch.equal(joined.targets[:, :3], -want)
    # the imitation loss's pieces follow the same steps
    assert torch.equal(joined.q_demo[:, :3], want / 5) and torch.equal(joined.q_other[:, :3], want / 10)
    assert torch.equal(joined.advised[:, :3], want.long() % 2 == 0)  # which steps have a label follows too
    assert torch.equal(joined.q_taken[1], own[1]) and float(joined.q_taken[2, 3]) == 118.0
    assert joined.q_online is own


def test_large_margin_loss_matches_a_stepwise_reference() -> None:
    """DQfD's J_E = max_a [Q(s, a) + margin * (a != a_E)] - Q(s, a_E) over the valid training steps of the
    demonstration rows only, with the max over the actions valid at that step."""
    online, target = nets()
    batch = sequence_batch()
    demo = torch.tensor([True, False, True, True])  # row 3 ended in the burn-in: no step of it counts
    td = sequence_td(batch, online, target, BURN, GAMMA)
    loss = large_margin_loss(td, demo, 0.8)
    q = stepwise_q(online, batch)
    gaps = []
    for b in range(B):
        for j in range(TRAIN):
            t = BURN + j
            if not (demo[b] and batch.valid[b, t]):
                continue
            a = int(batch.actions[b, t])
            margins = torch.where(torch.arange(5) == a, 0.0, 0.8)
            best = torch.where(batch.masks[b, t], q[b, t] + margins, -1e9).max()
            gaps.append(max(float(best - q[b, t, a]), 0.0))
    assert len(gaps) == 4 + 3  # row 0's four training steps, row 2's three up to its truncation
    assert float(loss.detach()) == pytest.approx(sum(gaps) / len(gaps), abs=1e-5)
    loss.backward()  # it trains the online net
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in online.parameters())
    assert float(large_margin_loss(td, torch.zeros(B, dtype=torch.bool), 0.8).detach()) == 0.0
    # a demonstrated action that already leads by the margin costs nothing
    lead = replace(td, q_demo=td.q_other.detach() + 0.8)
    assert float(large_margin_loss(lead, demo, 0.8).detach()) == 0.0


def test_large_margin_loss_follows_the_advice_where_the_batch_holds_it() -> None:
    """With stored advice (DAgger-style labels) the demonstrated action is the advised one, not the taken one."""
    online, target = nets()
    batch = sequence_batch()
    batch.advice = (batch.actions + 1) % 5
    td = sequence_td(batch, online, target, BURN, GAMMA)
    q = stepwise_q(online, batch)
    everyone = torch.ones(B, dtype=torch.bool)
    gaps = []
    for b in range(B):
        for j in range(TRAIN):
            t = BURN + j
            if batch.valid[b, t]:
                a = int(batch.advice[b, t])
                best = torch.where(batch.masks[b, t] & (torch.arange(5) != a), q[b, t], -1e9).max()
                gaps.append(max(float(best + 0.5 - q[b, t, a]), 0.0))
    assert float(large_margin_loss(td, everyone, 0.5).detach()) == pytest.approx(sum(gaps) / len(gaps), abs=1e-5)
    taken = sequence_td(replace(batch, advice=None), online, target, BURN, GAMMA)
    assert not torch.allclose(td.q_demo, taken.q_demo) and torch.equal(td.q_taken, taken.q_taken)


def test_large_margin_loss_skips_the_steps_without_advice() -> None:
    """Advice NUM_ACTIONS means the guide had no purpose there (a random move): those steps are no labels, and
    the loss averages over the advised valid steps only."""
    online, target = nets()
    batch = sequence_batch()
    advice = (batch.actions + 1) % 5
    advice[:, ::2] = 5  # every other step unlabelled
    batch.advice = advice
    td = sequence_td(batch, online, target, BURN, GAMMA)
    assert torch.equal(td.advised, advice[:, BURN:] < 5)
    q = stepwise_q(online, batch)
    gaps = []
    for b in range(B):
        for j in range(TRAIN):
            t = BURN + j
            if batch.valid[b, t] and int(advice[b, t]) < 5:
                a = int(advice[b, t])
                best = torch.where(batch.masks[b, t] & (torch.arange(5) != a), q[b, t], -1e9).max()
                gaps.append(max(float(best + 0.8 - q[b, t, a]), 0.0))
    assert 0 < len(gaps) < int(batch.valid[:, BURN:].sum())
    loss = large_margin_loss(td, torch.ones(B, dtype=torch.bool), 0.8)
    assert float(loss.detach()) == pytest.approx(sum(gaps) / len(gaps), abs=1e-5)
    batch.advice = torch.full_like(advice, 5)  # no label anywhere: nothing to imitate
    none = sequence_td(batch, online, target, BURN, GAMMA)
    assert float(large_margin_loss(none, torch.ones(B, dtype=torch.bool), 0.8).detach()) == 0.0
