"""Opening a run directory: one way for resume, eval, watch and report; errors that name the file and why."""

from __future__ import annotations

import errno
import os
import re
import shutil

import pytest
import torch

from townlet.train import Trainer, load_run_config, open_run
from townlet.train.checkpoint import FORMAT, READABLE_FORMATS, CheckpointError, load_checkpoint
from townlet.train.rundir import checkpoint_path, checkpoint_step, list_checkpoints
from townlet.world import ConfigError, load_level

TINY = {"agents": 4, "compile_world": False, "steps": 200,
        "logging": {"interval_steps": 100, "checkpoint_every": 10**9, "tensorboard": False}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "run"
    Trainer(load_run_config("L0_minimal", TINY), path).run()
    return path


def test_a_checkpoint_is_named_components_and_a_format_version(run_dir):
    state = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    assert state["format"] == FORMAT
    assert set(state) == {"format", "config", "level", "trainer", "algorithm", "world", "curriculum", "logbook"}
    replay = state["algorithm"]["replay"]
    assert set(replay) == {"total", "buffers", "encoding", "shapes"} and "actions" in replay["buffers"]  # by name


@pytest.mark.parametrize("written", [min(READABLE_FORMATS) - 1, FORMAT + 1])
def test_a_checkpoint_of_another_format_names_the_file_and_both_versions(run_dir, tmp_path, written):
    state = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    path = checkpoint_path(tmp_path / "checkpoints", 200)
    path.parent.mkdir()
    torch.save({**state, "format": written}, path)
    age = "an older" if written < FORMAT else "a newer"
    with pytest.raises(CheckpointError, match=rf"ckpt_000000000200\.pt: checkpoint format {written} was written by "
                                              rf"{age} townlet; this one reads formats 2 and 3"):
        open_run(path)


def test_open_run_reads_a_directory_or_a_checkpoint_file(run_dir):
    run = open_run(run_dir)
    assert run.directory == run_dir and run.step == 200 and run.level.name == "L0_minimal"
    assert run.checkpoint is not None and checkpoint_step(run.checkpoint) == 200
    alone = open_run(run.checkpoint)
    assert alone.directory == run_dir and alone.config == run.config
    assert open_run(run_dir, load=False).state == {} and open_run(run_dir, load=False).config == run.config


def test_open_run_errors_say_what_is_wrong(run_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no such run directory"):
        open_run(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a townlet run directory"):
        open_run(tmp_path)
    with pytest.raises(CheckpointError, match=r"trained on L0_minimal \(21 observation values\) and cannot play "
                                              r"L1_full \(87\)"):
        open_run(run_dir).policy(level=load_level("L1_full"))
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    fresh = open_run(tmp_path / "fresh")
    assert fresh.checkpoint is None
    with pytest.raises(CheckpointError, match="no checkpoints yet"):
        fresh.policy()
    with pytest.raises(CheckpointError, match="not a checkpoint file name"):
        checkpoint_step(tmp_path / "x.pt")


def test_fields_of_another_algorithm_are_rejected_by_name():
    with pytest.raises(ConfigError, match=r"replay\.burn_in: only algorithm 'r2d2' reads it, and this run's "
                                          r"algorithm is 'dqn'"):
        load_run_config("L1_full", {"replay": {"burn_in": 4}})
    with pytest.raises(ConfigError, match=r"network\.layer_norm: only algorithm 'dqn' reads it.* 'r2d2'"):
        load_run_config("L2_partial", {"network": {"layer_norm": True}})
    with pytest.raises(ConfigError, match=r"network\.kind: 'lstm' is not a network of algorithm 'dqn'; allowed: mlp"):
        load_run_config("L1_full", {"network": {"kind": "lstm"}})
    with pytest.raises(ConfigError, match=r"algorithm: Input should be 'dqn', 'r2d2' or 'ppo'"):
        load_run_config("L1_full", {"algorithm": "a3c"})
    # a resolved config lists every field at its value: defaults are no mention
    full = load_run_config("L1_full")
    assert load_run_config("L1_full", full.model_dump(mode="json")) == full


def test_every_packaged_run_config_validates_and_names_its_algorithm():
    from importlib import resources

    names = sorted(p.stem for p in (resources.files("townlet.train") / "configs").iterdir() if p.name.endswith(".yaml"))
    assert {"L1_full", "L2_partial", "L2_partial_ppo", "L2_partial_demonstrations"} <= set(names)
    for name in names:
        config = load_run_config(name)
        assert config.algorithm in ("dqn", "r2d2", "ppo"), name


# ---------------------------------------------------------------------- a run directory is never reused by accident
def test_a_new_run_into_a_run_directory_is_refused_and_overwrite_starts_afresh(run_dir, tmp_path):
    """The old run is untouched by the refusal (metrics, config, checkpoints); --overwrite deletes it first."""
    from typer.testing import CliRunner

    from townlet.cli import app
    from townlet.train.checkpoint import RunDirError
    from townlet.train.metrics import read_metrics

    old = shutil.copytree(run_dir, tmp_path / "old")
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=r"already holds a townlet run \(checkpoints up to agent-step 200, "
                                          r"metrics.sqlite, config.yaml\); continue it with `townlet train --resume"):
        Trainer(load_run_config("L0_minimal", {**TINY, "steps": 100}), old)
    result = CliRunner().invoke(app, ["train", "L0_minimal", "--out", str(old), "--steps", "100", "--agents", "4",
                                      "--quiet", "--set", "logging.tensorboard=false"])
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output, result.output
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before

    result = CliRunner().invoke(app, ["train", "L0_minimal", "--out", str(old), "--steps", "100", "--agents", "4",
                                      "--quiet", "--overwrite", "--set", "logging.tensorboard=false",
                                      "--set", "logging.checkpoint_every=1000000000",
                                      "--set", "logging.interval_steps=100"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in list_checkpoints(old / "checkpoints")] == ["ckpt_000000000100.pt"]  # the old 200 is gone
    assert [row["step"] for row in read_metrics(old)[1]] == [100]  # the old run's rows (100, 200) are gone


def test_overwrite_never_deletes_what_townlet_did_not_write(run_dir, tmp_path):
    from townlet.train.checkpoint import RunDirError

    mixed = shutil.copytree(run_dir, tmp_path / "mixed")
    (mixed / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"not \(only\) a townlet run: it holds notes.txt.*--overwrite only"):
        Trainer(load_run_config("L0_minimal", TINY), mixed, overwrite=True)
    assert (mixed / "notes.txt").exists() and list_checkpoints(mixed / "checkpoints")


def test_out_that_cannot_hold_a_run_is_a_clear_error(tmp_path, monkeypatch):
    from townlet.train import rundir
    from townlet.train.checkpoint import RunDirError
    from townlet.train.rundir import prepare_run_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match=r"file: is a file, not a directory; give --out a new"):
        prepare_run_dir(tmp_path / "file")
    with pytest.raises(RunDirError, match=r"file/run: cannot create the run directory: not a directory \(ENOTDIR\)"):
        prepare_run_dir(tmp_path / "file" / "run")
    with pytest.raises(RunDirError, match=r"/proc/townlet-run: cannot create the run directory: .*\(E[A-Z]+\); give "
                                          r"--out a directory you can write to"):
        prepare_run_dir("/proc/townlet-run")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: make the kernel's refusal happen anyway

        def refuse(*_a: object, **_k: object) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr(rundir.tempfile, "mkstemp", refuse)
    with pytest.raises(RunDirError, match=r"read-only: cannot write in the run directory: permission denied "
                                          r"\(EACCES\)"):
        prepare_run_dir(read_only)


def test_demo_takes_a_fresh_directory_and_runs_demo_first(tmp_path, monkeypatch):
    from townlet.cli import fresh_demo_dir

    base = tmp_path / "runs" / "demo"
    assert fresh_demo_dir(base) == base  # missing: the README's `townlet serve runs/demo` finds it
    base.mkdir(parents=True)
    assert fresh_demo_dir(base) == base  # empty
    (base / "config.yaml").write_text("x")
    assert fresh_demo_dir(base) == base.with_name("demo-2")
    base.with_name("demo-2").mkdir()
    (base.with_name("demo-2") / "config.yaml").write_text("x")
    assert fresh_demo_dir(base) == base.with_name("demo-3")


# ---------------------------------------------------------------------- a run directory is self-contained
def test_resume_plays_the_runs_own_level_not_the_file_it_started_from(tmp_path):
    level_file = tmp_path / "my_level.yaml"
    level_file.write_text("extends: L0_minimal\n")
    run = tmp_path / "run"
    Trainer(load_run_config("L0_minimal", {**TINY, "level": str(level_file)}), run).run()
    files = {name: (run / name).read_bytes() for name in ("config.yaml", "level.yaml")}
    level_file.write_text("extends: L0_minimal\ngrid_size: 4\nmax_steps: 7\n")  # edited: another level entirely
    resumed = Trainer.resume(run, {"steps": 400})
    assert resumed.level == load_level("L0_minimal").model_copy(update={"name": resumed.level.name})
    assert resumed.world.config.max_steps == 500 and resumed.world.grid_size == load_level("L0_minimal").grid_size
    level_file.unlink()  # moved away: the run does not need it
    resumed.run()
    assert open_run(run).step == 400 and open_run(run).level.max_steps == 500
    assert {name: (run / name).read_bytes() for name in files} == files  # a resume never rewrites them
    assert open_run(run, load=False).level.max_steps == 500


def test_resume_refuses_settings_it_cannot_change_and_names_what_it_can(run_dir, tmp_path):
    from typer.testing import CliRunner

    from townlet.cli import app

    run = shutil.copytree(run_dir, tmp_path / "run")
    for args, named in ((["--agents", "32"], r"agents \(4 -> 32\)"),
                        (["--set", "level=L1_full"], r"level \('L0_minimal' -> 'L1_full'\)"),
                        (["--set", "replay.capacity=999"], r"replay.capacity \(1000000 -> 999\)")):
        result = CliRunner().invoke(app, ["train", "--resume", str(run), "--steps", "400", *args])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert re.search(named + " when resuming", text), text
        assert "may change only the budget (--steps, --minutes), --device, compile_world and logging.*" in text
    with pytest.raises(ConfigError, match=r"seed \(0 -> 1\), agents \(4 -> 8\)|agents \(4 -> 8\), seed \(0 -> 1\)"):
        open_run(run).resume({"seed": 1, "agents": 8})
    trainer = open_run(run).resume({"steps": 300, "seed": 0, "device": "cpu", "logging": {"keep_checkpoints": 1}})
    assert trainer.config.logging.keep_checkpoints == 1 and trainer.config.steps == 300  # allowed; equal is no change


# ---------------------------------------------------------------------- budgets are totals
def test_a_finished_run_resumed_without_a_larger_budget_says_so_and_writes_nothing(run_dir, tmp_path):
    from typer.testing import CliRunner

    from townlet.cli import app

    run = shutil.copytree(run_dir, tmp_path / "run")
    newest = list_checkpoints(run / "checkpoints")[-1]
    stamp = newest.stat().st_mtime_ns
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "has already finished its budget (200 of 200 agent-steps); nothing to train" in text, text
    assert "checkpoint written" not in text and "--steps 400" in text
    assert newest.stat().st_mtime_ns == stamp and list_checkpoints(run / "checkpoints") == [newest]
    assert Trainer.resume(run).run() == newest  # in Python too: nothing trained, nothing written


def test_minutes_are_a_total_over_every_session(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    elapsed = float(load_checkpoint(list_checkpoints(run / "checkpoints")[-1])["trainer"]["elapsed_s"])
    assert elapsed > 0  # the checkpoint keeps the training time spent so far
    spent = Trainer.resume(run, {"steps": None, "minutes": elapsed / 60 / 2})
    assert spent.finished and spent.run() == list_checkpoints(run / "checkpoints")[-1]
    budget = Trainer.resume(run, {"steps": None, "minutes": 1.0})
    assert not budget.finished and budget._budget_left() == pytest.approx(60 - elapsed)
    result = Trainer.resume(run, {"steps": 300})
    assert not result.finished


# ---------------------------------------------------------------------- leftovers of killed writes
def test_stale_temp_files_are_removed_unless_a_process_is_training(run_dir, tmp_path):
    from townlet.train.rundir import RunLock

    run = shutil.copytree(run_dir, tmp_path / "run")
    stale = run / "checkpoints" / ".ckpt_000000000400.pt.k3j_x9a2.tmp"  # as atomic_write names them
    stale.write_bytes(b"\0" * 1000)
    (run / ".config.yaml.abcd1234.tmp").write_text("half")
    keep = run / "checkpoints" / "notes.tmp"  # not an interrupted write of townlet's
    keep.write_text("x")
    lock = RunLock(run)
    assert lock.acquire()  # a training process holds the run: its write in progress must stay
    try:
        open_run(run)
        assert stale.exists()
    finally:
        lock.release()
    open_run(run)
    assert not stale.exists() and not (run / ".config.yaml.abcd1234.tmp").exists() and keep.exists()
    stale.write_bytes(b"\0")
    Trainer.resume(run, {"steps": 300}).run()  # training starts by clearing them too
    assert not stale.exists()


def test_a_run_that_another_process_is_training_is_not_trained_twice(run_dir, tmp_path):
    from townlet.train.checkpoint import RunDirError
    from townlet.train.rundir import RunLock

    run = shutil.copytree(run_dir, tmp_path / "run")
    training = RunLock(run)
    assert training.acquire()
    try:
        second = Trainer.resume(run, {"steps": 300})
        second.lock_wait_s = 0.1
        with pytest.raises(RunDirError, match="another process is training this run right now"):
            second.run()
        assert open_run(run).step == 200  # nothing written
    finally:
        training.release()
    assert Trainer.resume(run, {"steps": 300}).run().name == "ckpt_000000000300.pt"
