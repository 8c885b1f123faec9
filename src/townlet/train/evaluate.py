"""Greedy evaluation of a trained agent at full difficulty, beside the scripted reference policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from townlet.learn import RecurrentActor, masked_greedy
from townlet.train.config import RunConfig
from townlet.train.runner import build_network, load_for_eval
from townlet.world import LevelConfig, World, load_level, make_policy, run_episodes, scripted_policies


def load_agent(
    path: Path, level: str | Path | None = None, device: str = "cpu"
) -> tuple[RunConfig, LevelConfig, torch.nn.Module]:
    """(run config, level, online network in eval mode) from a run directory or a checkpoint file."""
    config, state = load_for_eval(Path(path))
    # the level the agent was trained on travels in the checkpoint, so a moved level file does not matter
    level_config = load_level(level) if level else LevelConfig.model_validate(state["level"])
    probe = World(level_config, 1, device=device)
    network = build_network(config, probe).to(device)
    network.load_state_dict(state["learner"]["online"])
    network.eval()
    return config, level_config, network


def greedy_stats(
    network: torch.nn.Module, config: RunConfig, level: LevelConfig, episodes: int, agents: int, seed: int,
    device: str = "cpu", wipe_memory: bool = False,
) -> dict[str, Any]:
    """Masked greedy play for `episodes` episodes at full difficulty (depletion 1, the level's reward).

    `wipe_memory` zeroes a recurrent agent's LSTM state before every step instead of at episode starts, so
    it acts on the current observation alone: the gap to normal play is what its memory is worth to it.
    """
    world = World(level, agents, device=device, seed=seed)
    if config.network.kind != "mlp":  # lstm and feedforward act through the sequence network
        actor = RecurrentActor(network, agents, device)
        everyone = torch.ones(agents, dtype=torch.bool, device=device)

        def act(obs: torch.Tensor, w: World) -> torch.Tensor:
            return actor.act(obs, w.action_mask(), 0.0).actions

        def forget(info: dict[str, torch.Tensor]) -> None:
            actor.reset(everyone if wipe_memory else info["done"])

        stats = run_episodes(world, act, episodes, on_step=forget)
    else:

        @torch.no_grad()
        def act(obs: torch.Tensor, w: World) -> torch.Tensor:
            return masked_greedy(network(obs), w.action_mask())

        stats = run_episodes(world, act, episodes)
    return stats.summary()


def memory_wiped_stats(
    network: torch.nn.Module, config: RunConfig, level: LevelConfig, episodes: int, agents: int, seed: int,
    device: str = "cpu",
) -> dict[str, Any] | None:
    """`greedy_stats` with the memory wiped before every step for an LSTM agent; None for one without memory."""
    if config.network.kind != "lstm":
        return None
    return greedy_stats(network, config, level, episodes, agents, seed, device, wipe_memory=True)


def scripted_stats(level: LevelConfig, episodes: int, agents: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    out = {}
    for name in scripted_policies(level):
        world = World(level, agents, device=device, seed=seed)
        policy = make_policy(name, world, seed)
        out[name] = run_episodes(world, lambda obs, w, p=policy: p.act(w), episodes).summary()
    return out


def evaluate(
    path: Path, episodes: int = 1000, level: str | None = None, agents: int = 250, seed: int = 12345,
    device: str = "cpu", scripted: bool = True,
) -> dict[str, Any]:
    """The eval JSON: the agent's summary (episodes, survival_mean/median/p10, ci95, cap_rate, causes,
    invalid_rate) at the top level, for an LSTM agent the same with its memory wiped every step under
    `memory_wiped`, and the scripted policies under `scripted`."""
    config, level_config, network = load_agent(path, level, device)
    result: dict[str, Any] = {"level": level_config.name, "checkpoint": str(path), "seed": seed}
    agents = min(agents, episodes)
    result.update(greedy_stats(network, config, level_config, episodes, agents, seed, device))
    wiped = memory_wiped_stats(network, config, level_config, episodes, agents, seed, device)
    if wiped is not None:
        result["memory_wiped"] = wiped
    if scripted:
        result["scripted"] = scripted_stats(level_config, episodes, agents, seed, device)
    return result
