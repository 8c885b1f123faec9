"""The web side of `townlet serve`: the page, its static files, the websocket that streams frames, error pages
that explain instead of showing a stack trace, and uvicorn on a socket bound before it starts.

The websocket protocol (JSON text messages) is described in docs/serve.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from townlet.serve.viewer import Client, Viewer, command_error

STATIC = Path(__file__).parent / "static"
QUERY_PARAMETERS = {"agent": "the agent to follow first, 0 to K-1"}


class ServeError(ValueError):
    """A target, option or address `townlet serve` cannot use; the message says which and why."""


def error_page(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>townlet: "
        f"{html.escape(title)}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>"
        f"<body class=\"error-page\"><h1>{status} · {html.escape(title)}</h1>"
        f"<p id=\"error-message\">{html.escape(message)}</p><p><a href=\"/\">Back to the live view</a></p>"
        "</body></html>"
    )
    return HTMLResponse(body, status_code=status)


def create_app(viewer: Viewer) -> Starlette:
    """The Starlette app serving `viewer`: `/` (the page), `/static/*`, `/ws` (frames in, commands out)."""
    agents = viewer.simulation.num_agents

    async def index(request: Request) -> Response:
        unknown = sorted(set(request.query_params) - set(QUERY_PARAMETERS))
        if unknown:
            allowed = "; ".join(f"{k}: {v}" for k, v in QUERY_PARAMETERS.items())
            return error_page(400, "bad query parameter", f"unknown query parameter(s) {', '.join(unknown)}; "
                              f"allowed: {allowed}")
        agent = request.query_params.get("agent")
        if agent is not None and not (agent.isdigit() and int(agent) < agents):
            return error_page(400, "bad query parameter",
                              f"agent={agent}: this view has {agents} agent(s); choose a number from 0 to {agents - 1}")
        return HTMLResponse((STATIC / "index.html").read_text())

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
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

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(404, "not found", f"{request.url.path}: nothing here; the live view is at /")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_page(exc.status_code, "request refused", str(exc.detail))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_page(500, "server error", f"{type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        viewer.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            viewer.stop()

    return Starlette(
        routes=[Route("/", index), WebSocketRoute("/ws", stream), Mount("/static", StaticFiles(directory=STATIC))],
        exception_handlers={404: not_found, HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
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


def _server(viewer: Viewer) -> uvicorn.Server:
    config = uvicorn.Config(create_app(viewer), log_level="warning", ws="websockets-sansio", lifespan="on")
    return uvicorn.Server(config)


def run(viewer: Viewer, sock: socket.socket) -> None:
    """Serve until Ctrl-C (uvicorn's signal handling, in the main thread)."""
    _server(viewer).run(sockets=[sock])


class LiveServer:
    """The server in a background thread, for tests and tools: `with LiveServer(viewer) as server: server.url`."""

    def __init__(self, viewer: Viewer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.viewer = viewer
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self._server = _server(viewer)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True)

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
