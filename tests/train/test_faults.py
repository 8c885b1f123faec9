"""Fault injection: a training process killed (SIGKILL) at random points and in the middle of a checkpoint
write, a disk that fills up (checkpoint, metrics, report), damaged and malicious checkpoints, and evaluation
while a run writes checkpoints. After each: every remaining checkpoint loads, the run resumes, metrics.sqlite
passes SQLite's integrity check, and no episode row is lost or duplicated (a resumed run's rows equal those of
a run that was never interrupted)."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.train.runs import FullDisk, Payload
from townlet.train import Trainer, load_run_config, open_run
from townlet.train import checkpoint as checkpoint_mod
from townlet.train import report as report_mod
from townlet.train.checkpoint import FORMAT, RunWriteError, SkippedCheckpointWarning, load_checkpoint, save_state
from townlet.train.evaluate import evaluate
from townlet.train.metrics import MetricsDB, read_metrics
from townlet.train.rundir import CHECKPOINTS, checkpoint_path, checkpoint_step, list_checkpoints

FAULT = {"agents": 16, "compile_world": False, "seed": 3,
         "learner": {"learning_starts": 400, "batch_size": 32, "replay_ratio": 0.5},
         "replay": {"capacity": 4000},
         "logging": {"interval_steps": 400, "checkpoint_every": 800, "keep_checkpoints": 2, "tensorboard": False}}
REFERENCE_STEPS = 4800


class Dying(FullDisk):
    """A checkpoint file whose writer is killed (SIGKILL, as kill -9 from outside would) by the write that goes
    past `room` bytes, once its first `room` bytes reached the disk."""

    def out_of_room(self) -> None:
        self.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def train_in_child(run_dir: str, level: str, steps: int, threads: int, kill_at_write: int, room: int) -> None:
    """A training process for the test to kill; `kill_at_write` > 0: its k-th checkpoint write dies after
    `room` bytes."""
    torch.set_num_threads(threads)
    writes = []

    def dying_open(file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by Dying or the caller)
        if mode == "wb" and Path(file).name.startswith(".ckpt_"):
            writes.append(file)
            if len(writes) == kill_at_write:
                return Dying(handle, room)
        return handle

    if kill_at_write:
        checkpoint_mod.open = dying_open
    Trainer(load_run_config(level, {**FAULT, "steps": steps}), run_dir).run()


def spawn(run_dir: Path, level: str = "L0_minimal", steps: int = 10**7, kill_at_write: int = 0,
          room: int = 0) -> multiprocessing.Process:
    """`train_in_child` in a process of its own (same torch threads: the same numbers). A fork server that has
    imported torch and townlet once starts each, so a child costs its training, not another import of torch."""
    context = multiprocessing.get_context("forkserver")
    multiprocessing.set_forkserver_preload(["torch", "townlet.train"])
    child = context.Process(target=train_in_child, args=(str(run_dir), level, steps, torch.get_num_threads(),
                                                         kill_at_write, room))
    child.start()
    return child


def wait_for_checkpoint(run_dir: Path, child: multiprocessing.Process, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not list_checkpoints(run_dir / CHECKPOINTS):
        assert child.is_alive(), f"the training process ended ({child.exitcode}) before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def config(steps: int):
    return load_run_config("L0_minimal", {**FAULT, "steps": steps})


def rows(run_dir: Path, up_to: int | None = None) -> tuple[list[dict], list[dict]]:
    """(episode rows, learner rows without wall-clock columns) of a run, up to agent-step `up_to`."""
    episodes, learner = read_metrics(run_dir)
    learner = [{k: v for k, v in r.items() if k not in ("wall_s", "steps_per_s")} for r in learner]
    if up_to is not None:
        episodes = [e for e in episodes if e["step"] <= up_to]
        learner = [r for r in learner if r["step"] <= up_to]
    return episodes, learner


class Reference:
    """A run never interrupted, trained further whenever a test needs rows beyond it (a resumed run equals an
    uninterrupted one): what every run below must equal after its fault and resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        Trainer(config(REFERENCE_STEPS), path).run()
        self.steps = REFERENCE_STEPS

    def rows(self, up_to: int) -> tuple[list[dict], list[dict]]:
        if up_to > self.steps:
            Trainer.resume(self.path, {"steps": up_to}).run()
            self.steps = up_to
        return rows(self.path, up_to)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    return Reference(tmp_path_factory.mktemp("faults") / "reference")


