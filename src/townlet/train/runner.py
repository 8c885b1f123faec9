"""The training loop: many agents in one batched world feed one algorithm; a logbook records what happens.

Data flows one way: RunConfig -> `build_run` (world, curriculum, algorithm) -> `Trainer.run` -> metrics and
checkpoints. A run stopped (budget, SIGINT, SIGTERM) writes a checkpoint from which `Trainer.resume`
continues exactly: the same weights and metrics as a run that was never interrupted (CPU, same seed).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from townlet.curriculum import AdversarialCurriculum, Curriculum, StaticCurriculum
from townlet.devices import require_device
from townlet.train.algos import Algorithm, Step, make_algorithm
from townlet.train.checkpoint import FORMAT, RunDirError
from townlet.train.config import RunConfig
from townlet.train.logbook import Logbook, Progress
from townlet.train.rundir import (
    RunLock,
    open_run,
    prepare_run_dir,
    remove_stale_temp_files,
    save_checkpoint,
    set_aside,
    write_run_files,
)
from townlet.world import LevelConfig, World, load_level


@dataclass
class Components:
    """What a run config builds: the level, the batched world, the curriculum and the learning algorithm."""

    level: LevelConfig
    world: World
    curriculum: Curriculum
    algorithm: Algorithm


def build_run(config: RunConfig, level: LevelConfig | None = None) -> Components:
    """The one place that turns a run config into the parts of a run (seeded: the same config, the same run).
    `level`: the level itself (a resumed run's own copy); None reads `config.level`."""
    device = require_device(config.device, "device (run config)")
    torch.manual_seed(config.seed)
    level = level if level is not None else load_level(config.level)
    # actions come from a masked argmax, always in range: skip the per-step check (a host sync on CUDA)
    world = World(level, config.agents, device=device, seed=config.seed, validate_actions=False,
                  compile=config.compile_world)
    if config.exploring_starts.probability > 0:
        world.set_random_starts(config.exploring_starts.probability)
    cc = config.curriculum
    curriculum: Curriculum = (
        AdversarialCurriculum(config.agents, window=cc.window, advance_rate=cc.advance_rate,
                              retreat_rate=cc.retreat_rate, entropy_gate=cc.entropy_gate,
                              min_episodes=cc.min_episodes, device=device)
        if cc.kind == "adversarial" else StaticCurriculum(config.agents, device=device)
    )
    curriculum.apply(world)
    return Components(level, world, curriculum, make_algorithm(config, world))


class Trainer:
    """Trains a run config in `run_dir`. `run()` returns when the budget is spent or a stop was requested
    (`request_stop()`, SIGINT, SIGTERM), always leaving a checkpoint behind.

    A new run needs a new or empty `run_dir`: one that holds a run is refused (RunDirError) unless
    `overwrite`, which deletes that run first. `Trainer.resume(run_dir)` continues a run instead. Budgets
    (`steps`, `minutes`) are totals over every session of a run.
    """

    def __init__(self, config: RunConfig, run_dir: Path | str, *, level: LevelConfig | None = None,
                 overwrite: bool = False, new_run: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        parts = build_run(config, level)
        self.level, self.world, self.curriculum, self.algorithm = (
            parts.level, parts.world, parts.curriculum, parts.algorithm)
        self.device = self.world.device
        self.logbook = Logbook(self.run_dir, self.world.CAUSES, config.logging.tensorboard,
                               run_config=config.model_dump(mode="json"))
        n = config.agents
        self.env_steps = 0
        self.resumed_at = 0  # agent-steps of the checkpoint this trainer started from
        self.elapsed_before = 0.0  # wall seconds of earlier sessions of this run
        self.next_log = config.logging.interval_steps
        self.next_checkpoint = config.logging.checkpoint_every
        self.entropy_sum = torch.zeros(n, device=self.device)  # this episode's summed policy entropy
        self.first = torch.ones(n, dtype=torch.bool, device=self.device)  # the next obs starts an episode
        self.obs = self.world.observe()
        self.mask = self.world.action_mask()
        self._stop = False
        self._started: float | None = None
        self._start_steps = 0
        self.last_checkpoint: Path | None = None  # the newest checkpoint this trainer wrote or started from
        self.unreadable_checkpoints: list[Path] = []  # newer files a resume skipped: set aside when it runs
        self._lock = RunLock(self.run_dir)
        self.lock_wait_s = 5.0  # how long run() waits for the run's lock: a reader holds it for a moment
        if new_run:
            prepare_run_dir(self.run_dir, overwrite)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def resume(cls, run_dir: Path | str, overrides: dict[str, Any] | None = None) -> Trainer:
        """A trainer restored from the newest readable checkpoint of `run_dir` (see `Run.resume`)."""
        return open_run(run_dir).resume(overrides)

    def _components(self) -> dict[str, Any]:
        return {"world": self.world, "curriculum": self.curriculum, "logbook": self.logbook}

    def state_dict(self, with_replay: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain containers: weights_only-loadable)."""
        return {
            "format": FORMAT,
            "config": self.config.model_dump(mode="json"),
            "level": self.level.model_dump(mode="json"),
            "trainer": {
                "env_steps": self.env_steps, "elapsed_s": self.elapsed_before + self._elapsed(),
                "next_log": self.next_log, "next_checkpoint": self.next_checkpoint,
                "entropy_sum": self.entropy_sum, "first": self.first,
            },
            "algorithm": self.algorithm.state_dict(with_replay),
            **{name: part.state_dict() for name, part in self._components().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        loop = state["trainer"]
        self.env_steps = self.resumed_at = int(loop["env_steps"])
        self.elapsed_before = float(loop["elapsed_s"])
        self.next_log, self.next_checkpoint = int(loop["next_log"]), int(loop["next_checkpoint"])
        self.entropy_sum = loop["entropy_sum"].to(self.device)
        self.first = loop["first"].to(self.device)
        self.algorithm.load_state_dict(state["algorithm"])
        for name, part in self._components().items():
            part.load_state_dict(state[name])
        self.obs = self.world.observe()
        self.mask = self.world.action_mask()

    def save(self) -> Path:
        """Flush the logbook and write a checkpoint (the newest `logging.keep_checkpoints` are kept)."""
        self.logbook.open(self.resumed_at)
        self.logbook.flush(self.world.episode, self.algorithm.scripted)
        self.logbook.commit()
        self.last_checkpoint = save_checkpoint(self.run_dir / "checkpoints", self.env_steps,
                                               self.state_dict(self.config.logging.save_replay),
                                               self.config.logging.keep_checkpoints)
        return self.last_checkpoint

    def request_stop(self, *_: Any) -> None:
        self._stop = True

    # ------------------------------------------------------------------ the loop
    def collect(self) -> None:
        """One world step for every agent, handed to the algorithm; curriculum decisions reach the world."""
        world, algo = self.world, self.algorithm
        actions = algo.act(self.obs, self.mask, self.first)
        stage = self.curriculum.stage.clone()
        next_obs, reward, terminated, truncated, info = world.step(actions)
        done = info["done"]
        next_mask = world.action_mask()
        final_obs = torch.where(done.view(-1, 1), info["final_obs"], next_obs)
        self.env_steps += world.num_agents
        algo.store(Step(self.obs, self.mask, actions, reward, terminated, truncated, next_obs, next_mask,
                        final_obs, info["final_mask"], self.env_steps))
        if isinstance(self.curriculum, AdversarialCurriculum):
            if self.curriculum.gated:  # otherwise entropy_sum stays 0 and nothing reads it
                self.entropy_sum += algo.action_entropy(self.config.curriculum.temperature)
            self.curriculum.update(done, truncated, self.entropy_sum / info["episode_length"].clamp(min=1))
            self.curriculum.apply(world)  # new stages reach the world from each agent's next episode
            self.entropy_sum = torch.where(done, 0.0, self.entropy_sum)
        self.logbook.record(self.env_steps, info, stage)
        self.obs, self.mask, self.first = next_obs, next_mask, done

    def _elapsed(self) -> float:
        return time.perf_counter() - self._started if self._started is not None else 0.0

    def _budget_left(self) -> float | None:
        """Seconds left of the `minutes` budget, a total over every session of the run."""
        if self.config.minutes is None:
            return None
        return self.config.minutes * 60 - self.elapsed_before - self._elapsed()

    @property
    def finished(self) -> bool:
        """Whether the run's budget is spent (a resume needs a larger `steps` or `minutes` to train on)."""
        return self._done()

    def _done(self) -> bool:
        if self.config.steps is not None and self.env_steps >= self.config.steps:
            return True
        left = self._budget_left()
        return left is not None and left <= 0

    def progress(self) -> Progress:
        self.logbook.open(self.resumed_at)
        self.logbook.flush(self.world.episode, self.algorithm.scripted)
        mean, median = self.logbook.survival()
        m = self.algorithm.metrics()
        elapsed = self._elapsed()
        return Progress(
            env_steps=self.env_steps,
            steps_per_s=(self.env_steps - self._start_steps) / max(elapsed, 1e-9),
            episodes=self.logbook.episodes_done, survival_mean=mean, survival_median=median,
            epsilon=m.get("epsilon"), loss=m.get("loss"), elapsed_s=self.elapsed_before + elapsed,
            budget_left_s=self._budget_left(), stage=self.curriculum.stage.float().mean().item(),
            extra={k: v for k in ("intrinsic_weight", "intrinsic_reward") if (v := m.get(k)) is not None},
        )

    def _log_interval(self) -> dict[str, float | None]:
        p = self.progress()
        m = self.algorithm.metrics()
        row = {
            "step": self.env_steps, "wall_s": p.elapsed_s, "updates": m.get("updates"), "epsilon": p.epsilon,
            "loss": p.loss, "q_mean": m.get("q_mean"), "grad_norm": m.get("grad_norm"),
            "steps_per_s": p.steps_per_s, "episodes": p.episodes, "survival_mean": p.survival_mean,
            "survival_median": p.survival_median, "stage_mean": p.stage,
            **self.algorithm.end_interval(self.logbook.take_interval_lengths()),
        }
        self.logbook.write_interval(row, extra=m)  # the learning rate, PPO's parts of the loss: TensorBoard
        return row

    def run(
        self, on_progress: Callable[[Progress], None] | None = None, progress_every_s: float = 1.0,
        on_interval: Callable[[dict[str, float | None]], None] | None = None,
    ) -> Path:
        """Train until the budget is spent or a stop is requested; returns the last checkpoint's path. A run
        whose budget is already spent trains nothing and writes nothing: it returns the checkpoint it holds.

        `on_interval` gets each log interval's learner row (the `learner` table's columns) as it is written, for
        whatever follows the run from outside (a sweep's scheduler, say).
        """
        if self._done() and self.last_checkpoint is not None:
            return self.last_checkpoint
        if not self._lock.acquire(wait_s=self.lock_wait_s):
            raise RunDirError(f"{self.run_dir}: another process is training this run right now (it holds the run "
                              "directory's lock); wait for it to finish, or stop it, before training it here")
        try:
            return self._run_locked(on_progress, progress_every_s, on_interval)
        finally:
            self._lock.release()

    def _run_locked(
        self, on_progress: Callable[[Progress], None] | None, progress_every_s: float,
        on_interval: Callable[[dict[str, float | None]], None] | None,
    ) -> Path:
        remove_stale_temp_files(self.run_dir)  # left by a run killed while writing; no one else writes here now
        set_aside(self.unreadable_checkpoints)  # so that pruning and the next resume see the good ones only
        self.unreadable_checkpoints = []
        write_run_files(self.run_dir, self.config, self.level)
        self.logbook.open(self.resumed_at)
        # Ctrl-C and SIGTERM stop with a checkpoint; only the main thread may set handlers (a Ray Tune trial
        # runs in another thread, and stops through request_stop)
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        for s in previous:
            signal.signal(s, self.request_stop)
        self._started, self._start_steps = time.perf_counter(), self.env_steps
        last_report = 0.0
        try:
            while not self._done() and not self._stop:
                self.collect()
                self.algorithm.update()
                if self.env_steps >= self.next_log:
                    self.next_log += self.config.logging.interval_steps
                    row = self._log_interval()
                    if on_interval is not None:
                        on_interval(row)
                if self.env_steps >= self.next_checkpoint:
                    self.next_checkpoint += self.config.logging.checkpoint_every
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
            self.elapsed_before += self._elapsed()
            self._started = None
            self.logbook.close()
