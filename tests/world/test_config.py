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


@pytest.mark.parametrize(
    ("text", "field", "allowed"),
    [
        ("move_cost: {energy: -0.005}\n", "move_cost.energy", "greater than or equal to 0"),
        ("move_cost: {energy: 1.5}\n", "move_cost.energy", "less than or equal to 1"),
        ("meters: {hygiene: {start: 1.0, drain: -0.01}}\n", "meters.hygiene.drain", "greater than or equal to 0"),
        ("meters: {energy: {start: 0.0, terminal: true}}\n", "meters.energy", "allowed: (0, 1]"),
        ("meters: {mood: {start: .nan}}\n", "meters.mood.start", "finite number"),
        ("money_scale: .inf\n", "money_scale", "finite number"),
        ("rewards: {milestone: {death: -.inf}}\n", "rewards.milestone.death", "finite number"),
        ("affordances: [{name: Bed, position: [0, 0], effects: {energy: .nan}}]\n", "affordances.0.effects.energy",
         "finite number"),
        ("affordances: [{name: Bed, position: [0, 0], cost: -5}]\n", "affordances.0.cost", "greater than or equal to 0"),
        ("affordances: [{name: Bed, position: [0, 0], cost: 500}]\n", "affordances.0.Bed.cost", "allowed: 0 to 100"),
        ("affordances: [{name: '  ', position: [0, 0]}]\n", "affordances.0.name", "not blank"),
        ("affordances: [{name: Bed, position: [0, 0], hours: [8, 30]}]\n", "affordances.0.Bed.hours", "allowed: 0 to 24"),
        ("affordances: [{name: Bed, position: [0, 0], hours: [-1, 8]}]\n", "affordances.0.Bed.hours", "allowed: 0 to 24"),
        ("affordances: [{name: Bed, position: [0, 0], ticks: 0}]\n", "affordances.0.ticks", "greater than or equal to 1"),
        ("affordances: []\n", "affordances", "at least 1 item"),
        ("cascades: [{source: mood, target: energy, strength: 0.1}, {source: mood, target: energy, strength: 0.2}]\n",
         "cascades: mood -> energy given more than once", "one cascade"),
        ("cascades: [{source: mood, target: energy, strength: 1.5}]\n", "cascades.0.strength", "less than or equal to 1"),
        ("cascades: [{source: mood, target: energy, strength: 0.1, threshold: 0}]\n", "cascades.0.threshold",
         "greater than 0"),
        ("grid_size: 1\n", "grid_size", "greater than or equal to 2"),
        ("grid_size: 65\n", "grid_size", "less than or equal to 64"),
        ("max_steps: 10000000000\n", "max_steps", "less than or equal to 1000000"),
        ("name: ''\n", "name", "at least 1 character"),
        ("temporal: {day_length: 24, start_hour: -1}\n", "temporal.start_hour", "greater than or equal to 0"),
        ("temporal: {day_length: 24, completion_bonus: 2}\n", "temporal.completion_bonus", "less than or equal to 1"),
        ("modulation: {base: -0.1}\n", "modulation.base", "greater than or equal to 0"),
        ("observation: {view: partial, vision_range: 10}\ngrid_size: 4\naffordances: [{name: Bed, position: [0, 0]}]\n",
         "observation.vision_range", "allowed: 1 to 7"),
    ],
)
def test_values_without_meaning_are_refused_naming_file_field_and_allowed_values(tmp_path, text, field, allowed):
    path = write(tmp_path, "extends: L1_full\nname: x\n" + text)
    with pytest.raises(ConfigError) as err:
        load_level(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid LevelConfig"), message
    assert field in message and allowed in message, message
    assert len(message) < 600, message  # never the whole level as "the value"


def test_an_off_grid_affordance_or_bad_hours_is_not_followed_by_the_whole_level(tmp_path):
    for text in ("grid_size: 4\n", "affordances: [{name: Bed, position: [0, 0], hours: [8, 99]}]\n"):
        with pytest.raises(ConfigError) as err:
            load_level(write(tmp_path, "extends: L1_full\nname: x\n" + text))
        message = str(err.value)
        assert len(message.splitlines()) == 2 and len(message) < 400, message


def test_an_oversized_value_is_quoted_cut_short(tmp_path):
    path = write(tmp_path, "extends: L1_full\nname: " + "n" * 300_000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_level(path)
    message = str(err.value)
    assert "name: String should have at most 64 characters" in message and len(message) < 600
