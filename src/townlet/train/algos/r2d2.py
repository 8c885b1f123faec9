"""R2D2 for the partial-view levels: a recurrent Q-network whose rollout memory is the actor's own, stored
start states and burn-in in sequence replay, n-step Double DQN targets from a target network, and optional
imitation of a guide (DQfD's large-margin loss)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from townlet.learn import R2D2Config, RecurrentActor, RecurrentLearner
from townlet.replay import SequenceBatch, SequenceReplay
from townlet.train.algos.base import Step
from townlet.train.algos.value import ValueLearning, optim_fields


class R2D2(ValueLearning):
    recurrent = True

    def _make_learner(self) -> RecurrentLearner:
        c = self.config
        return RecurrentLearner(self.network, R2D2Config(
            **optim_fields(c), burn_in=c.replay.burn_in, n_step=c.learner.n_step, stored_state=c.replay.stored_state,
            imitation_weight=c.guides.imitation, margin=c.guides.margin,
        ))

    def _make_replay(self) -> SequenceReplay:
        c, rc = self.config, self.config.replay
        self.actor = RecurrentActor(self.network, self.world.num_agents, self.device, self.act_gen)
        return SequenceReplay(
            rc.capacity, self.world.num_agents, self.world.obs_layout, burn_in=rc.burn_in, train_len=rc.train_len,
            stride=rc.stride, hidden_size=c.network.lstm_hidden, device=self.device, prioritized=rc.prioritized,
            split_episodes=rc.split_episodes, advice=self.advised,
        )

    def _choose(self, obs: Tensor, mask: Tensor, epsilon: float | Tensor, first: Tensor) -> tuple[Tensor, Tensor]:
        self.actor.reset(first)
        self._last = self.actor.act(obs, mask, epsilon)  # holds the memory before obs: what replay stores
        return self._last.actions, self._last.q

    def _add(self, step: Step, reward: Tensor, intrinsic: Tensor | None) -> None:
        h, c = self._last.h, self._last.c
        advice = self.guides.advice if self.advised and self.guides is not None else None
        self.replay.add(step.obs, step.mask, step.actions, reward, step.terminated, step.truncated, step.final_obs,
                        step.final_mask, h, c, intrinsic=intrinsic, advice=advice)

    def _transitions_per_update(self) -> int:
        return self.config.learner.batch_size * self.config.replay.train_len

    def _learn_on(self, batch: SequenceBatch) -> dict[str, Tensor]:
        if self.advised:  # every sequence holds the guide's advice for its steps
            batch.demo = batch.agents >= 0
        elif self.guides is not None:
            batch.demo = self.guides.guided[batch.agents]
        if self.rnd is not None:
            self.rnd.update(batch.obs[:, 1:].reshape(-1, batch.obs.shape[-1]))
        stats = self.learner.update(batch)
        if self.replay.prioritized:
            self.replay.update_priorities(batch.indices, stats["td_abs"], stats["valid"])
        return stats

    def _state(self) -> dict[str, Any]:
        return {"actor": {"h": self.actor.h, "c": self.actor.c}}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.actor.h = state["actor"]["h"].to(self.device)
        self.actor.c = state["actor"]["c"].to(self.device)
