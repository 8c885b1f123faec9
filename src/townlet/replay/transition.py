"""Uniform n-step transition replay for DQN-style learners.

Storage is a time-major ring `[rows, num_envs]`: one `add` writes one row (a step of every agent), and each
agent's stream is a column, so an n-step return is a look-ahead down the column computed at sample time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from townlet.replay.compact import CompactObs, RingState, action_dtype, check, check_sample_args, nbytes
from townlet.world.observation import ObsLayout


@dataclass
class TransitionBatch:
    """n-step transitions: target = rewards + gamma**steps * V(next_obs), without the V term if terminated.

    `terminated` and `truncated` are exclusive: a step that is both counts as terminated (no bootstrap).
    """

    obs: Tensor  # [B, D] float32
    actions: Tensor  # [B] int64
    rewards: Tensor  # [B] float32, discounted sum of `steps` rewards
    next_obs: Tensor  # [B, D] float32, obs `steps` later, or the episode's final obs if it ended sooner
    next_mask: Tensor  # [B, A] bool, action mask of next_obs
    terminated: Tensor  # [B] bool, the episode terminated within the window: do not bootstrap
    truncated: Tensor  # [B] bool, the episode was truncated within the window: bootstrap from next_obs
    steps: Tensor  # [B] int64, rewards summed (1..n); the bootstrap discount is gamma**steps
    weights: Tensor  # [B] float32 importance weights (ones: uniform sampling)
    indices: Tensor  # [B] int64 flat storage indices row * num_envs + env
    agents: Tensor  # [B] int64 the agent (env) each transition came from
    # [B] float32, discounted sum of the intrinsic rewards of the same `steps` steps as `rewards` (None in
    # hand-built batches); mix with `townlet.replay.with_intrinsic(batch, weight)`
    intrinsic: Tensor | None = field(default=None)


class TransitionReplay(RingState):
    """Preallocated ring of transitions from `num_envs` agents stepping in lockstep.

    `capacity` counts transitions (agent-steps); it is rounded down to a multiple of `num_envs`. A stored
    transition becomes sampleable once the n-1 steps after it are stored too (the newest n-1 rows wait), so
    every sampled window is complete and never mixes in overwritten data.
    """

    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs: ObsLayout | int,
        *,
        num_actions: int = 5,
        n_step: int = 1,
        gamma: float = 0.99,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        if n_step < 1:
            raise ValueError(f"n_step: expected >= 1, got {n_step}")
        if num_actions < 1:
            raise ValueError(f"num_actions: expected >= 1, got {num_actions}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma: expected a discount in [0, 1], got {gamma}")
        rows = capacity // num_envs
        if rows < n_step:
            raise ValueError(
                f"capacity: {capacity} holds {rows} steps of {num_envs} agents; need at least n_step={n_step}"
            )
        self.device = torch.device(device)
        self.num_envs, self.num_actions, self.n_step, self.gamma = num_envs, num_actions, n_step, gamma
        self.rows = rows
        self.capacity = rows * num_envs
        self.obs_dim = obs.dim if isinstance(obs, ObsLayout) else obs
        dev = self.device
        self._obs = CompactObs(rows, num_envs, obs, dev)
        # next_obs is stored whole: where an episode ended it is the final obs, not the next row's reset obs
        self._next_obs = CompactObs(rows, num_envs, obs, dev)
        self._next_mask = torch.zeros(rows, num_envs, num_actions, dtype=torch.bool, device=dev)
        self._actions = torch.zeros(rows, num_envs, dtype=action_dtype(num_actions), device=dev)
        self._rewards = torch.zeros(rows, num_envs, dtype=torch.float32, device=dev)
        self._intrinsic = torch.zeros(rows, num_envs, dtype=torch.float32, device=dev)
        self._terminated = torch.zeros(rows, num_envs, dtype=torch.bool, device=dev)
        self._truncated = torch.zeros(rows, num_envs, dtype=torch.bool, device=dev)
        self._offsets = torch.arange(n_step, device=dev)
        self._discounts = torch.tensor([gamma**k for k in range(n_step)], dtype=torch.float32, device=dev)
        self._total = 0  # steps ever added; host-side so len() and sample() never sync with the device

    def _buffers(self) -> dict[str, Tensor]:
        return {
            **self._obs.buffers("obs"),
            **self._next_obs.buffers("next_obs"),
            "next_mask": self._next_mask,
            "actions": self._actions,
            "rewards": self._rewards,
            "terminated": self._terminated,
            "truncated": self._truncated,
            "offsets": self._offsets,
            "discounts": self._discounts,
            "intrinsic": self._intrinsic,
        }

    def _ring_axes(self, total: int) -> dict[str, tuple[int, int]]:
        written = min(total, self.rows)
        return {name: (0, written) for name in self._buffers() if name not in ("offsets", "discounts")}

    @property
    def nbytes(self) -> int:
        """Bytes of all preallocated tensors (observations compact: int8 discrete fields)."""
        return nbytes(self._buffers().values())

    def _sampleable_rows(self) -> int:
        return max(0, min(self._total, self.rows) - (self.n_step - 1))

    def __len__(self) -> int:
        return self._sampleable_rows() * self.num_envs

    def add(
        self,
        obs: Tensor,
        mask: Tensor,
        actions: Tensor,
        rewards: Tensor,
        next_obs: Tensor,
        next_mask: Tensor,
        terminated: Tensor,
        truncated: Tensor,
        *,
        intrinsic: Tensor | None = None,
    ) -> None:
        """Store one environment step of all `num_envs` agents.

        next_obs/next_mask: the world's returned obs for agents that continue, `final_obs`/`final_mask` for
        agents whose episode ended at this step. `mask` (the mask of `obs`) is checked but not stored: no
        learner target needs it. `intrinsic` [N] float: the step's intrinsic (curiosity) rewards, stored apart
        from the extrinsic `rewards` (zeros when omitted).
        """
        n, d, a = self.num_envs, self.obs_dim, self.num_actions
        check("obs", obs, (n, d), "float")
        check("mask", mask, (n, a), "bool")
        check("actions", actions, (n,), "int")
        check("rewards", rewards, (n,), "float")
        check("next_obs", next_obs, (n, d), "float")
        check("next_mask", next_mask, (n, a), "bool")
        check("terminated", terminated, (n,), "bool")
        check("truncated", truncated, (n,), "bool")
        if intrinsic is not None:
            check("intrinsic", intrinsic, (n,), "float")
        row = self._total % self.rows
        self._obs.write(row, obs)
        self._next_obs.write(row, next_obs)
        self._next_mask[row].copy_(next_mask)
        self._actions[row].copy_(actions)
        self._rewards[row].copy_(rewards)
        if intrinsic is None:
            self._intrinsic[row].zero_()
        else:
            self._intrinsic[row].copy_(intrinsic)
        self._terminated[row].copy_(terminated)
        self._truncated[row].copy_(truncated)
        self._total += 1

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TransitionBatch:
        """Uniformly sample complete n-step transitions, with replacement; `generator` must be on `device`."""
        available = len(self)
        check_sample_args(batch_size, available, "TransitionReplay")
        n_env = self.num_envs
        u = torch.randint(available, (batch_size,), generator=generator, device=self.device)
        oldest = max(0, self._total - self.rows)  # global step of the oldest stored row
        row = (u // n_env + oldest) % self.rows
        env = u % n_env
        flat = row * n_env + env
        obs = self._obs.gather(flat)
        actions = self._actions.view(-1)[flat].long()
        if self.n_step == 1:
            last = flat
            rewards = self._rewards.view(-1)[flat]
            intrinsic = self._intrinsic.view(-1)[flat]
            steps = torch.ones(batch_size, dtype=torch.int64, device=self.device)
        else:
            window = ((row.unsqueeze(1) + self._offsets) % self.rows) * n_env + env.unsqueeze(1)  # [B, n]
            done = self._terminated.view(-1)[window] | self._truncated.view(-1)[window]
            ended_before = done.cumsum(1) - done.long()  # episode ends strictly before each step
            alive = ended_before == 0  # the step still belongs to the sampled transition's episode
            steps = alive.sum(1)
            last = window.gather(1, (steps - 1).unsqueeze(1)).squeeze(1)
            weight = self._discounts * alive  # [B, n]: gamma**k on the steps of the episode, 0 after its end
            rewards = (self._rewards.view(-1)[window] * weight).sum(1)
            intrinsic = (self._intrinsic.view(-1)[window] * weight).sum(1)
        terminated = self._terminated.view(-1)[last]
        return TransitionBatch(
            obs=obs,
            actions=actions,
            rewards=rewards,
            next_obs=self._next_obs.gather(last),
            next_mask=self._next_mask.view(-1, self.num_actions)[last],
            terminated=terminated,
            truncated=self._truncated.view(-1)[last] & ~terminated,
            steps=steps,
            weights=torch.ones(batch_size, dtype=torch.float32, device=self.device),
            indices=flat,
            agents=env,
            intrinsic=intrinsic,
        )
