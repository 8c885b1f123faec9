"""Curricula: per-agent difficulty stages that are applied to the world.

A curriculum keeps one stage index per agent (`stage` [N] long). `apply(world)` writes every agent's
depletion and reward mode into the world with one `World.set_difficulty` call; `update(done, survived,
entropy)` records the episodes that just ended and moves agents between stages. The runner calls, after
each `world.step` (which has already auto-reset the ended agents):

    changed = curriculum.update(info["done"], info["truncated"], episode_entropy)
    curriculum.apply(world)

so a stage change only ever touches agents that are at the very start of a new episode: it takes effect
from the agent's next episode. Call `apply(world)` once before the first step as well.

Everything is batched over agents with tensors on `device`; `update` never synchronises with the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from townlet.world.config import REWARD_MODES
from townlet.world.engine import World


@dataclass(frozen=True)
class Stage:
    """One difficulty setting: the depletion multiplier (scales passive drain and modulation; 1.0 is the
    level as written) and the reward mode (a name from `REWARD_MODES`)."""

    depletion: float
    reward_mode: str

    def __post_init__(self) -> None:
        if not self.depletion >= 0.0:  # also rejects NaN
            raise ValueError(f"Stage depletion must be >= 0, got {self.depletion}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"Stage reward_mode {self.reward_mode!r} unknown; allowed: {', '.join(REWARD_MODES)}")

    def __str__(self) -> str:
        return f"{self.depletion:g}x/{self.reward_mode}"


DEFAULT_STAGES: tuple[Stage, ...] = (
    Stage(0.2, "shaped"),  # 0: meters drain at a fifth of the rate; dense reward for staying healthy
    Stage(0.4, "shaped"),  # 1: still forgiving, same dense reward
    Stage(0.6, "survival"),  # 2: reward is only "still alive" (+0.01/tick, -1 on death)
    Stage(0.8, "survival"),  # 3: almost the real drain
    Stage(1.0, "milestone"),  # 4: the real game: full drain, sparse milestone reward, -100 on death
)
"""From gentle to the real game: depletion rises 0.2 → 1.0 while the reward goes from dense (`shaped`:
alive bonus plus min(energy, health)) through `survival` (alive bonus only) to the level's sparse
`milestone` reward."""


class Curriculum(ABC):
    """Per-agent difficulty stages over a fixed list of `stages`; see the module docstring for the protocol."""

    kind: str = "curriculum"

    def __init__(self, num_agents: int, stages: tuple[Stage, ...] | list[Stage], device: str | torch.device) -> None:
        if num_agents < 1:
            raise ValueError(f"num_agents must be >= 1, got {num_agents}")
        stages = tuple(stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise ValueError("stages must be a non-empty sequence of Stage")
        self.num_agents = num_agents
        self.stages = stages
        self.device = torch.device(device)
        self.stage = torch.zeros(num_agents, dtype=torch.long, device=self.device)
        self._depletion_table = torch.tensor([s.depletion for s in stages], dtype=torch.float32, device=self.device)
        self._mode_table = torch.tensor(
            [REWARD_MODES.index(s.reward_mode) for s in stages], dtype=torch.long, device=self.device
        )

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def depletion(self) -> torch.Tensor:
        """[N] float: each agent's depletion multiplier at its current stage."""
        return self._depletion_table[self.stage]

    @property
    def reward_mode(self) -> torch.Tensor:
        """[N] long: each agent's reward mode (index into `REWARD_MODES`) at its current stage."""
        return self._mode_table[self.stage]

    def stage_counts(self) -> torch.Tensor:
        """[num_stages] long: how many agents are at each stage (on `device`, for metrics)."""
        return torch.bincount(self.stage, minlength=self.num_stages)

    def apply(self, world: World) -> None:
        """Set every agent's depletion and reward mode in `world` from its stage (one `set_difficulty` call)."""
        if world.num_agents != self.num_agents:
            raise ValueError(f"world has {world.num_agents} agents, curriculum {self.num_agents}")
        world.set_difficulty(self.depletion, self.reward_mode, validate=False)  # valid by construction: no sync

    @abstractmethod
    def update(self, done: torch.Tensor, survived: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        """Record the episodes that ended this step and move agents between stages.

        `done` [N] bool: the agents whose episode ended (other rows are ignored). `survived` [N] bool: the
        episode reached the time cap rather than dying. `entropy` [N] float: the mean policy entropy of the
        finished episode, normalised to [0, 1]. Returns [N] bool: which agents changed stage.
        """

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers only: loadable with `torch.load(weights_only=True)`."""
        return {
            "kind": self.kind,
            "stages": [(s.depletion, s.reward_mode) for s in self.stages],
            "stage": self.stage.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"curriculum state is for {state.get('kind')!r}, not {self.kind!r}")
        stages = [(float(d), str(m)) for d, m in state["stages"]]
        if stages != [(s.depletion, s.reward_mode) for s in self.stages]:
            raise ValueError(f"curriculum state has stages {stages}, this curriculum {list(map(str, self.stages))}")
        self.stage = self._checked(state, "stage", self.stage)
        if bool(((self.stage < 0) | (self.stage >= self.num_stages)).any()):
            raise ValueError(f"curriculum state: stage indices must be in [0, {self.num_stages - 1}]")

    def describe(self) -> str:
        counts = self.stage_counts().tolist()
        per_stage = ", ".join(f"{s}: {c}" for s, c in zip(self.stages, counts, strict=True))
        return f"{self.kind} curriculum, {self.num_agents} agents by stage [{per_stage}]"

    def _checked(self, state: dict[str, Any], name: str, current: torch.Tensor) -> torch.Tensor:
        value = state[name]
        if not isinstance(value, torch.Tensor) or value.shape != current.shape or value.dtype != current.dtype:
            raise ValueError(f"curriculum state {name!r}: expected {current.dtype} {list(current.shape)}")
        return value.to(self.device).clone()

    def _check_inputs(self, done: torch.Tensor, survived: torch.Tensor, entropy: torch.Tensor) -> None:
        n = self.num_agents
        for name, value in (("done", done), ("survived", survived), ("entropy", entropy)):
            if value.shape != (n,):
                raise ValueError(f"{name} must have shape [{n}], got {list(value.shape)}")


class StaticCurriculum(Curriculum):
    """Every agent at one fixed `stage` (by default the real game); `update` never changes anything."""

    kind = "static"

    def __init__(
        self, num_agents: int, stage: Stage = Stage(1.0, "milestone"), device: str | torch.device = "cpu"
    ) -> None:
        super().__init__(num_agents, (stage,), device)

    def update(self, done: torch.Tensor, survived: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        self._check_inputs(done, survived, entropy)
        return torch.zeros(self.num_agents, dtype=torch.bool, device=self.device)

    def describe(self) -> str:
        return f"static curriculum: all {self.num_agents} agents at {self.stages[0]}"


class AdversarialCurriculum(Curriculum):
    """Each agent climbs the `stages` on its own record in its current stage.

    Per agent, a ring holds the outcomes (survived 1/0) and entropies of its last `window` episodes in its
    current stage. Once it has played at least `min_episodes` there, at the end of an episode it
    - advances one stage when the survival rate over the window is >= `advance_rate` (and, with an
      `entropy_gate` below 1, the mean entropy is < `entropy_gate`: the policy has become decisive, not lucky),
      unless it is at the last stage;
    - retreats one stage when the survival rate is < `retreat_rate`, unless it is at stage 0.
    A stage change clears that agent's ring and episode count.

    The gate is open (1) by default because it reads a softmax over the network's outputs: a policy's logits
    suit it, but a value learner's Q-values of one state differ by a small fraction of their scale, so their
    softmax stays near uniform at any one temperature, and a gate below 1 would hold every agent at stage 0.
    """

    kind = "adversarial"

    def __init__(
        self,
        num_agents: int,
        stages: tuple[Stage, ...] | list[Stage] = DEFAULT_STAGES,
        window: int = 20,
        advance_rate: float = 0.7,
        retreat_rate: float = 0.3,
        entropy_gate: float = 1.0,
        min_episodes: int = 10,
        start_stage: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(num_agents, stages, device)
        if window < 1 or min_episodes < 1:
            raise ValueError(f"window and min_episodes must be >= 1, got {window} and {min_episodes}")
        if not 0.0 <= retreat_rate <= advance_rate <= 1.0:
            raise ValueError(
                f"need 0 <= retreat_rate <= advance_rate <= 1, got retreat {retreat_rate}, advance {advance_rate}"
            )
        if not entropy_gate > 0.0:
            raise ValueError(f"entropy_gate must be > 0 (entropy is normalised to [0, 1]), got {entropy_gate}")
        if not 0 <= start_stage < self.num_stages:
            raise ValueError(f"start_stage must be in [0, {self.num_stages - 1}], got {start_stage}")
        self.window = window
        self.advance_rate = advance_rate
        self.retreat_rate = retreat_rate
        self.entropy_gate = entropy_gate
        self.min_episodes = min_episodes
        self.start_stage = start_stage
        dev = self.device
        self.stage.fill_(start_stage)
        self.survived = torch.zeros(num_agents, window, device=dev)  # ring of outcomes, 0 where unused
        self.entropy = torch.zeros(num_agents, window, device=dev)  # ring of episode entropies, 0 where unused
        self.episodes = torch.zeros(num_agents, dtype=torch.long, device=dev)  # episodes in the current stage
        self._slots = torch.arange(window, device=dev).view(1, -1)

    @property
    def gated(self) -> bool:
        """Whether advancing reads the policy's entropy (a gate below 1; at 1 even a uniform policy advances)."""
        return self.entropy_gate < 1.0

    def survival_rate(self) -> torch.Tensor:
        """[N] survival rate over each agent's window (0 before its first episode in the stage)."""
        return self.survived.sum(dim=1) / self._filled()

    def mean_entropy(self) -> torch.Tensor:
        """[N] mean entropy over each agent's window (0 before its first episode in the stage)."""
        return self.entropy.sum(dim=1) / self._filled()

    def update(self, done: torch.Tensor, survived: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        self._check_inputs(done, survived, entropy)
        done = done.to(self.device, torch.bool)
        outcome = survived.to(self.device, torch.float32)
        entropy = entropy.to(self.device, torch.float32)

        write = done.view(-1, 1) & (self._slots == (self.episodes % self.window).view(-1, 1))
        self.survived = torch.where(write, outcome.view(-1, 1), self.survived)
        self.entropy = torch.where(write, entropy.view(-1, 1), self.entropy)
        self.episodes = self.episodes + done.long()

        ready = done & (self.episodes >= self.min_episodes)
        rate = self.survival_rate()
        advance = ready & (rate >= self.advance_rate)
        if self.gated:
            advance &= self.mean_entropy() < self.entropy_gate
        advance &= self.stage < self.num_stages - 1
        retreat = ready & (rate < self.retreat_rate) & (self.stage > 0)
        changed = advance | retreat

        self.stage = self.stage + advance.long() - retreat.long()
        self.episodes = torch.where(changed, 0, self.episodes)
        clear = changed.view(-1, 1)
        self.survived = torch.where(clear, 0.0, self.survived)
        self.entropy = torch.where(clear, 0.0, self.entropy)
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "survived": self.survived.clone(),
            "entropy": self.entropy.clone(),
            "episodes": self.episodes.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.survived = self._checked(state, "survived", self.survived)
        self.entropy = self._checked(state, "entropy", self.entropy)
        self.episodes = self._checked(state, "episodes", self.episodes)

    def describe(self) -> str:
        gate = f" and entropy < {self.entropy_gate:g}" if self.gated else ""
        return (
            f"{super().describe()}; advance at survival >= {self.advance_rate:g}{gate}, retreat at survival < "
            f"{self.retreat_rate:g}, over the last {self.window} episodes (at least {self.min_episodes}) in a stage"
        )

    def _filled(self) -> torch.Tensor:
        return self.episodes.clamp(1, self.window).float()
