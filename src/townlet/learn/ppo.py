"""Recurrent PPO for N batched agents (CleanRL's ppo_atari_lstm, sb3-contrib's RecurrentPPO): rollouts of a
fixed length from every agent at once, GAE, and epochs of clipped-surrogate updates on minibatches of whole
agents, each unrolled by BPTT over the whole rollout from the LSTM state stored at the rollout's start.

Everything is batched tensor code; the only Python loops run over the T steps of a rollout (the reverse GAE
scan and the discounted-return scan of the reward scaling). The update unrolls the LSTM over each minibatch
in one call, episode starts inside the rollout included (`ActorCritic.features`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from townlet.agents.actor_critic import ActorCritic
from townlet.learn.common import make_adam


@dataclass
class PPOLearnerConfig:
    """No defaults: the run config (`townlet.train.config`, sections `ppo` and `learner`) has them."""

    rollout_len: int
    epochs: int
    minibatches: int
    gamma: float
    gae_lambda: float
    clip_coef: float
    entropy_coef: float
    value_coef: float
    normalize_returns: bool
    lr: float
    adam_eps: float
    grad_clip: float | None


# ---------------------------------------------------------------------------- the masked categorical policy
def masked_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """logits with -inf on the invalid actions (a row with none valid keeps all, as `masked_argmax` does)."""
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return logits.masked_fill(~mask, float("-inf"))


def masked_log_probs(logits: Tensor, mask: Tensor) -> Tensor:
    """[..., A] log π(a) over the valid actions; -inf for the invalid ones."""
    return torch.log_softmax(masked_logits(logits, mask), dim=-1)


def masked_entropy(log_probs: Tensor, mask: Tensor) -> Tensor:
    """[...] entropy over the valid actions only (an invalid action's 0 · -inf counts as 0, not NaN)."""
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return -(log_probs.exp() * torch.where(mask, log_probs, 0.0)).sum(dim=-1)


def sample_masked(logits: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """[...] int64 actions drawn from softmax over the valid actions (Gumbel-max: one batched draw, and an
    invalid action's -inf logit never wins)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(u.clamp(min=torch.finfo(u.dtype).tiny)))
    return (masked_logits(logits, mask) + gumbel).argmax(dim=-1)


# ---------------------------------------------------------------------------- advantages and the loss
def gae(
    rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor, gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a rollout; every input is [T, N]. Returns (advantages, returns).

    `next_values[t]` is the value of what followed step t: V(obs t+1) inside an episode and at the rollout's
    end, V(final obs) where the episode was truncated (a time limit is no end of the task: it bootstraps).
    A death (`terminated`) bootstraps from nothing. At any episode end the advantage does not carry over
    from the next episode's steps.
    """
    alive = 1.0 - terminated.to(rewards.dtype)
    cont = 1.0 - (terminated | truncated).to(rewards.dtype)
    deltas = rewards + gamma * alive * next_values - values
    advantages = torch.empty_like(deltas)
    last = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * cont[t] * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    new_logp: Tensor, old_logp: Tensor, advantages: Tensor, values: Tensor, returns: Tensor, entropy: Tensor,
    clip_coef: float, value_coef: float, entropy_coef: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The clipped surrogate (advantages normalised over the minibatch) + value_coef · ½ MSE(V, returns) −
    entropy_coef · entropy. Returns (loss, detached stats)."""
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)).mean()
    value_loss = 0.5 * (values - returns).square().mean()
    ent = entropy.mean()
    loss = policy_loss + value_coef * value_loss - entropy_coef * ent
    with torch.no_grad():
        stats = {
            "loss": loss.detach(), "policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
            "entropy": ent.detach(), "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean(),
        }
    return loss, stats


class ReturnNormalizer:
    """CleanRL-style reward scaling: rewards divided by the running std of each agent's discounted return, so
    the value targets stay near unit scale whatever the level pays (a death costs 100 in the town)."""

    def __init__(self, num_agents: int, gamma: float, device: torch.device | str, eps: float = 1e-8) -> None:
        self.gamma, self.eps = gamma, eps
        self.returns = torch.zeros(num_agents, device=device)
        self.count = torch.full((), 1e-4, dtype=torch.float64, device=device)
        self.mean = torch.zeros((), dtype=torch.float64, device=device)
        self.var = torch.ones((), dtype=torch.float64, device=device)

    def scale(self, rewards: Tensor, done: Tensor) -> Tensor:
        """Scaled rewards [T, N]; the running statistics take in this rollout's discounted returns first."""
        g, seen = self.returns, []
        for t in range(rewards.shape[0]):
            g = g * self.gamma + rewards[t]
            seen.append(g)
            g = torch.where(done[t], 0.0, g)
        self.returns = g
        batch = torch.stack(seen).double()
        b_mean, b_var, b_count = batch.mean(), batch.var(unbiased=False), batch.numel()
        total = self.count + b_count
        delta = b_mean - self.mean
        self.var = (self.var * self.count + b_var * b_count + delta.square() * self.count * b_count / total) / total
        self.mean = self.mean + delta * b_count / total
        self.count = total
        return rewards / (self.var + self.eps).sqrt().to(rewards.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"returns": self.returns, "count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("returns", "count", "mean", "var"):
            setattr(self, name, state[name].to(getattr(self, name).device))


# ---------------------------------------------------------------------------- the learner
_ROLLOUT = ("obs", "mask", "actions", "logp", "values", "first", "rewards", "terminated", "truncated",
            "final_values")


class PPOLearner:
    """On-policy learning for N agents stepping together: acts (sampling the masked policy, carrying each
    agent's LSTM state), fills a [T, N] rollout, and once it is full runs the PPO update and starts the next.

    Per step: `actions = learner.act(obs, mask, first)`; step the envs; `learner.observe(reward, terminated,
    truncated, final_obs)`; `learner.update()` (a no-op until the rollout is full). `final_obs` is the true
    next observation of each step (the last one of an ended episode).
    """

    def __init__(
        self,
        network: ActorCritic,
        config: PPOLearnerConfig,
        num_agents: int,
        device: torch.device | str,
        act_gen: torch.Generator | None = None,
        sample_gen: torch.Generator | None = None,
    ) -> None:
        if not 1 <= config.minibatches <= num_agents:
            raise ValueError(f"minibatches: {config.minibatches} minibatches of whole agents need 1 to "
                             f"{num_agents} (the agent count)")
        self.network, self.config, self.n = network, config, num_agents
        self.device = torch.device(device)
        self.params = [p for p in network.parameters() if p.requires_grad]
        self.optimizer = make_adam(self.params, config.lr, config.adam_eps)
        self.act_gen, self.sample_gen = act_gen, sample_gen
        t, n, d = config.rollout_len, num_agents, network.obs_dim
        dev = self.device
        self.obs = torch.zeros(t, n, d, device=dev)
        self.mask = torch.zeros(t, n, network.num_actions, dtype=torch.bool, device=dev)
        self.actions = torch.zeros(t, n, dtype=torch.long, device=dev)
        self.first = torch.zeros(t, n, dtype=torch.bool, device=dev)
        self.terminated = torch.zeros(t, n, dtype=torch.bool, device=dev)
        self.truncated = torch.zeros(t, n, dtype=torch.bool, device=dev)
        self.logp, self.values, self.rewards, self.final_values = (torch.zeros(t, n, device=dev) for _ in range(4))
        self.h, self.c = network.initial_state(n, dev)  # each agent's memory before its next observation
        self.h0, self.c0 = self.h, self.c  # ... and at the start of the rollout (before its first reset)
        self.step = 0  # steps of the rollout stored so far
        self.normalizer = ReturnNormalizer(n, config.gamma, dev) if config.normalize_returns else None
        self.updates = 0  # PPO updates (one per rollout)
        self.last_stats: dict[str, Tensor] = {}
        self.last_logits: Tensor | None = None  # the last act's logits and mask, for the curriculum's entropy
        self.last_mask: Tensor | None = None

    @property
    def full(self) -> bool:
        return self.step >= self.config.rollout_len

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def act(self, obs: Tensor, mask: Tensor, first: Tensor) -> Tensor:
        """[N] actions sampled from the masked policy; memory restarts where `first` [N] marks an episode start."""
        if self.full:
            raise RuntimeError("PPOLearner.act: the rollout is full; call update() first")
        if self.step == 0:
            self.h0, self.c0 = self.h, self.c
        keep = (~first.bool()).view(1, -1, 1)
        state = (torch.where(keep, self.h, 0.0), torch.where(keep, self.c, 0.0))
        logits, values, (self.h, self.c) = self.network.evaluate(obs.unsqueeze(1), state)
        logits, values = logits.squeeze(1), values.squeeze(1)
        actions = sample_masked(logits, mask, self.act_gen)
        logp = masked_log_probs(logits, mask).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        t = self.step
        self.obs[t], self.mask[t], self.actions[t], self.first[t] = obs, mask, actions, first
        self.logp[t], self.values[t] = logp, values
        self.last_logits, self.last_mask = logits, mask
        return actions

    @torch.no_grad()
    def observe(self, reward: Tensor, terminated: Tensor, truncated: Tensor, final_obs: Tensor) -> None:
        """Store the outcome of the last `act`. V(final_obs) is taken with each agent's memory after its last
        observation: what a truncated episode (and the rollout's end) bootstraps from. Only those values are
        read (inside an episode the next step's value serves), so on the CPU, where reading which agents were
        truncated costs no device round trip, only they are evaluated until the rollout's last step."""
        t = self.step
        if t == self.config.rollout_len - 1 or self.device.type != "cpu":
            _, final_values, _ = self.network.evaluate(final_obs.unsqueeze(1), (self.h, self.c))
            self.final_values[t] = final_values.squeeze(1)
        else:
            self.final_values[t] = 0.0
            rows = truncated.nonzero().squeeze(1)
            if rows.numel():
                state = (self.h.index_select(1, rows), self.c.index_select(1, rows))
                _, final_values, _ = self.network.evaluate(final_obs.index_select(0, rows).unsqueeze(1), state)
                self.final_values[t].index_copy_(0, rows, final_values.squeeze(1))
        self.rewards[t], self.terminated[t], self.truncated[t] = reward, terminated, truncated
        self.step += 1

    def advantages(self) -> tuple[Tensor, Tensor]:
        """GAE (advantages, returns) [T, N] of the full rollout, in scaled rewards with normalisation."""
        c = self.config
        done = self.terminated | self.truncated
        rewards = self.rewards if self.normalizer is None else self.normalizer.scale(self.rewards, done)
        next_values = torch.cat([self.values[1:], self.final_values[-1:]])
        next_values = torch.where(self.truncated, self.final_values, next_values)
        return gae(rewards, self.values, next_values, self.terminated, self.truncated, c.gamma, c.gae_lambda)

    def update(self) -> dict[str, Tensor]:
        """With a full rollout: `epochs` passes over `minibatches` minibatches of whole agents, then a fresh
        rollout. Returns the mean stats of this update's minibatches (the last update's until then)."""
        if not self.full:
            return self.last_stats
        c = self.config
        advantages, returns = self.advantages()
        collected: list[dict[str, Tensor]] = []
        for _ in range(c.epochs):
            order = torch.randperm(self.n, generator=self.sample_gen, device=self.device)
            for agents in order.chunk(c.minibatches):
                collected.append(self._learn(agents, advantages, returns))
        stats = {k: torch.stack([s[k] for s in collected]).mean() for k in collected[0]}
        stats["q_mean"] = self.values.mean()  # the rollout's value estimates (the metrics table's column)
        self.updates += 1
        self.step = 0
        self.last_stats = stats
        return stats

    def _learn(self, agents: Tensor, advantages: Tensor, returns: Tensor) -> dict[str, Tensor]:
        """One gradient step on the rollout columns of `agents`, unrolled from their rollout-start memory."""
        c = self.config

        def cols(x: Tensor) -> Tensor:  # [T, N, ...] -> [B, T, ...]
            return x[:, agents].transpose(0, 1)

        state = (self.h0[:, agents], self.c0[:, agents])
        logits, values, _ = self.network.evaluate(cols(self.obs), state, cols(self.first))
        mask = cols(self.mask)
        log_probs = masked_log_probs(logits, mask)
        new_logp = log_probs.gather(-1, cols(self.actions).unsqueeze(-1)).squeeze(-1)
        loss, stats = ppo_loss(new_logp, cols(self.logp), cols(advantages), values, cols(returns),
                               masked_entropy(log_probs, mask), c.clip_coef, c.value_coef, c.entropy_coef)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = c.grad_clip if c.grad_clip is not None else float("inf")
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True).detach()
        self.optimizer.step()
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly, the rollout so far included (the network's weights aside)."""
        return {
            **{name: getattr(self, name) for name in _ROLLOUT},
            "h": self.h, "c": self.c, "h0": self.h0, "c0": self.c0, "step": self.step,
            "optimizer": self.optimizer.state_dict(), "updates": self.updates, "last_stats": dict(self.last_stats),
            "normalizer": self.normalizer.state_dict() if self.normalizer is not None else None,
            "act_gen": self.act_gen.get_state() if self.act_gen is not None else None,
            "sample_gen": self.sample_gen.get_state() if self.sample_gen is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in (*_ROLLOUT, "h", "c", "h0", "c0"):
            setattr(self, name, state[name].to(self.device).clone())  # filled in place: never alias `state`
        self.step = int(state["step"])
        # a copy: Optimizer.load_state_dict may alias the given tensors, which the source keeps updating
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.updates = int(state["updates"])
        self.last_stats = {k: v.to(self.device) for k, v in state["last_stats"].items()}
        if self.normalizer is not None:
            self.normalizer.load_state_dict(state["normalizer"])
        for name in ("act_gen", "sample_gen"):
            gen = getattr(self, name)
            if gen is not None:
                gen.set_state(state[name])
