"""Acting for N agents at once: masked greedy / ε-greedy, and the recurrent actor's rollout memory.

A masked action is never chosen; a random action is uniform over the valid ones. The recurrent actor owns
its [layers, N, H] state tensors: learner updates never touch them, and only agents whose episode ended are
reset.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from townlet.agents.networks import LSTMState, RecurrentQNetwork
from townlet.learn.targets import masked_argmax


def masked_greedy(q: Tensor, mask: Tensor) -> Tensor:
    """[N] int64: the best valid action per row of q [N, A]."""
    return masked_argmax(q, mask)


def masked_random(mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """[N] int64: uniform over each row's valid actions (all actions where none is valid)."""
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    u = torch.rand(mask.shape, generator=generator, device=mask.device)
    return torch.where(mask, u, -1.0).argmax(dim=-1)


def masked_epsilon_greedy(
    q: Tensor, mask: Tensor, epsilon: float | Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """[N] int64: with probability ε (a float, or [N] per agent) a uniform valid action, else greedy."""
    greedy = masked_greedy(q, mask)
    if isinstance(epsilon, float | int) and epsilon <= 0.0:
        return greedy
    explore = torch.rand(q.shape[:-1], generator=generator, device=q.device) < epsilon
    return torch.where(explore, masked_random(mask, generator), greedy)


class RecurrentStep(NamedTuple):
    actions: Tensor  # [N] int64
    q: Tensor  # [N, A]
    h: Tensor  # [layers, N, H]: the state BEFORE this observation (what replay stores)
    c: Tensor


class RecurrentActor:
    """Masked ε-greedy acting with a RecurrentQNetwork, carrying each agent's LSTM state across steps.

    Per env step: `step = actor.act(obs, mask, eps)`; store (obs, ..., step.h, step.c) in replay; after the
    env step, `actor.reset(done)`. The state tensors are replaced, never modified in place, so a returned
    state stays valid; nothing here is shared with the learner except the network weights.
    """

    def __init__(
        self,
        network: RecurrentQNetwork,
        num_agents: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.network = network
        self.num_agents = num_agents
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.generator = generator
        self.h, self.c = network.initial_state(num_agents, self.device)

    @property
    def state(self) -> LSTMState:
        """The current rollout state (before the next observation)."""
        return self.h, self.c

    @torch.no_grad()
    def act(self, obs: Tensor, mask: Tensor, epsilon: float | Tensor = 0.0) -> RecurrentStep:
        """Advance every agent's memory by obs [N, D] and pick actions among the valid ones."""
        h, c = self.h, self.c
        q, (self.h, self.c) = self.network(obs.unsqueeze(1), (h, c))
        q = q.squeeze(1)
        return RecurrentStep(masked_epsilon_greedy(q, mask, epsilon, self.generator), q, h, c)

    def reset(self, done: Tensor) -> None:
        """Zero the memory of the agents whose episode ended (done [N] bool); others keep theirs."""
        keep = (~done.bool()).view(1, -1, 1)
        self.h = torch.where(keep, self.h, 0.0)
        self.c = torch.where(keep, self.c, 0.0)
