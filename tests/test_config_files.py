"""The YAML machinery levels and run configs share: deep merges, `extends:` chains, errors naming the file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from townlet.config_files import ConfigError, deep_merge, read_extended_yaml, read_yaml, resolve_yaml_path


def beside(name: str, folder: Path) -> Path:
    """The resolver of these tests: a parent named relative to the extending file's folder."""
    return folder / name


def test_deep_merge_merges_mappings_and_replaces_everything_else() -> None:
    base = {"a": {"x": 1, "y": {"deep": 1, "keep": 2}}, "items": [1, 2, 3], "n": 1, "gone": {"k": 1}}
    override = {"a": {"y": {"deep": 9}, "z": 3}, "items": [4], "n": {"now": "a mapping"}, "gone": None}
    before = copy.deepcopy((base, override))
    merged = deep_merge(base, override)
    assert merged == {
        "a": {"x": 1, "y": {"deep": 9, "keep": 2}, "z": 3},
        "items": [4],  # lists are replaced, not concatenated
        "n": {"now": "a mapping"},  # a scalar replaced by a mapping, and the other way round
        "gone": None,
    }
    assert (base, override) == before  # neither input is changed
    merged["a"]["y"]["keep"] = 0
    assert base["a"]["y"]["keep"] == 2  # the nested mappings that were merged are new ones


def test_a_file_extends_another_and_overrides_only_what_it_changes(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("name: base\nlearner: {lr: 0.1, gamma: 0.9}\nhidden: [8, 8]\n")
    (tmp_path / "sub").mkdir()
    mid = tmp_path / "sub" / "mid.yaml"
    mid.write_text("extends: ../base.yaml\nlearner: {lr: 0.01}\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: sub/mid.yaml\nname: top\nhidden: [4]\n")
    assert read_extended_yaml(top, beside) == {"name": "top", "learner": {"lr": 0.01, "gamma": 0.9}, "hidden": [4]}
    assert read_extended_yaml(mid, beside) == {"name": "base", "learner": {"lr": 0.01, "gamma": 0.9}, "hidden": [8, 8]}


def test_a_cycle_of_extends_names_the_files_in_it(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\nx: 1\n")
    b.write_text("extends: a.yaml\ny: 2\n")
    with pytest.raises(ConfigError, match="extends: cycle") as err:
        read_extended_yaml(a, beside)
    assert str(a) in str(err.value) and str(b) in str(err.value)
    a.write_text("extends: a.yaml\n")  # a file extending itself
    with pytest.raises(ConfigError, match=r"a\.yaml: extends: cycle"):
        read_extended_yaml(a, beside)


def test_a_missing_or_bad_parent_names_the_file(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read"):
        read_extended_yaml(child, beside)
    child.write_text("extends: [a, b]\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: extends: must be a packaged name or a file path"):
        read_extended_yaml(child, beside)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- list\n", "expected a mapping of fields at the top level, got list"),
        ("just a string\n", "expected a mapping of fields at the top level, got str"),
        ("", "expected a mapping of fields at the top level, got NoneType"),
        ("key: [unclosed\n", "malformed YAML"),
    ],
)
def test_read_yaml_errors_name_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: ")
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        read_yaml(tmp_path / "missing.yaml")


def test_resolve_prefers_a_packaged_name_then_a_path_and_lists_the_packaged_names(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("beta", "alpha"):
        (shipped / f"{name}.yaml").write_text("x: 1\n")
    (tmp_path / "mine.yaml").write_text("x: 2\n")

    def packaged(name: str) -> Path:
        return shipped / f"{name}.yaml"

    assert resolve_yaml_path("alpha", None, packaged, "thing") == shipped / "alpha.yaml"
    assert resolve_yaml_path("mine.yaml", tmp_path, packaged, "thing") == tmp_path / "mine.yaml"
    assert resolve_yaml_path(tmp_path / "mine.yaml", None, packaged, "thing") == tmp_path / "mine.yaml"
    with pytest.raises(ConfigError, match=r"^gamma: no such thing file, and not a packaged thing; packaged things: alpha, beta$"):
        resolve_yaml_path("gamma", tmp_path, packaged, "thing")
