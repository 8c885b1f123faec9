"""Recurrent PPO: an actor-critic (LSTM, or a Linear core for the memory ablation) sampling its masked
policy, [T, N] rollouts from every agent at once, GAE with truncations bootstrapped from the true last
observation, and clipped-surrogate epochs on minibatches of whole agents unrolled over the whole rollout.

On-policy, so none of the Q-learning parts (replay, ε, guides, shaping) apply: the run config rejects their
fields for `algorithm: ppo`. Curiosity of the `episodic` kind does: its per-episode count bonus, with its annealed
weight, is added to the reward the rollout stores (evaluation and the episode rows keep the level's reward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from townlet.agents import ActorCritic
from townlet.explore import EpisodicCounts, EpsilonSchedule
from townlet.learn import PPOLearner, PPOLearnerConfig
from townlet.train.algos.base import GreedyPolicy, Step, has_memory, make_annealing, normalised_entropy
from townlet.train.config import RunConfig
from townlet.world import World


class PPO:
    recurrent = True

    def __init__(self, config: RunConfig, world: World, network: ActorCritic) -> None:
        self.config = config
        self.world = world
        self.device = world.device
        self.network = network.to(self.device)  # built by the factory: its initialisation draws from the seed
        pc, lc = config.ppo, config.learner
        self.act_gen = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.sample_gen = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        self.learner = PPOLearner(self.network, PPOLearnerConfig(
            rollout_len=pc.rollout_len, epochs=pc.epochs, minibatches=pc.minibatches, gamma=lc.gamma,
            gae_lambda=pc.gae_lambda, clip_coef=pc.clip_coef, entropy_coef=pc.entropy_coef,
            value_coef=pc.value_coef, normalize_returns=pc.normalize_returns, lr=lc.lr, adam_eps=lc.adam_eps,
            grad_clip=lc.grad_clip,
        ), world.num_agents, self.device, self.act_gen, self.sample_gen)
        # the learning rate follows an env-step schedule, as for the Q-learners (constant without lr_end)
        self.lr = EpsilonSchedule(lc.lr, lc.lr if lc.lr_end is None else lc.lr_end, lc.lr_decay_steps)
        self.env_steps = 0
        cu = config.curiosity
        self.episodic = (
            EpisodicCounts(world.num_agents, world.grid_size, cu.low_meter, device=self.device) if cu.enabled else None
        )
        self.annealing = make_annealing(config, world)
        self.intrinsic_sum = torch.zeros((), device=self.device)  # summed intrinsic reward this log interval
        self.intrinsic_steps = 0
        self._intrinsic: Tensor | None = None  # the count bonus of the situation the last action was taken in

    def act(self, obs: Tensor, mask: Tensor, first: Tensor) -> Tensor:
        if self.episodic is not None:  # read before the world steps: the bonus is for where the agent acts
            self.episodic.reset(first)
            self._intrinsic = self.episodic.bonus(self.world)
        return self.learner.act(obs, mask, first)

    def store(self, step: Step) -> None:
        reward = step.reward
        if self._intrinsic is not None and self.annealing is not None:
            reward = reward + self.annealing.weight * self._intrinsic
            self.intrinsic_sum += self._intrinsic.sum()
            self.intrinsic_steps += self.world.num_agents
        self.learner.observe(reward, step.terminated, step.truncated, step.final_obs)
        self.env_steps = step.env_steps

    def update(self) -> dict[str, Tensor]:
        if self.learner.full and self.config.learner.lr_end is not None:
            self.learner.set_lr(self.lr(self.env_steps))
        return self.learner.update()

    def metrics(self) -> dict[str, float | None]:
        s = self.learner.last_stats
        out: dict[str, float | None] = {
            "updates": self.learner.updates, "epsilon": None, "learning_rate": self.lr(self.env_steps)}
        for key in ("loss", "q_mean", "grad_norm", "entropy", "value_loss", "policy_loss", "approx_kl", "clipfrac"):
            out[key] = s[key].item() if key in s else None
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
        logits, mask = self.learner.last_logits, self.learner.last_mask
        if logits is None or mask is None:
            raise RuntimeError("action_entropy: no action taken yet")
        return normalised_entropy(logits, mask, temperature)

    @property
    def scripted(self) -> Tensor | None:
        return None

    def greedy_policy(self) -> GreedyPolicy:
        return GreedyPolicy(self.network, self.recurrent, has_memory(self.config.network.kind), self.device)

    def state_dict(self, with_replay: bool = True) -> dict[str, Any]:
        # the rollout is kept whatever `with_replay` says: it is small, and a resume needs it to be exact
        return {"network": self.network.state_dict(), "learner": self.learner.state_dict(),
                "env_steps": self.env_steps,
                "episodic": self.episodic.state_dict() if self.episodic is not None else None,
                "annealing": self.annealing.state_dict() if self.annealing is not None else None,
                "intrinsic_sum": self.intrinsic_sum, "intrinsic_steps": self.intrinsic_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.learner.load_state_dict(state["learner"])
        self.env_steps = int(state["env_steps"])
        if self.episodic is not None and self.annealing is not None:  # both on with curiosity
            self.episodic.load_state_dict(state["episodic"])
            self.annealing.load_state_dict(state["annealing"])
            self.intrinsic_sum = state["intrinsic_sum"].to(self.device)
            self.intrinsic_steps = int(state["intrinsic_steps"])
