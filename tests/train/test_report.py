"""`townlet report`: plots and summary of a tiny real run, atomic writes, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.train import runs
from townlet.cli import app
from townlet.train import load_run_config
from townlet.train import report as report_mod
from townlet.train.metrics import read_metrics
from townlet.train.report import ReportError, _feature_rows, build_report, plot_learner, plot_stage, rolling

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = {"episodes": 12, "scripted_episodes": 4, "agents": 12}


def make_run(path: Path, steps: int = 4000, **extra: object) -> Path:
    return runs.make_run(path, steps, seed=3, capacity=5000, **extra)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "r0")


@pytest.fixture(scope="module")
def built(run_dir: Path):
    return build_report(run_dir, **SMALL)


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def test_report_writes_pngs_and_summary(run_dir: Path, built) -> None:
    report_dir = run_dir / "report"
    names = {p.name for p in built.files}
    assert {"survival.png", "returns.png", "learner.png", "causes.png", "meters.png", "summary.md"} <= names
    assert "stage.png" not in names  # no stage / intrinsic metrics in this run
    for name in names - {"summary.md"}:
        data = (report_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 10_000, name
    summary = built.summary.read_text()
    for name in names - {"summary.md"}:
        assert f"]({name})" in summary  # embedded by relative path
    # survival numbers: training (last episodes), greedy evaluation and scripted references
    episodes, _ = read_metrics(run_dir)
    tail = [e["length"] for e in episodes[-100:]]
    assert built.final["episodes"] == len(tail)
    assert f"{sum(tail) / len(tail):.1f}" in summary
    assert built.greedy is not None and built.greedy["episodes"] == SMALL["episodes"]
    assert f"{built.greedy['survival_mean']:.1f}" in summary
    for name, stats in built.scripted.items():
        assert f"scripted {name}" in summary
        assert f"{stats['survival_mean']:.1f}" in summary
    assert "L0_minimal" in summary and "16 × 4,000 steps" in summary
    assert "| guides | off" in summary and "| curiosity | off |" in summary
    assert _no_temp_files(report_dir)


def test_summary_names_the_guides_of_a_guided_run() -> None:
    memory = {"policy": "needs-memory"}
    rows = _feature_rows(load_run_config("L2_partial", {"guides": {**memory, "fraction": 0.25, "imitation": 0.0}}))
    assert "| guides | 25% of the agents follow needs-memory (not in the training metrics) |" in rows
    rows = _feature_rows(load_run_config(
        "L2_partial", {"guides": {**memory, "fraction": 0.25, "imitation": 1.0, "imitate": "guided"}}))
    assert ("| guides | 25% of the agents follow needs-memory (not in the training metrics); the network imitates "
            "its actions on the guided agents' steps (large margin 0.8, weight 1) |") in rows
    rows = _feature_rows(load_run_config("L2_partial", {"guides": {**memory, "imitation": 2.0, "imitate": "all"}}))
    assert ("| guides | no agent follows needs-memory; the network imitates its advice on every agent's steps "
            "(large margin 0.8, weight 2) |") in rows
    rows = _feature_rows(load_run_config("L2_partial_demonstrations"))  # advice from the memoryless sweep
    assert ("| guides | no agent follows needs-sweep; the network imitates its advice on every agent's steps "
            "(large margin 0.8, weight 1) |") in rows
    assert "| guides | off |" in _feature_rows(load_run_config("L2_partial"))  # the default learns without a teacher


def test_report_cli(run_dir: Path, tmp_path: Path) -> None:
    run = shutil.copytree(run_dir, tmp_path / "copy")
    shutil.rmtree(run / "report", ignore_errors=True)
    result = CliRunner().invoke(app, ["report", str(run), "--episodes", "8", "--scripted-episodes", "2",
                                      "--agents", "8"])
    assert result.exit_code == 0, result.output
    assert "report written" in result.output and "summary.md" in result.output
    assert (run / "report" / "summary.md").is_file()
    assert (run / "report" / "meters.png").read_bytes()[:8] == PNG_MAGIC


def test_failure_while_plotting_leaves_no_report(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    run = shutil.copytree(run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("report"))

    def boom(*_a: object, **_k: object) -> bytes:
        raise RuntimeError("plotting failed midway")

    monkeypatch.setattr(report_mod, "plot_causes", boom)
    with pytest.raises(RuntimeError, match="midway"):
        build_report(run, episodes=2, scripted_episodes=1, agents=2)
    report_dir = run / "report"
    assert not (report_dir / "summary.md").exists()
    assert not report_dir.exists() or not list(report_dir.iterdir())  # nothing written, no temp files


def test_killed_write_leaves_whole_files_only(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    run = shutil.copytree(run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("report"))
    (run / "report").mkdir()
    (run / "report" / "summary.md").write_text("old report")
    real_dump, calls = report_mod._dump, []

    def dying_dump(tmp: Path, data: bytes) -> None:
        calls.append(tmp)
        if len(calls) == 3:  # the third file: half written, then the process "dies"
            tmp.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        real_dump(tmp, data)

    monkeypatch.setattr(report_mod, "_dump", dying_dump)
    with pytest.raises(KeyboardInterrupt):
        build_report(run, episodes=2, scripted_episodes=1, agents=2)
    files = sorted(p.name for p in (run / "report").iterdir())
    assert files == ["returns.png", "summary.md", "survival.png"]  # learner.png never appeared half-written
    for name in ("returns.png", "survival.png"):
        assert (run / "report" / name).read_bytes()[:8] == PNG_MAGIC
    assert (run / "report" / "summary.md").read_text() == "old report"


@pytest.mark.parametrize("kind", ["missing", "no_metrics", "file"])
def test_bad_run_paths_exit_2(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nowhere"
    if kind == "no_metrics":
        path.mkdir()
    elif kind == "file":
        path.write_text("not a run")
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 2, result.output
    assert "error" in result.output
    expected = "no metrics" if kind == "no_metrics" else "no such run directory"
    assert expected in result.output.replace("\n", "")
    with pytest.raises(ReportError):
        build_report(path)


def test_learner_plot_handles_missing_values() -> None:
    rows = [{"step": s, "epsilon": 1.0 - s / 10, "loss": None, "q_mean": None} for s in range(3)]
    assert plot_learner(rows)[:8] == PNG_MAGIC
    assert plot_learner([])[:8] == PNG_MAGIC


def test_stage_plot_only_when_present() -> None:
    episodes = [{"step": i, "length": 10, "return": 1.0, "cause": "energy", "stage": 0} for i in range(50)]
    learner = [{"step": s, "stage_mean": None, "intrinsic_weight": None, "intrinsic_reward": None} for s in range(3)]
    assert plot_stage(episodes, learner) is None
    assert plot_stage(episodes, learner, curriculum=True)[:8] == PNG_MAGIC  # on, even if stuck at stage 0
    learner[1].update(stage_mean=1.5, intrinsic_weight=0.5, intrinsic_reward=0.02)
    assert plot_stage(episodes, learner)[:8] == PNG_MAGIC
    staged = [dict(e, stage=i // 10) for i, e in enumerate(episodes)]
    assert plot_stage(staged, [])[:8] == PNG_MAGIC  # stage known only from the episodes table


def test_rolling_statistics() -> None:
    import numpy as np

    values = np.arange(10, dtype=float)
    idx, mean, median = rolling(values, 4, points=100)
    assert idx[0] == 3 and idx[-1] == 9
    assert mean[0] == pytest.approx(1.5) and median[-1] == pytest.approx(7.5)
