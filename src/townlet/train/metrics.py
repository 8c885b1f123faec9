"""Run metrics: one SQLite file (standard-library sqlite3) plus TensorBoard event files.

Tables (`metrics.sqlite` in the run directory):
- `episodes`: one row per finished episode: env step when it ended, agent, its episode index, length, return,
  cause of the end, curriculum stage.
- `learner`: one row per log interval: env steps, wall seconds, updates, epsilon, loss, mean Q, gradient norm,
  steps/s, and the mean and median survival of the last 100 finished episodes.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from townlet.train.checkpoint import RunWriteError

EPISODE_COLUMNS = ("step", "agent", "episode", "length", "return", "cause", "stage")
LEARNER_COLUMNS = (
    "step",
    "wall_s",
    "updates",
    "epsilon",
    "loss",
    "q_mean",
    "grad_norm",
    "steps_per_s",
    "episodes",
    "survival_mean",
    "survival_median",
    "stage_mean",
    "intrinsic_weight",
    "intrinsic_reward",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS episodes (
    step INTEGER NOT NULL, agent INTEGER NOT NULL, episode INTEGER NOT NULL, length INTEGER NOT NULL,
    return REAL NOT NULL, cause TEXT NOT NULL, stage INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS episodes_step ON episodes(step);
CREATE TABLE IF NOT EXISTS learner ({", ".join(f"{c} REAL" for c in LEARNER_COLUMNS)});
"""


# SQLite's result codes for a write the storage refused -> the system's error code they amount to
_STORAGE_ERRORS = {"SQLITE_FULL": errno.ENOSPC, "SQLITE_READONLY": errno.EROFS, "SQLITE_IOERR": errno.EIO,
                   "SQLITE_CANTOPEN": errno.EACCES}


class MetricsDB:
    """Append-only metrics store; `truncate_after(step)` drops rows past a checkpoint when a run resumes.

    A write the storage refuses (a full disk, a read-only file system) raises RunWriteError naming the file; the
    rows since the last commit are lost, which a resume from the last checkpoint writes again."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            with self._writing():
                self.conn = sqlite3.connect(self.path)
                self.conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            name = getattr(e, "sqlite_errorname", "") or ""
            code = next((c for prefix, c in _STORAGE_ERRORS.items() if name.startswith(prefix)), None)
            if code is None:
                raise
            reason = {errno.ENOSPC: "the database or disk is full (no space left on device, ENOSPC)",
                      errno.EROFS: "the file is read-only (EROFS)"}.get(code, f"{e} ({name})")
            hint = "; free some space on that disk, then resume the run" if code == errno.ENOSPC else ""
            raise RunWriteError(f"cannot write {self.path}: {reason}{hint}", code) from e

    def add_episodes(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            with self._writing():
                self.conn.executemany("INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def add_learner(self, row: dict[str, float | None]) -> None:
        unknown = set(row) - set(LEARNER_COLUMNS)
        if unknown:
            raise KeyError(f"unknown learner metric(s) {sorted(unknown)}; columns: {', '.join(LEARNER_COLUMNS)}")
        values = [row.get(c) for c in LEARNER_COLUMNS]
        with self._writing():
            self.conn.execute(f"INSERT INTO learner VALUES ({', '.join('?' * len(values))})", values)

    def commit(self) -> None:
        with self._writing():
            self.conn.commit()

    def last_learner_step(self) -> int:
        """The agent-steps of the newest learner row (0 before the first)."""
        return int(self.conn.execute("SELECT COALESCE(MAX(step), 0) FROM learner").fetchone()[0])

    def episode_means(self, after: int, upto: int) -> tuple[int, float | None, float | None]:
        """(count, mean return, mean length) of the episodes that ended in agent-steps (after, upto]."""
        count, ret, length = self.conn.execute(
            "SELECT COUNT(*), AVG(return), AVG(length) FROM episodes WHERE step > ? AND step <= ?", (after, upto)
        ).fetchone()
        return int(count), ret, length

    def truncate_after(self, step: int) -> None:
        with self._writing():
            self.conn.execute("DELETE FROM episodes WHERE step > ?", (step,))
            self.conn.execute("DELETE FROM learner WHERE step > ?", (step,))
            self.conn.commit()

    def episodes(self) -> list[dict[str, Any]]:
        cur = self.conn.execute(f"SELECT {', '.join(EPISODE_COLUMNS)} FROM episodes ORDER BY step, agent")
        return [dict(zip(EPISODE_COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def learner(self) -> list[dict[str, Any]]:
        cur = self.conn.execute(f"SELECT {', '.join(LEARNER_COLUMNS)} FROM learner ORDER BY step")
        return [dict(zip(LEARNER_COLUMNS, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        """Commit and close; on a storage that refuses the commit, close anyway (the uncommitted rows are after
        the last checkpoint, and a resume writes them again), so the error that stopped the run is the one
        reported."""
        try:
            self.conn.commit()
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                self.conn.rollback()
        finally:
            self.conn.close()


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(episodes, learner rows) of a run directory. A run killed in the middle of a metrics write leaves a
    journal that only a writer may roll back; then the file is opened for writing once, which rolls the
    unfinished write back as the resumed run would (it held only rows after the last checkpoint)."""
    path = Path(run_dir) / "metrics.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics; is {run_dir} a townlet run directory?")
    try:
        return _read(MetricsDB(path, read_only=True))
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
            raise
    try:
        return _read(MetricsDB(path))
    except RunWriteError as e:
        raise RunWriteError(f"{path}: a write interrupted by a crash must be rolled back before its rows can be "
                            f"read, and that failed: {e}; open the run where it can be written (townlet train "
                            "--resume does it)", e.errno) from None


def _read(db: MetricsDB) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        return db.episodes(), db.learner()
    finally:
        db.close()
