"""The live view in a real browser (headless Chromium driven by playwright): what the page shows is what the
server's own world holds, and its controls work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.conftest import ARTIFACTS, CHROMIUM
from townlet.serve import LiveServer, Simulation, Viewer, make_viewer, serve_runs
from townlet.train import load_run_config
from townlet.train.algos import build_network, make_greedy_policy
from townlet.world import METER_NAMES, ObsLayout, load_level

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def live(run_dir: Path) -> Iterator[LiveServer]:
    """The tiny L0_minimal run, four agents, played by its network at 30 ticks a second."""
    with LiveServer(make_viewer(run_dir, agents=4, speed=30)) as server:
        yield server


@pytest.fixture
def page(browser, live: LiveServer) -> Iterator:
    """A fresh tab on the running view, the simulation playing."""
    tab = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(live.url)
    tab.wait_for_function("document.getElementById('connection').dataset.state === 'live'", timeout=WAIT_MS)
    tab.wait_for_selector("#affordances .aff", timeout=WAIT_MS)
    if tab.inner_text("#pause") == "Resume":
        tab.click("#pause")
        tab.wait_for_function("document.getElementById('pause').textContent === 'Pause'", timeout=WAIT_MS)
    yield tab
    tab.close()
    assert not errors, errors


def shown_tick(page) -> int:
    return int(page.inner_text("#tick"))


def pause(page, viewer: Viewer) -> int:
    """Pause from the page and wait until it shows the simulation's last tick; that tick."""
    page.click("#pause")
    page.wait_for_function("document.getElementById('pause').textContent === 'Resume'", timeout=WAIT_MS)
    tick = viewer.simulation.tick  # the thread is idle now
    page.wait_for_function(f"Number(document.getElementById('tick').textContent) === {tick}", timeout=WAIT_MS)
    return tick


def test_the_grid_shows_the_levels_affordances_where_the_world_has_them(page, live: LiveServer) -> None:
    level = live.viewer.simulation.level
    tiles = page.locator("#affordances .aff")
    assert tiles.count() == level.num_affordances
    assert [tiles.nth(i).get_attribute("data-name") for i in range(tiles.count())] == level.affordance_names
    positions = [[int(tiles.nth(i).get_attribute(a)) for a in ("data-x", "data-y")] for i in range(tiles.count())]
    assert positions == [list(a.position) for a in level.affordances]
    assert page.locator("#grid .cell").count() == level.grid_size**2
    assert page.locator("#legend").inner_text().count("HomeMeal") == 1


def test_a_frame_arrives_and_the_tick_advances(page) -> None:
    page.wait_for_function("Number(document.getElementById('tick').textContent) > 0", timeout=WAIT_MS)
    first = shown_tick(page)
    page.wait_for_function(f"Number(document.getElementById('tick').textContent) > {first + 3}", timeout=WAIT_MS)
    assert page.locator("#actions .action.chosen").count() == 1  # the action taken, among the five


def test_pause_stops_the_tick_and_step_advances_exactly_one(page, live: LiveServer) -> None:
    viewer = live.viewer
    tick = pause(page, viewer)
    time.sleep(0.4)  # twelve ticks' time at 30 a second
    assert shown_tick(page) == tick == viewer.simulation.tick
    page.click("#step")
    page.wait_for_function(f"Number(document.getElementById('tick').textContent) === {tick + 1}", timeout=WAIT_MS)
    time.sleep(0.4)
    assert shown_tick(page) == viewer.simulation.tick == tick + 1
    assert page.inner_text("#pause") == "Resume"


def test_the_meters_shown_are_the_server_worlds(page, live: LiveServer) -> None:
    viewer = live.viewer
    pause(page, viewer)
    world = viewer.simulation.world
    while bool(world.steps[0] == 0):  # agent 0 just died: the world holds its next episode, the page its end
        tick = shown_tick(page)
        page.click("#step")
        page.wait_for_function(f"Number(document.getElementById('tick').textContent) > {tick}", timeout=WAIT_MS)
    expected = world.meters[0].tolist()
    money_scale = viewer.simulation.level.money_scale
    for name, value in zip(METER_NAMES, expected, strict=True):
        row = page.locator(f'#meters .meter[data-meter="{name}"]')
        assert float(row.get_attribute("data-value")) == pytest.approx(value, abs=1e-4)
        text = row.locator(".value").inner_text()
        shown = float(text.removeprefix("$")) / money_scale if name == "money" else float(text)
        assert shown == pytest.approx(value, abs=0.006)
    assert page.inner_text("#survival").startswith(f"{int(world.steps[0])} / ")


