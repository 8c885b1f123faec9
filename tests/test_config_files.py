"""The YAML machinery levels and run configs share: deep merges, `extends:` chains, errors naming the file."""

from __future__ import annotations

import copy
import resource
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from townlet import config_files
from townlet.config_files import (
    ConfigError,
    deep_merge,
    format_validation_error,
    quote,
    read_extended_yaml,
    read_yaml,
    resolve_yaml_path,
    shorten,
)
from townlet.train.config import RunConfig, load_run_config, run_config_path
from townlet.world.config import LevelConfig, level_path, load_level


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


BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
) + "name: *a8\n"


def timed(call, *args):
    start = time.perf_counter()
    try:
        return call(*args), time.perf_counter() - start
    except ConfigError as e:
        return e, time.perf_counter() - start


def test_a_billion_laughs_file_is_refused_at_once(tmp_path: Path) -> None:
    """Nine levels of anchors, `name: *a8`: 10^9 values once expanded, from a file of about 500 bytes."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 600
    error, seconds = timed(read_yaml, path)
    assert isinstance(error, ConfigError) and seconds < 1.0
    assert str(error) == (f"{path}: YAML beyond the limits of a level or run file at line 6, column 10: more than "
                          "100,000 values (each alias *name counted as a copy of its value)")
    assert len(str(error)) < 500
    path.write_text("base: &b {lr: 0.1, gamma: 0.9}\nlearner: *b\nother: {<<: *b, lr: 0.2}\n")  # aliases in reason
    assert read_yaml(path) == {"base": {"lr": 0.1, "gamma": 0.9}, "learner": {"lr": 0.1, "gamma": 0.9},
                               "other": {"lr": 0.2, "gamma": 0.9}}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), r"not a UTF-8 text file \(byte 0x89 at offset 0\)"),
        (b"name: x\n" + b"#" * config_files.MAX_FILE_BYTES, "larger than 1,000,000 bytes"),
        (b"x: " + b"[" * 200 + b"]" * 200 + b"\n", "at line 1, column 67: collections nested more than 64 deep"),
        (b"x: [" + b"1, " * 100_001 + b"]\n", "at line 1, column .*: more than 100,000 values"),
        (b"x: &a [1, *a]\n", "refers to a collection that contains it"),
        (b"when: 2026-13-45\n", "cannot turn into a number or date"),
        (b"n: " + b"9" * 5000 + b"\n", "cannot turn into a number or date"),
        (b"a: 1\n---\nb: 2\n", "malformed YAML"),
        (b"a: \x00\n", "malformed YAML"),
    ],
)
def test_files_beyond_the_limits_are_clean_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: ") and len(str(err.value)) < 700


def test_unreadable_paths_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        read_yaml(tmp_path)
    with pytest.raises(ConfigError, match="no such thing file"):
        resolve_yaml_path("x" * 5000, None, lambda name: tmp_path / f"{name}.yaml", "thing")  # too long a name
    with pytest.raises(ConfigError, match="no such thing file"):
        resolve_yaml_path("a\x00b", None, lambda name: tmp_path / f"{name}.yaml", "thing")


def test_quoted_values_are_cut_short() -> None:
    assert quote("short") == "'short'"
    long = quote("x" * 10_000)
    assert len(long) < 250 and long.endswith("characters)")
    shared = [[0] * 9] * 9
    for _ in range(8):  # 9^10 values if walked in full: quoting must not walk them
        shared = [shared] * 9
    assert len(quote(shared)) <= 250
    assert shorten("y" * 300, 50) == "y" * 49 + "… (300 characters)"


class _Tiny(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=1)

    @model_validator(mode="after")
    def _check(self) -> _Tiny:
        if self.size == 7:
            raise ValueError("size: 7 is unlucky; allowed: any other")
        return self


def test_validation_errors_quote_values_cut_short_and_never_the_whole_file() -> None:
    with pytest.raises(ValidationError) as err:
        _Tiny.model_validate({"size": "z" * 100_000})
    message = format_validation_error("f.yaml", err.value, _Tiny)
    assert message.startswith("f.yaml: invalid _Tiny") and "size: Input should be a valid integer" in message
    assert len(message) < 500
    with pytest.raises(ValidationError) as err:
        _Tiny.model_validate({"size": 7})
    message = format_validation_error("f.yaml", err.value, _Tiny)
    assert message.splitlines()[1] == "  size: 7 is unlucky; allowed: any other"  # no "(got {...the file...})"


# ---------------------------------------------------------------------------------------------------- fuzzing
# Any input to the level and run loaders, whatever its bytes, is a loaded config or a ConfigError, quickly and
# without a large allocation.

_LEVEL_TEXTS = [p.read_text() for p in sorted(level_path("L1_full").parent.glob("*.yaml"))]
_RUN_TEXTS = [p.read_text() for p in sorted(run_config_path("L1_full").parent.glob("*.yaml"))]
_FIELDS = sorted(set(LevelConfig.model_fields) | set(RunConfig.model_fields) | {"extends"})
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from(["L1_full", "L0_minimal", "full", "partial", "dqn", "r2d2", "cpu", "energy", "Bed"]))
_TREES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_FIELDS) | st.text(max_size=8),
                                                                inner, max_size=4),
    max_leaves=25,
)
_SECONDS_PER_INPUT = 3.0
_PEAK_GROWTH_MB = 300


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    """A real level or run file with a few random edits: bytes dropped, repeated or replaced, text inserted."""
    text = draw(st.sampled_from(_LEVEL_TEXTS + _RUN_TEXTS)).encode()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        span = draw(st.integers(0, 40))
        kind = draw(st.sampled_from(["drop", "repeat", "replace", "insert"]))
        if kind == "drop":
            text = text[:at] + text[at + span:]
        elif kind == "repeat":
            text = text[:at] + text[at:at + span] * draw(st.integers(2, 50)) + text[at:]
        elif kind == "replace":
            text = text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at + 1:]
        else:
            text = text[:at] + draw(st.sampled_from([b"&a ", b"*a", b"[", b"{", b": ", b"\n  - ", b"!!python/none ",
                                                     b"extends: L1_full\n", b"- ", b"\t", b".nan", b"-1e999",
                                                     b"\xff", b"'", b"<<: *a\n"])) + text[at:]
    return text


_INPUTS = (
    st.binary(max_size=600)
    | st.text(st.characters(codec="utf-8"), max_size=600).map(str.encode)
    | _TREES.map(lambda tree: yaml.safe_dump(tree).encode())
    | st.dictionaries(st.sampled_from(_FIELDS), _TREES, max_size=6).map(lambda tree: yaml.safe_dump(tree).encode())
    | _mutated()
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=_INPUTS)
def test_fuzzed_level_and_run_files_load_or_fail_cleanly_and_quickly(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzzed.yaml"
        path.write_bytes(content)
        for load in (load_level, load_run_config):
            start = time.perf_counter()
            try:
                loaded = load(path)
            except ConfigError as e:
                assert str(e) and len(str(e)) < 20_000
            else:
                assert isinstance(loaded, LevelConfig | RunConfig)
            assert time.perf_counter() - start < _SECONDS_PER_INPUT
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak_mb - _PEAK_BEFORE_MB.setdefault("fuzz", peak_mb) < _PEAK_GROWTH_MB


_PEAK_BEFORE_MB: dict[str, float] = {}  # the process's peak memory after the first fuzzed input
