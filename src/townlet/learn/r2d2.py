"""R2D2: recurrent DQN on stored-state sequences with burn-in.

From the stored (h0, c0) the online net unrolls the burn-in steps without gradient, then the training
steps with it; the target net unrolls the whole sequence from the same stored state. The last training
step bootstraps from the following observation (a window end is not an episode end), termination ends the
bootstrap, truncation does not, and steps after the first episode end in a sequence belong to the next
episode: they are trained from the batch's `continuation` (unrolled from a zero state at that episode's
start) when the replay provides one, and masked out otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from townlet.agents.networks import LSTMState
from townlet.learn.batches import SequenceBatchLike
from townlet.learn.common import OnlineTargetLearner, OptimConfig
from townlet.learn.targets import double_q_targets, huber


@dataclass
class R2D2Config(OptimConfig):
    """No defaults (the run config has them). `burn_in` must match the replay's. `n_step`: bootstrap n steps
    ahead (fewer at a window or episode end), which carries a death's penalty back n times faster per target
    sync. `stored_state`: True, every sequence starts from the LSTM state the replay stored with it; False,
    from zeros (the seed-era method, kept for the memory ablation). `imitation_weight` > 0 adds DQfD's
    large-margin loss on the batch's `demo` sequences (a guide's actions): the demonstrated action's Q must
    beat every other valid action's by `margin`, so what a guide does is learned as a preference and not only
    valued off-policy."""

    burn_in: int
    n_step: int
    stored_state: bool
    imitation_weight: float
    margin: float


@dataclass
class SequenceTD:
    """One unroll's outputs for the training part (L = train_len steps)."""

    q_taken: Tensor  # [B, L], with gradient
    targets: Tensor  # [B, L], no gradient; 0 where invalid
    valid: Tensor  # [B, L] bool
    q_demo: Tensor  # [B, L], with gradient: online Q of the demonstrated action (the advice, else the taken one)
    q_other: Tensor  # [B, L], with gradient: the best online Q among the other valid actions (very low if none)
    q_online: Tensor  # [B, L + 1, A] online Q of obs[:, burn_in:], with gradient
    advised: Tensor  # [B, L] bool: the step has a demonstrated action (advice A, the action count, means none)


def _sanitize(batch: SequenceBatchLike) -> tuple[Tensor, Tensor]:
    """obs with don't-care entries (after obs[:, e + 1]) zeroed, and valid as bool.

    The LSTM is causal, so valid steps never see later obs anyway; zeroing also keeps a non-finite
    don't-care value from reaching the loss or the gradient.
    """
    valid = batch.valid.bool()
    obs_valid = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # obs[:, t+1] is needed iff valid[t]
    obs = torch.where(obs_valid.unsqueeze(-1), batch.obs, torch.zeros((), dtype=batch.obs.dtype))
    return obs, valid


