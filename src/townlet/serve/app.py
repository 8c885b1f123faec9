"""The web side of `townlet serve`: the page, its static files, the websocket that streams frames, error pages
that explain instead of showing a stack trace, and uvicorn on a socket bound before it starts.

One run (or checkpoint, or level) is served at `/` with its websocket at `/ws`; a runs root lists its runs at
`/` and shows each at `/run/<name>`, its websocket at `/run/<name>/ws`. The websocket protocol (JSON text
messages) is described in docs/serve.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from townlet.serve.runs import RunSummary, RunUnavailable, RunViewers
from townlet.serve.viewer import Client, Viewer, command_error

STATIC = Path(__file__).parent / "static"
QUERY_PARAMETERS = {"agent": "the agent to follow first, 0 to K-1"}


class ServeError(ValueError):
    """A target, option or address `townlet serve` cannot use; the message says which and why."""


def error_page(status: int, title: str, message: str, more_html: str = "",
               back: str = "Back to the live view") -> HTMLResponse:
    """A page that says what went wrong; `more_html` (already escaped) follows the message, e.g. links."""
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>townlet: "
        f"{html.escape(title)}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>"
        f"<body class=\"error-page\"><h1>{status} · {html.escape(title)}</h1>"
        f"<p id=\"error-message\">{html.escape(message)}</p>{more_html}<p><a href=\"/\">{html.escape(back)}</a></p>"
        "</body></html>"
    )
    return HTMLResponse(body, status_code=status)


def _bad_query(request: Request, agents: int, back: str = "Back to the live view") -> Response | None:
    """The error page for query parameters the live view does not take, else None."""
    unknown = sorted(set(request.query_params) - set(QUERY_PARAMETERS))
    if unknown:
        allowed = "; ".join(f"{k}: {v}" for k, v in QUERY_PARAMETERS.items())
        return error_page(400, "bad query parameter", f"unknown query parameter(s) {', '.join(unknown)}; "
                          f"allowed: {allowed}", back=back)
    agent = request.query_params.get("agent")
    if agent is not None and not (agent.isdigit() and int(agent) < agents):
        return error_page(400, "bad query parameter",
                          f"agent={agent}: this view has {agents} agent(s); choose a number from 0 to {agents - 1}",
                          back=back)
    return None


def _live_page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text())


async def _stream(websocket: WebSocket, viewer: Viewer) -> None:
    """One accepted websocket watching `viewer`: frames out, commands in, until the tab goes."""
    client = viewer.connect()
    sender = asyncio.create_task(_send_frames(websocket, client, viewer.hello_text))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            error = viewer.command(text) if text is not None else command_error("commands are JSON text")
            if error is not None:
                if client.frames.full():
                    client.frames.get_nowait()
                client.frames.put_nowait(error)
    finally:
        viewer.disconnect(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


def _error_handlers(
    not_found: Callable[[Request, Exception], Awaitable[Response]], back: str
) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Error pages instead of stack traces: `not_found` for 404, and any other refusal or failure said plainly."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_page(exc.status_code, "request refused", str(exc.detail), back=back)

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_page(500, "server error", f"{type(exc).__name__}: {exc}", back=back)

    return {404: not_found, HTTPException: http_error, Exception: server_error}


def create_app(viewer: Viewer) -> Starlette:
    """The Starlette app serving `viewer`: `/` (the page), `/static/*`, `/ws` (frames in, commands out)."""
    agents = viewer.simulation.num_agents

    async def index(request: Request) -> Response:
        return _bad_query(request, agents) or _live_page()

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await _stream(websocket, viewer)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(404, "not found", f"{request.url.path}: nothing here; the live view is at /")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        viewer.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            viewer.stop()

    return Starlette(
        routes=[Route("/", index), WebSocketRoute("/ws", stream), Mount("/static", StaticFiles(directory=STATIC))],
        exception_handlers=_error_handlers(not_found, "Back to the live view"),
        lifespan=lifespan,
    )


def create_runs_app(runs: RunViewers) -> Starlette:
    """The Starlette app for a runs root: `/` lists the runs, `/run/<name>` is a run's live view and
    `/run/<name>/ws` its websocket; an unknown name, one that would lead outside the root, or a run with no
    checkpoint to play gets an error page that says so and links the runs there are."""
    root = runs.root

    def run_links() -> str:
        listed = root.scan()
        if not listed:
            return f"<p>No runs in {html.escape(str(root.root))} yet.</p>"
        items = "".join(f"<li><a href=\"{run_url(r.name)}\">{html.escape(r.name)}</a></li>" for r in listed)
        return f"<p>The runs in {html.escape(str(root.root))}:</p><ul id=\"known-runs\">{items}</ul>"

    def unavailable(problem: RunUnavailable) -> Response:
        return error_page(problem.status, problem.title, problem.message, run_links(), back="All runs")

    def unknown(name: str) -> Response:
        return error_page(404, "unknown run", f"{name}: no run of that name in {root.root}", run_links(),
                          back="All runs")

    async def index(request: Request) -> Response:
        if request.query_params:
            return error_page(400, "bad query parameter", f"unknown query parameter(s) "
                              f"{', '.join(sorted(set(request.query_params)))}; the list of runs takes none",
                              back="All runs")
        return HTMLResponse(runs_page(root.root, root.scan(), runs))

    async def run_page(request: Request) -> Response:
        name = request.path_params["name"]
        run = root.find(name)
        if run is None:
            return unknown(name)
        bad = _bad_query(request, runs.agents, back="All runs")
        if bad is not None:
            return bad
        try:
            await runs.get(run)
        except RunUnavailable as problem:
            return unavailable(problem)
        return _live_page()

    async def run_stream(websocket: WebSocket) -> None:
        name = websocket.path_params["name"]
        await websocket.accept()
        run = root.find(name)
        try:
            if run is None:
                raise RunUnavailable(404, "unknown run", f"{name}: no run of that name in {root.root}")
            viewer = await runs.get(run)
        except RunUnavailable as problem:
            await websocket.send_text(command_error(problem.message))
            await websocket.close(code=4000 + problem.status)  # 4404, 4500, 4503: the page's status, for tools
            return
        await _stream(websocket, viewer)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(404, "not found", f"{request.url.path}: nothing here; the runs are listed at /",
                          run_links(), back="All runs")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runs.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            runs.stop()

    return Starlette(
        routes=[Route("/", index), Route("/run/{name}", run_page), WebSocketRoute("/run/{name}/ws", run_stream),
                Mount("/static", StaticFiles(directory=STATIC))],
        exception_handlers=_error_handlers(not_found, "All runs"),
        lifespan=lifespan,
    )


def run_url(name: str) -> str:
    return "/run/" + urllib.parse.quote(name, safe="")


def runs_page(root: Path, listed: list[RunSummary], runs: RunViewers) -> str:
    """The index of a runs root: one row per run, the most recently changed first, each linking its live view."""
    rows = []
    for run in listed:
        watchers = runs.watchers(run.name)
        live = "–" if watchers is None else f"playing, {watchers} tab(s) watching"
        steps = "no checkpoint yet" if run.steps is None else f"{run.steps:,}"
        level = run.level if run.problem is None else f"{run.level} ({run.problem})"
        modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.modified))
        rows.append(
            f"<tr class=\"run\" data-run=\"{html.escape(run.name)}\"><td><a href=\"{run_url(run.name)}\">"
            f"{html.escape(run.name)}</a></td><td>{html.escape(level)}</td><td>{html.escape(run.algorithm)}</td>"
            f"<td class=\"num\">{steps}</td><td>{modified}</td><td>{live}</td></tr>")
    table = (
        "<table id=\"runs\"><thead><tr><th>run</th><th>level</th><th>algorithm</th><th>agent-steps (newest "
        "checkpoint)</th><th>last modified</th><th>live view</th></tr></thead><tbody>" + "".join(rows)
        + "</tbody></table>"
        if rows else f"<p id=\"no-runs\">No runs in {html.escape(str(root))} yet: train one with "
        f"<code>townlet train LEVEL --out {html.escape(str(root / 'NAME'))}</code>, then reload this page.</p>"
    )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>townlet · runs</title>"
        "<link rel=\"icon\" href=\"/static/favicon.svg\"><link rel=\"stylesheet\" href=\"/static/style.css\">"
        f"</head><body class=\"runs-page\"><header><h1>townlet <span>runs</span></h1><span id=\"description\">"
        f"{html.escape(str(root))}: {len(listed)} run(s); each plays its newest checkpoint on a fresh world "
        f"(at most {runs.limit} at once)</span></header><main class=\"runs\">{table}</main></body></html>"
    )


async def _send_frames(websocket: WebSocket, client: Client, hello: str) -> None:
    """The only writer to one websocket: the level first, then whatever its queue holds."""
    await websocket.send_text(hello)
    while True:
        await websocket.send_text(await client.frames.get())


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), bound before uvicorn starts so a busy port is a
    clear error instead of a log line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ServeError(f"--host {host}: not an address to listen on ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _server(served: Viewer | RunViewers) -> uvicorn.Server:
    app = create_app(served) if isinstance(served, Viewer) else create_runs_app(served)
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on")
    return uvicorn.Server(config)


def run(served: Viewer | RunViewers, sock: socket.socket) -> None:
    """Serve one view or a runs root until Ctrl-C (uvicorn's signal handling, in the main thread)."""
    _server(served).run(sockets=[sock])


class LiveServer:
    """The server in a background thread, for tests and tools: `with LiveServer(viewer) as server: server.url`
    (or `LiveServer(run_viewers)` for a runs root)."""

    def __init__(self, served: Viewer | RunViewers, host: str = "127.0.0.1", port: int = 0) -> None:
        self.served = served
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._server = _server(served)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def viewer(self) -> Viewer:
        """The one view served (a single-view server's)."""
        assert isinstance(self.served, Viewer), "a runs root's server has a viewer per run: see .served.viewers"
        return self.served

    def __enter__(self) -> LiveServer:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise ServeError("the server stopped while starting")
            self._thread.join(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.sock.close()
