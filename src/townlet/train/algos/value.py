"""What DQN and R2D2 share: ε-greedy acting over Q-values, guided agents, rewards for replay (shaping and
curiosity added, stored apart), and updates paid for by a replay ratio.

A subclass says how Q-values are computed when acting (`_q`), how a step is stored (`_add`) and which
learner samples what (`_learn_on`); everything else is here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from townlet.explore import (
    RND,
    EpisodicCounts,
    EpsilonSchedule,
    EzGreedy,
    Guides,
    VisitCounts,
    agent_epsilons,
)
from townlet.explore.shaping import MeterPotential
from townlet.learn import OnlineTargetLearner
from townlet.replay import SequenceReplay, TransitionReplay, with_intrinsic
from townlet.train.algos.base import GreedyPolicy, Step, has_memory, make_annealing, normalised_entropy
from townlet.train.config import RunConfig
from townlet.world import World


class ValueLearning:
    """The shared half of the Q-learning algorithms (see the module docstring); not used on its own."""

    recurrent = False

    def __init__(self, config: RunConfig, world: World, network: nn.Module) -> None:
        self.config = config
        self.world = world
        self.device = world.device
        gc = config.guides
        # every step stored with the guide's advice (with `purposeful`, the action count where it has none)
        self.advised = gc.imitation > 0 and gc.imitate in ("all", "purposeful")
        self.guides = (
            Guides(world, gc.fraction, gc.policy, config.seed + 4, purposeful_only=gc.imitate == "purposeful")
            if gc.fraction > 0 or self.advised else None
        )
        self.network = network.to(self.device)  # built by the factory: its initialisation draws from the seed
        self.learner = self._make_learner()
        self.act_gen = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.sample_gen = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        self.replay = self._make_replay()
        ex, lc = config.exploration, config.learner
        self.epsilon = EpsilonSchedule(ex.start, ex.end, ex.decay_steps, ex.schedule)
        # the learning rate follows the same kind of env-step schedule as ε (constant without lr_end)
        self.lr = EpsilonSchedule(lc.lr, lc.lr if lc.lr_end is None else lc.lr_end, lc.lr_decay_steps)
        sw = config.shaping.weight
        self.shaping = MeterPotential(world.obs_layout, sw, lc.gamma) if sw > 0 else None
        cu = config.curiosity
        self.rnd = (
            RND(world.obs_dim, hidden=cu.hidden, embed=cu.embed, lr=cu.lr, device=self.device, seed=config.seed + 3)
            if cu.enabled and cu.kind == "rnd" else None
        )
        self.counts = (
            VisitCounts(world.grid_size, world.num_affordances, cu.low_meter, self.device)
            if cu.enabled and cu.kind == "counts" else None
        )
        self.episodic = (
            EpisodicCounts(world.num_agents, world.grid_size, cu.low_meter, device=self.device)
            if cu.enabled and cu.kind == "episodic" else None
        )
        self.repeats = (
            EzGreedy(world.num_agents, ex.repeat_mu, ex.repeat_max, self.device, self.act_gen)
            if ex.repeat_mu is not None else None
        )
        self.annealing = make_annealing(config, world)
        self.intrinsic_sum = torch.zeros((), device=self.device)  # summed intrinsic reward this log interval
        self.intrinsic_steps = 0
        self.env_steps = 0
        self.update_credit = 0.0
        self.last_stats: dict[str, Tensor] = {}
        self._q: Tensor | None = None  # Q-values and mask of the last act, for the curriculum's entropy
        self._mask: Tensor | None = None
        self._intrinsic: Tensor | None = None  # the count bonus of the last act's actions

    # ------------------------------------------------------------------ what a subclass provides
    def _make_learner(self) -> OnlineTargetLearner:
        raise NotImplementedError

    def _make_replay(self) -> TransitionReplay | SequenceReplay:
        raise NotImplementedError

    def _choose(self, obs: Tensor, mask: Tensor, epsilon: float | Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        """(ε-greedy actions [N], Q-values [N, A]) for obs, advancing whatever memory the network has."""
        raise NotImplementedError

    def _add(self, step: Step, reward: Tensor, intrinsic: Tensor | None) -> None:
        raise NotImplementedError

    def _transitions_per_update(self) -> int:
        raise NotImplementedError

    def _learn_on(self, batch: Any) -> dict[str, Tensor]:
        return self.learner.update(batch)

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ the Algorithm protocol
    def exploration_rates(self) -> float | Tensor:
        """ε for the next action: the schedule's, spread per agent if asked, and 1 for the first action of an
        exploring start."""
        eps: float | Tensor = self.epsilon(self.env_steps)
        if self.config.exploration.spread > 0:
            eps = agent_epsilons(eps, self.world.num_agents, self.config.exploration.spread, self.device)
        if self.config.exploring_starts.probability > 0:
            eps = torch.where(self.world.exploring & (self.world.steps == 0), 1.0, eps)
        return eps

    def act(self, obs: Tensor, mask: Tensor, first: Tensor) -> Tensor:
        if self.repeats is None:
            actions, self._q = self._choose(obs, mask, self.exploration_rates(), first)
        else:  # εz-greedy: the greedy choice, then the repeats decide who explores and how long
            _, self._q = self._choose(obs, mask, 0.0, first)
            actions = self.repeats.select(self._q, mask, self.exploration_rates(), first)
        self._mask = mask
        if self.guides is not None:
            actions = self.guides.act(self.world, actions)
        # a count bonus is for the situation the action is taken in: read it before the world steps
        self._intrinsic = self.counts.bonus(self.world, actions) if self.counts is not None else None
        if self.episodic is not None:
            self.episodic.reset(first)
            self._intrinsic = self.episodic.bonus(self.world)
        return actions

    def store(self, step: Step) -> None:
        intrinsic = self._intrinsic
        if self.rnd is not None:
            intrinsic = self.rnd.reward(step.final_obs)  # novelty of where the action led, not where it started
        reward = step.reward
        if self.shaping is not None:  # only replay sees it; the episode rows keep the task's returns
            reward = reward + self.shaping.reward(step.obs, step.final_obs, step.terminated)
        if intrinsic is not None:
            self.intrinsic_sum += intrinsic.sum()
            self.intrinsic_steps += self.world.num_agents
        self._add(step, reward, intrinsic)
        self.env_steps = step.env_steps

    def update(self) -> dict[str, Tensor]:
        lc = self.config.learner
        if self.env_steps < lc.learning_starts or len(self.replay) == 0:
            return self.last_stats
        self.update_credit += lc.replay_ratio * self.world.num_agents / self._transitions_per_update()
        if self.update_credit >= 1.0 and lc.lr_end is not None:
            self.learner.set_lr(self.lr(self.env_steps))
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            batch = self.replay.sample(lc.batch_size, self.sample_gen)
            if self.annealing is not None:
                batch = with_intrinsic(batch, self.annealing.weight)  # combined now, stored apart
            self.last_stats = self._learn_on(batch)
        return self.last_stats

    def metrics(self) -> dict[str, float | None]:
        s = self.last_stats
        out: dict[str, float | None] = {
            "updates": self.learner.updates,
            "epsilon": self.epsilon(self.env_steps),
            "learning_rate": self.lr(self.env_steps),
            "loss": s["loss"].item() if "loss" in s else None,
            "q_mean": s["q_mean"].item() if "q_mean" in s else None,
            "grad_norm": s["grad_norm"].item() if "grad_norm" in s else None,
        }
        if self.annealing is not None:
            out["intrinsic_weight"] = self.annealing.weight
            out["intrinsic_reward"] = (self.intrinsic_sum / max(self.intrinsic_steps, 1)).item()
        return out

    def end_interval(self, episode_lengths: list[int]) -> dict[str, float]:
        if self.annealing is None:
            return {}
        out = self.annealing.end_interval(episode_lengths, self.intrinsic_sum, self.intrinsic_steps)
        self.intrinsic_sum, self.intrinsic_steps = torch.zeros((), device=self.device), 0
        return out

    def action_entropy(self, temperature: float) -> Tensor:
        if self._q is None or self._mask is None:
            raise RuntimeError("action_entropy: no action taken yet")
        return normalised_entropy(self._q, self._mask, temperature)

    @property
    def scripted(self) -> Tensor | None:
        return self.guides.guided if self.guides is not None else None

    def greedy_policy(self) -> GreedyPolicy:
        return GreedyPolicy(self.network, self.recurrent, has_memory(self.config.network.kind), self.device)

    def state_dict(self, with_replay: bool = True) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(),
            "learner": self.learner.state_dict(),
            "replay": self.replay.state_dict() if with_replay else None,
            "env_steps": self.env_steps,
            "update_credit": self.update_credit,
            "act_gen": self.act_gen.get_state(),
            "sample_gen": self.sample_gen.get_state(),
            "guides": self.guides.state_dict() if self.guides is not None else None,
            "rnd": self.rnd.state_dict() if self.rnd is not None else None,
            "counts": self.counts.state_dict() if self.counts is not None else None,
            "episodic": self.episodic.state_dict() if self.episodic is not None else None,
            "repeats": self.repeats.state_dict() if self.repeats is not None else None,
            "annealing": self.annealing.state_dict() if self.annealing is not None else None,
            "intrinsic_sum": self.intrinsic_sum,
            "intrinsic_steps": self.intrinsic_steps,
            **self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        if state["replay"] is not None:
            self.replay.load_state_dict(state["replay"])
        self.env_steps = int(state["env_steps"])
        self.update_credit = float(state["update_credit"])
        self.act_gen.set_state(state["act_gen"])
        self.sample_gen.set_state(state["sample_gen"])
        for name in ("guides", "rnd", "counts", "episodic", "repeats", "annealing"):
            part = getattr(self, name)
            if part is not None:
                part.load_state_dict(state[name])
        self.intrinsic_sum = state["intrinsic_sum"].to(self.device)
        self.intrinsic_steps = int(state["intrinsic_steps"])
        self._load_state(state)


def optim_fields(config: RunConfig) -> dict[str, Any]:
    """The optimiser and target-network fields both learners take, from the run config's `learner`."""
    lc = config.learner
    return {
        "gamma": lc.gamma, "lr": lc.lr, "adam_eps": lc.adam_eps, "grad_clip": lc.grad_clip,
        "huber_delta": lc.huber_delta, "double": lc.double, "target_update_every": lc.target_update_every,
        "tau": lc.tau, "value_rescale": lc.value_rescale,
    }
