"""Greedy evaluation of a trained agent at full difficulty, beside the scripted reference policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from townlet.train.algos import GreedyPolicy
from townlet.train.rundir import open_run
from townlet.world import LevelConfig, World, load_level, run_episodes
from townlet.world.evaluate import scripted_stats


def greedy_stats(
    policy: GreedyPolicy, level: LevelConfig, episodes: int, agents: int, seed: int, device: str = "cpu",
    wipe_memory: bool = False,
) -> dict[str, Any]:
    """Masked greedy play for `episodes` episodes at full difficulty (depletion 1, the level's reward).

    `wipe_memory` starts a recurrent agent's memory afresh before every step instead of at episode starts,
    so it acts on the current observation alone: the gap to normal play is what its memory is worth to it.
    """
    world = World(level, agents, device=device, seed=seed)
    policy.reset()
    first = torch.ones(agents, dtype=torch.bool, device=world.device)

    def act(obs: torch.Tensor, w: World) -> torch.Tensor:
        return policy.act(obs, w.action_mask(), first)

    def episode_starts(info: dict[str, torch.Tensor]) -> None:
        nonlocal first
        first = first if wipe_memory else info["done"]

    return run_episodes(world, act, episodes, on_step=episode_starts).summary()


def evaluate(
    path: Path, episodes: int = 1000, level: str | None = None, agents: int = 250, seed: int = 12345,
    device: str = "cpu", scripted: bool = True,
) -> dict[str, Any]:
    """The eval JSON: the checkpoint evaluated (`checkpoint`, its `checkpoint_step`, and the newer files that
    could not be read under `skipped_checkpoints`), the agent's summary (episodes, survival_mean/median/p10,
    ci95, cap_rate, causes, invalid_rate) at the top level, for an agent with memory the same with its memory
    wiped every step under `memory_wiped`, and the scripted policies under `scripted`."""
    run = open_run(Path(path))
    level_config = load_level(level) if level else run.level
    policy = run.policy(device, level_config)
    result: dict[str, Any] = {
        "level": level_config.name, "checkpoint": str(run.checkpoint), "checkpoint_step": run.step,
        "skipped_checkpoints": [{"path": str(p), "reason": why} for p, why in run.skipped], "seed": seed,
    }
    agents = min(agents, episodes)
    result.update(greedy_stats(policy, level_config, episodes, agents, seed, device))
    if policy.memory:
        result["memory_wiped"] = greedy_stats(policy, level_config, episodes, agents, seed, device, wipe_memory=True)
    if scripted:
        result["scripted"] = scripted_stats(level_config, episodes, agents, seed, device)
    return result