def n_step_targets(
    rewards: Tensor,
    terminated: Tensor,
    valid: Tensor,
    gamma: float,
    n_step: int,
    next_q_online: Tensor,
    next_q_target: Tensor,
    next_mask: Tensor,
    double: bool = True,
    rescale: bool = False,
) -> Tensor:
    """Per-step n-step Double-DQN targets inside a window of L training steps.

    y_t = sum_{k<m} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) Q_target(s_{t+m})[a*], where
    m = min(n, L - t, e - t + 1) stops at the window end and at the first episode end e (whose next obs is
    the episode's final obs, so a truncation bootstraps from it). next_q_* [B, L, A] and next_mask [B, L, A]
    belong to the obs after each step. Entries where `valid` is False are don't-care.
    """
    length = rewards.shape[1]
    steps = torch.arange(length, device=rewards.device)
    # the first invalid step (valid is a prefix); the episode end is the step before it
    first_invalid = torch.where(valid, length, steps).amin(dim=1, keepdim=True)  # [B, 1]
    m = torch.minimum(torch.full_like(steps, n_step), length - steps).unsqueeze(0)  # [1, L] window end
    m = torch.minimum(m, (first_invalid - steps).clamp(min=1))  # [B, L] episode end
    offset = steps.view(1, -1) - steps.view(-1, 1)  # [t, j] = j - t
    inside = (offset >= 0).unsqueeze(0) & (offset.unsqueeze(0) < m.unsqueeze(-1))  # [B, t, j]
    discounts = torch.where(inside, gamma ** offset.clamp(min=0).to(rewards.dtype), 0.0)
    returns = (discounts * rewards.unsqueeze(1)).sum(-1)  # [B, L]
    last = (steps.unsqueeze(0) + m - 1).clamp(max=length - 1)  # the step whose next obs is bootstrapped
    pick = last.unsqueeze(-1).expand(-1, -1, next_q_target.shape[-1])
    return double_q_targets(
        returns,
        terminated.gather(1, last),
        gamma ** m.to(rewards.dtype),
        next_q_online.gather(1, pick),
        next_q_target.gather(1, pick),
        next_mask.gather(1, pick),
        double,
        rescale,
    )


def sequence_td(
    batch: SequenceBatchLike,
    online: nn.Module,
    target: nn.Module,
    burn_in: int,
    gamma: float,
    double: bool = True,
    n_step: int = 1,
    stored_state: bool = True,
    rescale: bool = False,
) -> SequenceTD:
    """Unroll both nets from the stored state (from zeros if not `stored_state`: the ablation) and build the
    per-step n-step Double-DQN targets (see `n_step_targets`; with n_step=1: r_t + gamma * (1 - terminated_t) *
    Q_target(obs_{t+1})[a*], a* = argmax over valid actions (masks[:, t + 1]) of the online Q at t + 1).

    With a `continuation` the result also covers the steps after each sequence's first episode end, from the
    continuation (burn-in 0, zero start state; see `join_continuation`). Both go through each net in one call
    (the sequences' training part padded at its end), which on a CPU costs far less than a second unroll."""
    obs, valid = _sanitize(batch)
    _check_unroll(batch, burn_in, n_step)
    start = _start_state(batch, stored_state)
    state = _burn_in(online, obs, start, burn_in)
    cont = batch.continuation
    if cont is None:
        q_online, _ = online(obs[:, burn_in:], state)  # [B, L + 1, A]
        with torch.no_grad():
            q_target, _ = target(obs, start)  # [B, T + 1, A]
        return _td(batch, valid, q_online, q_target, burn_in, gamma, double, n_step, rescale)
    if cont.start is None:
        raise ValueError("continuation: expected a continuation batch with `start` [B] int64, got None")
    next_obs, next_valid = _sanitize(cont)
    zeros = (torch.zeros_like(start[0]), torch.zeros_like(start[1]))
    b, t1 = obs.shape[0], obs.shape[1]
    train_obs = torch.cat([obs[:, burn_in:], obs.new_zeros(b, burn_in, obs.shape[2])], dim=1)  # padded to T + 1
    q_online, _ = online(torch.cat([train_obs, next_obs]), _cat_state(state, zeros))
    with torch.no_grad():
        q_target, _ = target(torch.cat([obs, next_obs]), _cat_state(start, zeros))
    own = _td(batch, valid, q_online[:b, : t1 - burn_in], q_target[:b], burn_in, gamma, double, n_step, rescale)
    nxt = _td(cont, next_valid, q_online[b:], q_target[b:], 0, gamma, double, n_step, rescale)
    return join_continuation(own, nxt, cont.start, burn_in)


def _check_unroll(batch: SequenceBatchLike, burn_in: int, n_step: int) -> None:
    t_total = batch.actions.shape[1]
    if not 0 <= burn_in < t_total:
        raise ValueError(f"burn_in {burn_in} must be in [0, {t_total}) for sequences of {t_total} steps")
    if n_step < 1:
        raise ValueError(f"n_step must be >= 1, got {n_step}")


