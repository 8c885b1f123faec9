"""The live view's server without a browser: the websocket protocol, several and slow clients, a client that
leaves mid-stream, checkpoint hot-reload, error pages, and the `serve` / `train --serve` commands."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient
from typer.testing import CliRunner
from websockets.sync.client import connect

from townlet.cli import app as cli
from townlet.serve import LiveServer, Simulation, Viewer, create_app, make_viewer
from townlet.serve.app import ServeError
from townlet.serve.sim import SimulationError
from townlet.train.checkpoint import load_checkpoint
from townlet.train.rundir import CHECKPOINTS, list_checkpoints, save_checkpoint
from townlet.world import load_level


def next_message(ws, predicate: Callable[[dict], bool], limit: int = 300) -> dict:
    """The first message (frames come at least 10 a second while a client watches) that `predicate` accepts."""
    for _ in range(limit):
        message = ws.receive_json()
        if predicate(message):
            return message
    raise AssertionError(f"no matching message in {limit}")


def level_viewer(level: str = "L0_minimal", agents: int = 2, speed: int = 60) -> Viewer:
    return Viewer(Simulation(load_level(level), agents), f"level {level}", speed=speed)


def test_protocol_hello_frames_and_every_command() -> None:
    viewer = level_viewer(agents=3)
    with TestClient(create_app(viewer)) as client, client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["level"] == "L0_minimal" and hello["agents"] == 3
        assert hello["policies"] == ["random", "needs"]
        first = next_message(ws, lambda m: m["type"] == "frame")
        later = next_message(ws, lambda m: m["tick"] > first["tick"] + 2)
        assert len(later["agents"]) == 3 and not later["paused"] and later["speed"] == 60

        ws.send_json({"cmd": "pause"})
        paused = next_message(ws, lambda m: m["paused"])
        ws.send_json({"cmd": "step"})
        stepped = next_message(ws, lambda m: m["tick"] != paused["tick"])
        assert stepped["tick"] == paused["tick"] + 1 and stepped["paused"]  # exactly one tick, still paused
        assert viewer.simulation.tick == stepped["tick"]

        ws.send_json({"cmd": "speed", "value": 5})
        assert next_message(ws, lambda m: m["speed"] == 5)["tick"] == stepped["tick"]
        ws.send_json({"cmd": "policy", "value": "random"})
        assert next_message(ws, lambda m: m["policy"] == "random")["driver"] == "random"
        ws.send_json({"cmd": "next_episode"})
        fresh = next_message(ws, lambda m: all(a["episode"] == 1 for a in m["agents"]))
        assert all(a["steps"] == 0 for a in fresh["agents"])
        ws.send_json({"cmd": "resume"})
        assert next_message(ws, lambda m: m["tick"] > fresh["tick"])["paused"] is False

        ws.send_bytes(b"\x00")
        assert "commands are JSON text" in next_message(ws, lambda m: m["type"] == "error")["message"]
        for bad, expected in [
            ("not json", "not JSON"), ('{"cmd": "jump"}', "unknown command 'jump'; allowed: pause, resume"),
            ('{"cmd": "speed", "value": 0}', "speed: 0; a whole number"),
            ('{"cmd": "speed", "value": "fast"}', "speed: 'fast'"),
            ('{"cmd": "policy", "value": "network"}', "policy: 'network'; allowed: random, needs"), ("[1]", "unknown"),
        ]:
            ws.send_text(bad)
            assert expected in next_message(ws, lambda m: m["type"] == "error")["message"]
        assert next_message(ws, lambda m: m["type"] == "frame")  # still streaming after the bad commands


def test_several_clients_watch_one_simulation_and_one_may_leave_mid_stream() -> None:
    viewer = level_viewer()
    with TestClient(create_app(viewer)) as client, client.websocket_connect("/ws") as first:
        assert first.receive_json()["type"] == "hello"
        with client.websocket_connect("/ws") as second:
            assert second.receive_json()["type"] == "hello"
            seen = next_message(second, lambda m: m["tick"] > 3)["tick"]
            assert next_message(first, lambda m: m["tick"] >= seen)  # the same ticks reach both
            assert len(viewer.clients) == 2
            second.send_json({"cmd": "pause"})
            assert next_message(first, lambda m: m["paused"])  # one tab's controls reach every tab
            first.send_json({"cmd": "resume"})
            next_message(second, lambda m: not m["paused"])
        # the second tab closed while frames were streaming to it: the first goes on
        later = next_message(first, lambda m: m["tick"] > seen + 10)
        assert later["type"] == "frame"
        deadline = time.monotonic() + 5
        while len(viewer.clients) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(viewer.clients) == 1


def test_a_client_that_reads_nothing_never_holds_up_the_simulation() -> None:
    """Its queue stays at its bound, dropping its oldest frames, while the ticks go on at full speed."""

    async def watch_without_reading() -> tuple[int, int, int]:
        viewer = level_viewer(speed=60)
        viewer.start(asyncio.get_running_loop())
        try:
            stalled = viewer.connect()
            await asyncio.sleep(1.0)
            return stalled.frames.qsize(), stalled.dropped, viewer.simulation.tick
        finally:
            viewer.stop()

    queued, dropped, ticks = asyncio.run(watch_without_reading())
    assert queued == 4 and dropped >= 10 and ticks >= 20


def test_a_cpu_share_slows_fast_play_to_keep_within_it() -> None:
    """Beside training the view may use only a share of a core: at 60 ticks/s it then plays slower, says so in
    its frames, and its process's CPU time stays near the share (plus the asyncio side's small overhead)."""

    async def play(cpu_share: float | None) -> tuple[int, bool, float]:
        viewer = Viewer(Simulation(load_level("L0_minimal"), 2), "level", speed=60, cpu_share=cpu_share)
        viewer.start(asyncio.get_running_loop())
        try:
            client = viewer.connect()
            cpu, start = time.process_time(), viewer.simulation.tick
            await asyncio.sleep(1.5)
            while not client.frames.empty():
                client.frames.get_nowait()
            used = time.process_time() - cpu
            return viewer.simulation.tick - start, json.loads(viewer.latest)["capped"], used
        finally:
            viewer.stop()

    free_ticks, free_capped, _ = asyncio.run(play(None))
    capped_ticks, capped, cpu_used = asyncio.run(play(0.002))
    assert free_ticks >= 45 and not free_capped
    assert capped and capped_ticks < free_ticks / 3
    assert cpu_used < 0.1  # 1.5 s at 0.2% of a core, plus what the test's own loop spends


def test_a_cpu_share_must_be_a_fraction_of_one_core() -> None:
    with pytest.raises(SimulationError, match="fraction of one core"):
        Viewer(Simulation(load_level("L0_minimal"), 1), "level", cpu_share=0)


def test_the_simulation_idles_while_nobody_watches() -> None:
    viewer = level_viewer()
    with TestClient(create_app(viewer)):
        time.sleep(0.5)
        assert viewer.simulation.tick == 0


def newer_checkpoint(run_dir: Path, scale: float) -> Path:
    """A checkpoint after the newest one, its network's weights scaled (so its values differ)."""
    newest = list_checkpoints(run_dir / CHECKPOINTS)[-1]
    state = load_checkpoint(newest)
    state["algorithm"]["network"] = {k: v * scale for k, v in state["algorithm"]["network"].items()}
    step = int(newest.stem.split("_")[1]) + 1000
    return save_checkpoint(run_dir / CHECKPOINTS, step, state, keep=3)


