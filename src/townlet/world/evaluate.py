"""Run a policy for a fixed number of episodes on a batched world and summarise survival."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from townlet.world.engine import World

ActFn = Callable[[torch.Tensor, World], torch.Tensor]


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
        n = self.lengths.numel()
        mean = self.lengths.mean().item()
        std = self.lengths.std().item() if n > 1 else 0.0
        half = 1.96 * std / math.sqrt(n) if n > 1 else 0.0
        counts = torch.bincount(self.causes, minlength=len(self.cause_names))
        return {
            "episodes": n,
            "survival_mean": mean,
            "survival_median": self.lengths.median().item(),
            "survival_p10": torch.quantile(self.lengths, 0.10).item(),
            "survival_ci95": [mean - half, mean + half],
            "cap_rate": (self.lengths >= self.max_steps).float().mean().item(),
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
