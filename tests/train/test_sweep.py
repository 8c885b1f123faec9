"""`townlet sweep`: the plan (grid × seeds), its errors before anything starts, and tiny sweeps on one local Ray
started once for the module: the results table and plot, and a trial killed mid-run that the resumed sweep
continues from its checkpoint."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from townlet.cli import app
from townlet.train import sweep as sweeps
from townlet.train.experiment import Trial
from townlet.world import ConfigError

# tiny trials: L0_minimal, 8 agents, no world compile, a log row and a checkpoint every 800 agent-steps
TINY = ["--set", "agents=8", "--set", "compile_world=false", "--set", "learner.learning_starts=200",
        "--set", "learner.batch_size=32", "--set", "replay.capacity=4000", "--set", "logging.interval_steps=800",
        "--set", "logging.checkpoint_every=800", "--set", "logging.tensorboard=false", "--set", "logging.save_replay=false"]


def invoke(*args: str):
    return CliRunner().invoke(app, ["sweep", *args])


# ---------------------------------------------------------------------------------------------------- no Ray
def test_grid_times_seeds_makes_the_trials_each_with_its_resolved_config() -> None:
    axes = sweeps.parse_grid(["learner.lr=1e-4,3e-4", "network.hidden=[64,64],[32]"])
    assert [(a.key, a.labels) for a in axes] == [("learner.lr", ("1e-4", "3e-4")),
                                                  ("network.hidden", ("[64,64]", "[32]"))]
    trials = sweeps.plan_trials("L0_minimal", axes, seeds=2, overrides={"agents": 8}, minutes=0.5)
    assert len(trials) == 8
    assert [(t.name, t.seed) for t in trials[:3]] == [
        ("learner.lr=1e-4,network.hidden=[64,64]", 0), ("learner.lr=1e-4,network.hidden=[64,64]", 1),
        ("learner.lr=1e-4,network.hidden=[32]", 0)]
    last = trials[-1]
    assert last.overrides == {"agents": 8, "learner": {"lr": 3e-4}, "network": {"hidden": [32]}}
    assert (last.minutes, last.steps) == (0.5, None)
    assert sweeps.run_name(trials[0]) == "learner.lr=1e-4,network.hidden=_64,64_-seed0"
    # without a budget option the run config's own holds; no grid: one setting, 'base'
    (only,) = sweeps.plan_trials("L0_minimal", [], seeds=1)
    assert (only.name, only.steps, only.minutes) == ("base", 3_000_000, None)
    with pytest.raises(ConfigError, match="give one budget"):
        sweeps.plan_trials("L0_minimal", [], seeds=1, minutes=1.0, steps=1000)


@pytest.mark.parametrize(("grid", "message"), [
    ("seed=1,2", "--grid seed: not a grid field; give it with --seeds"),
    ("learner.lr", "expected key=value,value"),
    ("learner.lr=1e-4,,3e-4", "an empty value"),
])
def test_grid_mistakes_are_named(grid: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sweeps.parse_grid([grid])


def test_a_bad_grid_key_is_named_with_the_allowed_fields_before_ray_starts(tmp_path: Path, monkeypatch) -> None:
    def no_ray(*_: object, **__: object) -> None:
        raise AssertionError("Ray was reached")

    monkeypatch.setattr(sweeps, "require_ray", no_ray)
    monkeypatch.setattr(sweeps, "run_trials", no_ray)
    out = tmp_path / "sweep"
    result = invoke("L0_minimal", "--grid", "learner.lrr=1e-4,3e-4", "--out", str(out))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "learner.lrr: unknown field" in text
    assert "allowed fields: lr, lr_end, lr_decay_steps" in text and "replay_ratio" in text
    # a value the field refuses is named too
    result = invoke("L0_minimal", "--grid", "learner.lr=1e-4,-1", "--out", str(out))
    assert result.exit_code == 2 and "learner.lr" in result.output and "greater than 0" in result.output
    assert not out.exists()


def test_without_ray_the_error_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    out = tmp_path / "sweep"
    result = invoke("L0_minimal", "--seeds", "1", "--out", str(out))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if "pip install" in line]
    assert len(lines) == 1 and "pip install 'townlet[sweep]'" in lines[0] and "Ray Tune" in lines[0]
    assert not out.exists()


def test_a_failed_trial_is_told_by_the_line_that_names_its_error() -> None:
    wrapped = RuntimeError("ray::ImplicitFunc.train() (pid=1)\n  File \"x.py\", line 3, in f\n    raise ValueError\n"
                           "ValueError: learner.lr: must be positive")
    assert sweeps._error_line(wrapped) == "ValueError: learner.lr: must be positive"
    died = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc")
    assert sweeps._error_line(died) == "RuntimeError: The actor died unexpectedly before finishing this task."


def test_threads_share_the_cpus_among_the_trials_at_once() -> None:
    assert sweeps.threads_and_share(2, total=16.0, largest=16.0) == (8, 8.0)
    assert sweeps.threads_and_share(3, total=2.0, largest=2.0) == (1, 2 / 3)  # more trials than CPUs: fractions
    assert sweeps.threads_and_share(2, total=64.0, largest=8.0) == (8, 8.0)  # no more than a node has


def test_asha_watches_survival_in_the_budgets_unit() -> None:
    from ray.tune.schedulers import ASHAScheduler

    by_steps = [Trial("a", "L0_minimal", 0, None, steps=90_000)]
    asha = sweeps._scheduler(ASHAScheduler, "asha", by_steps)
    assert (asha.metric, asha._time_attr) == ("survival", "agent_steps")
    rungs = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)
    assert rungs == pytest.approx([10_000, 30_000])  # none at the budget's end, before the evaluation
    by_time = sweeps._scheduler(ASHAScheduler, "asha", [Trial("a", "L0_minimal", 0, 2.0)])
    assert by_time._time_attr == "train_s"
    assert sorted(m for m, _ in by_time._brackets[0]._rungs) == pytest.approx([120 / 9, 40])


# ---------------------------------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's sweeps (starting it costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             **sweeps.LOCAL_RAY)
    yield
    ray.shutdown()


def learner_rows(run_dir: Path) -> int:
    with sqlite3.connect(run_dir / "metrics.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM learner").fetchone()[0]


def _kill_when_checkpointed(run_dir: Path, killed: list[int], deadline_s: float = 90.0) -> None:
    """SIGKILL the process that trains `run_dir` (it holds the run's metrics file open) once it has a
    checkpoint."""
    end = time.monotonic() + deadline_s
    metrics = str((run_dir / "metrics.sqlite").resolve())
    while time.monotonic() < end and not killed:
        if list((run_dir / "checkpoints").glob("ckpt_*.pt")):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    holds = any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == metrics
                                for fd in os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    continue
                if holds and int(pid) != os.getpid():
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
        time.sleep(0.02)


BUDGET_MIN = 0.05
VICTIM = "learner.lr=1e-3-seed0"


@pytest.fixture(scope="module")
def first_start(tmp_path_factory: pytest.TempPathFactory, local_ray: None) -> dict:
    """A tiny sweep, 2 settings × 2 seeds of a few seconds each, two at a time, with one trial's process killed
    (SIGKILL) once it has written a checkpoint; what it left, read before anything resumes it."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_when_checkpointed, args=(out / "runs" / VICTIM, killed), daemon=True)
    watcher.start()
    result = invoke("L0_minimal", "--seeds", "2", "--grid", "learner.lr=1e-3,1e-5", "--minutes", str(BUDGET_MIN),
                    "--episodes", "8", "--concurrent", "2", "--out", str(out), *TINY)
    watcher.join()
    assert killed, "the trial was never seen training"
    checkpoints = sorted((out / "runs" / VICTIM / "checkpoints").glob("ckpt_*.pt"))
    return {"out": out, "exit_code": result.exit_code, "output": result.output,
            "results": json.loads((out / "results.json").read_text()), "md": (out / "results.md").read_text(),
            "png": (out / "survival.png").read_bytes(), "killed_at": int(checkpoints[-1].stem.split("_")[1]),
            "records": {p.parent.name: p.read_text() for p in (out / "runs").glob("*/trial.json")}}


def test_a_tiny_sweep_writes_run_directories_the_table_and_the_plot(first_start: dict) -> None:
    out, data, md = first_start["out"], first_start["results"], first_start["md"]
    plan = json.loads((out / "sweep.json").read_text())
    assert [(t["name"], t["seed"]) for t in plan["trials"]] == [
        ("learner.lr=1e-3", 0), ("learner.lr=1e-3", 1), ("learner.lr=1e-5", 0), ("learner.lr=1e-5", 1)]
    # the killed trial failed with its error; the other three went on and finished
    assert first_start["exit_code"] == 1, first_start["output"]
    (failed,) = data["failed"]
    assert (failed["name"], failed["seed"]) == ("learner.lr=1e-3", 0) and "died" in failed["error"].lower()
    assert "failed: learner.lr=1e-3 seed 0" in first_start["output"]
    assert f"townlet sweep --resume {out}" in first_start["output"]
    assert f"- failed: learner.lr=1e-3 seed 0 ({out / 'runs' / VICTIM}): " in md
    assert sorted((r["name"], r["seed"]) for r in data["runs"]) == [
        ("learner.lr=1e-3", 1), ("learner.lr=1e-5", 0), ("learner.lr=1e-5", 1)]
    rows = {r["name"]: r for r in data["rows"]}
    assert (rows["learner.lr=1e-3"]["finished"], rows["learner.lr=1e-3"]["failed"]) == (1, [0])
    assert rows["learner.lr=1e-5"]["finished"] == 2
    runs = [r for r in data["runs"] if r["name"] == "learner.lr=1e-5"]
    assert rows["learner.lr=1e-5"]["eval_per_seed"] == [r["eval"]["survival_mean"] for r in runs]
    assert rows["learner.lr=1e-5"]["eval_survival_mean"] == pytest.approx(sum(r["eval"]["survival_mean"]
                                                                              for r in runs) / 2)
    table = [line for line in md.splitlines() if line.startswith("| learner.lr=")]
    assert [line.split(" | ")[0][2:] for line in table] == [r["name"] for r in data["rows"]]  # best first
    assert data["rows"][0]["eval_survival_mean"] >= data["rows"][1]["eval_survival_mean"]
    one_seed = rows["learner.lr=1e-3"]
    assert f"| 1/2 | {one_seed['eval_survival_mean']:.1f} (one seed) |" in md
    two = rows["learner.lr=1e-5"]
    assert f"| 2/2 | {two['eval_survival_mean']:.1f} ± {two['eval_ci95_half']:.1f} |" in md
    assert first_start["png"][:4] == b"\x89PNG" and "survival.png" in md
    assert "2 trial(s) at once with 1 torch thread(s) each" in md
    for run in data["runs"]:  # each trial is an ordinary run directory of its setting and seed
        run_dir = Path(run["run_dir"])
        assert run_dir.parent == out / "runs" and (run["concurrent"], run["threads"]) == (2, 1)
        assert run["niceness"] == os.nice(0)  # at the sweep's priority, not below it (Ray's default: +15)
        assert run["resumed_from"] is None
        config = (run_dir / "config.yaml").read_text()
        assert f"seed: {run['seed']}" in config and ("lr: 0.001" in config) == run["name"].endswith("1e-3")
        assert list((run_dir / "checkpoints").glob("ckpt_*.pt")) and run["eval"]["episodes"] >= 8
        assert BUDGET_MIN * 60 <= run["train_s"] < BUDGET_MIN * 60 + 3
        # Tune heard every log interval's training survival and agent-steps, then the final figures
        reports = [json.loads(line) for line in (out / "tune" / "start-1" / run_dir.name / "result.json").read_text().splitlines()]
        assert len(reports) == learner_rows(run_dir) + 1 >= 2
        assert all({"survival", "agent_steps", "train_s"} <= set(r) for r in reports)
        assert reports[-1]["eval_survival"] == run["eval"]["survival_mean"]
        assert reports[-1]["agent_steps"] == run["env_steps"]


def test_the_resumed_sweep_continues_the_killed_trial_from_its_checkpoint(first_start: dict) -> None:
    out = first_start["out"]
    result = invoke("--resume", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert not data["failed"] and len(data["runs"]) == 4
    assert [r["finished"] for r in data["rows"]] == [2, 2]
    resumed = next(r for r in data["runs"] if Path(r["run_dir"]).name == VICTIM)
    assert resumed["resumed_from"] == first_start["killed_at"] > 0 and resumed["env_steps"] > first_start["killed_at"]
    assert resumed["train_s"] < BUDGET_MIN * 60 + 3  # the budget counts the time trained before the kill
    # the finished trials were not trained again
    assert {name: (out / "runs" / name / "trial.json").read_text() for name in first_start["records"]} == (
        first_start["records"])
