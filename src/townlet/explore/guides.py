"""Guided agents: a few of the training agents act by a scripted policy instead of the network.

Why: on the recurrent levels the greedy loop (sleep and eat until broke) never passes the Job, so the value
of working while broke is never trained where it matters, and ε-greedy, curiosity and exploring starts did
not fix that within minutes (docs/tuning.md). A scripted needs policy works before its money runs out; its
transitions in replay let the learner value that off-policy, as in learning from demonstrations (Hester et
al. 2018); with `guides.imitation` the recurrent learner also adds DQfD's large-margin loss on the guides'
sequences (`townlet.learn.large_margin_loss`), so it learns to prefer what they do. The network still
advances its memory on the guided agents' observations, so their stored LSTM states are the network's own.
Guided episodes are kept out of the training metrics, and evaluation is always the network alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from townlet.world import NUM_ACTIONS, World
from townlet.world.policies import NEEDS_POLICIES, NeedsPolicy, make_policy


class Guides:
    """The last `round(fraction * N)` agents of `world` follow the scripted `policy` (a needs policy).

    The policy runs for every agent each step, so `advice` [N] holds, after each `act`, what it chose for
    everyone: the guided agents' actions, and for the others what a guide would have done in their place
    (labels for imitation on the network's own states). With fraction 0 nobody is guided and only the
    advice is used. With `purposeful_only` the advice is `NUM_ACTIONS` (no label) where the policy has
    no purpose (`NeedsPolicy.purposeful`: a random move), so imitation learns only what can be predicted.
    """

    def __init__(
        self, world: World, fraction: float, policy: str = "needs-memory", seed: int = 0,
        purposeful_only: bool = False,
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"guides.fraction: {fraction} must be in [0, 1)")
        scripted = make_policy(policy, world, seed)
        if not isinstance(scripted, NeedsPolicy):
            raise ValueError(
                f"guides.policy: {policy!r} is not a needs policy ({', '.join(NEEDS_POLICIES)})")
        self.policy = scripted
        n = world.num_agents
        self.count = max(1, round(fraction * n)) if fraction > 0 else 0
        self.first = n - self.count  # agents first .. N-1 are guided
        self.guided = torch.arange(n, device=world.device) >= self.first  # [N] bool
        self.advice = torch.zeros(n, dtype=torch.long, device=world.device)
        self.purposeful_only = purposeful_only
        self.no_advice = NUM_ACTIONS

    def act(self, world: World, actions: Tensor) -> Tensor:
        """The network's `actions` [N], with the guided agents' replaced by the scripted policy's."""
        chosen = self.policy.act(world)
        self.advice = torch.where(self.policy.purposeful, chosen, self.no_advice) if self.purposeful_only else chosen
        return torch.where(self.guided, chosen, actions)

    def is_guided(self, agent: int) -> bool:
        return agent >= self.first

    def state_dict(self) -> dict[str, Any]:
        return self.policy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)
