"""Watch agents live in the browser: `townlet serve RUN_DIR | RUNS_DIR | LEVEL`, and beside training (`--serve`).

`Simulation` (sim.py) plays K agents and describes each tick as a JSON frame; `Viewer` (viewer.py) runs it in
a thread and fans frames out to the connected tabs; runs.py lists a directory of runs and keeps a bounded set
of their viewers alive; app.py is the web side (pages, websockets, error pages); launch.py resolves what to
show and starts the server, in the foreground or in a child process.
"""

from townlet.serve.app import LiveServer, ServeError, create_app, create_runs_app
from townlet.serve.launch import ViewerProcess, make_run_viewer, make_viewer, serve, serve_runs, start_beside
from townlet.serve.runs import RunsRoot, RunSummary, RunUnavailable, RunViewers, is_runs_root
from townlet.serve.sim import NETWORK, Simulation, SimulationError
from townlet.serve.viewer import CheckpointWatcher, Viewer

__all__ = [
    "NETWORK",
    "CheckpointWatcher",
    "LiveServer",
    "RunSummary",
    "RunUnavailable",
    "RunViewers",
    "RunsRoot",
    "ServeError",
    "Simulation",
    "SimulationError",
    "Viewer",
    "ViewerProcess",
    "create_app",
    "create_runs_app",
    "is_runs_root",
    "make_run_viewer",
    "make_viewer",
    "serve",
    "serve_runs",
    "start_beside",
]