def test_a_newer_checkpoint_is_picked_up_and_a_broken_one_reported(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    viewer = make_viewer(run, agents=2, speed=60)
    viewer.reload_every_s = 0.05
    with TestClient(create_app(viewer)) as client, client.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["policies"][0] == "network" and "run" in hello["source"]
        first = next_message(ws, lambda m: m["type"] == "frame" and m["values_kind"] == "q")
        assert first["network"].startswith("ckpt_000000000064.pt") and first["driver"] == "network"
        path = newer_checkpoint(run, 3.0)
        reloaded = next_message(ws, lambda m: m["network"].startswith(path.name))
        assert reloaded["notice"] is None
        expected = load_checkpoint(path)["algorithm"]["network"]
        for name, tensor in viewer.simulation.network.network.state_dict().items():
            assert torch.equal(tensor, expected[name])
        (run / CHECKPOINTS / "ckpt_999999999999.pt").write_bytes(b"not a checkpoint")
        broken = next_message(ws, lambda m: m["notice"] is not None)
        assert "ckpt_999999999999.pt: not a readable townlet checkpoint" in broken["notice"]
        assert broken["network"].startswith(path.name)  # the last good network plays on
        assert next_message(ws, lambda m: m["tick"] > broken["tick"] + 2)


def test_a_run_without_checkpoints_plays_random_until_the_first(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "fresh"
    run.mkdir()
    for name in ("config.yaml", "level.yaml"):
        (run / name).write_text((run_dir / name).read_text())
    viewer = make_viewer(run, agents=1, speed=60)
    viewer.reload_every_s = 0.05
    with TestClient(create_app(viewer)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        waiting = next_message(ws, lambda m: m["type"] == "frame" and m["tick"] > 0)
        assert waiting["policy"] == "network" and waiting["driver"] == "random" and waiting["network"] is None
        (run / CHECKPOINTS).mkdir()
        source = list_checkpoints(run_dir / CHECKPOINTS)[-1]
        (run / CHECKPOINTS / source.name).write_bytes(source.read_bytes())
        assert next_message(ws, lambda m: m["driver"] == "network")["network"].startswith(source.name)


def test_a_checkpoint_file_is_played_as_it_is(run_dir: Path) -> None:
    checkpoint = list_checkpoints(run_dir / CHECKPOINTS)[-1]
    viewer = make_viewer(checkpoint, agents=1, policy="needs")
    assert viewer.watcher is None and viewer.source == f"checkpoint {checkpoint}"
    sim = viewer.simulation
    assert sim.policies[0] == "network" and sim.driver == "needs"
    assert sim.network_label == "ckpt_000000000064.pt (64 agent-steps)"


@pytest.mark.parametrize(("query", "status", "message"), [
    ("?agent=7", 400, "agent=7: this view has 2 agent(s); choose a number from 0 to 1"),
    ("?agent=-1", 400, "choose a number from 0 to 1"),
    ("?agent=1&speed=3", 400, "unknown query parameter(s) speed; allowed: agent"),
])
def test_bad_query_parameters_get_a_clear_error_page(query: str, status: int, message: str) -> None:
    with TestClient(create_app(level_viewer())) as client:
        response = client.get(f"/{query}")
    assert response.status_code == status and message in response.text
    assert "Traceback" not in response.text and response.headers["content-type"].startswith("text/html")


def test_pages_errors_and_static_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with TestClient(create_app(level_viewer()), raise_server_exceptions=False) as client:
        page = client.get("/?agent=1")
        assert page.status_code == 200 and '<svg id="grid"' in page.text
        assert client.get("/static/app.js").status_code == 200
        missing = client.get("/runs/nope")
        assert missing.status_code == 404 and "/runs/nope: nothing here; the live view is at /" in missing.text
        assert client.post("/").status_code == 405
        monkeypatch.setattr("townlet.serve.app.STATIC", tmp_path)  # the page's file gone: a server error
        broken = client.get("/")
    assert broken.status_code == 500 and "FileNotFoundError" in broken.text and "Traceback" not in broken.text


def test_the_real_server_streams_over_a_socket_and_refuses_a_busy_port(run_dir: Path) -> None:
    with LiveServer(make_viewer(run_dir, agents=2, speed=60)) as server:
        with urllib.request.urlopen(server.url) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + "?agent=2")
        assert refused.value.code == 400
        with connect(server.url.replace("http", "ws") + "ws") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            frames = [json.loads(ws.recv(timeout=10)) for _ in range(5)]
            assert [f["tick"] for f in frames] == sorted(f["tick"] for f in frames) and frames[-1]["tick"] >= 3
        port = int(server.url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            LiveServer(make_viewer("L0_minimal"), port=port)


@pytest.mark.parametrize(("args", "message"), [
    (["runs/nowhere"], "runs/nowhere: no such run directory, checkpoint file or level; levels: L0_minimal"),
    (["L0_minimal", "--policy", "network"], "is a level, with no trained network"),
    (["L0_minimal", "--policy", "needs-sweep"], "policy 'needs-sweep' is not available here; allowed: random, needs"),
    (["L0_minimal", "--agents", "65"], "--agents 65: choose 1 to 64"),
    (["L0_minimal", "--host", "no.such.host.invalid"], "--host no.such.host.invalid: not an address"),
])
def test_serve_command_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_train_with_serve_runs_the_view_beside_training_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "L0_minimal", "--steps", "64", "--agents", "16", "--out", str(out), "--quiet", "--serve",
        "--serve-port", str(port), "--set", "logging.tensorboard=false",
    ])
    assert result.exit_code == 0, result.output
    assert f"live view: http://127.0.0.1:{port}/" in result.output
    assert "townlet serve: run" in (out / "serve.log").read_text()  # the child served this run
    with pytest.raises(urllib.error.URLError):  # and stopped with training
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_train_with_serve_on_a_busy_port_stops_before_training(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["train", "L0_minimal", "--steps", "64", "--out", str(tmp_path / "r"),
                                          "--serve", "--serve-port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    assert not list_checkpoints(tmp_path / "r" / CHECKPOINTS)

