"""Checkpoints: small for a small run, exact to reload, refused with a clear reason when they cannot be used, and
never lost to pruning after an unreadable one."""

from __future__ import annotations

import errno
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.train.runs import FullDisk, Payload
from townlet.cli import app
from townlet.replay import SequenceReplay, TransitionReplay
from townlet.train import Trainer, load_run_config, open_run
from townlet.train import checkpoint as checkpoint_mod
from townlet.train.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointFormatError,
    RunWriteError,
    SkippedCheckpointWarning,
    load_checkpoint,
    write_error,
)
from townlet.train.report import build_report
from townlet.train.rundir import checkpoint_path, list_checkpoints, save_checkpoint
from townlet.world import ObsLayout, load_level

TINY = {"agents": 4, "compile_world": False, "steps": 300,
        "logging": {"interval_steps": 100, "checkpoint_every": 100, "keep_checkpoints": 3, "tensorboard": False}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """L0_minimal with 4 agents: checkpoints at 100, 200 and 300 agent-steps."""
    path = tmp_path_factory.mktemp("runs") / "run"
    Trainer(load_run_config("L0_minimal", TINY), path).run()
    return path


# ---------------------------------------------------------------------- the replay buffer in a checkpoint
def _random_steps(layout: ObsLayout, agents: int, steps: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        obs = torch.randint(-1, 2, (agents, layout.dim), generator=g).float()  # exact in int8 and float32 parts
        out.append({
            "obs": obs, "mask": torch.rand(agents, 5, generator=g) < 0.7,
            "actions": torch.randint(0, 5, (agents,), generator=g), "rewards": torch.randn(agents, generator=g),
            "next_obs": torch.randint(-1, 2, (agents, layout.dim), generator=g).float(),
            "terminated": torch.rand(agents, generator=g) < 0.05, "truncated": torch.rand(agents, generator=g) < 0.02,
            "intrinsic": torch.rand(agents, generator=g), "advice": torch.randint(0, 5, (agents,), generator=g),
            "h": torch.randn(1, agents, 3, generator=g), "c": torch.randn(1, agents, 3, generator=g),
        })
    return out


def _fill(buf: TransitionReplay | SequenceReplay, steps: list[dict[str, torch.Tensor]]) -> None:
    for s in steps:
        if isinstance(buf, TransitionReplay):
            buf.add(s["obs"], s["mask"], s["actions"], s["rewards"], s["next_obs"], s["mask"], s["terminated"],
                    s["truncated"], intrinsic=s["intrinsic"])
        else:
            buf.add(s["obs"], s["mask"], s["actions"], s["rewards"], s["terminated"], s["truncated"], s["next_obs"],
                    s["mask"], s["h"], s["c"], intrinsic=s["intrinsic"], advice=s["advice"])


def _through_a_file(state: dict) -> tuple[dict, int]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    size = buffer.tell()
    buffer.seek(0)
    return torch.load(buffer, weights_only=True), size


@pytest.mark.parametrize("steps", [7, 500])  # part of the ring written; the ring wrapped
@pytest.mark.parametrize("kind", ["transition", "sequence"])
def test_replay_state_keeps_the_written_rows_and_reloads_to_the_same_sampling(kind, steps):
    layout = ObsLayout.for_level(load_level("L1_full"))  # int8 one-hots and float32 fields

    def make() -> TransitionReplay | SequenceReplay:
        if kind == "transition":
            return TransitionReplay(6 * 400, 6, layout, n_step=3)
        return SequenceReplay(6 * 400, 6, layout, burn_in=2, train_len=3, stride=2, hidden_size=3,
                              prioritized=True, advice=True)

    source = make()
    _fill(source, _random_steps(layout, 6, steps, seed=steps))
    if kind == "sequence":  # priorities that are not all alike
        batch = source.sample(16, torch.Generator().manual_seed(1))
        source.update_priorities(batch.indices, torch.rand(16, 3), torch.ones(16, 3, dtype=torch.bool))
    state, size = _through_a_file(source.state_dict())
    restored = make()
    restored.load_state_dict(state)
    for name, tensor in source._buffers().items():
        assert torch.equal(restored._buffers()[name], tensor), name
    assert restored._total == source._total
    a, b = source.sample(64, torch.Generator().manual_seed(9)), restored.sample(64, torch.Generator().manual_seed(9))
    for name in ("obs", "actions", "rewards", "terminated", "truncated", "weights", "indices", "intrinsic"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if steps < source.rows:  # only the written rows are stored, in far fewer bytes than the buffer holds
        assert state["buffers"]["rewards"].shape[0] == steps
        assert size < source.nbytes / 10
    assert state["buffers"]["terminated"].dtype == torch.uint8  # flags as bits


def test_a_state_of_whole_buffers_from_an_older_checkpoint_still_loads():
    layout = ObsLayout.for_level(load_level("L1_full"))
    source = TransitionReplay(4 * 30, 4, layout, n_step=2)
    _fill(source, _random_steps(layout, 4, 11, seed=3))
    whole = {"total": source._total, "buffers": {n: t.clone() for n, t in source._buffers().items()}}  # format 2
    restored = TransitionReplay(4 * 30, 4, layout, n_step=2)
    restored.load_state_dict(_through_a_file(whole)[0])
    assert all(torch.equal(restored._buffers()[n], t) for n, t in source._buffers().items())
    damaged = source.state_dict()
    damaged["total"] = 5  # says 5 rows were written, holds 11
    with pytest.raises(ValueError, match=r"'obs.discrete': holds shape \[11, 4, \d+\] where 5 steps written make "
                                         r"\[5, 4, \d+\]; the checkpoint is damaged"):
        TransitionReplay(4 * 30, 4, layout, n_step=2).load_state_dict(damaged)


def test_the_checkpoint_of_a_small_run_is_small(tmp_path):
    """L0_minimal's default replay holds a million transitions (about 100 MB); a run of 320 agent-steps stores
    the 320 it wrote, not the whole preallocated buffer."""
    config = load_run_config("L0_minimal", {"agents": 16, "compile_world": False, "steps": 320,
                                            "logging": {"tensorboard": False}})
    trainer = Trainer(config, tmp_path / "run")
    path = trainer.run()
    assert trainer.algorithm.replay.nbytes > 50e6
    assert path.stat().st_size < 2e6
    resumed = Trainer.resume(tmp_path / "run", {"steps": 640})
    for name, tensor in trainer.algorithm.replay._buffers().items():
        assert torch.equal(resumed.algorithm.replay._buffers()[name], tensor), name


# ---------------------------------------------------------------------- checkpoints that cannot be used
@pytest.mark.parametrize(("written", "message"), [
    (99, r"checkpoint format 99 was written by a newer townlet; this one reads formats 2 and 3; upgrade townlet"),
    ("x7", r"unknown checkpoint format 'x7' \(this townlet reads formats 2 and 3\)"),
])
def test_a_checkpoint_of_an_unknown_format_is_refused_not_skipped(run_dir, tmp_path, written, message):
    run = shutil.copytree(run_dir, tmp_path / "run")
    newest = list_checkpoints(run / "checkpoints")[-1]
    torch.save({**load_checkpoint(newest), "format": written}, tmp_path / "other.pt")
    (tmp_path / "other.pt").replace(newest)  # not in place: the loaded state maps the file it came from
    with pytest.raises(CheckpointFormatError, match=message):
        open_run(run)  # not skipped for an older one: that would silently drop what the newer townlet trained
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--steps", "400"])
    assert result.exit_code == 2 and "ckpt_000000000300.pt" in result.output, result.output
    assert "Traceback" not in result.output


def test_a_malicious_checkpoint_is_refused_as_untrusted_and_never_run(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    marker = tmp_path / "ran"
    evil = checkpoint_path(run / "checkpoints", 400)
    torch.save({"format": FORMAT, "payload": Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"ckpt_000000000400.pt: holds Python objects \((posix|os)\.system\) "
                                              r"other than tensors .* townlet refuses to unpickle .* treated as "
                                              r"untrusted or corrupt") as e:
        load_checkpoint(evil)
    assert "weights_only" not in str(e.value)  # torch's advice would run the payload
    with pytest.warns(SkippedCheckpointWarning, match="refuses to unpickle"):
        opened = open_run(run)  # treated as a corrupt newest: skipped, named
    assert opened.checkpoint.name == "ckpt_000000000300.pt" and opened.skipped[0][0] == evil
    assert not marker.exists()


# ---------------------------------------------------------------------- an unreadable newest checkpoint
def test_pruning_keeps_the_checkpoint_just_written_whatever_newer_names_lie_around(tmp_path):
    (tmp_path / "ckpt_000000009000.pt").write_bytes(b"damaged")  # a higher step than the run will write next
    for step in (100, 200):
        save_checkpoint(tmp_path, step, {"format": FORMAT, "step": torch.tensor(step)}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000000200.pt", "ckpt_000000009000.pt"]
    assert int(load_checkpoint(tmp_path / "ckpt_000000000200.pt")["step"]) == 200


def test_an_unreadable_newest_checkpoint_is_named_set_aside_and_never_costs_a_good_one(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    newest = list_checkpoints(run / "checkpoints")[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    far = checkpoint_path(run / "checkpoints", 9000)
    far.write_bytes(b"not a checkpoint")  # damaged, at a step the resumed run never reaches

    result = CliRunner().invoke(app, ["eval", str(run), "--episodes", "4", "--agents", "4", "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output)
    assert evaluated["checkpoint"].endswith("ckpt_000000000200.pt") and evaluated["checkpoint_step"] == 200
    assert [Path(s["path"]).name for s in evaluated["skipped_checkpoints"]] == [far.name, newest.name]

    with pytest.warns(SkippedCheckpointWarning):
        report = build_report(run, episodes=4, scripted_episodes=2, agents=4)
    assert report.checkpoint.name == "ckpt_000000000200.pt"
    summary = report.summary.read_text()
    assert "checkpoint `ckpt_000000000200.pt`" in summary and "ckpt_000000000300.pt" in summary
    assert "could not be read and were skipped" in summary

    with pytest.warns(SkippedCheckpointWarning):
        trainer = Trainer.resume(run, {"steps": 400, "logging": {"keep_checkpoints": 1}})
    trainer.run()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["ckpt_000000000300.pt.corrupt", "ckpt_000000000400.pt", "ckpt_000000009000.pt.corrupt"]
    assert int(load_checkpoint(run / "checkpoints" / "ckpt_000000000400.pt")["trainer"]["env_steps"]) == 400
    assert open_run(run).skipped == []


# ---------------------------------------------------------------------- a full disk
def test_a_full_disk_during_a_checkpoint_names_the_file_and_enospc_and_leaves_no_temp_file(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 100, {"format": FORMAT, "w": torch.zeros(10)}, keep=3)

    def full_open(file, mode="r", *args, **kwargs):
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 (closed by FullDisk or the caller)
        return FullDisk(handle, 5000) if "w" in mode else handle

    monkeypatch.setattr(checkpoint_mod, "open", full_open, raising=False)
    with pytest.raises(RunWriteError, match=r"cannot write .*ckpt_000000000200.pt: no space left on device "
                                            r"\(ENOSPC\); the unfinished file was removed") as e:
        save_checkpoint(tmp_path, 200, {"format": FORMAT, "w": torch.zeros(100_000)}, keep=3)
    assert isinstance(e.value, OSError) and isinstance(e.value, CheckpointError) and e.value.errno == errno.ENOSPC
    assert "iostream" not in str(e.value) and "unexpected pos" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000000000100.pt"]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ckpt_000000000100.pt")["w"].shape == (10,)


def test_torchs_errno_free_write_failure_on_a_full_disk_is_called_enospc(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_mod.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    error = write_error(tmp_path / "ckpt.pt", RuntimeError("basic_ios::clear: iostream error"))
    assert error.errno == errno.ENOSPC and "no space left on device (ENOSPC)" in str(error)
