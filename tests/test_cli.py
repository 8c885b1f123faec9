"""The README's main command and the scripted-policy table, end to end; what every command does with bad input
(one or two lines, exit code 2) and with an internal error (one line, exit code 1; the traceback with --debug)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from townlet import cli
from townlet.cli import app
from townlet.world import LEVEL_NAMES

from .test_config_files import BOMB
from .train.runs import make_run


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_demo_trains_evaluates_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--minutes", "0.1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report" / "summary.md").exists()
    assert (out / "metrics.sqlite").exists() and list((out / "checkpoints").glob("ckpt_*.pt"))
    assert "greedy at full difficulty" in result.output and "look at:" in result.output


def test_policies_table_as_json():
    result = CliRunner().invoke(app, ["policies", "L0_minimal", "--episodes", "20", "--agents", "10", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["policy"] for r in rows] == ["random", "needs"]
    assert rows[1]["survival_mean"] == 500.0


def test_bad_level_exits_with_a_clear_error():
    result = CliRunner().invoke(app, ["policies", "L9_nowhere"])
    assert result.exit_code == 2 and "packaged levels" in result.output


def error_lines(result) -> list[str]:
    """The error's lines: the command failed with one `error: ...` message and no traceback."""
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), result.output
    return lines


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "agents"], "--set 'agents': expected key=value"),
        (["--set", "[1"], "--set '[1': expected key=value"),
        (["--set", "agents=[1"], "--set agents: cannot read the value '[1' as YAML: while parsing a flow sequence"),
        (["--set", "agents=1", "--set", "agents.x=2"], "agents is set both as a value and as a section"),
        (["--set", "agents.x=2", "--set", "agents=1"], "agents is set both as a value and as a section"),
        (["--set", "=3"], "--set '=3': expected key=value"),
        (["--set", "learner.lr=nan"], "learner.lr: Input should be a finite number"),
        (["--device", "potato"], "--device 'potato': not a device name; allowed: cpu, cuda"),
        (["--set", "device=potato"], "device: device 'potato': not a device name"),
    ],
)
def test_malformed_options_are_one_clear_error(args, expected):
    result = invoke("train", "L0_minimal", *args)
    assert result.exit_code == 2, result.output
    assert expected in "\n".join(error_lines(result))


def test_a_device_this_machine_lacks_is_a_clear_error():
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    expected = "CUDA device(s); allowed: cuda:0" if torch.cuda.is_available() else "built without CUDA"
    for command in (["train", "L0_minimal"], ["policies", "L0_minimal"]):
        result = invoke(*command, "--device", device)
        assert result.exit_code == 2 and expected in error_lines(result)[0], result.output


def test_bracketed_text_in_an_error_is_printed_as_it_is(tmp_path):
    """Rich markup would drop `[dev]` and choke on `[1`: errors are printed as plain text."""
    missing = tmp_path / "[dev]" / "[1.yaml"
    result = invoke("policies", str(missing))
    assert result.exit_code == 2
    assert f"{missing}: no such level file" in error_lines(result)[0]


def test_hostile_or_broken_level_files_are_refused_quickly(tmp_path):
    bomb, binary = tmp_path / "bomb.yaml", tmp_path / "level.yaml"
    bomb.write_text(BOMB)
    binary.write_bytes(bytes(range(128, 256)) * 4)
    start = time.perf_counter()
    result = invoke("policies", str(bomb))
    assert result.exit_code == 2 and time.perf_counter() - start < 5
    assert "YAML beyond the limits of a level or run file at line 6" in error_lines(result)[0]
    result = invoke("policies", str(binary))
    assert result.exit_code == 2 and "not a UTF-8 text file" in error_lines(result)[0]


def test_eval_on_a_level_of_another_observation_size_is_a_clear_error(tmp_path):
    run = make_run(tmp_path / "run", steps=320)
    result = invoke("eval", str(run), "--level", "L2_partial", "--episodes", "2", "--agents", "2")
    assert result.exit_code == 2
    assert "trained on L0_minimal (21 observation values) and cannot play L2_partial (400)" in error_lines(result)[0]


