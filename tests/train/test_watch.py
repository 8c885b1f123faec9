"""`townlet watch`: a greedy episode in the terminal (or as log lines) and as a GIF; clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import imageio.v3 as iio
import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.train import runs
from townlet.cli import app
from townlet.train import open_run
from townlet.train.rundir import list_checkpoints
from townlet.train.watch import WatchError, abbreviations, greedy_episode, watch
from townlet.world import METER_NAMES, load_level


def make_run(path: Path, steps: int = 2000, **extra: object) -> Path:
    return runs.make_run(path, steps, seed=5, capacity=4000, **extra)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "mlp")


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("runs") / "lstm", steps=800, agents=8,
        algorithm="r2d2", network={"kind": "lstm", "lstm_hidden": 16},
        learner={"learning_starts": 400, "batch_size": 4},
        replay={"capacity": 2000, "burn_in": 2, "train_len": 4},
    )


def test_watch_without_tty_prints_frames_and_records_gif(run_dir: Path, tmp_path: Path) -> None:
    gif = tmp_path / "episode.gif"
    result = CliRunner().invoke(app, ["watch", str(run_dir), "--steps", "12", "--speed", "0", "--record", str(gif)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "tick    0" in out and "tick   12" in out and "tick   13" not in out  # one line per tick
    assert "@ agent" in out and "Bed" in out and "HomeMeal" in out  # final frame: legend
    assert all(name in out for name in METER_NAMES)
    assert "survival so far: 12 ticks" in out
    assert "recorded 13 frames" in out
    frames = iio.imread(gif, index=None)
    assert frames.shape[0] == 13  # the start + one frame per tick
    assert frames.shape[-1] in (3, 4) and frames.shape[1] > 100 and frames.shape[2] > 200
    assert not list(tmp_path.glob(".*.tmp"))


def test_watch_to_the_end_of_the_episode(run_dir: Path, tmp_path: Path) -> None:
    gif = tmp_path / "full.gif"
    result = watch(run_dir, speed=0, steps=500, seed=1, record=gif, display=False)
    assert result.cause is not None  # died or reached the level's cap
    assert result.frames == result.ticks + 1 == iio.imread(gif, index=None).shape[0]
    if result.cause != "truncated":
        assert result.meters[result.cause] == pytest.approx(0.0, abs=1e-4)  # the final frame shows the death


def test_watch_live_display_on_a_terminal(run_dir: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system=None, width=120)
    result = watch(run_dir, speed=0, steps=5, console=console)
    text = buffer.getvalue()
    assert result.ticks == 5 and result.cause is None
    assert "energy" in text and "tick 5/5" in text and "alive after 5 ticks" in text


def test_watch_recurrent_agent(lstm_run: Path, tmp_path: Path) -> None:
    ckpt = list_checkpoints(lstm_run / "checkpoints")[-1]
    gif = tmp_path / "lstm.gif"
    result = watch(ckpt, speed=0, steps=8, record=gif, display=False)  # a checkpoint file works too
    assert result.ticks == 8 and result.frames == 9
    assert iio.imread(gif, index=None).shape[0] == 9


def test_greedy_episode_frames(run_dir: Path) -> None:
    run = open_run(run_dir)
    level = run.level
    frames = list(greedy_episode(run.policy(), level, seed=0, max_ticks=20))
    assert [f.tick for f in frames] == list(range(21))
    start = frames[0]
    assert start.action is None and start.meters == tuple(level.meters[m].start for m in METER_NAMES)
    assert all(f.action in ("UP", "DOWN", "LEFT", "RIGHT", "INTERACT") for f in frames[1:])
    assert all(0 <= f.x < level.grid_size and 0 <= f.y < level.grid_size for f in frames)


def test_abbreviations_are_short_and_unique() -> None:
    names = load_level("L1_full").affordance_names
    abbrevs = abbreviations(names)
    assert len(set(abbrevs)) == len(names) and all(1 <= len(a) <= 3 for a in abbrevs)
    assert abbreviations(["HomeMeal", "Bed"]) == ("HM", "Be")


@pytest.mark.parametrize("case", ["missing", "empty_dir", "corrupt_ckpt", "bad_level", "wrong_level", "not_gif",
                                  "nothing_to_do"])
def test_bad_inputs_exit_2(run_dir: Path, tmp_path: Path, case: str) -> None:
    target, extra = str(run_dir), []
    if case == "missing":
        target = str(tmp_path / "nowhere")
    elif case == "empty_dir":
        target = str(tmp_path)
    elif case == "corrupt_ckpt":
        bad = tmp_path / "ckpt_000000000001.pt"
        bad.write_bytes(b"not a checkpoint")
        target = str(bad)
    elif case == "bad_level":
        extra = ["--level", "L9_nope"]
    elif case == "wrong_level":
        extra = ["--level", "L1_full"]  # 87 observation values, the agent was trained on 21
    elif case == "not_gif":
        extra = ["--record", str(tmp_path / "out.mp4")]
    else:
        extra = ["--no-display"]
    result = CliRunner().invoke(app, ["watch", target, "--steps", "3", *extra])
    assert result.exit_code == 2, result.output
    assert "error" in result.output
    if case == "wrong_level":
        assert "21 observation values" in " ".join(result.output.split())  # rich wraps at the terminal width
    with pytest.raises(WatchError):
        if case not in ("nothing_to_do",):
            level = extra[1] if case in ("bad_level", "wrong_level") else None
            record = Path(extra[1]) if case == "not_gif" else None
            watch(Path(target), level=level, steps=3, record=record, display=False)
        else:
            raise WatchError("checked by the CLI only")
