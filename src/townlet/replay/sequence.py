"""R2D2-style sequence replay: fixed-length overlapping sequences with stored recurrent start states.

Storage is a time-major ring `[rows, num_envs]` (one `add` = one row = one step of every agent). Each agent's
column is cut into sequences of T = burn_in + train_len steps (T + 1 observations) starting every `stride`
rows, so a sequence is addressed by its global number k (start step k * stride) and agent; its slot in the
ring is k % num_slots. All bookkeeping of which sequences are complete or overwritten is host-side integer
arithmetic on the step count, so `add`, `sample` and `len` never wait for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from townlet.replay.compact import CompactObs, RingState, action_dtype, check, check_sample_args, nbytes
from townlet.world.observation import ObsLayout

_MAX_CATEGORIES = 2**24  # torch.multinomial draws from at most this many categories


@dataclass
class SequenceBatch:
    """A batch of stored sequences, T = burn_in + train_len steps each.

    obs[:, t + 1] is the observation after step t; after the first episode end inside a sequence (step e),
    obs[:, e + 1] / masks[:, e + 1] are that episode's final obs / mask and later entries are don't-care
    (`valid` is False there). `terminated` and `truncated` are exclusive: a step that is both is terminated.
    """

    obs: Tensor  # [B, T + 1, D] float32
    masks: Tensor  # [B, T + 1, A] bool
    actions: Tensor  # [B, T] int64
    rewards: Tensor  # [B, T] float32
    terminated: Tensor  # [B, T] bool
    truncated: Tensor  # [B, T] bool
    valid: Tensor  # [B, T] bool, True up to and including the first terminated/truncated step
    h0: Tensor  # [num_layers, B, hidden] stored LSTM state before obs[:, 0]
    c0: Tensor  # [num_layers, B, hidden]
    weights: Tensor  # [B] float32 importance weights, max 1 (ones when uniform)
    indices: Tensor  # [B] int64 sequence ids (k * num_envs + env) for update_priorities
    agents: Tensor  # [B] int64 the agent (env) each sequence came from
    # [B, T] float32 intrinsic reward of each step, stored apart from `rewards` (None in hand-built batches);
    # mix with `townlet.replay.with_intrinsic(batch, weight)`
    intrinsic: Tensor | None = field(default=None)
    # the next episode of each sequence (replay built with split_episodes): a batch of the same shape whose
    # step j is step start + j of this one, from a zero state at that episode's first obs; valid only inside
    # this sequence and up to that episode's first end, all False where this sequence has no episode end
    continuation: SequenceBatch | None = field(default=None)
    start: Tensor | None = field(default=None)  # [B] int64, on a continuation: its step 0 in the parent (T: none)
    # [B] bool: the sequence comes from a guided agent, so its actions are a demonstration (set by the runner,
    # which knows the guides; the replay does not). None: no demonstrations in this batch
    demo: Tensor | None = field(default=None)
    # [B, T] int64: the action a guide would have taken at each step (replay built with `advice`), else None
    advice: Tensor | None = field(default=None)


class SequenceReplay(RingState):
    """Preallocated ring of agent streams, sampled as sequences with optional R2D2 prioritisation.

    `capacity` counts stored steps (agent-steps, like TransitionReplay); the ring keeps
    `capacity // num_envs` rows rounded down to a multiple of `stride`, which must hold at least one
    sequence (burn_in + train_len + 1 rows). A sequence is sampleable once all its T + 1 rows are written
    (a sequence ending an episode early waits too), and stops being sampleable the moment its start row is
    overwritten, so a sample never contains data from two laps of the ring.

    Dense `final_obs`/`final_mask` rings (as compact as the obs ring) hold each episode's true last
    observation, which is substituted after an episode end so a truncated step can bootstrap from it.

    Steps after the first episode end of a sequence are invalid in it. With `split_episodes` each sampled
    sequence carries its `continuation`: the next episode's steps inside the same rows, from that episode's
    start (where the true LSTM state is zero). Learning from both trains every stored step, as R2D2's cutting
    at episode starts does; without it the first burn_in to burn_in + stride - 1 steps of every episode are
    never a training step.

    With `advice` every step also stores the action a scripted guide would have taken there (`add(...,
    advice=)`), for imitation on the agents' own states (DAgger).
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs: ObsLayout | int,
        *,
        num_actions: int = 5,
        burn_in: int,
        train_len: int,
        stride: int | None = None,
        lstm_layers: int = 1,
        hidden_size: int,
        device: str | torch.device = "cpu",
        prioritized: bool = False,
        priority_eta: float = 0.9,
        priority_alpha: float = 0.6,
        importance_beta: float = 0.4,
        priority_eps: float = 1e-6,
        split_episodes: bool = False,
        advice: bool = False,
    ) -> None:
        stride = train_len if stride is None else stride
        for name, value, low in [
            ("num_envs", num_envs, 1),
            ("num_actions", num_actions, 1),
            ("burn_in", burn_in, 0),
            ("train_len", train_len, 1),
            ("stride", stride, 1),
            ("lstm_layers", lstm_layers, 1),
            ("hidden_size", hidden_size, 1),
        ]:
            if value < low:
                raise ValueError(f"{name}: expected >= {low}, got {value}")
        if not 0.0 <= priority_eta <= 1.0:
            raise ValueError(f"priority_eta: expected a value in [0, 1], got {priority_eta}")
        if priority_alpha < 0 or importance_beta < 0 or priority_eps <= 0:
            raise ValueError("priority_alpha and importance_beta must be >= 0 and priority_eps > 0")
        self.burn_in, self.train_len, self.stride = burn_in, train_len, stride
        self.steps_per_sequence = burn_in + train_len
        self.sequence_length = self.steps_per_sequence + 1  # observations per sequence
        rows = capacity // num_envs // stride * stride
        if rows < self.sequence_length:
            raise ValueError(
                f"capacity: {capacity} gives {rows} rows of {num_envs} agents (rounded to a multiple of "
                f"stride={stride}); need at least burn_in + train_len + 1 = {self.sequence_length}"
            )
        if prioritized and rows // stride * num_envs > _MAX_CATEGORIES:
            raise ValueError(
                f"capacity: {rows // stride * num_envs} sequence slots exceed torch.multinomial's limit of "
                f"{_MAX_CATEGORIES} for prioritized sampling; use a larger stride or a smaller capacity"
            )
        self.device = dev = torch.device(device)
        self.num_envs, self.num_actions = num_envs, num_actions
        self.lstm_layers, self.hidden_size = lstm_layers, hidden_size
        self.rows, self.num_slots = rows, rows // stride
        self.capacity = rows * num_envs
        self.obs_dim = obs.dim if isinstance(obs, ObsLayout) else obs
        self.prioritized = prioritized
        self.split_episodes = split_episodes
        self.priority_eta, self.priority_alpha = priority_eta, priority_alpha
        self.importance_beta, self.priority_eps = importance_beta, priority_eps

        self._obs = CompactObs(rows, num_envs, obs, dev)
        self._final_obs = CompactObs(rows, num_envs, obs, dev)
        self._mask = torch.zeros(rows, num_envs, num_actions, dtype=torch.bool, device=dev)
        self._final_mask = torch.zeros(rows, num_envs, num_actions, dtype=torch.bool, device=dev)
        self._actions = torch.zeros(rows, num_envs, dtype=action_dtype(num_actions), device=dev)
        self._rewards = torch.zeros(rows, num_envs, dtype=torch.float32, device=dev)
        self._intrinsic = torch.zeros(rows, num_envs, dtype=torch.float32, device=dev)
        self.advice = advice
        self._advice = torch.zeros(rows if advice else 0, num_envs, dtype=action_dtype(num_actions), device=dev)
        self._terminated = torch.zeros(rows, num_envs, dtype=torch.bool, device=dev)
        self._truncated = torch.zeros(rows, num_envs, dtype=torch.bool, device=dev)
        state_shape = (lstm_layers, self.num_slots, num_envs, hidden_size)
        self._h = torch.zeros(state_shape, dtype=torch.float32, device=dev)
        self._c = torch.zeros(state_shape, dtype=torch.float32, device=dev)
        self._steps = torch.arange(self.sequence_length, device=dev)
        # sampling weight p ** alpha per slot (0: incomplete or overwritten); max raw priority for new ones
        self._weight = torch.zeros(self.num_slots if prioritized else 0, num_envs, device=dev)
        self._max_priority = torch.ones((), device=dev)
        self._total = 0  # steps ever added

    # ------------------------------------------------------------------ bookkeeping (host integers)
    def _live_range(self) -> tuple[int, int]:
        """Global sequence numbers [lo, hi) whose T + 1 rows are all written and none overwritten."""
        oldest = max(0, self._total - self.rows)
        lo = -(-oldest // self.stride)
        newest_start = self._total - self.sequence_length  # last start whose final row is written
        hi = newest_start // self.stride + 1 if newest_start >= 0 else 0
        return lo, max(lo, hi)

    def __len__(self) -> int:
        lo, hi = self._live_range()
        return (hi - lo) * self.num_envs

    def _buffers(self) -> dict[str, Tensor]:
        return {
            **self._obs.buffers("obs"),
            **self._final_obs.buffers("final_obs"),
            "mask": self._mask,
            "final_mask": self._final_mask,
            "actions": self._actions,
            "rewards": self._rewards,
            "terminated": self._terminated,
            "truncated": self._truncated,
            "h": self._h,
            "c": self._c,
            "steps": self._steps,
            "weight": self._weight,
            "max_priority": self._max_priority,
            "intrinsic": self._intrinsic,
            "advice": self._advice,
        }

    def _ring_axes(self, total: int) -> dict[str, tuple[int, int]]:
        rows = min(total, self.rows)
        slots = min(-(-total // self.stride), self.num_slots)  # sequences started: one slot each
        axes = {name: (0, rows) for name in self._buffers() if name not in ("h", "c", "steps", "weight",
                                                                           "max_priority", "advice")}
        axes.update(h=(1, slots), c=(1, slots))
        if self.advice:
            axes["advice"] = (0, rows)
        if self.prioritized:
            axes["weight"] = (0, slots)
        return axes

    @property
    def nbytes(self) -> int:
        """Bytes of all preallocated tensors, including the dense compact final-obs ring and start states."""
        return nbytes(self._buffers().values())

    # ------------------------------------------------------------------ writing
    def add(
        self,
        obs: Tensor,
        mask: Tensor,
        actions: Tensor,
        rewards: Tensor,
        terminated: Tensor,
        truncated: Tensor,
        final_obs: Tensor,
        final_mask: Tensor,
        h: Tensor,
        c: Tensor,
        *,
        intrinsic: Tensor | None = None,
        advice: Tensor | None = None,
    ) -> None:
        """Store one step of all agents.

        obs/mask: what the agents acted on; h, c [layers, N, hidden]: the rollout LSTM state before consuming
        obs (zeros at an episode start), kept only at sequence-start rows. final_obs/final_mask are read only
        where terminated | truncated. `intrinsic` [N] float: the step's intrinsic (curiosity) rewards, stored
        apart from the extrinsic `rewards` (zeros when omitted). `advice` [N] int: what a guide would have done
        on obs; required, and only accepted, when the replay was built with `advice=True`.
        """
        n, d, a = self.num_envs, self.obs_dim, self.num_actions
        state = (self.lstm_layers, n, self.hidden_size)
        check("obs", obs, (n, d), "float")
        check("mask", mask, (n, a), "bool")
        check("actions", actions, (n,), "int")
        check("rewards", rewards, (n,), "float")
        check("terminated", terminated, (n,), "bool")
        check("truncated", truncated, (n,), "bool")
        check("final_obs", final_obs, (n, d), "float")
        check("final_mask", final_mask, (n, a), "bool")
        check("h", h, state, "float", what=" [lstm_layers, num_envs, hidden_size]")
        check("c", c, state, "float", what=" [lstm_layers, num_envs, hidden_size]")
        if intrinsic is not None:
            check("intrinsic", intrinsic, (n,), "float")
        if (advice is not None) is not self.advice:
            need = "required" if self.advice else "not stored"
            raise ValueError(f"advice: {need} (the replay was built with advice={self.advice})")
        if advice is not None:
            check("advice", advice, (n,), "int")
        g = self._total
        row = g % self.rows
        if g % self.stride == 0:  # a sequence starts here: it replaces (invalidates) the slot's old one
            slot = g // self.stride % self.num_slots
            self._h[:, slot].copy_(h)
            self._c[:, slot].copy_(c)
            if self.prioritized:
                self._weight[slot].zero_()
        self._obs.write(row, obs)
        self._final_obs.write(row, final_obs)
        self._mask[row].copy_(mask)
        self._final_mask[row].copy_(final_mask)
        self._actions[row].copy_(actions)
        if advice is not None:
            self._advice[row].copy_(advice)
        self._rewards[row].copy_(rewards)
        if intrinsic is None:
            self._intrinsic[row].zero_()
        else:
            self._intrinsic[row].copy_(intrinsic)
        self._terminated[row].copy_(terminated)
        self._truncated[row].copy_(truncated)
        self._total = g + 1
        start = g + 1 - self.sequence_length  # the sequence whose last row this was is now complete
        if self.prioritized and start >= 0 and start % self.stride == 0:
            slot = start // self.stride % self.num_slots
            self._weight[slot].copy_(self._max_priority.pow(self.priority_alpha).expand(n))

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> SequenceBatch:
        """Sample sequences with replacement: uniformly, or proportional to priority ** alpha.

        `generator` must live on `device`.
        """
        available = len(self)
        check_sample_args(batch_size, available, "SequenceReplay")
        lo, _ = self._live_range()
        n_env, dev = self.num_envs, self.device
        if self.prioritized:
            weight = self._weight.view(-1)  # slot-major: flat = slot * num_envs + env
            drawn = torch.multinomial(weight, batch_size, replacement=True, generator=generator)
            slot, env = drawn // n_env, drawn % n_env
            weights = (available * weight[drawn] / weight.sum()).pow(-self.importance_beta)
            weights = weights / weights.max()
            k = (slot - lo).remainder(self.num_slots) + lo
        else:
            u = torch.randint(available, (batch_size,), generator=generator, device=dev)
            k, env = u // n_env + lo, u % n_env
            slot = k % self.num_slots
            weights = torch.ones(batch_size, dtype=torch.float32, device=dev)
        rows = (slot.unsqueeze(1) * self.stride + self._steps) % self.rows  # [B, T + 1]
        flat = rows * n_env + env.unsqueeze(1)
        state = (self._h[:, slot, env], self._c[:, slot, env])
        batch = self._window(flat, self.steps_per_sequence, state, weights, k * n_env + env, env)
        if self.split_episodes:
            length = self.steps_per_sequence
            first_end = batch.valid & (batch.terminated | batch.truncated)
            start = torch.where(first_end.any(1), first_end.byte().argmax(1) + 1, length)  # [B]
            src = (start.unsqueeze(1) + self._steps).clamp(max=length)  # steps of this sequence, from start
            zeros = torch.zeros_like(state[0])
            batch.continuation = self._window(
                flat.gather(1, src), length - start, (zeros, zeros.clone()), weights, batch.indices, env
            )
            batch.continuation.start = start
        return batch

    def _window(
        self,
        flat: Tensor,
        limit: Tensor | int,
        state: tuple[Tensor, Tensor],
        weights: Tensor,
        indices: Tensor,
        agents: Tensor,
    ) -> SequenceBatch:
        """The steps at ring positions `flat` [B, T + 1] from start state (h0, c0), valid before step `limit`
        ([B] or int) and up to the first episode end, whose final obs/mask replace the next entry."""
        batch_size, dev = flat.shape[0], self.device
        steps = flat[:, :-1]
        obs = self._obs.gather(flat)
        masks = self._mask.view(-1, self.num_actions)[flat]
        terminated = self._terminated.view(-1)[steps]
        truncated = self._truncated.view(-1)[steps]
        inside = self._steps[:-1].unsqueeze(0) < torch.as_tensor(limit, device=dev).view(-1, 1)
        done = (terminated | truncated) & inside
        valid = (done.cumsum(1) - done.long() == 0) & inside  # no episode end strictly before the step
        first_end = done & valid
        has_end = first_end.any(1)
        end = first_end.byte().argmax(1)  # step of the first end (0 where none, then unused)
        end_flat = steps.gather(1, end.unsqueeze(1)).squeeze(1)
        rows = torch.arange(batch_size, device=dev)
        after = end + 1
        final_obs = self._final_obs.gather(end_flat)
        obs[rows, after] = torch.where(has_end.unsqueeze(1), final_obs, obs[rows, after])
        final_mask = self._final_mask.view(-1, self.num_actions)[end_flat]
        masks[rows, after] = torch.where(has_end.unsqueeze(1), final_mask, masks[rows, after])
        return SequenceBatch(
            obs=obs,
            masks=masks,
            actions=self._actions.view(-1)[steps].long(),
            rewards=self._rewards.view(-1)[steps],
            terminated=terminated,
            truncated=truncated & ~terminated,
            valid=valid,
            h0=state[0],
            c0=state[1],
            weights=weights,
            indices=indices,
            agents=agents,
            intrinsic=self._intrinsic.view(-1)[steps],
            advice=self._advice.view(-1)[steps].long() if self.advice else None,
        )

    # ------------------------------------------------------------------ write-back
    def _locate(self, indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(slot, env, live) of sequence ids; `live` is False for sequences overwritten since sampling."""
        lo, hi = self._live_range()
        k, env = indices // self.num_envs, indices % self.num_envs
        return k % self.num_slots, env, (k >= lo) & (k < hi)

    def update_priorities(self, indices: Tensor, td_abs: Tensor, valid: Tensor) -> None:
        """R2D2 priority eta * max + (1 - eta) * mean of |TD| over valid train steps, plus eps.

        Sequences overwritten since they were sampled keep their new data's priority. A no-op (after the
        shape checks) when the buffer is not prioritized.
        """
        b = _batch_size(indices)
        check("td_abs", td_abs, (b, self.train_len), "float", what=" [B, train_len]")
        check("valid", valid, (b, self.train_len), "bool", what=" [B, train_len]")
        if not self.prioritized or b == 0:
            return
        td = td_abs.float().abs().masked_fill(~valid, 0.0)
        count = valid.sum(1).clamp(min=1)
        priority = self.priority_eta * td.amax(1) + (1 - self.priority_eta) * td.sum(1) / count
        priority = priority + self.priority_eps
        slot, env, live = self._locate(indices)
        flat = slot * self.num_envs + env
        table = self._weight.view(-1)
        new = torch.where(live, priority.pow(self.priority_alpha), table[flat])
        table.scatter_reduce_(0, flat, new, "amax", include_self=False)  # duplicates: deterministic max
        self._max_priority.copy_(torch.maximum(self._max_priority, torch.where(live, priority, 0.0).max()))


def _batch_size(indices: object) -> int:
    if not isinstance(indices, Tensor) or indices.dim() != 1:
        got = list(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
        raise ValueError(f"indices: expected a 1-D int tensor [B] of sequence ids from sample(), got {got}")
    check("indices", indices, (indices.shape[0],), "int")
    return indices.shape[0]