def integrity(run_dir: Path) -> str:
    with sqlite3.connect(run_dir / "metrics.sqlite") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def assert_recovers(run_dir: Path, reference: Reference, damaged: bool = False) -> None:
    """Every checkpoint loads (unless the test `damaged` some), metrics are sound; resumed for another 800
    agent-steps, the run's rows are the uninterrupted run's, no episode lost or duplicated, every checkpoint
    loads, and nothing stale is left behind."""
    episodes, _ = read_metrics(run_dir)  # readable right after the fault, before any resume
    assert len({(e["agent"], e["episode"]) for e in episodes}) == len(episodes)
    if not damaged:
        for path in list_checkpoints(run_dir / CHECKPOINTS):
            load_checkpoint(path)
    opened = open_run(run_dir)
    assert opened.step is not None
    target = opened.step + 800
    Trainer.resume(run_dir, {"steps": target}).run()
    assert integrity(run_dir) == "ok"
    assert rows(run_dir) == reference.rows(target)
    per_agent: dict[int, list[int]] = {}
    for e in rows(run_dir)[0]:
        per_agent.setdefault(e["agent"], []).append(e["episode"])
    assert all(sorted(v) == list(range(len(v))) for v in per_agent.values())  # each agent's episodes 0..n-1, once
    for path in list_checkpoints(run_dir / CHECKPOINTS):
        load_checkpoint(path)
    assert not [p for p in (run_dir / CHECKPOINTS).iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------- kill -9
def test_kill_9_at_random_points_of_training_loses_nothing(reference: Reference, tmp_path):
    runs = {seed: tmp_path / f"run{seed}" for seed in (1, 2)}
    children = {seed: spawn(path) for seed, path in runs.items()}
    try:
        for seed, child in children.items():
            wait_for_checkpoint(runs[seed], child)
            time.sleep(random.Random(seed).uniform(0.0, 0.8))  # anywhere: stepping, logging, writing
            os.kill(child.pid, signal.SIGKILL)
            child.join(timeout=30)
            assert child.exitcode == -signal.SIGKILL
    finally:
        for child in children.values():
            child.kill()
            child.join()
    for path in runs.values():
        assert_recovers(path, reference)


def test_kill_9_during_a_checkpoint_write_leaves_no_stale_temp_file(reference: Reference, tmp_path):
    runs, children = {}, {}
    for seed in (1, 2):
        rng = random.Random(seed)
        runs[seed] = tmp_path / f"run{seed}"
        children[seed] = spawn(runs[seed], steps=8000, kill_at_write=rng.randint(2, 4),
                               room=rng.randint(1, 1_000_000))
    for seed, child in children.items():
        child.join(timeout=120)
        assert child.exitcode == -signal.SIGKILL
        stale = [p for p in (runs[seed] / CHECKPOINTS).iterdir() if p.name.endswith(".tmp")]
        assert len(stale) == 1 and stale[0].name.startswith(".ckpt_") and stale[0].stat().st_size > 0
        open_run(runs[seed])  # no process trains the run: its interrupted write is cleared
        assert not stale[0].exists()
        assert_recovers(runs[seed], reference)


def test_metrics_a_kill_left_in_the_middle_of_a_write_read_as_last_committed(tmp_path):
    """A process killed inside a metrics transaction leaves a hot journal, which a read-only reader may not
    roll back (SQLite: 'attempt to write a readonly database'); `read_metrics` (report, curves) rolls it back
    and reads the committed rows."""
    (tmp_path / "live").mkdir()
    db = MetricsDB(tmp_path / "live" / "metrics.sqlite")
    db.add_episodes([(step, 0, step, 10, 1.0, "energy", 0) for step in range(2000)])
    db.commit()
    db.conn.execute("PRAGMA cache_size = 1")  # the transaction below spills into the file, as a big one does
    db.add_episodes([(step, 1, step, 10, 1.0, "energy", 0) for step in range(20000)])
    db.conn.execute("DELETE FROM episodes WHERE agent = 0")
    (tmp_path / "killed").mkdir()
    for name in ("metrics.sqlite", "metrics.sqlite-journal"):  # the files as the killed process left them
        shutil.copy(tmp_path / "live" / name, tmp_path / "killed" / name)
    db.close()
    episodes, _ = read_metrics(tmp_path / "killed")
    assert [(e["agent"], e["step"]) for e in episodes] == [(0, step) for step in range(2000)]
    assert integrity(tmp_path / "killed") == "ok"


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_at_a_checkpoint_stops_the_run_with_enospc_and_it_resumes_whole(reference, tmp_path,
                                                                                     monkeypatch):
    writes = []

    def filling_open(file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by FullDisk or the caller)
        if mode == "wb" and Path(file).name.startswith(".ckpt_"):
            writes.append(file)
            if len(writes) == 3:
                return FullDisk(handle, 300_000)
        return handle

    monkeypatch.setattr(checkpoint_mod, "open", filling_open, raising=False)
    with pytest.raises(RunWriteError, match=r"cannot write .*ckpt_000000002400.pt: no space left on device "
                                            r"\(ENOSPC\)"):
        Trainer(config(4800), tmp_path / "run").run()
    monkeypatch.undo()
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path / "run" / CHECKPOINTS)] == [800, 1600]
    assert_recovers(tmp_path / "run", reference)


