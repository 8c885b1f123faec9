"""Timed experiments: the statistics of the results table, and the two benchmark scripts end to end on tiny
budgets (files written, numbers consistent with the runs they came from). The scripts hand their runs to the
sweep (`townlet.train.sweep.run_trials`, tested on Ray in test_sweep.py); here they run in this process."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import BENCHMARKS, load_script
from tests.train.runs import make_run
from townlet.train.experiment import (
    Goal,
    Trial,
    budget_label,
    markdown_table,
    record_curve,
    run_label,
    run_trial,
    summarize,
    training_curve,
    write_results,
)
from townlet.train.sweep import SweepOutcome

FAST = ["--set", "compile_world=false"]  # a 2-second budget has no room for compiling the world
SMALL = ["--set", "agents=16", "--set", "learner.learning_starts=500", "--set", "logging.interval_steps=1000"]


class InProcess:
    """Trains the trials a benchmark hands to the sweep one after another in this process, and keeps what it was
    handed (the trials, their runs directory and the sweep's options)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Trial], Path, dict]] = []

    def __call__(self, trials: list[Trial], runs_dir: Path, **options: object) -> SweepOutcome:
        self.calls.append((list(trials), Path(runs_dir), options))
        return SweepOutcome(records=[run_trial(t, runs_dir, episodes=options["episodes"],
                                               machine_speed=options["before_training"]) for t in trials])


def record(name: str, seed: int, mean: float, cap: float = 0.0, ci: tuple[float, float] = (0.0, 0.0)) -> dict:
    return {
        "name": name, "level": "L1_full", "seed": seed, "minutes": 5.0, "train_s": 300.0, "env_steps": 1_000_000,
        "updates": 1000, "run_dir": "nowhere",
        "eval": {"survival_mean": mean, "survival_median": mean, "cap_rate": cap, "episodes": 1000,
                 "survival_ci95": list(ci)},
    }


def test_summary_pools_seeds_and_checks_goals() -> None:
    records = [record("a", 0, 400.0, 0.9), record("a", 1, 500.0, 1.0), record("b", 0, 300.0, ci=(290.0, 310.0))]
    goals = {"a": Goal("cap_rate", 0.95), "b": Goal("survival_mean", 250)}
    rows = summarize(records, goals)
    a, b = rows
    assert a["survival_mean"] == 450.0 and a["ci_over"] == "seeds" and a["seeds"] == [0, 1]
    assert a["ci95_half"] == pytest.approx(12.706 * math.sqrt(5000.0) / math.sqrt(2))
    assert a["cap_rate"] == pytest.approx(0.95) and a["goal_met"]  # exactly at the threshold counts
    assert b["ci_over"] == "episodes" and b["ci95_half"] == 10.0 and b["goal_met"]
    assert not Goal("cap_rate", 0.95).met(0.94)
    table = markdown_table(rows)
    assert "| a | L1_full | 5 min | 2 | 450.0 ± 635.3 (seeds)" in table
    assert "cap rate >= 95%: met" in table and "mean survival >= 250: met" in table


def test_run_labels_tell_apart_one_seeds_runs_at_two_budgets() -> None:
    timed, stepped, other = {"name": "a", "seed": 0, "minutes": 10.0, "steps": None}, \
        {"name": "a", "seed": 0, "minutes": None, "steps": 10_000_000}, {"name": "b", "seed": 1, "minutes": 10.0}
    assert run_label(timed, [timed, stepped]) == "a seed 0 (10 min)"
    assert run_label(stepped, [timed, stepped], name=False) == "seed 0 (10 M steps)"
    assert run_label(timed, [timed]) == "a seed 0" and run_label(timed, [timed], name=False) == "seed 0"
    assert run_label(other, [timed, other], name=False) == "b seed 1"  # several names: the name stays


def test_rerunning_seeds_keeps_the_other_seeds_and_levels(tmp_path: Path) -> None:
    learning = load_script("learning")
    runs = [record("L1_full", seed, 400.0 + seed) for seed in range(3)]
    runs.append({**record("L2_partial", 0, 200.0), "level": "L2_partial"})
    path = tmp_path / "learning.json"
    runs.append({**record("L1_full", 0, 300.0), "steps": 3_000_000, "minutes": None})  # the other budget
    path.write_text(json.dumps({"runs": runs}))
    kept = learning.kept_records(path, ["L1_full"], "time", [0, 2])
    assert [(r["level"], r["seed"], r.get("steps")) for r in kept] == [
        ("L1_full", 1, None), ("L2_partial", 0, None), ("L1_full", 0, 3_000_000)]
    assert [r["level"] for r in learning.kept_records(path, ["L1_full"], "time", [])] == ["L2_partial", "L1_full"]
    assert [r["level"] for r in learning.kept_records(path, ["L1_full"], "steps", [])] == ["L1_full"] * 3 + [
        "L2_partial"]
    with pytest.raises(SystemExit):  # a seed outside --seeds is refused before anything trains
        learning.main(["L1_full", "--seeds", "2", "--rerun", "2", "--out", str(tmp_path)])


def test_learning_benchmark_then_memory_ablation_reusing_its_lstm_run(tmp_path: Path) -> None:
    out, runs = tmp_path / "results", tmp_path / "runs"
    learning = load_script("learning")
    execute = InProcess()
    code = learning.main(["L2_partial_fixed", "--seeds", "1", "--budget", "steps", "--steps", "6000",
                          "--episodes", "20", "--out", str(out), "--runs", str(runs), *FAST, *SMALL], execute)
    assert code == 0
    ((trials, runs_dir, options),) = execute.calls  # the runs, as the sweep's trials
    assert trials == [Trial("L2_partial_fixed", "L2_partial_fixed", 0, None, {
        "compile_world": False, "agents": 16, "learner": {"learning_starts": 500}, "logging": {"interval_steps": 1000}},
        steps=6000)]
    assert runs_dir == runs and options["concurrent"] == 1 and options["address"] is None
    data = json.loads((out / "learning.json").read_text())
    (row,) = data["rows"]
    (run,) = data["runs"]
    assert row["level"] == "L2_partial_fixed" and row["episodes"] >= 20
    assert row["survival_mean"] == run["eval"]["survival_mean"] and run["env_steps"] > 0
    assert row["goal"] == "mean survival >= 450" and row["random_mean"] > 0
    md = (out / "learning.md").read_text()
    assert "| L2_partial_fixed | L2_partial_fixed | 0.006 M steps | 1 |" in md and "Random valid-action policy" in md
    assert (out / "learning-L2_partial_fixed.png").read_bytes()[:4] == b"\x89PNG"
    curve = training_curve(Path(run["run_dir"]))
    assert len(curve["minutes"]) == len(curve["steps"]) == len(curve["survival"]) > 0
    assert (curve["survival"] > 0).all() and (curve["steps"] <= run["env_steps"]).all()
    assert run["curve"]["survival"][-1] == pytest.approx(curve["survival"][-1], abs=1e-3)  # stored with the record
    assert f"L2_partial_fixed seed 0 {run['finished']}" in md
    if (BENCHMARKS.parents[1] / "shared" / "bench" / "plain_world.py").exists():  # the machine's speed is noted
        assert run["yardstick_steps_per_s"] > 1000
        assert f"L2_partial_fixed seed 0 {run['yardstick_steps_per_s']:,.0f}" in md
    # training another level keeps this one's run: the table stays whole
    assert learning.main(["L1_full", "--seeds", "1", "--minutes", "0.02", "--episodes", "10", "--concurrent", "2",
                          "--address", "auto", "--out", str(out), "--runs", str(runs), *FAST], execute) == 0
    trials, _, options = execute.calls[-1]
    assert [(t.name, t.seed, t.minutes, t.steps) for t in trials] == [("L1_full", 0, 0.02, None)]
    assert options["concurrent"] == 2 and options["address"] == "auto"
    both = json.loads((out / "learning.json").read_text())
    assert [(r["level"], r["steps"]) for r in both["rows"]] == [("L1_full", None), ("L2_partial_fixed", 6000)]
    assert both["runs"][1] == run and both["runs"][1]["env_steps"] >= 6000
    both_md = (out / "learning.md").read_text()
    assert "| L1_full | L1_full | 0.02 min | 1 |" in both_md
    assert f"L2_partial_fixed seed 0 (0.006 M steps) {run['finished']}" in both_md  # two budgets: each run says its own

    ablation = load_script("memory_ablation")
    code = ablation.main(["--level", "L2_partial_fixed", "--steps", "6000", "--episodes", "10", "--out", str(out),
                          "--runs", str(runs), "--lstm-from", str(out / "learning.json"), *FAST, *SMALL], execute)
    assert code == 0
    trials, _, _ = execute.calls[-1]  # the lstm run is reused: only the two ablations train
    assert [(t.name, t.level, t.seed, t.steps) for t in trials] == [
        ("no-memory", "L2_partial_fixed", 0, 6000), ("zero-state", "L2_partial_fixed", 0, 6000)]
    assert trials[0].overrides["network"] == {"kind": "feedforward"}
    assert trials[1].overrides["replay"] == {"stored_state": False, "burn_in": 0}
    data = json.loads((out / "memory-ablation-L2_partial_fixed.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["lstm", "no-memory", "zero-state"]
    lstm_run = data["runs"][0]
    assert lstm_run["run_dir"] == run["run_dir"] and lstm_run["eval"] == run["eval"]  # reused, not retrained
    configs = {r["name"]: (Path(r["run_dir"]) / "config.yaml").read_text() for r in data["runs"]}
    assert "kind: feedforward" in configs["no-memory"] and "kind: lstm" in configs["lstm"]
    assert "stored_state: false" in configs["zero-state"] and "burn_in: 0" in configs["zero-state"]
    assert all("compile_world: false" in c for c in configs.values())  # --set reaches every variant
    for r in data["rows"]:
        assert r["lstm_ratio"] == pytest.approx(data["rows"][0]["survival_mean"] / r["survival_mean"])
    md = (out / "memory-ablation-L2_partial_fixed.md").read_text()
    assert "LSTM against the ablations" in md
    # the recurrent variants are also evaluated with their memory wiped before every step
    wiped = {r["name"]: r["eval"].get("memory_wiped") for r in data["runs"]}
    assert wiped["no-memory"] is None
    assert all(wiped[r["name"]]["episodes"] == r["eval"]["episodes"] for r in data["runs"] if r["name"] != "no-memory")
    assert f"lstm seed 0 {wiped['lstm']['survival_mean']:.1f} (against {lstm_run['eval']['survival_mean']:.1f})" in md
    # a record from before memory_wiped existed gets it from its run directory; one without a run directory cannot
    old = json.loads(json.dumps(lstm_run))
    del old["eval"]["memory_wiped"]
    ablation.fill_memory_wiped(old)
    assert old["eval"]["memory_wiped"] == wiped["lstm"]  # the same episodes, greedy: the same figures
    gone = record("lstm", 0, 1.0)
    ablation.fill_memory_wiped(gone)
    assert "memory_wiped" not in gone["eval"] and ablation.memory_wiped_note([gone]) == ""
    # adding a seed keeps seed 0's recorded run and trains only the new one
    code = ablation.main(["--level", "L2_partial_fixed", "--steps", "6000", "--episodes", "10", "--out", str(out),
                          "--runs", str(runs), "--variants", "no-memory", "--seeds", "2", "--rerun", "1", *FAST, *SMALL],
                         execute)
    assert code == 0
    assert [(t.name, t.seed) for t in execute.calls[-1][0]] == [("no-memory", 1)]
    again = json.loads((out / "memory-ablation-L2_partial_fixed.json").read_text())
    assert [(r["name"], r["seed"]) for r in again["runs"]] == [  # the variants it did not run are kept too
        ("lstm", 0), ("no-memory", 0), ("zero-state", 0), ("no-memory", 1)]
    assert again["runs"][:3] == data["runs"] and again["runs"][3]["run_dir"] != data["runs"][1]["run_dir"]
    assert [r["seeds"] for r in again["rows"]] == [[0], [0, 1], [0]]
    # the other budget goes into the same file: each budget's rows are compared only with each other
    code = ablation.main(["--level", "L2_partial_fixed", "--minutes", "0.02", "--episodes", "10", "--out", str(out),
                          "--runs", str(tmp_path / "timed"), "--variants", "lstm", "zero-state", *FAST, *SMALL],
                         execute)
    assert code == 0
    both = json.loads((out / "memory-ablation-L2_partial_fixed.json").read_text())
    assert [(r["name"], budget_label(r)) for r in both["rows"]] == [
        ("lstm", "0.02 min"), ("zero-state", "0.02 min"),
        ("lstm", "0.006 M steps"), ("no-memory", "0.006 M steps"), ("zero-state", "0.006 M steps")]
    assert both["runs"][2:] == again["runs"]
    timed_lstm, timed_zero = both["rows"][0]["survival_mean"], both["rows"][1]["survival_mean"]
    assert both["rows"][1]["lstm_ratio"] == pytest.approx(timed_lstm / timed_zero)
    assert both["rows"][3]["lstm_ratio"] == pytest.approx(both["rows"][2]["survival_mean"] /
                                                          both["rows"][3]["survival_mean"])
    md = (out / "memory-ablation-L2_partial_fixed.md").read_text()
    assert f"at 0.02 min (goal >= 1.30× each): {timed_lstm / timed_zero:.2f}× zero-state\n" in md
    assert "LSTM against the ablations at 0.006 M steps (goal >= 1.30× each): " in md
    (timed_zero_line,) = [line for line in md.splitlines() if line.startswith("| zero-state | L2_partial_fixed | 0.02")]
    assert timed_zero_line.endswith(f"| {timed_zero / timed_lstm:.2f}× lstm |")  # not against the other budget
    wiped_lstm = both["runs"][0]["eval"]["memory_wiped"]["survival_mean"]
    assert f"lstm seed 0 (0.02 min) {wiped_lstm:.1f} (against {timed_lstm:.1f})" in md


def test_ablation_rerun_keeps_only_this_budget_and_refuses_what_it_cannot_keep(tmp_path: Path) -> None:
    ablation = load_script("memory_ablation")
    runs = [{**record(name, seed, 100.0 + seed), "level": "L2_partial", "minutes": 15.0}
            for name in ("lstm", "no-memory", "zero-state") for seed in (0, 1)]
    runs.append({**record("lstm", 2, 1.0), "level": "L2_partial", "minutes": 10.0})  # another budget
    path = tmp_path / "memory-ablation-L2_partial.json"
    path.write_text(json.dumps({"runs": runs}))
    kept = ablation.kept_records(path, "L2_partial", 15.0, [1])
    assert sorted(kept) == [("lstm", 0), ("no-memory", 0), ("zero-state", 0)]
    assert kept["lstm", 0]["eval"]["survival_mean"] == 100.0
    with pytest.raises(SystemExit):  # a seed outside --seeds
        ablation.main(["--seeds", "2", "--rerun", "2", "--out", str(tmp_path)])
    path.write_text(json.dumps({"runs": runs[:1]}))  # seed 0 has only its lstm run: refused before training
    with pytest.raises(SystemExit):
        ablation.main(["--seeds", "2", "--rerun", "1", "--out", str(tmp_path)])


def test_ablation_ratio_interval_pairs_the_variants_by_seed() -> None:
    ablation = load_script("memory_ablation")
    # every seed's LSTM agent lives 1.5x its memoryless one: every resample gives 1.5, however the seeds differ
    steady = [record("lstm", s, 1.5 * m) for s, m in enumerate((200.0, 300.0, 450.0 / 1.5))]
    steady += [record("no-memory", s, m) for s, m in enumerate((200.0, 300.0, 450.0 / 1.5))]
    low, high, seeds = ablation.ratio_interval(steady, "5 min", "no-memory")
    assert (low, high, seeds) == (pytest.approx(1.5), pytest.approx(1.5), 3)
    # seeds that disagree widen it around the ratio of the means; unpaired seeds and other budgets stay out
    mixed = [record("lstm", 0, 400.0), record("lstm", 1, 300.0), record("lstm", 2, 500.0),
             record("no-memory", 0, 200.0), record("no-memory", 1, 300.0),
             {**record("no-memory", 2, 50.0), "minutes": 15.0}, record("zero-state", 0, 100.0)]
    low, high, seeds = ablation.ratio_interval(mixed, "5 min", "no-memory")
    assert seeds == 2 and low == pytest.approx(1.0) and high == pytest.approx(2.0)
    assert low < 700.0 / 500.0 < high
    assert ablation.ratio_interval(mixed, "5 min", "zero-state") is None  # one shared seed: no interval
    assert ablation.ratio_interval(mixed, "5 min", "no-memory", seed=1) == ablation.ratio_interval(
        mixed, "5 min", "no-memory", seed=1)  # seeded: the same interval every time
    assert ablation.ratio_text(mixed, "5 min", "no-memory", 1.4) == (
        "1.40× no-memory (95% interval 1.00–2.00, paired bootstrap over 2 seeds)")
    assert ablation.ratio_text(mixed, "5 min", "zero-state", 4.0) == "4.00× zero-state"


def test_ablation_replot_rewrites_the_ratios_from_the_json_without_training(tmp_path: Path) -> None:
    ablation = load_script("memory_ablation")
    runs = [record("lstm", 0, 400.0), record("lstm", 1, 300.0), record("no-memory", 0, 200.0),
            record("no-memory", 1, 300.0)]
    stored = {"title": "Memory ablation", "command": "python benchmarks/memory_ablation.py --level L1_full",
              "machine": "the machine of then", "date": "then", "notes": "stale", "rows": [], "runs": runs}
    (tmp_path / "memory-ablation-L1_full.json").write_text(json.dumps(stored))

    def no_training(*args: object, **kwargs: object) -> SweepOutcome:
        raise AssertionError("--replot must not train")

    assert ablation.main(["--level", "L1_full", "--replot", "--out", str(tmp_path)], execute=no_training) == 0
    md = (tmp_path / "memory-ablation-L1_full.md").read_text()
    assert "`python benchmarks/memory_ablation.py --level L1_full` on the machine of then, then." in md
    assert ("at 5 min (goal >= 1.30× each): 1.40× no-memory (95% interval 1.00–2.00, paired bootstrap over 2 "
            "seeds)") in md
    data = json.loads((tmp_path / "memory-ablation-L1_full.json").read_text())
    assert [row["lstm_ratio"] for row in data["rows"]] == [pytest.approx(1.0), pytest.approx(1.4)]
    assert data["runs"] == runs and data["notes"] != "stale"


def test_several_levels_get_an_overview_plot_and_replot_rewrites_from_json(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "tiny")
    records = []
    for level, mean in (("L1_full", 480.0), ("L2_partial", 200.0)):
        r = record(level, 0, mean, ci=(mean - 5, mean + 5))
        records.append({**r, "level": level, "run_dir": str(run_dir)})
    rows = summarize(records)
    for row in rows:
        row["random_mean"], row["vs_random"] = 100.0, row["survival_mean"] / 100.0
    out = tmp_path / "results"
    written = write_results(out, "learning", "Learning results", records, rows, "cmd", machine_note="here",
                            date="then")
    assert {p.name for p in written} == {"learning.json", "learning.md", "learning.png", "learning-L1_full.png",
                                         "learning-L2_partial.png"}
    (out / "learning.png").unlink()
    (out / "learning.md").write_text("stale")
    assert load_script("learning").main(["all", "--replot", "--out", str(out)]) == 0
    md = (out / "learning.md").read_text()
    assert (out / "learning.png").read_bytes()[:4] == b"\x89PNG"
    assert "`cmd` on here, then." in md and "L2_partial 5 min 100.0 (agent 2.00× it)" in md
    # on a fresh clone the run directories (not committed) are missing: the plots keep the greedy stars
    data = json.loads((out / "learning.json").read_text())
    for run in data["runs"]:
        run["run_dir"] = str(tmp_path / "gone")
    (out / "learning.json").write_text(json.dumps(data))
    assert load_script("learning").main(["all", "--replot", "--out", str(out)]) == 0
    assert (out / "learning-L1_full.png").read_bytes()[:4] == b"\x89PNG"
    # a record carries its own curve, so plots need no run directory; older records fall back to theirs
    stored = {"minutes": [1.0, 2.0], "steps": [10.0, 20.0], "survival": [50.0, 60.0]}
    assert record_curve({"curve": stored, "run_dir": "gone"})["survival"].tolist() == [50.0, 60.0]
    from_dir = record_curve({"run_dir": str(run_dir)})
    assert len(from_dir["survival"]) > 0 and len(record_curve({"run_dir": "gone"})["survival"]) == 0


def test_reading_the_yardstick_keeps_the_trials_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial sets its share of threads, then reads the yardstick (../shared/bench) before training; the
    yardstick's module sets torch's threads when imported, which must not leak into the trial's training."""
    throughput = load_script("world_throughput")
    if not (throughput.YARDSTICK / "plain_world.py").exists():
        pytest.skip("../shared/bench is not beside the project")
    monkeypatch.delitem(sys.modules, "plain_world", raising=False)  # so that it is imported (and sets threads) again
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert throughput.machine_speed(64) > 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
