"""The run's logbook: finished episodes and per-interval learner rows, into SQLite and TensorBoard, and the
figures the progress display shows.

Episode ends are kept on the device as they happen and turned into rows only when the logbook is flushed
(a log interval, a checkpoint, a progress refresh), so the loop never waits for the device.

TensorBoard (`RUN/tb`) uses the tags CleanRL-style scripts write, so the charts are where RL users look:
`charts/episodic_return` and `charts/episodic_length` (the mean over the episodes the network's agents finished
in each log interval), `charts/SPS`, `charts/epsilon`, `charts/learning_rate`, `losses/td_loss` and
`losses/q_values` (PPO: `losses/loss`, `losses/values` and its `losses/value_loss`, `policy_loss`, `entropy`,
`approx_kl`, `clipfrac`), with the run config as text (`run_config`) and as hyperparameters (the HPARAMS tab).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import Tensor

from townlet.train.metrics import MetricsDB

# learner-row column -> TensorBoard tag; `loss` and `q_mean` depend on the algorithm (LOSS_TAGS)
TB_TAGS: dict[str, str] = {
    "steps_per_s": "charts/SPS",
    "epsilon": "charts/epsilon",
    "grad_norm": "losses/grad_norm",
    "survival_mean": "charts/survival_mean",
    "survival_median": "charts/survival_median",
    "stage_mean": "charts/curriculum_stage",
    "episodes": "charts/episodes",
    "updates": "charts/updates",
    "wall_s": "charts/wall_seconds",
    "intrinsic_weight": "charts/intrinsic_weight",
    "intrinsic_reward": "charts/intrinsic_reward",
}
LOSS_TAGS: dict[str, dict[str, str]] = {
    "q-learning": {"loss": "losses/td_loss", "q_mean": "losses/q_values"},
    "ppo": {"loss": "losses/loss", "q_mean": "losses/values"},
}
# figures an algorithm's metrics() may give that the learner table has no column for: TensorBoard only
EXTRA_TAGS: dict[str, str] = {
    "learning_rate": "charts/learning_rate",
    "value_loss": "losses/value_loss",
    "policy_loss": "losses/policy_loss",
    "entropy": "losses/entropy",
    "approx_kl": "losses/approx_kl",
    "clipfrac": "losses/clipfrac",
}
HPARAM_METRICS = ("charts/episodic_return", "charts/episodic_length", "charts/survival_mean")


class EpisodeRow(NamedTuple):
    """One finished episode, as stored in the `episodes` table (same order as its columns)."""

    step: int  # agent-steps of the run when it ended
    agent: int
    episode: int  # the agent's episode index
    length: int
    episode_return: float
    cause: str
    stage: int  # curriculum stage it was played at


@dataclass
class Progress:
    """What the progress display and the log interval show."""

    env_steps: int
    steps_per_s: float
    episodes: int
    survival_mean: float | None
    survival_median: float | None
    epsilon: float | None
    loss: float | None
    elapsed_s: float
    budget_left_s: float | None
    stage: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class Logbook:
    """Episode rows for the agents the network controls (`scripted` agents are left out), the last 100
    lengths for progress, the lengths finished since the last interval (for curiosity's annealing), and
    the metrics files of `run_dir` (`open` before writing, `close` after)."""

    def __init__(
        self, run_dir: Path, causes: tuple[str, ...], tensorboard: bool, run_config: dict[str, Any] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.causes = causes
        self.tensorboard = tensorboard
        self.run_config = run_config  # the resolved run config (JSON-like), for TensorBoard's text and hparams
        algorithm = (run_config or {}).get("algorithm")
        self.tags = {**TB_TAGS, **LOSS_TAGS["ppo" if algorithm == "ppo" else "q-learning"]}
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self.recent: list[int] = []  # lengths of the last 100 finished episodes
        self.interval_lengths: list[int] = []  # lengths finished since the last log interval
        self.episodes_done = 0
        self.db: MetricsDB | None = None
        self.writer: Any = None
        self._opened = False

    def open(self, since: int) -> None:
        """Open the metrics files (if closed). The first opening drops whatever an earlier session logged
        after agent-step `since` (the checkpoint a resumed run starts from)."""
        if self.db is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db = MetricsDB(self.run_dir / "metrics.sqlite")
        purge, first = None, not self._opened
        if first:
            self.db.truncate_after(since)
            purge = since or None
        self._opened = True
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
            if first and self.run_config is not None:  # once per session; hparams once per run
                self._write_run_config(since, hparams=since == 0)

    def _write_run_config(self, step: int, hparams: bool) -> None:
        """The run config as TensorBoard text (indented: Markdown shows it as code) and, for a new run, as
        hyperparameters with the episodic charts as their metrics."""
        from torch.utils.tensorboard.summary import hparams as hparam_summaries

        assert self.writer is not None and self.run_config is not None
        text = yaml.safe_dump(self.run_config, sort_keys=False)
        self.writer.add_text("run_config", "\n".join("    " + line for line in text.splitlines()), step)
        if hparams:
            values = {key: value if isinstance(value, bool | int | float | str) else str(value)
                      for key, value in _flatten(self.run_config).items()}
            writer = self.writer._get_file_writer()
            for summary in hparam_summaries(values, dict.fromkeys(HPARAM_METRICS, 0.0)):
                writer.add_summary(summary)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def record(self, env_steps: int, info: dict[str, Tensor], stage: Tensor) -> None:
        """One world step's episode ends; `stage`: each agent's curriculum stage during the step."""
        keep = ("done", "episode_length", "episode_return", "cause")
        self.pending.append((env_steps, {**{k: info[k] for k in keep}, "stage": stage}))

    def flush(self, episode_index: Tensor, scripted: Tensor | None) -> list[EpisodeRow]:
        """Turn the recorded steps into rows (the network's agents only) and write them to the database."""
        rows = self._rows(episode_index)
        if scripted is not None:
            guided = scripted.cpu()
            rows = [r for r in rows if not bool(guided[r.agent])]
        if rows:
            if self.db is not None:
                self.db.add_episodes(rows)
            self.episodes_done += len(rows)
            self.recent = (self.recent + [r.length for r in rows])[-100:]
            self.interval_lengths += [r.length for r in rows]
        return rows

    def _rows(self, episode_index: Tensor) -> list[EpisodeRow]:
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
        lengths = stack["episode_length"][t_idx, agents]
        returns = stack["episode_return"][t_idx, agents]
        causes = stack["cause"][t_idx, agents]
        return [
            EpisodeRow(int(steps[t]), int(a), int(e), int(n), float(r), self.causes[int(c)], int(s))
            for t, a, e, n, r, c, s in zip(
                t_idx.tolist(), agents.tolist(), episodes.tolist(), lengths.tolist(), returns.tolist(),
                causes.tolist(), stages.tolist(), strict=True,
            )
        ]

    def take_interval_lengths(self) -> list[int]:
        lengths, self.interval_lengths = self.interval_lengths, []
        return lengths

    def survival(self) -> tuple[float | None, float | None]:
        """(mean, median) of the last 100 finished episodes' lengths."""
        if not self.recent:
            return None, None
        recent = torch.tensor(self.recent, dtype=torch.float32)
        return recent.mean().item(), recent.median().item()

    def write_interval(self, row: dict[str, float | None], extra: dict[str, float | None] | None = None) -> None:
        """One learner row (keyed by the `learner` table's columns; `step` is the x axis) into both files, with
        the interval's mean episodic return and length in TensorBoard; `extra`: figures for TensorBoard only
        (those EXTRA_TAGS names, e.g. the learning rate; others are ignored)."""
        assert self.db is not None, "Logbook.open() first"
        after = self.db.last_learner_step()
        self.db.add_learner(row)
        self.db.commit()
        if self.writer is None:
            return
        step = row["step"]
        count, mean_return, mean_length = self.db.episode_means(int(after), int(step))
        if count:
            self.writer.add_scalar("charts/episodic_return", mean_return, step)
            self.writer.add_scalar("charts/episodic_length", mean_length, step)
        for key, value in row.items():
            if key != "step" and value is not None:
                self.writer.add_scalar(self.tags.get(key, f"charts/{key}"), value, step)
        for key, value in (extra or {}).items():
            if key in EXTRA_TAGS and value is not None:
                self.writer.add_scalar(EXTRA_TAGS[key], value, step)

    def commit(self) -> None:
        if self.db is not None:
            self.db.commit()

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "interval_lengths": list(self.interval_lengths),
                "episodes_done": self.episodes_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = list(state["recent"])
        self.interval_lengths = list(state["interval_lengths"])
        self.episodes_done = int(state["episodes_done"])


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"learner": {"lr": 1e-3}} -> {"learner.lr": 1e-3}: TensorBoard's hyperparameters are flat."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
