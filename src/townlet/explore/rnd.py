"""Random Network Distillation (Burda et al., 2018): curiosity as the error of a trained predictor at
imitating a fixed random network, which stays high on observations unlike those it was trained on.

The intrinsic reward of a transition scores the observation it leads to: `reward(next_obs)`. Everything
stays on `device` and no call synchronises with it (no `.item()`), so `reward` can run every step over all
agents and `update` with every learner batch.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

_EPS = 1e-8


class RunningMeanStd:
    """Running mean and (population) variance of a stream of `[B, *shape]` batches, merged batch by batch
    with the parallel form of Welford's algorithm (Chan et al.), on `device`.

    Statistics are kept in float64 (counts reach billions of agent-steps); `mean`, `var` and `std` are
    returned as float32. Before the first update mean is 0 and var 1 (with a tiny prior count), so
    normalising by them is harmless.
    """

    def __init__(self, shape: tuple[int, ...] = (), device: str | torch.device = "cpu", epsilon: float = 1e-4) -> None:
        self.shape = tuple(shape)
        self.device = dev = torch.device(device)
        self._mean = torch.zeros(self.shape, dtype=torch.float64, device=dev)
        self._var = torch.ones(self.shape, dtype=torch.float64, device=dev)
        self._count = torch.full((), epsilon, dtype=torch.float64, device=dev)

    def update(self, x: Tensor) -> None:
        """Merge a batch `x` [B, *shape] (B >= 1) into the statistics."""
        if tuple(x.shape[1:]) != self.shape or x.shape[0] < 1:
            raise ValueError(f"RunningMeanStd.update: expected [B >= 1, {', '.join(map(str, self.shape))}], "
                             f"got {list(x.shape)}")
        x = x.detach().to(torch.float64)
        batch_var, batch_mean = torch.var_mean(x, dim=0, correction=0)
        n = x.shape[0]
        total = self._count + n
        delta = batch_mean - self._mean
        m2 = self._var * self._count + batch_var * n + delta.square() * (self._count * n / total)
        self._mean.add_(delta * (n / total))
        self._var.copy_(m2 / total)
        self._count.copy_(total)

    @property
    def mean(self) -> Tensor:
        return self._mean.float()

    @property
    def var(self) -> Tensor:
        return self._var.float()

    @property
    def std(self) -> Tensor:
        """sqrt(var + 1e-8): never zero, so it can always divide."""
        return (self._var + _EPS).sqrt().float()

    @property
    def count(self) -> Tensor:
        """Samples merged so far (plus the tiny prior count), a float64 scalar tensor."""
        return self._count

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self._mean.clone(), "var": self._var.clone(), "count": self._count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, dst in (("mean", self._mean), ("var", self._var), ("count", self._count)):
            src = state[name]
            if src.shape != dst.shape:
                raise ValueError(f"RunningMeanStd state {name!r}: expected shape {list(dst.shape)}, "
                                 f"got {list(src.shape)}")
            dst.copy_(src)


def _mlp(sizes: list[int], generator: torch.Generator) -> nn.Sequential:
    """Linear layers with LeakyReLU between them; orthogonal weights (gain sqrt 2) and zero biases, as in RND.

    Built on the meta device and initialised from `generator` only, so the global RNG is left untouched."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(fan_in, fan_out, device="meta").to_empty(device="cpu")
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2.0), generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU())
    return nn.Sequential(*layers)


