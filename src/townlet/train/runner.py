"""The training loop: many agents in one batched world feed one learner, with metrics and checkpoints.

Data flows one way: RunConfig -> World + network/learner/replay -> Trainer.run -> metrics, checkpoints.
A run stopped (budget, SIGINT, SIGTERM) writes a checkpoint from which `Trainer.resume` continues exactly:
same weights and metrics as a run that was never interrupted (CPU, same seed).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from townlet.agents import QNetwork, RecurrentQNetwork
from townlet.curriculum import AdversarialCurriculum, Curriculum, StaticCurriculum
from townlet.explore.annealing import IntrinsicAnnealing
from townlet.explore.counts import VisitCounts
from townlet.explore.guides import Guides
from townlet.explore.rnd import RND
from townlet.explore.schedule import EpsilonSchedule, agent_epsilons
from townlet.explore.shaping import MeterPotential
from townlet.learn import DQNConfig, DQNLearner, R2D2Config, RecurrentActor, RecurrentLearner, masked_epsilon_greedy
from townlet.replay import SequenceReplay, TransitionReplay, with_intrinsic
from townlet.train.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from townlet.train.config import RunConfig
from townlet.train.metrics import MetricsDB
from townlet.world import World, load_level

CHECKPOINT_FORMAT = 1


def build_network(config: RunConfig, world: World) -> torch.nn.Module:
    """The Q-network a run config asks for, shaped by the world's observation layout."""
    net = config.network
    if net.kind == "mlp":
        return QNetwork(world.obs_layout, hidden=net.hidden, dueling=net.dueling, layer_norm=net.layer_norm)
    return RecurrentQNetwork(
        world.obs_layout, hidden_size=net.lstm_hidden, encoder_hidden=net.hidden, head_hidden=net.head_hidden,
        dueling=net.dueling, memory=net.kind == "lstm",
    )


