"""Learning algorithms, one module per family, each implementing the `Algorithm` protocol.

`make_algorithm` is the one place that turns a run config's `algorithm` into an implementation; adding a
family means one new module and one entry in `ALGORITHMS`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from townlet.agents import ActorCritic, QNetwork, RecurrentQNetwork
from townlet.train.algos.base import Algorithm, Decision, GreedyPolicy, Step, has_memory, normalised_entropy
from townlet.train.algos.dqn import DQN
from townlet.train.algos.ppo import PPO
from townlet.train.algos.r2d2 import R2D2
from townlet.train.config import RunConfig
from townlet.world import ObsLayout, World

ALGORITHMS: dict[str, type[DQN] | type[R2D2] | type[PPO]] = {"dqn": DQN, "r2d2": R2D2, "ppo": PPO}


def build_network(config: RunConfig, layout: ObsLayout) -> nn.Module:
    """The network a run config asks for, shaped by the observation layout it will read."""
    net = config.network
    if config.algorithm == "ppo":
        return ActorCritic(layout, hidden_size=net.lstm_hidden, encoder_hidden=net.hidden, memory=has_memory(net.kind))
    if net.kind == "mlp":
        return QNetwork(layout, hidden=net.hidden, dueling=net.dueling, layer_norm=net.layer_norm)
    return RecurrentQNetwork(
        layout, hidden_size=net.lstm_hidden, encoder_hidden=net.hidden, head_hidden=net.head_hidden,
        dueling=net.dueling, memory=has_memory(net.kind),
    )


def make_algorithm(config: RunConfig, world: World) -> Algorithm:
    """The run config's algorithm, acting in `world`."""
    return ALGORITHMS[config.algorithm](config, world, build_network(config, world.obs_layout))


def make_greedy_policy(
    config: RunConfig, layout: ObsLayout, weights: dict[str, Any], device: torch.device | str = "cpu"
) -> GreedyPolicy:
    """The greedy policy of a trained network (`weights`: an algorithm state's `network`) on `layout`."""
    network = build_network(config, layout)
    network.load_state_dict(weights)
    return GreedyPolicy(network, ALGORITHMS[config.algorithm].recurrent, has_memory(config.network.kind),
                        device)


__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Decision",
    "GreedyPolicy",
    "Step",
    "build_network",
    "make_algorithm",
    "make_greedy_policy",
    "normalised_entropy",
]