def test_internal_errors_are_one_line_unless_debug(monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("the [kernel] fell over")

    monkeypatch.setattr(cli, "scripted_stats", broken)
    result = invoke("policies", "L0_minimal")
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "internal error (RuntimeError: the [kernel] fell over)" in lines[0]
    assert "--debug" in lines[0]
    result = invoke("--debug", "policies", "L0_minimal")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)  # the traceback is shown


@pytest.mark.parametrize(
    ("raised", "code", "expected"),
    [
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
        (FileNotFoundError(2, "No such file or directory", "/data/levels/x.yaml"), 2,
         "/data/levels/x.yaml: No such file or directory"),
        (PermissionError(13, "Permission denied", "/runs/a", None, "/runs/b"), 2, "/runs/a -> /runs/b: Permission denied"),
        (OSError(28, "No space left on device"), 1, "internal error (OSError"),
    ],
)
def test_anticipated_errors_become_a_message_and_their_exit_code(monkeypatch, raised, code, expected):
    def fail(*_args, **_kwargs):
        raise raised

    monkeypatch.setattr(cli, "scripted_stats", fail)
    result = invoke("policies", "L0_minimal")
    assert result.exit_code == code and expected in error_lines(result)[0], result.output


def test_version_and_the_exit_codes_in_help():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"townlet {cli.townlet.__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit codes: 0 finished" in text and "2 bad input" in text and "1 an internal error" in text


def test_every_option_of_every_command_has_help_and_train_names_levels_and_fields():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            assert getattr(param, "help", None), f"townlet {name}: {param.name} has no help text"
    text = " ".join(invoke("train", "--help").output.split())
    assert all(level in text for level in LEVEL_NAMES) and "docs/training.md" in text


def test_train_a_level_file_without_a_terminal_prints_progress_lines_and_a_summary(tmp_path):
    level = tmp_path / "tiny_level.yaml"
    level.write_text("extends: L0_minimal\nname: tiny\nmax_steps: 60\n")
    out = tmp_path / "run"
    result = invoke("train", str(level), "--steps", "640", "--agents", "4", "--out", str(out),
                    "--set", "logging.interval_steps=160", "--set", "logging.tensorboard=false",
                    "--set", "learner.learning_starts=100")
    assert result.exit_code == 0, result.output
    assert f"{level} is a level file: training it with the default run config of L0_minimal" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["level"] == str(level)
    assert yaml.safe_load((out / "level.yaml").read_text())["max_steps"] == 60
    lines = result.output.splitlines()
    assert any(line.startswith("steps=640 ") for line in lines)  # plain lines, no live display
    summary = [line for line in lines if line.startswith("done: 640 agent-steps")]
    assert len(summary) == 1 and "episodes; survival of the last 100: mean" in summary[0]
    run_file = tmp_path / "run.yaml"  # a run YAML is still a run YAML
    run_file.write_text("extends: L0_minimal\nagents: 3\n")
    result = invoke("train", str(run_file), "--steps", "3", "--out", str(tmp_path / "run2"),
                    "--set", "logging.tensorboard=false")
    assert result.exit_code == 0 and "is a level file" not in result.output, result.output
    assert "training L0_minimal with 3 agents" in result.output


def test_train_with_the_curriculum_says_training_survival_is_on_the_agents_stages(tmp_path):
    """A curriculum's training survival comes from easier worlds: the start and summary lines say so."""
    result = invoke("train", "L0_minimal", "--steps", "64", "--agents", "4", "--out", str(tmp_path / "run"),
                    "--set", "curriculum.kind=adversarial", "--set", "logging.tensorboard=false")
    assert result.exit_code == 0, result.output
    assert "each agent climbs the curriculum's stages 0 to 4 (stage 4 is the real game)" in result.output
    summary = [line for line in result.output.splitlines() if line.startswith("done: 64 agent-steps")]
    assert len(summary) == 1 and summary[0].endswith("; mean curriculum stage 0.00 of 4")
    result = invoke("train", "L0_minimal", "--steps", "64", "--agents", "4", "--out", str(tmp_path / "static"),
                    "--set", "logging.tensorboard=false")
    assert result.exit_code == 0, result.output
    assert "climbs the curriculum" not in result.output and "curriculum stage" not in result.output


def test_errors_go_to_stderr_and_results_to_stdout(tmp_path):
    result = invoke("policies", str(Path(tmp_path) / "none.yaml"))
    assert result.stdout == "" and result.stderr.startswith("error: ")