def _start_state(batch: SequenceBatchLike, stored: bool) -> LSTMState:
    if stored:
        return batch.h0, batch.c0
    return torch.zeros_like(batch.h0), torch.zeros_like(batch.c0)


def _cat_state(a: LSTMState, b: LSTMState) -> LSTMState:
    return torch.cat([a[0], b[0]], dim=1), torch.cat([a[1], b[1]], dim=1)


def _burn_in(online: nn.Module, obs: Tensor, start: LSTMState, burn_in: int) -> LSTMState:
    """The online state after the burn-in steps, without gradient."""
    if burn_in == 0:
        return start
    with torch.no_grad():
        return online(obs[:, :burn_in], start)[1]


def _td(
    batch: SequenceBatchLike,
    valid: Tensor,
    q_online: Tensor,
    q_target: Tensor,
    burn_in: int,
    gamma: float,
    double: bool,
    n_step: int,
    rescale: bool = False,
) -> SequenceTD:
    """The training part's q_taken and targets from the unrolls: q_online [B, L + 1, A] of obs[:, burn_in:]
    (with gradient), q_target [B, T + 1, A] of all obs."""
    t_total = batch.actions.shape[1]
    train = slice(burn_in, t_total)
    valid_t = valid[:, train]
    actions = batch.actions[:, train]
    q_taken = q_online[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    # what the imitation loss compares: a guide's advice where the replay holds it (the value A where the
    # guide gave none), else the action taken
    num_actions = q_online.shape[-1]
    demo = batch.advice[:, train] if batch.advice is not None else actions
    advised = demo < num_actions
    demo = demo.clamp(max=num_actions - 1)
    q_demo = q_online[:, :-1].gather(-1, demo.unsqueeze(-1)).squeeze(-1)
    ids = torch.arange(q_online.shape[-1], device=actions.device)
    others = batch.masks[:, train].bool() & (demo.unsqueeze(-1) != ids)  # valid at obs t, not demonstrated
    q_other = torch.where(others, q_online[:, :-1], torch.finfo(q_taken.dtype).min).amax(-1)
    with torch.no_grad():
        rewards = torch.where(valid_t, batch.rewards[:, train], torch.zeros((), dtype=q_taken.dtype))
        y = n_step_targets(
            rewards,
            batch.terminated[:, train].bool(),
            valid_t,
            gamma,
            n_step,
            q_online[:, 1:].detach(),
            q_target[:, burn_in + 1 :],
            batch.masks[:, burn_in + 1 :].bool(),
            double,
            rescale,
        )
        y = torch.where(valid_t, y, torch.zeros_like(y))
    return SequenceTD(q_taken, y, valid_t, q_demo, q_other, q_online, advised)


@torch.no_grad()
def compute_sequence_targets(
    batch: SequenceBatchLike,
    online: nn.Module,
    target: nn.Module,
    burn_in: int,
    gamma: float,
    double: bool = True,
    n_step: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """(targets, q_taken, valid), each [B, train_len] (continuations joined in), with no gradient: for tests and
    diagnostics."""
    td = sequence_td(batch, online, target, burn_in, gamma, double, n_step)
    return td.targets, td.q_taken, td.valid


def join_continuation(td: SequenceTD, next_td: SequenceTD, start: Tensor, burn_in: int) -> SequenceTD:
    """One SequenceTD for the training steps of a sequence and of its continuation (burn_in 0), which begins
    at step `start` [B] of the sequence: training step p takes the continuation's step burn_in + p - start
    where the sequence's own step is invalid (after its first episode end). The two never overlap."""
    length = td.valid.shape[1]
    stream_step = burn_in + torch.arange(length, device=start.device).unsqueeze(0)  # [1, L]
    j = stream_step - start.unsqueeze(1)  # [B, L]
    pick = j.clamp(0, next_td.valid.shape[1] - 1)
    next_valid = (j >= 0) & next_td.valid.gather(1, pick)
    return SequenceTD(
        q_taken=torch.where(td.valid, td.q_taken, next_td.q_taken.gather(1, pick)),
        targets=torch.where(td.valid, td.targets, next_td.targets.gather(1, pick)),
        valid=td.valid | next_valid,
        q_demo=torch.where(td.valid, td.q_demo, next_td.q_demo.gather(1, pick)),
        q_other=torch.where(td.valid, td.q_other, next_td.q_other.gather(1, pick)),
        q_online=td.q_online,
        advised=torch.where(td.valid, td.advised, next_td.advised.gather(1, pick)),
    )


def sequence_loss(td: SequenceTD, weights: Tensor, delta: float = 1.0) -> tuple[Tensor, Tensor]:
    """Importance-weighted Huber loss averaged over valid steps; returns (loss, td_abs [B, L] with 0 where
    invalid)."""
    err = torch.where(td.valid, td.targets - td.q_taken, torch.zeros((), dtype=td.q_taken.dtype))
    per_step = huber(err, delta) * weights.unsqueeze(-1)
    loss = per_step.sum() / td.valid.sum().clamp(min=1)
    return loss, err.detach().abs()


def large_margin_loss(td: SequenceTD, demo: Tensor, margin: float) -> Tensor:
    """DQfD's supervised loss, max_a [Q(s, a) + margin * (a != a_E)] - Q(s, a_E), averaged over the valid
    training steps of the `demo` [B] sequences that have an a_E (0 if there are none). a_E is the guide's
    advice where the replay stores it (every agent's steps, DAgger-style), else the action the (guided) agent
    took. It is 0 once a_E leads every other valid action by the margin."""
    steps = td.valid & td.advised & demo.view(-1, 1)
    gap = torch.relu(td.q_other + margin - td.q_demo)
    return torch.where(steps, gap, torch.zeros((), dtype=gap.dtype)).sum() / steps.sum().clamp(min=1)


class RecurrentLearner(OnlineTargetLearner):
    """R2D2 learner. `update(batch)` returns detached stats; `td_abs` and `valid` ([B, train_len]) go to
    `SequenceReplay.update_priorities(batch.indices, td_abs, valid)`."""

    def __init__(self, network: nn.Module, config: R2D2Config) -> None:
        super().__init__(network, config)
        self.config: R2D2Config = config

    def update(self, batch: SequenceBatchLike) -> dict[str, Tensor]:
        """One step on the sequences and their continuations, if any. Stats: loss, q_mean (valid steps),
        td_abs [B, L], valid [B, L] (both over the sequences' training steps, continuations included), td_abs_mean,
        grad_norm; with `imitation_weight` and a batch with `demo`, imitation (the large-margin loss, already in
        loss)."""
        c = self.config
        td = sequence_td(
            batch, self.online, self.target, c.burn_in, c.gamma, c.double, c.n_step, c.stored_state, c.value_rescale
        )
        loss, td_abs = sequence_loss(td, batch.weights, c.huber_delta)
        imitation = None
        if c.imitation_weight > 0 and batch.demo is not None:
            imitation = large_margin_loss(td, batch.demo, c.margin)
            loss = loss + c.imitation_weight * imitation
        grad_norm = self._step(loss)
        n_valid = td.valid.sum().clamp(min=1)
        q_valid = torch.where(td.valid, td.q_taken.detach(), torch.zeros((), dtype=td.q_taken.dtype))
        stats = {
            "loss": loss.detach(),
            "q_mean": q_valid.sum() / n_valid,
            "td_abs": td_abs,
            "valid": td.valid,
            "td_abs_mean": td_abs.sum() / n_valid,
            "grad_norm": grad_norm,
        }
        if imitation is not None:
            stats["imitation"] = imitation.detach()
        return stats
