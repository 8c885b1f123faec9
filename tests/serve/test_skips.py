"""Without Chromium the browser tests are skipped, and the summary says so in one line with the install command."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.serve import conftest


class Item:
    def __init__(self, name: str, browser: bool) -> None:
        self.name, self.browser, self.markers = name, browser, []

    def get_closest_marker(self, name: str):
        return object() if name == "browser" and self.browser else None

    def add_marker(self, marker) -> None:
        self.markers.append(marker)


def test_browser_tests_are_skipped_only_where_chromium_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    items = [Item("test_grid", True), Item("test_protocol", False)]
    monkeypatch.setattr(conftest, "CHROMIUM", tmp_path / "chromium")  # not there
    conftest.pytest_collection_modifyitems(None, items)
    assert [m.mark.name for m in items[0].markers] == ["skip"] and not items[1].markers
    assert "install it with: apt-get install -y chromium" in items[0].markers[0].mark.kwargs["reason"]
    (tmp_path / "chromium").touch()
    present = [Item("test_grid", True)]
    conftest.pytest_collection_modifyitems(None, present)
    assert not present[0].markers


def test_the_summary_names_the_skipped_browser_tests_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "CHROMIUM", Path("/nowhere/chromium"))
    reports = [SimpleNamespace(nodeid="tests/serve/test_browser.py::test_grid", keywords={"browser": 1}),
               SimpleNamespace(nodeid="tests/serve/test_browser.py::test_step", keywords={"browser": 1}),
               SimpleNamespace(nodeid="tests/world/test_x.py::test_other", keywords={})]
    lines: list[str] = []
    reporter = SimpleNamespace(stats={"skipped": reports}, write_line=lines.append)
    conftest.pytest_terminal_summary(reporter, 0, None)
    assert lines == ["browser tests skipped, no /nowhere/chromium: test_grid, test_step; "
                     "install the browser with: apt-get install -y chromium"]
    lines.clear()
    conftest.pytest_terminal_summary(SimpleNamespace(stats={"skipped": reports[2:]}, write_line=lines.append), 0, None)
    assert lines == []
