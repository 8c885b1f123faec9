"""Level YAML: packaged levels load; bad files fail naming the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from townlet.world import LEVEL_NAMES, ConfigError, load_level
from townlet.world.config import hour_is_open, level_path


@pytest.mark.parametrize("name", LEVEL_NAMES)
def test_packaged_levels_load(name):
    config = load_level(name)
    assert config.name == name
    assert load_level(level_path(name)) == config  # by path too


def test_levels_match_the_spec_table():
    assert load_level("L0_minimal").affordance_names == ["Bed", "HomeMeal", "Job"]
    assert load_level("L0_minimal").grid_size == 3
    assert load_level("L2_partial").layout == "random"
    assert load_level("L2_partial_fixed").observation.window_encoding == "presence"
    assert load_level("L3_temporal").temporal.start_hour == 6
    assert load_level("L1_full").max_steps == 500


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my_level.yaml"
    path.write_text(text)
    return path


def test_extends_overrides_only_what_it_names(tmp_path):
    path = write(tmp_path, "extends: L1_full\nname: tiny\ngrid_size: 8\nmeters:\n  energy: {start: 0.5, drain: 0.01, terminal: true}\n")
    config = load_level(path)
    assert config.meters["energy"].drain == 0.01
    assert config.meters["hygiene"].drain == 0.003  # merged from the parent
    assert config.affordance_names == load_level("L1_full").affordance_names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("extends: L1_full\nname: x\ngrid_size: [oops\n", "malformed YAML"),
        ("extends: L1_full\nname: x\ngravity: 9.8\n", "gravity: unknown field; allowed fields: name, description"),
        ("extends: L1_full\nname: x\nobservation: {view: full, colour: red}\n", "observation.colour: unknown field; allowed fields: view"),
        ("extends: L1_full\nname: x\ngrid_size: big\n", "grid_size: Input should be a valid integer"),
        ("extends: L1_full\nname: x\nmax_steps: 0\n", "max_steps: Input should be greater than or equal to 1"),
        ("extends: L1_full\nname: x\nobservation: {view: sideways}\n", "observation.view: Input should be 'full' or 'partial'"),
        ("extends: L1_full\nname: x\nmeters: {energy: {start: 1.5}}\n", "meters.energy.start: Input should be less than or equal to 1"),
        ("extends: L1_full\nname: x\nrewards: {mode: points}\n", "rewards.mode: Input should be 'milestone', 'survival' or 'shaped'"),
        ("extends: L1_full\nname: x\ngrid_size: 4\n", "is off the grid; x and y must be in [0, 3]"),
        ("extends: L1_full\nname: x\nmove_cost: {stamina: 0.1}\n", "move_cost.stamina"),
        ("extends: nowhere.yaml\nname: x\n", "no such level file"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_level_files_name_file_field_and_allowed_values(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_level(path)
    message = str(err.value)
    assert str(path) in message or "nowhere.yaml" in message
    assert expected in message


def test_semantic_checks(tmp_path):
    base = "extends: L1_full\nname: x\n"
    cases = {
        "layout: fixed\naffordances: [{name: Bed, cost: 5}]\n": "position: required when layout is 'fixed'",
        "affordances: [{name: Bed, position: [0, 0]}, {name: Bed, position: [1, 0]}]\n": "duplicate names",
        "affordances: [{name: A, position: [0, 0]}, {name: B, position: [0, 0]}]\n": "share the cell",
        "temporal: {day_length: 24, start_hour: 30}\n": "start_hour",
        "meters: {energy: {start: 1, terminal: false}, health: {start: 1, terminal: false}}\n": "terminal",
    }
    for text, expected in cases.items():
        with pytest.raises(ConfigError, match=expected):
            load_level(write(tmp_path, base + text))


def test_unknown_level_name_lists_the_packaged_ones():
    with pytest.raises(ConfigError, match="packaged levels: L0_minimal, L1_full"):
        load_level("L9_missing")


@pytest.mark.parametrize(
    ("hours", "hour", "is_open"),
    [(None, 3, True), ((8, 18), 8, True), ((8, 18), 18, False), ((18, 4), 23, True), ((18, 4), 4, False), ((5, 5), 1, True)],
)
def test_hour_is_open(hours, hour, is_open):
    assert hour_is_open(hours, hour) == is_open
