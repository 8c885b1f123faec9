"""Opening a run directory: one way for resume, eval, watch and report; errors that name the file and why."""

from __future__ import annotations

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