def test_a_full_disk_under_the_metrics_stops_the_run_with_enospc_and_it_resumes_whole(reference, tmp_path):
    trainer = Trainer(config(4800), tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "metrics.sqlite") as db:  # small pages: a few rows fill one
        db.execute("PRAGMA page_size = 512")
        db.execute("VACUUM")

    def fill_the_disk(progress) -> None:  # SQLite's own limit: its writes now fail as on a full disk
        if progress.env_steps >= 1600:
            db = trainer.logbook.db.conn
            db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")

    with pytest.raises(RunWriteError, match=r"cannot write .*metrics.sqlite: the database or disk is full \(no "
                                            r"space left on device, ENOSPC\)"):
        trainer.run(on_progress=fill_the_disk, progress_every_s=0.0)
    assert integrity(tmp_path / "run") == "ok"
    assert_recovers(tmp_path / "run", reference)


def test_a_full_disk_while_writing_a_report_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    """Every file of a report is written by `report._write`: a full disk there is a RunWriteError (which
    `townlet report` shows as an error line) naming the file, with the old file whole and no temporary file."""
    summary = tmp_path / "report" / "summary.md"
    summary.parent.mkdir()
    summary.write_text("old report")

    def filling_dump(tmp: Path, data: bytes) -> None:
        tmp.write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report_mod, "_dump", filling_dump)
    with pytest.raises(RunWriteError, match=r"cannot write .*report/summary.md: no space left on device \(ENOSPC\)"):
        report_mod._write(summary, b"# new report\n" * 1000)
    assert summary.read_text() == "old report" and [p.name for p in summary.parent.iterdir()] == ["summary.md"]


def test_a_real_write_failure_inside_torch_save_keeps_the_systems_reason(tmp_path):
    """The kernel refuses a write (a file size limit: EFBIG, as a full disk gives ENOSPC) while torch's C++
    writer is saving; the error names the file and the reason, not 'iostream error', and no file is left."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(RunWriteError, match=r"cannot write .*ckpt.pt: file too large \(EFBIG\)") as e:
            save_state(tmp_path / "ckpt.pt", {"w": torch.zeros(1_000_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert e.value.errno == errno.EFBIG and "iostream" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- damaged and malicious checkpoints
def test_damaged_and_malicious_newest_checkpoints_are_set_aside_and_the_run_resumes_whole(reference, tmp_path):
    run = shutil.copytree(reference.path, tmp_path / "run")
    newest = list_checkpoints(run / CHECKPOINTS)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # damaged
    marker = tmp_path / "ran"
    evil = checkpoint_path(run / CHECKPOINTS, 99_999_200)
    torch.save({"format": FORMAT, "payload": Payload(marker)}, evil)
    with pytest.warns(SkippedCheckpointWarning, match="refuses to unpickle"):
        assert_recovers(run, reference, damaged=True)
    assert not marker.exists()
    assert sorted(p.name for p in (run / CHECKPOINTS).iterdir() if p.name.endswith(".corrupt")) == [
        f"{newest.name}.corrupt", f"{evil.name}.corrupt"]


# ---------------------------------------------------------------------- evaluation while a run trains
def test_eval_while_training_writes_checkpoints(tmp_path):
    """Evaluations of a run that is writing and pruning checkpoints (a thread here, as `townlet eval` would in
    another process): each reads a whole checkpoint, none deletes the training's write in progress, and the
    training, stopped as by Ctrl-C, ends with a checkpoint and sound metrics."""
    run = tmp_path / "run"
    trainer = Trainer(load_run_config("L1_full", {**FAULT, "steps": 10**7,
                                                  "logging": {**FAULT["logging"], "checkpoint_every": 320}}), run)
    seen: set[int] = set()
    failures: list[BaseException] = []
    evaluations = [0]

    def evaluate_meanwhile() -> None:
        try:
            deadline = time.monotonic() + 60
            while not list_checkpoints(run / CHECKPOINTS) and time.monotonic() < deadline:
                time.sleep(0.01)
            while (evaluations[0] < 4 or len(seen) < 2) and time.monotonic() < deadline:
                result = evaluate(run, episodes=4, agents=4, scripted=False)
                assert result["episodes"] == 4 and result["skipped_checkpoints"] == []
                seen.add(result["checkpoint_step"])
                evaluations[0] += 1
        except BaseException as e:  # handed to the test's thread
            failures.append(e)
        finally:
            trainer.request_stop()

    thread = threading.Thread(target=evaluate_meanwhile)
    thread.start()
    last = trainer.run()
    thread.join()
    assert not failures, failures
    assert evaluations[0] >= 4 and len(seen) >= 2
    assert checkpoint_step(last) == trainer.env_steps and integrity(run) == "ok"
    for path in list_checkpoints(run / CHECKPOINTS):
        load_checkpoint(path)
    assert not [p for p in (run / CHECKPOINTS).iterdir() if p.name.endswith(".tmp")]
    episodes, _ = read_metrics(run)
    assert len({(e["agent"], e["episode"]) for e in episodes}) == len(episodes)