class RND:
    """Random Network Distillation over flat observations `[N, obs_dim]`.

    A fixed random `target` MLP (obs_dim -> hidden -> embed, never trained) and a deeper trained `predictor`
    (obs_dim -> hidden -> hidden -> embed) read the observation normalised by a running mean/std and clipped
    to +-obs_clip. The novelty of an observation is the predictor's squared error, averaged over the embed
    dimensions; it falls for observations the predictor is trained on and stays high for the rest.

    `reward(next_obs)` returns that error divided by a running std of the errors it has returned (the RND
    paper's non-episodic reward normalisation, simplified: the scale of the rewards themselves rather than
    of their discounted returns), so intrinsic rewards keep a roughly unit scale while the predictor learns
    and a fixed intrinsic weight means the same thing all run long. It also merges `next_obs` into the
    observation statistics. `update(obs)` takes one Adam step of the predictor on a batch, e.g. the
    `next_obs` of each learner batch; only the first `update_proportion` of the rows is used (RND used 25%
    with many environments to slow the predictor down; a replay batch is already a uniform sample, so a
    prefix is a random subset).

    Initialisation is seeded on the CPU and moved to `device`, so the same seed gives the same networks on
    every device.
    """

    def __init__(
        self,
        obs_dim: int,
        *,
        hidden: int = 256,
        embed: int = 64,
        lr: float = 1e-4,
        obs_clip: float = 5.0,
        device: str | torch.device = "cpu",
        seed: int = 0,
        update_proportion: float = 1.0,
    ) -> None:
        for name, value in (("obs_dim", obs_dim), ("hidden", hidden), ("embed", embed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if not lr > 0 or not obs_clip > 0:
            raise ValueError(f"lr and obs_clip must be > 0, got lr={lr}, obs_clip={obs_clip}")
        if not 0.0 < update_proportion <= 1.0:
            raise ValueError(f"update_proportion: expected a fraction in (0, 1], got {update_proportion}")
        self.obs_dim, self.hidden, self.embed = obs_dim, hidden, embed
        self.obs_clip, self.update_proportion = obs_clip, update_proportion
        self.device = dev = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        self.target = _mlp([obs_dim, hidden, embed], gen).to(dev)
        self.target.requires_grad_(False)
        self.target.eval()
        self.predictor = _mlp([obs_dim, hidden, hidden, embed], gen).to(dev)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=lr)
        self.obs_rms = RunningMeanStd((obs_dim,), dev)
        self.reward_rms = RunningMeanStd((), dev)

    # ------------------------------------------------------------------ scoring
    def normalize(self, obs: Tensor) -> Tensor:
        """(obs - mean) / std with the current statistics, clipped to +-obs_clip (no statistics update)."""
        return ((obs - self.obs_rms.mean) / self.obs_rms.std).clamp(-self.obs_clip, self.obs_clip)

    def _check(self, name: str, obs: Tensor) -> None:
        if not isinstance(obs, Tensor) or obs.dim() != 2 or obs.shape[1] != self.obs_dim or obs.shape[0] < 1:
            got = list(obs.shape) if isinstance(obs, Tensor) else type(obs).__name__
            raise ValueError(f"{name}: expected a float tensor [N >= 1, {self.obs_dim}], got {got}")

    def _error(self, obs: Tensor) -> Tensor:
        """Squared prediction error of normalised `obs`, mean over the embed dims: [N]."""
        x = self.normalize(obs)
        return (self.predictor(x) - self.target(x)).square().mean(-1)

    @torch.no_grad()
    def novelty(self, obs: Tensor) -> Tensor:
        """Raw (unnormalised) prediction error of `obs` [N, D] -> [N]; updates no statistics."""
        self._check("obs", obs)
        return self._error(obs.float())

    @torch.no_grad()
    def reward(self, next_obs: Tensor, *, update_stats: bool = True) -> Tensor:
        """Intrinsic rewards [N] of transitions into `next_obs` [N, D] (the true next observation: the
        episode's final one where it ended). With `update_stats` (collection) `next_obs` is first merged
        into the observation statistics and the raw errors into the reward statistics; pass False to score
        without changing anything (evaluation)."""
        self._check("next_obs", next_obs)
        next_obs = next_obs.float()
        if update_stats:
            self.obs_rms.update(next_obs)
        error = self._error(next_obs)
        if update_stats:
            self.reward_rms.update(error)
        return error / self.reward_rms.std

    # ------------------------------------------------------------------ training
    def update(self, obs: Tensor) -> dict[str, Tensor]:
        """One predictor gradient step on `obs` [B, D] (normalised with the current statistics, which this
        does not change). Returns detached stats: `loss` (the mean raw error of the rows used)."""
        self._check("obs", obs)
        used = max(1, int(obs.shape[0] * self.update_proportion))
        loss = self._error(obs[:used].float()).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, object]:
        """Networks, optimizer and running statistics: tensors and plain containers only, so
        `torch.load(weights_only=True)` reads it."""
        return {
            "target": self.target.state_dict(),
            "predictor": self.predictor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_rms": self.obs_rms.state_dict(),
            "reward_rms": self.reward_rms.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore a `state_dict()` of an RND built with the same sizes (onto this one's device)."""
        self.target.load_state_dict(state["target"])  # type: ignore[arg-type]
        self.predictor.load_state_dict(state["predictor"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.obs_rms.load_state_dict(state["obs_rms"])  # type: ignore[arg-type]
        self.reward_rms.load_state_dict(state["reward_rms"])  # type: ignore[arg-type]
