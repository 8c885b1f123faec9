"""DQN for the full-view levels: an MLP Q-network acting on one observation, n-step transitions in replay,
Double DQN targets from a target network."""

from __future__ import annotations

import torch
from torch import Tensor

from townlet.learn import DQNConfig, DQNLearner, masked_epsilon_greedy
from townlet.replay import TransitionBatch, TransitionReplay
from townlet.train.algos.base import Step
from townlet.train.algos.value import ValueLearning, optim_fields


class DQN(ValueLearning):
    recurrent = False

    def _make_learner(self) -> DQNLearner:
        return DQNLearner(self.network, DQNConfig(**optim_fields(self.config)))

    def _make_replay(self) -> TransitionReplay:
        c = self.config
        return TransitionReplay(c.replay.capacity, self.world.num_agents, self.world.obs_layout,
                                n_step=c.learner.n_step, gamma=c.learner.gamma, device=self.device)

    def _choose(self, obs: Tensor, mask: Tensor, epsilon: float | Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            q = self.network(obs)
        return masked_epsilon_greedy(q, mask, epsilon, self.act_gen), q

    def _add(self, step: Step, reward: Tensor, intrinsic: Tensor | None) -> None:
        ended = step.done.view(-1, 1)
        self.replay.add(step.obs, step.mask, step.actions, reward, step.final_obs,
                        torch.where(ended, step.final_mask, step.next_mask), step.terminated, step.truncated,
                        intrinsic=intrinsic)

    def _transitions_per_update(self) -> int:
        return self.config.learner.batch_size

    def _learn_on(self, batch: TransitionBatch) -> dict[str, Tensor]:
        if self.rnd is not None:
            self.rnd.update(batch.next_obs)
        return self.learner.update(batch)
