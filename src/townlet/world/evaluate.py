"""Run a policy for a fixed number of episodes on a batched world and summarise survival."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from townlet.world.config import LevelConfig
from townlet.world.engine import World
from townlet.world.policies import make_policy, scripted_policies

ActFn = Callable[[torch.Tensor, World], torch.Tensor]

# two-sided 95% Student t quantiles by degrees of freedom; beyond the table, `t95` uses an expansion
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
_Z975 = 1.959963984540054  # the normal 0.975 quantile


def t95(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom: a 95% interval's half-width factor.

    Tabulated up to 10 degrees of freedom; above, the Cornish-Fisher expansion in 1/df (Abramowitz & Stegun
    26.7.5), within 1e-4 of the exact quantile there and tending to the normal 1.96.
    """
    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    if df in _T95:
        return _T95[df]
    z = _Z975
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(g / df**k for k, g in enumerate(terms, start=1))


def mean_ci95(values: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """(mean, half-width) of the Student-t 95% confidence interval for the mean of `values`.

    The half-width is NaN for fewer than two values (no spread to estimate); the mean is NaN for none.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    n = len(arr)
    if n == 0:
        return math.nan, math.nan
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan
    return mean, t95(n - 1) * float(arr.std(ddof=1)) / math.sqrt(n)


def survival_summary(
    lengths: Sequence[float] | np.ndarray | torch.Tensor, cap: float | None = None
) -> dict[str, Any]:
    """Episode lengths summarised: `episodes`, `survival_mean`, `survival_median`, `survival_p10`,
    `survival_ci95` ([lo, hi], the Student-t 95% interval of the mean, see `mean_ci95`) and `cap_rate`
    (the fraction of episodes that reached `cap` ticks; None without a cap).

    One episode gives a NaN interval [nan, nan]; no episodes give NaN statistics (and a cap rate of NaN).
    """
    arr = np.asarray(lengths, dtype=np.float64).reshape(-1)
    n = len(arr)
    mean, half = mean_ci95(arr)
    empty = n == 0
    return {
        "episodes": n,
        "survival_mean": mean,
        "survival_median": math.nan if empty else float(np.median(arr)),
        "survival_p10": math.nan if empty else float(np.quantile(arr, 0.10)),
        "survival_ci95": [mean - half, mean + half],
        "cap_rate": None if cap is None else math.nan if empty else float((arr >= cap).mean()),
    }


@dataclass(frozen=True)
class EpisodeStats:
    """Per-episode results (CPU tensors) and the rate of invalid actions over all steps taken."""

    lengths: torch.Tensor  # [E] float
    returns: torch.Tensor  # [E] float
    causes: torch.Tensor  # [E] long, index into cause_names
    cause_names: tuple[str, ...]
    invalid_rate: float
    max_steps: int
    uses_per_episode: dict[str, float]  # completed uses of each affordance, per counted episode

    def summary(self) -> dict[str, object]:
        """`survival_summary` of the lengths (capped at `max_steps`), then `return_mean`, `causes` (episodes
        ended by each cause), `invalid_rate` and `uses_per_episode`."""
        counts = torch.bincount(self.causes, minlength=len(self.cause_names))
        return {
            **survival_summary(self.lengths, self.max_steps),
            "return_mean": self.returns.mean().item(),
            "causes": {name: int(counts[i]) for i, name in enumerate(self.cause_names) if name != "running"},
            "invalid_rate": self.invalid_rate,
            "uses_per_episode": dict(self.uses_per_episode),
        }


def run_episodes(
    world: World,
    act: ActFn,
    episodes: int,
    on_step: Callable[[dict[str, torch.Tensor]], None] | None = None,
    check_every: int = 64,
) -> EpisodeStats:
    """Reset `world`, then step it with `act(obs, world)` until `episodes` episodes have ended.

    Each agent contributes its first ceil(episodes / N) episodes, so long episodes are not under-counted by
    stopping early; results are recorded on the device and synced only every `check_every` steps.
    `on_step(info)` lets a recurrent agent reset its memory for agents whose episode ended.
    """
    n, dev = world.num_agents, world.device
    quota = math.ceil(episodes / n)
    lengths = torch.zeros(n, quota + 1, device=dev)
    returns = torch.zeros(n, quota + 1, device=dev)
    causes = torch.zeros(n, quota + 1, dtype=torch.long, device=dev)
    finished = torch.zeros(n, dtype=torch.long, device=dev)
    invalid = torch.zeros((), dtype=torch.long, device=dev)
    uses = torch.zeros(world.num_affordances + 1, device=dev)  # slot 0: no affordance
    steps = 0
    obs = world.reset()
    while True:
        here = world.affordance_here() + 1
        obs, _, _, _, info = world.step(act(obs, world))
        if on_step is not None:
            on_step(info)
        done = info["done"]
        slot = finished.clamp(max=quota).view(-1, 1)  # slot `quota` collects episodes past the quota
        for store, value in ((lengths, info["episode_length"].float()), (returns, info["episode_return"]),
                             (causes, info["cause"])):
            store.scatter_(1, slot, torch.where(done, value, store.gather(1, slot).squeeze(1)).view(-1, 1))
        invalid += (info["invalid"] & (finished < quota)).sum()
        uses.index_add_(0, here, (info["completed"] & (finished < quota)).float())
        finished += done.long()
        steps += 1
        if steps % check_every == 0 and bool((finished >= quota).all()):
            break
    # Episode-major order: every agent's first episode, then every agent's second, ...
    flat_l = lengths[:, :quota].T.reshape(-1)[:episodes].cpu()
    flat_r = returns[:, :quota].T.reshape(-1)[:episodes].cpu()
    flat_c = causes[:, :quota].T.reshape(-1)[:episodes].cpu()
    agent_steps = lengths[:, :quota].sum().item()
    return EpisodeStats(
        lengths=flat_l,
        returns=flat_r,
        causes=flat_c,
        cause_names=world.CAUSES,
        invalid_rate=invalid.item() / max(agent_steps, 1.0),
        max_steps=world.config.max_steps,
        uses_per_episode={a.name: u / (n * quota) for a, u in zip(world.config.affordances, uses[1:].tolist(),
                                                                   strict=True)},
    )


def scripted_stats(
    level: LevelConfig, episodes: int, agents: int, seed: int, device: str | torch.device = "cpu"
) -> dict[str, dict[str, object]]:
    """`EpisodeStats.summary` of every scripted policy of `level` (`scripted_policies`), by name: each plays
    `episodes` episodes on its own `World(level, agents, seed=seed)` from the same start."""
    out = {}
    for name in scripted_policies(level):
        world = World(level, agents, device=device, seed=seed)
        policy = make_policy(name, world, seed)
        out[name] = run_episodes(world, lambda obs, w, p=policy: p.act(w), episodes).summary()
    return out
