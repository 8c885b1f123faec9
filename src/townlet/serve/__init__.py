"""Watch agents live in the browser: `townlet serve RUN_DIR | LEVEL`, and beside training (`--serve`).

`Simulation` (sim.py) plays K agents and describes each tick as a JSON frame; `Viewer` (viewer.py) runs it in
a thread and fans frames out to the connected tabs; app.py is the web side (page, websocket, error pages);
launch.py resolves what to show and starts the server, in the foreground or in a child process.
"""

from townlet.serve.app import LiveServer, ServeError, create_app
from townlet.serve.launch import ViewerProcess, make_viewer, serve, start_beside
from townlet.serve.sim import NETWORK, Simulation, SimulationError
from townlet.serve.viewer import CheckpointWatcher, Viewer

__all__ = [
    "NETWORK",
    "CheckpointWatcher",
    "LiveServer",
    "ServeError",
    "Simulation",
    "SimulationError",
    "Viewer",
    "ViewerProcess",
    "create_app",
    "make_viewer",
    "serve",
    "start_beside",
]