def test_following_another_agent_moves_the_followed_position(page, live: LiveServer) -> None:
    viewer = live.viewer
    pause(page, viewer)
    for _ in range(30):  # the agents may share a cell: step until one stands elsewhere than agent 0
        tick = shown_tick(page)
        rows = viewer.simulation.frame()["agents"]
        others = [i for i, a in enumerate(rows) if (a["x"], a["y"]) != (rows[0]["x"], rows[0]["y"])]
        if others:
            break
        page.click("#step")
        page.wait_for_function(f"Number(document.getElementById('tick').textContent) > {tick}", timeout=WAIT_MS)
    assert others
    grid = page.locator("#grid")
    assert (grid.get_attribute("data-agent-x"), grid.get_attribute("data-agent-y")) == (
        str(rows[0]["x"]), str(rows[0]["y"]))
    j = others[0]
    page.select_option("#agent", str(j))
    page.wait_for_function(f"document.getElementById('grid').dataset.follow === '{j}'", timeout=WAIT_MS)
    assert (grid.get_attribute("data-agent-x"), grid.get_attribute("data-agent-y")) == (
        str(rows[j]["x"]), str(rows[j]["y"]))
    assert page.inner_text("#followed") == str(j) and f"agent={j}" in page.url


def test_a_screenshot_of_a_recurrent_agent_on_a_partial_view(browser) -> None:
    """An LSTM network (untrained) on L3_temporal: the fog outside its view, the clock, its memory and the
    episodes it ended. The screenshot goes to the test artifacts (docs/serve.png is one of these)."""
    level = load_level("L3_temporal")
    config = load_run_config("L3_temporal", {})
    layout = ObsLayout.for_level(level)
    network = make_greedy_policy(config, layout, build_network(config, layout).state_dict())
    sim = Simulation(level, agents=4, network=network, network_label="an untrained LSTM (R2D2)")
    with LiveServer(Viewer(sim, "an untrained LSTM network", speed=60)) as server:
        tab = browser.new_page(viewport={"width": 1280, "height": 860})
        tab.goto(server.url)
        tab.wait_for_function("document.querySelectorAll('#survival-chart rect').length >= 4", timeout=30_000)
        pause(tab, server.viewer)
        assert tab.locator("#survival-chart rect").count() == len(sim.history)  # one bar per ended episode
        assert tab.locator("#memory").is_visible() and tab.inner_text("#clock").endswith("of 24")
        x, y = (int(tab.locator("#grid").get_attribute(f"data-agent-{a}")) for a in "xy")
        seen = sum(max(abs(cx - x), abs(cy - y)) <= 2 for cx in range(8) for cy in range(8))
        assert tab.locator("#fog .fog:visible").count() == level.grid_size**2 - seen  # shaded: out of view
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / "serve.png"
        tab.screenshot(path=str(path), full_page=True)
        tab.close()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_the_runs_index_opens_a_runs_live_view_and_an_unknown_run_shows_the_error_page(browser,
                                                                                        runs_root: Path) -> None:
    runs = serve_runs(runs_root, agents=2, speed=30)
    with LiveServer(runs) as server:
        tab = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(server.url)
        assert tab.locator("#runs tr.run").count() == 4 and not runs.viewers
        tab.click('#runs a[href="/run/beta"]')
        tab.wait_for_url(server.url + "run/beta", timeout=WAIT_MS)
        tab.wait_for_function("document.getElementById('connection').dataset.state === 'live'", timeout=WAIT_MS)
        tab.wait_for_function("Number(document.getElementById('tick').textContent) > 3", timeout=WAIT_MS)
        assert tab.inner_text("#level") == "L0_minimal" and tab.inner_text("#network").startswith("ckpt_000000000064")
        assert set(runs.viewers) == {"beta"} and len(runs.viewers["beta"].clients) == 1
        tab.click("#all-runs")
        tab.wait_for_url(server.url, timeout=WAIT_MS)
        tab.goto(server.url + "run/nope")
        assert tab.inner_text("h1") == "404 · unknown run"
        assert "nope: no run of that name" in tab.inner_text("#error-message")
        assert tab.locator("#known-runs a").count() == 4
        tab.close()
    assert not errors, errors
