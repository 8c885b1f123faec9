"""Fixtures for the live view's tests, and the browser tests' skip: they need Debian's Chromium, which this
machine may lack; the summary then names the skipped tests and the command that installs the browser."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.train import runs
from townlet.train.watch import few_threads

CHROMIUM = Path(os.environ.get("TOWNLET_CHROMIUM", "/usr/bin/chromium"))  # Debian's; another path to try one
INSTALL_BROWSER = "apt-get install -y chromium"
ARTIFACTS = Path(os.environ.get("TOWNLET_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"no {CHROMIUM}; install it with: {INSTALL_BROWSER}")
    for item in items:
        if item.get_closest_marker("browser") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = [r.nodeid.rsplit("::", 1)[-1] for r in terminalreporter.stats.get("skipped", [])
               if "browser" in r.keywords]
    if skipped:
        terminalreporter.write_line(
            f"browser tests skipped, no {CHROMIUM}: {', '.join(skipped)}; install the browser with: {INSTALL_BROWSER}")


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The simulation thread steps a few agents: one torch thread is fastest, and leaves the other core free."""
    with few_threads("cpu"):
        yield


@pytest.fixture(scope="package")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny L0_minimal run with one checkpoint (an MLP that has not learnt anything yet)."""
    return runs.make_run(tmp_path_factory.mktemp("serve") / "run", steps=64)


@pytest.fixture
def runs_root(run_dir: Path, tmp_path: Path) -> Path:
    """A directory of runs: alpha, beta and gamma (copies of the tiny run, one checkpoint each) and fresh (its
    config and level, no checkpoint yet)."""
    root = tmp_path / "runs"
    for name in ("alpha", "beta", "gamma"):
        shutil.copytree(run_dir, root / name)
    (root / "fresh").mkdir()
    for name in ("config.yaml", "level.yaml"):
        shutil.copy(run_dir / name, root / "fresh" / name)
    return root
