"""`townlet serve RUNS_DIR`: the index of a directory of runs, each run's live view made on its first visit and
shared, a bounded number of them alive, and error pages for unknown runs, names that lead outside the root and
runs with nothing to play."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from typer.testing import CliRunner
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.serve.test_app import next_message
from townlet.cli import app as cli
from townlet.serve import LiveServer, RunViewers, create_runs_app, is_runs_root, serve_runs
from townlet.train.rundir import CHECKPOINTS, list_checkpoints


def runs_app(root: Path, limit: int = 4, idle_stop_s: float = 300.0) -> tuple[Starlette, RunViewers]:
    runs = serve_runs(root, agents=2, speed=60, limit=limit)
    runs.idle_stop_s = idle_stop_s
    return create_runs_app(runs), runs


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def listed(page: str) -> list[str]:
    return re.findall(r'<tr class="run" data-run="([^"]+)"', page)


def test_a_runs_root_is_told_from_a_run_directory(runs_root: Path, tmp_path: Path) -> None:
    assert is_runs_root(runs_root)
    assert not is_runs_root(runs_root / "alpha") and not is_runs_root(runs_root / "fresh")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other" / "notes").mkdir(parents=True)
    assert not is_runs_root(tmp_path / "empty") and not is_runs_root(tmp_path / "other")
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "other")])
    assert result.exit_code == 2
    assert "neither a run directory (no config.yaml or checkpoints/) nor a directory of runs" in " ".join(
        result.output.split())


def test_the_index_lists_every_run_newest_first_and_runs_that_appear_later(runs_root: Path, run_dir: Path) -> None:
    later = time.time() + 100
    os.utime(list_checkpoints(runs_root / "beta" / CHECKPOINTS)[-1], (later, later))
    app, runs = runs_app(runs_root)
    algorithm = yaml.safe_load((run_dir / "config.yaml").read_text())["algorithm"]
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert listed(page.text)[0] == "beta" and sorted(listed(page.text)) == ["alpha", "beta", "fresh", "gamma"]
        rows = dict(zip(listed(page.text), page.text.split('<tr class="run"')[1:], strict=True))
        for name in ("alpha", "beta", "gamma"):
            assert f'<a href="/run/{name}">{name}</a>' in rows[name]
            assert f"<td>L0_minimal</td><td>{algorithm}</td><td class=\"num\">64</td>" in rows[name]
        assert "no checkpoint yet" in rows["fresh"] and time.strftime("%Y-%m-%d", time.localtime(later)) in rows["beta"]
        assert runs.made == 0 and not runs.viewers  # listing plays nothing

        shutil.copytree(run_dir, runs_root / "delta")  # a run that starts after the server
        assert "delta" in listed(client.get("/").text)
        refused = client.get("/?sort=name")
        assert refused.status_code == 400 and "unknown query parameter(s) sort; the list of runs takes none" in refused.text


def test_unknown_runs_and_names_that_lead_outside_the_root_get_a_404_page(runs_root: Path, run_dir: Path,
                                                                         tmp_path: Path) -> None:
    shutil.copytree(run_dir, tmp_path / "outside")
    (runs_root / "escape").symlink_to(tmp_path / "outside")  # a run, but outside the root
    (runs_root / "same").symlink_to(runs_root / "alpha")  # inside: shown
    shutil.copytree(run_dir, runs_root / ".hidden")
    app, runs = runs_app(runs_root)
    with TestClient(app) as client:
        index = listed(client.get("/").text)
        assert "same" in index and "escape" not in index and ".hidden" not in index
        unknown = client.get("/run/nope")
        assert unknown.status_code == 404 and "404 · unknown run" in unknown.text
        assert f"nope: no run of that name in {runs_root}" in unknown.text
        for name in ("alpha", "beta", "fresh", "gamma", "same"):
            assert f'<li><a href="/run/{name}">{name}</a></li>' in unknown.text
        for path in ("/run/escape", "/run/..%2F..", "/run/%2E%2E", "/run/..%2Foutside", "/run/.hidden",
                     "/run/%2E%2E%2F%2E%2E%2Foutside", "/run/alpha%2F..%2F..%2Foutside", "/run/alpha/../../outside",
                     "/run/escape/ws"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert 'href="/run/alpha"' in response.text and "Traceback" not in response.text, path
        assert runs.made == 0


@pytest.mark.filterwarnings("ignore:skipped unreadable checkpoint")  # the server's log names mixed's damaged one
def test_a_run_with_no_checkpoint_to_play_gets_a_page_that_says_how_to_make_one(runs_root: Path, run_dir: Path) -> None:
    broken = runs_root / "broken"
    shutil.copytree(runs_root / "fresh", broken)
    (broken / CHECKPOINTS).mkdir()
    (broken / CHECKPOINTS / "ckpt_000000000064.pt").write_bytes(b"not a checkpoint")
    mixed = runs_root / "mixed"  # its newest checkpoint damaged, an older one good
    shutil.copytree(run_dir, mixed)
    (mixed / CHECKPOINTS / "ckpt_000000009999.pt").write_bytes(b"not a checkpoint")
    app, runs = runs_app(runs_root)
    with TestClient(app) as client:
        fresh = client.get("/run/fresh")
        assert fresh.status_code == 404 and "no checkpoint yet" in fresh.text
        assert "A run writes one every logging.checkpoint_every agent-steps" in fresh.text
        assert f"townlet train LEVEL --out {runs_root / 'fresh'}" in fresh.text
        damaged = client.get("/run/broken")
        assert damaged.status_code == 404 and "no loadable checkpoint" in damaged.text
        assert "ckpt_000000000064.pt: not a readable townlet checkpoint" in damaged.text
        assert not runs.viewers
        assert client.get("/run/mixed").status_code == 200
        viewer = runs.viewers["mixed"]
        assert viewer.simulation.network_label == "ckpt_000000000064.pt (64 agent-steps)"
        assert "ckpt_000000009999.pt" in viewer.watcher.error  # named on the page

        for query, message in [("?agent=2", "agent=2: this view has 2 agent(s); choose a number from 0 to 1"),
                               ("?speed=3", "unknown query parameter(s) speed; allowed: agent")]:
            response = client.get(f"/run/alpha{query}")
            assert response.status_code == 400 and message in response.text
        assert "alpha" not in runs.viewers  # a refused page plays nothing


def test_a_runs_simulation_is_made_on_its_first_visit_shared_and_bounded(runs_root: Path) -> None:
    app, runs = runs_app(runs_root, limit=2)
    with TestClient(app) as client:
        page = client.get("/run/alpha")
        assert page.status_code == 200 and '<svg id="grid"' in page.text and runs.made == 1
        alpha = runs.viewers["alpha"]
        assert alpha.running
        with client.websocket_connect("/run/alpha/ws") as one, client.websocket_connect("/run/alpha/ws") as two:
            hello = one.receive_json()
            assert hello["type"] == "hello" and hello["source"] == f"run {runs_root / 'alpha'}"
            assert two.receive_json() == hello
            frame = next_message(one, lambda m: m["type"] == "frame" and m["tick"] > 2)
            assert frame["driver"] == "network" and frame["network"].startswith("ckpt_000000000064.pt")
            next_message(two, lambda m: m["type"] == "frame" and m["tick"] >= frame["tick"])  # the same simulation
            assert runs.viewers["alpha"] is alpha and len(alpha.clients) == 2 and runs.made == 1
            assert "playing, 2 tab(s) watching" in client.get("/").text

            assert client.get("/run/beta").status_code == 200
            beta = runs.viewers["beta"]
            assert client.get("/run/gamma").status_code == 200  # the limit: beta, unwatched, makes room
            assert set(runs.viewers) == {"alpha", "gamma"} and runs.made == 3 and runs.retired == 1
            wait_until(lambda: not beta.running)
            with client.websocket_connect("/run/gamma/ws") as three:
                assert three.receive_json()["type"] == "hello"
                refused = client.get("/run/beta")  # both live ones watched: refused, not a third thread
                assert refused.status_code == 503 and "this server plays at most 2 runs at once" in refused.text
                assert "watching all of them (alpha, gamma)" in refused.text
                with client.websocket_connect("/run/beta/ws") as four:
                    assert "at most 2 runs" in four.receive_json()["message"]
                    with pytest.raises(WebSocketDisconnect) as closed:
                        four.receive_json()
                    assert closed.value.code == 4503
                assert runs.made == 3 and alpha.running
            with client.websocket_connect("/run/nope/ws") as unknown:
                assert "nope: no run of that name" in unknown.receive_json()["message"]
                with pytest.raises(WebSocketDisconnect) as closed:
                    unknown.receive_json()
                assert closed.value.code == 4404
    assert not alpha.running and not runs.viewers  # the server's end stops them all


def test_a_simulation_nobody_watches_for_a_while_is_stopped(runs_root: Path) -> None:
    app, runs = runs_app(runs_root, idle_stop_s=0.3)
    with TestClient(app) as client:
        client.get("/run/alpha")
        alpha = runs.viewers["alpha"]
        with client.websocket_connect("/run/alpha/ws") as ws:
            ws.receive_json()
            time.sleep(0.8)
            assert runs.viewers.get("alpha") is alpha  # watched: kept
            assert next_message(ws, lambda m: m["type"] == "frame" and m["tick"] > 2)
        wait_until(lambda: "alpha" not in runs.viewers)
        wait_until(lambda: not alpha.running)
        with client.websocket_connect("/run/alpha/ws") as ws:  # the next visit makes it again
            assert ws.receive_json()["type"] == "hello" and runs.made == 2 and runs.viewers["alpha"] is not alpha


def test_the_real_server_lists_runs_and_streams_a_runs_frames(runs_root: Path) -> None:
    with LiveServer(serve_runs(runs_root, agents=2, speed=60)) as server:
        with urllib.request.urlopen(server.url) as response:
            assert sorted(listed(response.read().decode())) == ["alpha", "beta", "fresh", "gamma"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "run/nope")
        assert missing.value.code == 404 and "unknown run" in missing.value.read().decode()
        base = server.url.replace("http", "ws")
        with connect(base + "run/gamma/ws") as ws:
            assert json.loads(ws.recv(timeout=10))["source"] == f"run {runs_root / 'gamma'}"
            ticks = [json.loads(ws.recv(timeout=10))["tick"] for _ in range(5)]
            assert ticks == sorted(ticks) and ticks[-1] >= 3
        with connect(base + "run/fresh/ws") as ws:
            assert "has no checkpoint yet" in json.loads(ws.recv(timeout=10))["message"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 4404


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "nope"], "--policy nope: allowed: network, random, needs"),
    (["--agents", "65"], "--agents 65: choose 1 to 64"),
])
def test_serve_command_errors_for_a_runs_root(runs_root: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", str(runs_root), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