def policy_entropy(q: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N] entropy of softmax(q / T) over the valid actions, divided by log(#valid): 0 certain, 1 uniform."""
    logits = torch.where(mask, q / temperature, torch.finfo(q.dtype).min)
    logp = torch.log_softmax(logits, dim=-1)
    h = -(logp.exp() * torch.where(mask, logp, 0.0)).sum(dim=-1)
    valid = mask.sum(dim=-1)
    return torch.where(valid > 1, h / valid.clamp(min=2).float().log(), 0.0)


@dataclass
class Progress:
    """What the progress display and the log interval show."""

    env_steps: int
    steps_per_s: float
    episodes: int
    survival_mean: float | None
    survival_median: float | None
    epsilon: float
    loss: float | None
    elapsed_s: float
    budget_left_s: float | None
    stage: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class _EpisodeLog:
    """Per-step episode-end tensors kept on the device and turned into rows only at flush time."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, torch.Tensor]]] = []

    def record(self, env_steps: int, info: dict[str, torch.Tensor], stage: torch.Tensor) -> None:
        """`stage`: each agent's curriculum stage during the step (the ended episodes' stage)."""
        keep = ("done", "episode_length", "episode_return", "cause")
        self.pending.append((env_steps, {**{k: info[k] for k in keep}, "stage": stage}))

    def flush(self, world: World, episode_index: torch.Tensor) -> list[tuple]:
        if not self.pending:
            return []
        steps = torch.tensor([s for s, _ in self.pending])
        stack = {k: torch.stack([p[k] for _, p in self.pending]).cpu() for k in self.pending[0][1]}
        self.pending.clear()
        done = stack["done"]
        t_idx, agents = done.nonzero(as_tuple=True)
        # agent a's episode that ended at row t: its current index minus its ends at rows >= t
        ends_from_here = done.flip(0).cumsum(0).flip(0)[t_idx, agents]
        episodes = episode_index.cpu()[agents] - ends_from_here
        stages = stack["stage"][t_idx, agents]
        rows = []
        for i in range(t_idx.numel()):
            t, a = int(t_idx[i]), int(agents[i])
            rows.append((
                int(steps[t]), a, int(episodes[i]), int(stack["episode_length"][t, a]),
                float(stack["episode_return"][t, a]), world.CAUSES[int(stack["cause"][t, a])], int(stages[i]),
            ))
        return rows


class Trainer:
    """Builds everything from a RunConfig and trains. `run()` returns when the budget is spent or a stop was
    requested (`request_stop()`, SIGINT, SIGTERM), always leaving a checkpoint behind."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.level = load_level(config.level)
        # actions come from a masked argmax, always in range: skip the per-step check (a host sync on CUDA)
        self.world = World(
            self.level, config.agents, device=self.device, seed=config.seed, validate_actions=False,
            compile=config.compile_world,
        )
        if config.exploring_starts.probability > 0:
            self.world.set_random_starts(config.exploring_starts.probability)
        gc = config.guides
        # every step stored with the guide's advice (with `purposeful`, the action count where it has none)
        self.advised = gc.imitation > 0 and gc.imitate in ("all", "purposeful")
        use_guides = gc.fraction > 0 or self.advised
        self.guides = (
            Guides(self.world, gc.fraction, gc.policy, config.seed + 4, purposeful_only=gc.imitate == "purposeful")
            if use_guides else None
        )
        self.recurrent = config.network.kind != "mlp"  # lstm and feedforward both learn on sequences
        self.network = build_network(config, self.world).to(self.device)
        lc, rc = config.learner, config.replay
        common = {
            "gamma": lc.gamma, "lr": lc.lr, "adam_eps": lc.adam_eps, "max_grad_norm": lc.grad_clip,
            "huber_delta": lc.huber_delta,
            "double": lc.double, "target_update_every": lc.target_update_every, "tau": lc.tau,
        }
        self.act_gen = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.sample_gen = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        n = config.agents
        if self.recurrent:
            self.learner: DQNLearner | RecurrentLearner = RecurrentLearner(
                self.network,
                R2D2Config(
                    burn_in=rc.burn_in, n_step=lc.n_step, zero_start_state=not rc.stored_state,
                    imitation_weight=gc.imitation, margin=gc.margin, **common,
                ),
            )
            self.replay: TransitionReplay | SequenceReplay = SequenceReplay(
                rc.capacity, n, self.world.obs_layout, burn_in=rc.burn_in, train_len=rc.train_len,
                stride=rc.stride, hidden_size=config.network.lstm_hidden, device=self.device,
                prioritized=rc.prioritized, split_episodes=rc.split_episodes, advice=self.advised,
            )
            self.actor: RecurrentActor | None = RecurrentActor(self.network, n, self.device, self.act_gen)
            self.transitions_per_update = lc.batch_size * rc.train_len
        else:
            self.learner = DQNLearner(self.network, DQNConfig(**common))
            self.replay = TransitionReplay(
                rc.capacity, n, self.world.obs_layout, n_step=lc.n_step, gamma=lc.gamma, device=self.device
            )
            self.actor = None  # the MLP acts straight from its Q-values (see collect)
            self.transitions_per_update = lc.batch_size
        ex = config.exploration
        self.epsilon = EpsilonSchedule(ex.start, ex.end, ex.decay_steps, ex.schedule)
        # the learning rate follows the same kind of env-step schedule as ε (constant without lr_end)
        self.lr = EpsilonSchedule(lc.lr, lc.lr if lc.lr_end is None else lc.lr_end, lc.lr_decay_steps)
        cc = config.curriculum
        if cc.kind == "adversarial":
            self.curriculum: Curriculum = AdversarialCurriculum(
                n, window=cc.window, advance_rate=cc.advance_rate, retreat_rate=cc.retreat_rate,
                entropy_gate=cc.entropy_gate, min_episodes=cc.min_episodes, device=self.device,
            )
        else:
            self.curriculum = StaticCurriculum(n, device=self.device)
        self.curriculum.apply(self.world)
        self.entropy_sum = torch.zeros(n, device=self.device)  # this episode's summed policy entropy
        sw = config.shaping.weight
        self.shaping = MeterPotential(self.world.obs_layout, sw, lc.gamma) if sw > 0 else None
        cu = config.curiosity
        self.rnd = (
            RND(self.world.obs_dim, hidden=cu.hidden, embed=cu.embed, lr=cu.lr, device=self.device,
                seed=config.seed + 3)
            if cu.enabled and cu.kind == "rnd" else None
        )
        self.counts = (
            VisitCounts(self.world.grid_size, self.world.num_affordances, cu.low_meter, self.device)
            if cu.enabled and cu.kind == "counts" else None
        )
        self.annealing = (
            IntrinsicAnnealing(cu.weight, cu.decay, cu.window, cu.variance_threshold, cu.min_survival_fraction,
                               self.level.max_steps, cu.floor)
            if cu.enabled else None
        )
        self.intrinsic_sum = torch.zeros((), device=self.device)  # summed intrinsic reward this log interval
        self.intrinsic_steps = 0
        self.unannealed: list[int] = []  # episode lengths not yet shown to the annealing rule
        self.env_steps = 0
        self.update_credit = 0.0
        self.elapsed_before = 0.0  # wall seconds of earlier sessions of this run
        self.last_stats: dict[str, torch.Tensor] = {}
        self.episode_log = _EpisodeLog()
        self.recent: list[int] = []  # lengths of the last 100 finished episodes
        self.episodes_done = 0
        self._stop = False
        self._next_log = config.logging.interval_steps
        self._next_ckpt = config.logging.checkpoint_every
        self.obs = self.world.observe()
        self.mask = self.world.action_mask()

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def resume(cls, run_dir: Path, overrides: RunConfig | None = None) -> tuple[Trainer, Path]:
        """A trainer restored from the newest readable checkpoint of `run_dir`."""
        run_dir = Path(run_dir)
        path, state = load_latest(run_dir / "checkpoints")
        config = overrides or RunConfig.model_validate(state["config"])
        trainer = cls(config, run_dir)
        trainer.load_state(state)
        return trainer, path

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def state(self, with_replay: bool) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers: weights_only-loadable)."""
        actor_state = {"h": self.actor.h, "c": self.actor.c} if self.actor is not None else {}
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.model_dump(mode="json"),
            "level": self.level.model_dump(mode="json"),
            "env_steps": self.env_steps,
            "update_credit": self.update_credit,
            "elapsed_s": self.elapsed_before + self._elapsed(),
            "episodes_done": self.episodes_done,
            "recent": list(self.recent),
            "next_log": self._next_log,
            "next_ckpt": self._next_ckpt,
            "learner": self.learner.state_dict(),
            "world": self.world.state_dict(),
            "actor": actor_state,
            "act_gen": self.act_gen.get_state(),
            "sample_gen": self.sample_gen.get_state(),
            "replay": self.replay.state_dict() if with_replay else None,
            "curriculum": self.curriculum.state_dict(),
            "entropy_sum": self.entropy_sum,
            "rnd": self.rnd.state_dict() if self.rnd is not None else None,
            "counts": self.counts.state_dict() if self.counts is not None else None,
            "guides": self.guides.state_dict() if self.guides is not None else None,
            "annealing": self.annealing.state_dict() if self.annealing is not None else None,
            "intrinsic": [self.intrinsic_sum, self.intrinsic_steps],
            "unannealed": list(self.unannealed),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
        self.env_steps = int(state["env_steps"])
        self.update_credit = float(state["update_credit"])
        self.elapsed_before = float(state["elapsed_s"])
        self.episodes_done = int(state["episodes_done"])
        self.recent = list(state["recent"])
        self._next_log, self._next_ckpt = int(state["next_log"]), int(state["next_ckpt"])
        self.learner.load_state_dict(state["learner"])
        self.world.load_state_dict(state["world"])
        if self.actor is not None:
            self.actor.h, self.actor.c = state["actor"]["h"].to(self.device), state["actor"]["c"].to(self.device)
        self.curriculum.load_state_dict(state["curriculum"])
        self.entropy_sum = state["entropy_sum"].to(self.device)
        if self.rnd is not None:
            self.rnd.load_state_dict(state["rnd"])
        if self.counts is not None:
            self.counts.load_state_dict(state["counts"])
        if self.guides is not None:
            self.guides.load_state_dict(state["guides"])
        if self.annealing is not None:
            self.annealing.load_state_dict(state["annealing"])
        self.intrinsic_sum, self.intrinsic_steps = state["intrinsic"][0].to(self.device), int(state["intrinsic"][1])
        self.unannealed = list(state["unannealed"])
        self.act_gen.set_state(state["act_gen"])
        self.sample_gen.set_state(state["sample_gen"])
        if state["replay"] is not None:
            self.replay.load_state_dict(state["replay"])
        self.obs = self.world.observe()
        self.mask = self.world.action_mask()

    def save(self) -> Path:
        self._flush_episodes()
        self.db.commit()
        return save_checkpoint(
            self.run_dir / "checkpoints", self.env_steps, self.state(self.config.logging.save_replay),
            self.config.logging.keep_checkpoints,
        )

    # ------------------------------------------------------------------ the loop
    def _elapsed(self) -> float:
        return time.perf_counter() - self._started if hasattr(self, "_started") else 0.0

    def _budget_left(self) -> float | None:
        if self.config.minutes is None:
            return None
        return self.config.minutes * 60 - self._elapsed()

    def _done(self) -> bool:
        c = self.config
        if c.steps is not None and self.env_steps >= c.steps:
            return True
        left = self._budget_left()
        return left is not None and left <= 0

    def exploration_rates(self) -> float | torch.Tensor:
        """ε for the next action: the schedule's, spread per agent if asked, and 1 for the first action of an
        exploring start."""
        eps: float | torch.Tensor = self.epsilon(self.env_steps)
        if self.config.exploration.spread > 0:
            eps = agent_epsilons(eps, self.world.num_agents, self.config.exploration.spread, self.device)
        if self.config.exploring_starts.probability > 0:
            eps = torch.where(self.world.exploring & (self.world.steps == 0), 1.0, eps)
        return eps

    def collect(self) -> None:
        """One world step for every agent, stored in replay; curriculum decisions applied to the world."""
        eps = self.exploration_rates()
        world, obs, mask = self.world, self.obs, self.mask
        if self.actor is not None:
            step = self.actor.act(obs, mask, eps)
            actions, q = step.actions, step.q
        else:
            with torch.no_grad():
                q = self.network(obs)
            actions = masked_epsilon_greedy(q, mask, eps, self.act_gen)
        if self.guides is not None:
            actions = self.guides.act(world, actions)
        stage = self.curriculum.stage.clone()
        intrinsic = self.counts.bonus(world, actions) if self.counts is not None else None  # before the step
        next_obs, reward, terminated, truncated, info = world.step(actions)
        done = info["done"]
        next_mask = world.action_mask()
        ended = done.view(-1, 1)
        after = torch.where(ended, info["final_obs"], next_obs)  # the true next observation of each transition
        if self.rnd is not None:
            intrinsic = self.rnd.reward(after)  # novelty of where the action led, not of where it started
        if self.shaping is not None:  # only replay sees it; the episode log keeps the task's returns
            reward = reward + self.shaping.reward(obs, after, terminated)
        if intrinsic is not None:
            self.intrinsic_sum += intrinsic.sum()
            self.intrinsic_steps += world.num_agents
        if isinstance(self.replay, SequenceReplay):
            advice = self.guides.advice if self.advised else None
            self.replay.add(obs, mask, actions, reward, terminated, truncated, info["final_obs"],
                            info["final_mask"], step.h, step.c, intrinsic=intrinsic, advice=advice)
            self.actor.reset(done)
        else:
            self.replay.add(obs, mask, actions, reward, after, torch.where(ended, info["final_mask"], next_mask),
                            terminated, truncated, intrinsic=intrinsic)
        if isinstance(self.curriculum, AdversarialCurriculum):
            self.entropy_sum += policy_entropy(q, mask, self.config.curriculum.temperature)
            mean_entropy = self.entropy_sum / info["episode_length"].clamp(min=1)
            self.curriculum.update(done, truncated, mean_entropy)
            self.curriculum.apply(world)  # new stages reach the world from each agent's next episode
            self.entropy_sum = torch.where(done, 0.0, self.entropy_sum)
        self.env_steps += world.num_agents
        self.episode_log.record(self.env_steps, info, stage)
        self.obs, self.mask = next_obs, next_mask

    def learn(self) -> None:
        """As many updates as the replay ratio has earned since the last call."""
        lc = self.config.learner
        if self.env_steps < lc.learning_starts or len(self.replay) == 0:
            return
        self.update_credit += lc.replay_ratio * self.world.num_agents / self.transitions_per_update
        if self.update_credit >= 1.0 and lc.lr_end is not None:
            self.learner.set_lr(self.lr(self.env_steps))
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            batch = self.replay.sample(lc.batch_size, self.sample_gen)
            if self.advised:  # every sequence holds the guide's advice for its steps
                batch.demo = torch.ones_like(batch.indices, dtype=torch.bool)
            elif self.guides is not None and isinstance(self.replay, SequenceReplay):
                batch.demo = self.guides.guided[batch.indices % self.world.num_agents]  # ids are k * N + agent
            if self.annealing is not None:
                batch = with_intrinsic(batch, self.annealing.weight)  # combined now, stored apart
            if self.rnd is not None:
                if isinstance(self.replay, SequenceReplay):
                    self.rnd.update(batch.obs[:, 1:].reshape(-1, batch.obs.shape[-1]))
                else:
                    self.rnd.update(batch.next_obs)
            stats = self.learner.update(batch)
            if isinstance(self.replay, SequenceReplay) and self.replay.prioritized:
                self.replay.update_priorities(batch.indices, stats["td_abs"], stats["valid"])
            self.last_stats = stats

    def _flush_episodes(self) -> None:
        rows = self.episode_log.flush(self.world, self.world.episode)
        if self.guides is not None:
            rows = [r for r in rows if not self.guides.is_guided(r[1])]  # the metrics are the network's
        if rows:
            self.db.add_episodes(rows)
            self.episodes_done += len(rows)
            self.recent = (self.recent + [r[3] for r in rows])[-100:]
            if self.annealing is not None:
                self.unannealed += [r[3] for r in rows]

    def progress(self) -> Progress:
        self._flush_episodes()
        recent = torch.tensor(self.recent, dtype=torch.float32)
        elapsed = self._elapsed()
        loss = self.last_stats.get("loss")
        return Progress(
            env_steps=self.env_steps,
            steps_per_s=(self.env_steps - self._start_steps) / max(elapsed, 1e-9),
            episodes=self.episodes_done,
            survival_mean=recent.mean().item() if len(self.recent) else None,
            survival_median=recent.median().item() if len(self.recent) else None,
            epsilon=self.epsilon(self.env_steps),
            loss=loss.item() if loss is not None else None,
            elapsed_s=self.elapsed_before + elapsed,
            budget_left_s=self._budget_left(),
            stage=self.curriculum.stage.float().mean().item(),
            extra=(
                {"intrinsic_weight": self.annealing.weight,
                 "intrinsic_reward": (self.intrinsic_sum / max(self.intrinsic_steps, 1)).item()}
                if self.annealing is not None else {}
            ),
        )

    def _log_interval(self, writer: Any) -> Progress:
        p = self.progress()
        s = self.last_stats
        row = {
            "step": self.env_steps, "wall_s": p.elapsed_s, "updates": self.learner.updates,
            "epsilon": p.epsilon, "loss": p.loss,
            "q_mean": s["q_mean"].item() if "q_mean" in s else None,
            "grad_norm": s["grad_norm"].item() if "grad_norm" in s else None,
            "steps_per_s": p.steps_per_s, "episodes": p.episodes,
            "survival_mean": p.survival_mean, "survival_median": p.survival_median, "stage_mean": p.stage,
        }
        if self.annealing is not None:
            # fed at log intervals (env steps), so a resumed run anneals exactly like an uninterrupted one
            self.annealing.observe(self.unannealed)
            self.unannealed = []
            row["intrinsic_weight"] = self.annealing.weight
            row["intrinsic_reward"] = (self.intrinsic_sum / max(self.intrinsic_steps, 1)).item()
            self.intrinsic_sum, self.intrinsic_steps = torch.zeros((), device=self.device), 0
        self.db.add_learner(row)
        self.db.commit()
        if writer is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    writer.add_scalar(f"train/{key}", value, self.env_steps)
        return p

    def run(self, on_progress: Callable[[Progress], None] | None = None, progress_every_s: float = 1.0) -> Path:
        """Train until the budget is spent or a stop is requested; returns the last checkpoint's path."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.config.model_dump(mode="json")))
        atomic_write_text(self.run_dir / "level.yaml", yaml.safe_dump(self.level.model_dump(mode="json")))
        self.db = MetricsDB(self.run_dir / "metrics.sqlite")
        self.db.truncate_after(self.env_steps)  # a resumed run rewrites what came after its checkpoint
        writer = None
        if self.config.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.env_steps or None)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self.request_stop)
        self._started = time.perf_counter()
        self._start_steps = self.env_steps
        last_report = 0.0
        try:
            while not self._done() and not self._stop:
                self.collect()
                self.learn()
                if self.env_steps >= self._next_log:
                    self._next_log += self.config.logging.interval_steps
                    self._log_interval(writer)
                if self.env_steps >= self._next_ckpt:
                    self._next_ckpt += self.config.logging.checkpoint_every
                    self.save()
                now = time.perf_counter()
                if on_progress is not None and now - last_report >= progress_every_s:
                    last_report = now
                    on_progress(self.progress())
            path = self.save()
            if on_progress is not None:
                on_progress(self.progress())
            return path
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if writer is not None:
                writer.close()
            self.db.close()


def load_for_eval(path: Path) -> tuple[RunConfig, dict[str, Any]]:
    """(config, state) from a run directory (its newest checkpoint) or a checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint file")
    if path.is_dir():
        _, state = load_latest(path / "checkpoints")
    else:
        state = load_checkpoint(path)
    return RunConfig.model_validate(state["config"]), state
