"""The README's main command and the scripted-policy table, end to end."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from townlet.cli import app


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
