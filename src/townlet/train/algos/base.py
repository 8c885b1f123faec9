"""The one shape every learning algorithm has, so the training loop never asks which one it runs.

An algorithm owns everything that learns: its network(s), how it acts (exploration included), what it
remembers (replay or rollouts) and how it updates. The loop hands it observations and finished steps; the
evaluation, `watch`, `report` and the Gymnasium/SB3 adapters use its `GreedyPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from townlet.agents import ActorCritic
from townlet.explore import IntrinsicAnnealing
from townlet.learn import RecurrentActor, masked_greedy
from townlet.train.config import RunConfig
from townlet.world import NUM_ACTIONS, World


@dataclass(frozen=True)
class Step:
    """One world step of every agent, as the loop hands it to the algorithm.

    `next_obs`/`next_mask` are what the agents see next (a new episode's first observation where `done`);
    `final_obs`/`final_mask` are the true next observation of each transition (the last one of an ended
    episode, which a truncation bootstraps from).
    """

    obs: Tensor  # [N, D] what the agents acted on
    mask: Tensor  # [N, A] bool
    actions: Tensor  # [N] int64
    reward: Tensor  # [N] the level's reward
    terminated: Tensor  # [N] bool: death
    truncated: Tensor  # [N] bool: time limit
    next_obs: Tensor  # [N, D]
    next_mask: Tensor  # [N, A]
    final_obs: Tensor  # [N, D]
    final_mask: Tensor  # [N, A]
    env_steps: int  # agent-steps so far, this step included

    @property
    def done(self) -> Tensor:
        return self.terminated | self.truncated


class Algorithm(Protocol):
    """What the training loop needs from a learning algorithm."""

    def act(self, obs: Tensor, mask: Tensor, first: Tensor) -> Tensor:
        """[N] actions for obs [N, D] among the valid ones (mask [N, A]); `first` [N] marks episode starts."""
        ...

    def store(self, step: Step) -> None:
        """Remember one step of every agent (the step that followed the last `act`)."""
        ...

    def update(self) -> dict[str, Tensor]:
        """Learn as much as the steps stored so far have earned; the last update's stats (may be empty)."""
        ...

    def metrics(self) -> dict[str, float | None]:
        """Current figures for progress and the metrics rows (`updates`, `epsilon`, `loss`, ...)."""
        ...

    def end_interval(self, episode_lengths: list[int]) -> dict[str, float]:
        """Called once per log interval with the lengths of the episodes the network played since the last
        one; returns extra figures for that interval's metrics row."""
        ...

    def action_entropy(self, temperature: float) -> Tensor:
        """[N] normalised entropy (0 certain, 1 uniform) of the last `act`'s decision, for the curriculum."""
        ...

    @property
    def scripted(self) -> Tensor | None:
        """[N] bool: agents that act by a scripted policy (kept out of the metrics), or None."""
        ...

    def greedy_policy(self) -> GreedyPolicy:
        """The network acting greedily, for evaluation."""
        ...

    def state_dict(self, with_replay: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers only); `network` holds the
        weights a `GreedyPolicy` needs."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def normalised_entropy(logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """[N] entropy of softmax(logits / T) over the valid actions, divided by log(#valid): 0 certain, 1 uniform."""
    logits = torch.where(mask, logits / temperature, torch.finfo(logits.dtype).min)
    logp = torch.log_softmax(logits, dim=-1)
    h = -(logp.exp() * torch.where(mask, logp, 0.0)).sum(dim=-1)
    valid = mask.sum(dim=-1)
    return torch.where(valid > 1, h / valid.clamp(min=2).float().log(), 0.0)


def make_annealing(config: RunConfig, world: World) -> IntrinsicAnnealing | None:
    """The intrinsic reward's annealed weight, from the run config's `curiosity` (None when it is off)."""
    cu = config.curiosity
    if not cu.enabled:
        return None
    return IntrinsicAnnealing(cu.weight, cu.decay, cu.window, cu.variance_threshold, cu.min_survival_fraction,
                              world.config.max_steps, cu.floor)


def has_memory(network_kind: str) -> bool:
    """Whether a network of this kind carries memory between steps (what a memory-wiped evaluation removes)."""
    return network_kind == "lstm"


@dataclass(frozen=True)
class Decision:
    """One greedy step with what led to it, for tools that show the network's view (`townlet serve`)."""

    actions: Tensor  # [N] int64, as `GreedyPolicy.act` returns them
    values: Tensor  # [N, A] the network's outputs: Q-values, or an actor-critic's policy logits (`outputs`)
    memory: Tensor | None  # [N, H] the LSTM's hidden state after this step (last layer); None without memory


class GreedyPolicy:
    """A trained network acting greedily over the valid actions. A recurrent network carries each agent's
    memory from step to step (a `RecurrentActor`) and starts it from zeros where `first` marks a new episode.

    `act(obs, mask, first)` works on tensors for any number of agents; `decide` is the same step with the
    network's outputs and memory beside the actions. `predict` is Stable-Baselines3's interface (NumPy in and
    out, `state` and `episode_start` for recurrent policies), so a townlet agent plays in a Gymnasium env the
    way an SB3 model does.
    """

    def __init__(self, network: nn.Module, recurrent: bool, memory: bool, device: torch.device | str = "cpu") -> None:
        self.network = network.to(device).eval()
        self.recurrent = recurrent
        self.memory = memory  # False for a recurrent learner with a Linear core: it has nothing to wipe
        self.device = torch.device(device)
        self._actor: RecurrentActor | None = None

    @property
    def outputs(self) -> str:
        """What the network's outputs are: "q" (action values) or "logits" (an actor-critic's policy)."""
        return "logits" if isinstance(self.network, ActorCritic) else "q"

    def act(self, obs: Tensor, mask: Tensor, first: Tensor | None = None) -> Tensor:
        """[N] int64 greedy valid actions; a recurrent network's memory restarts where `first` [N] is True."""
        return self.decide(obs, mask, first).actions

    @torch.no_grad()
    def decide(self, obs: Tensor, mask: Tensor, first: Tensor | None = None) -> Decision:
        """`act`'s step, returning the network's outputs [N, A] and (with memory) its hidden state too."""
        if not self.recurrent:
            values = self.network(obs)
            return Decision(masked_greedy(values, mask), values, None)
        if self._actor is None or self._actor.num_agents != obs.shape[0]:
            self._actor = RecurrentActor(self.network, obs.shape[0], obs.device)
        if first is not None:
            self._actor.reset(first)
        step = self._actor.act(obs, mask, 0.0)
        return Decision(step.actions, step.q, self._actor.h[-1] if self.memory else None)

    def reset(self) -> None:
        """Forget every agent's memory."""
        self._actor = None

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's `predict`: actions for one observation [D] or a batch [N, D]; `state` is the (h, c) this
        returned last time (None: fresh memory), `episode_start` [N] resets it, `action_masks` [N, A] as in
        sb3-contrib's maskable policies (default: every action valid). Always greedy."""
        if not deterministic:
            raise ValueError("GreedyPolicy.predict: a greedy policy is deterministic; pass deterministic=True")
        single = np.ndim(observation) == 1
        obs = torch.as_tensor(np.atleast_2d(observation), dtype=torch.float32, device=self.device)
        n = obs.shape[0]
        if action_masks is None:
            mask = torch.ones(n, NUM_ACTIONS, dtype=torch.bool, device=self.device)
        else:
            mask = torch.as_tensor(np.reshape(action_masks, (n, NUM_ACTIONS)), dtype=torch.bool, device=self.device)
        first = None if episode_start is None else torch.as_tensor(
            np.reshape(episode_start, (n,)), dtype=torch.bool, device=self.device)
        if self.recurrent:
            self._actor = RecurrentActor(self.network, n, self.device)
            if state is not None:
                self._actor.h, self._actor.c = (torch.as_tensor(s, device=self.device) for s in state)
        actions = self.act(obs, mask, first).cpu().numpy()
        new_state = None
        if self._actor is not None and self.recurrent:
            new_state = (self._actor.h.cpu().numpy(), self._actor.c.cpu().numpy())
        return (actions[0] if single else actions), new_state
