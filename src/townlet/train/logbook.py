"""The run's logbook: finished episodes and per-interval learner rows, into SQLite and TensorBoard, and the
figures the progress display shows.

Episode ends are kept on the device as they happen and turned into rows only when the logbook is flushed
(a log interval, a checkpoint, a progress refresh), so the loop never waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from townlet.train.metrics import MetricsDB


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

    def __init__(self, run_dir: Path, causes: tuple[str, ...], tensorboard: bool) -> None:
        self.run_dir = Path(run_dir)
        self.causes = causes
        self.tensorboard = tensorboard
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
        purge = None
        if not self._opened:
            self.db.truncate_after(since)
            purge = since or None
        self._opened = True
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

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

    def write_interval(self, row: dict[str, float | None]) -> None:
        """One learner row (keyed by the `learner` table's columns; `step` is the x axis) into both files."""
        assert self.db is not None, "Logbook.open() first"
        self.db.add_learner(row)
        self.db.commit()
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

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
