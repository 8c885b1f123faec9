"""εz-greedy exploration (Dabney, Ostrovski & Barreto 2021, "Temporally-Extended ε-Greedy Exploration").

Plain ε-greedy dithers: a random step is usually undone by the next greedy one, so it rarely carries an agent
far from where the greedy policy goes. εz-greedy makes each exploratory decision *persist*: with probability ε
an agent picks a uniform valid action and repeats it for n steps, n drawn from a heavy-tailed zeta (power-law)
distribution p(n) ∝ n^-mu over 1..max_duration. Mostly n is 1 (plain ε-greedy), sometimes it is long enough to
walk across the map. Between repeats the agent is greedy. Everything is batched over agents on `device`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.learn.acting import masked_random
from townlet.learn.targets import masked_argmax


def zeta_probs(mu: float, max_duration: int, dtype: torch.dtype = torch.float64,
               device: str | torch.device = "cpu") -> Tensor:
    """[max_duration] probabilities of durations 1..max_duration: n^-mu, normalised (a truncated zeta)."""
    n = torch.arange(1, max_duration + 1, dtype=torch.float64, device=device)
    p = n.pow(-mu)
    return (p / p.sum()).to(dtype)


class EzGreedy:
    """Per-agent εz-greedy acting; `select` is called once per step with that step's Q-values and mask.

    Durations are sampled by inverse CDF: u ~ U[0, 1) from `generator`, n = 1 + #{k : cdf[k] <= u} with cdf
    the cumulative `zeta_probs(mu, max_duration)` (its last entry set to exactly 1), so n in 1..max_duration.

    State per agent: `action` (the repeated action), `remaining` (steps of the repeat still to come after the
    current one) and `duration` (the n drawn for the latest repeat; 0 before any). A repeat started at step t
    covers steps t..t+n-1 (n = 1: a single random action, as in plain ε-greedy).

    If the repeated action becomes invalid mid-repeat (e.g. it would walk into a wall), the repeat ends and the
    agent acts this step as an agent without a repeat: with probability ε a new repeat, else greedy. A repeat
    is a run of one action "until something stops it"; resampling a fresh action instead would only turn the
    rest of the repeat into a different one.
    """

    def __init__(self, num_agents: int, mu: float = 2.0, max_duration: int = 10,
                 device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> None:
        if num_agents < 1:
            raise ValueError(f"EzGreedy: num_agents must be >= 1, got {num_agents}")
        if max_duration < 1:
            raise ValueError(f"EzGreedy: max_duration must be >= 1, got {max_duration}")
        if mu < 0:
            raise ValueError(f"EzGreedy: mu must be >= 0, got {mu}")
        self.num_agents, self.mu, self.max_duration = num_agents, mu, max_duration
        self.device = torch.device(device)
        self.generator = generator
        self.probs = zeta_probs(mu, max_duration, device=self.device)
        cdf = self.probs.cumsum(0)
        cdf[-1] = 1.0  # u < 1 always finds a duration, whatever the rounding of the sum
        self._cdf = cdf
        self.action = torch.zeros(num_agents, dtype=torch.long, device=self.device)
        self.remaining = torch.zeros(num_agents, dtype=torch.long, device=self.device)
        self.duration = torch.zeros(num_agents, dtype=torch.long, device=self.device)

    def sample_durations(self, count: int) -> Tensor:
        """[count] int64 durations in 1..max_duration with P(n) ∝ n^-mu (inverse CDF, see the class)."""
        u = torch.rand(count, dtype=torch.float64, generator=self.generator, device=self.device)
        return torch.searchsorted(self._cdf, u, right=True) + 1

    @torch.no_grad()
    def select(self, q: Tensor, mask: Tensor, epsilon: float | Tensor, first: Tensor) -> Tensor:
        """[N] int64 actions for q [N, A], mask [N, A] bool, epsilon (float or [N]) and first [N] bool.

        `first` marks agents whose episode starts at this step: any repeat they had ends before choosing.
        An agent in a repeat whose action is valid keeps it; any other agent starts a repeat with probability
        ε (a uniform valid action, n from the zeta distribution), else acts greedily over the valid actions.
        """
        n = self.num_agents
        if q.dim() != 2 or q.shape[0] != n:
            raise ValueError(f"EzGreedy.select: q must have shape ({n}, A), got {tuple(q.shape)}")
        if mask.shape != q.shape:
            raise ValueError(f"EzGreedy.select: mask must have q's shape {tuple(q.shape)}, got {tuple(mask.shape)}")
        if first.shape != (n,):
            raise ValueError(f"EzGreedy.select: first must have shape ({n},), got {tuple(first.shape)}")
        if isinstance(epsilon, Tensor) and epsilon.dim() > 0 and epsilon.shape != (n,):
            raise ValueError(f"EzGreedy.select: epsilon must be a float or shape ({n},), got {tuple(epsilon.shape)}")
        mask = mask.to(self.device).bool()
        greedy = masked_argmax(q.to(self.device), mask)
        random_action = masked_random(mask, self.generator)
        start_draw = torch.rand(n, generator=self.generator, device=self.device)
        durations = self.sample_durations(n)
        eps = epsilon.to(self.device) if isinstance(epsilon, Tensor) else epsilon

        in_range = self.action < mask.shape[1]  # e.g. a checkpoint from a larger action space
        still_valid = in_range & mask.gather(1, self.action.clamp(max=mask.shape[1] - 1).unsqueeze(1)).squeeze(1)
        repeating = (self.remaining > 0) & still_valid & ~first.to(self.device).bool()
        start = ~repeating & (start_draw < eps)
        actions = torch.where(repeating, self.action, torch.where(start, random_action, greedy))
        self.remaining = torch.where(repeating, self.remaining - 1, torch.where(start, durations - 1, 0))
        self.duration = torch.where(start, durations, self.duration)
        self.action = actions
        return actions

    def state_dict(self) -> dict[str, Tensor]:
        """The repeats in progress (the generator is the caller's, as with `masked_epsilon_greedy`)."""
        return {"action": self.action.clone(), "remaining": self.remaining.clone(), "duration": self.duration.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("action", "remaining", "duration"):
            value = state[name]
            if value.shape != (self.num_agents,):
                raise ValueError(f"EzGreedy state: {name} must have shape ({self.num_agents},), "
                                 f"got {tuple(value.shape)}")
        self.action = state["action"].to(self.device, torch.long).clone()
        self.remaining = state["remaining"].to(self.device, torch.long).clone()
        self.duration = state["duration"].to(self.device, torch.long).clone()
