"""Reading configuration YAML files: errors that name the file and field, and `extends:` chains.

Level files (`townlet.world.config`) and run files (`townlet.train.config`) are both YAML mappings that may
start with `extends: NAME_OR_PATH` and override only what they change; this module is what they share, and
knows nothing about levels or runs.

Every file is read within limits, so that a hostile or broken file is a ConfigError within seconds rather than
minutes and gigabytes: at most `MAX_FILE_BYTES` of UTF-8 text, collections nested at most `MAX_DEPTH` deep, at
most `MAX_NODES` values once YAML aliases are expanded (a "billion laughs" file is a few hundred bytes whose
aliases expand to 10^9 values), and `extends:` chains of at most `MAX_EXTENDS` files. Values quoted in error
messages are cut to about `QUOTE_CHARS` characters.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 64
MAX_NODES = 100_000
QUOTE_CHARS = 200
MAX_EXTENDS = 16


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the file and field."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters (and never walking all of a huge or
    self-referencing structure): a message quotes what was wrong, not the whole file."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    return shorten(_REPR.repr(value), limit)


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` cut to about `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text):,} characters)"


# libyaml's parser where PyYAML has it (much faster on a large file), else PyYAML's own; same results
_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML document beyond this module's limits (nesting, values once aliases are expanded)."""


def _limit_error(message: str, event: yaml.Event) -> YAMLLimitError:
    return YAMLLimitError(None, None, message, event.start_mark)


def _check_limits(text: str) -> None:
    """One pass over the parser's events (no document is built): raise a YAMLError at the first collection
    nested deeper than MAX_DEPTH, at an alias inside its own anchor (a cycle), or as soon as the document holds
    more than MAX_NODES values counting every alias as a copy of its anchor's value. So a few hundred bytes
    of aliases that expand to 10^9 values are refused in microseconds, and a large file after at most
    MAX_NODES events."""
    sizes: dict[str, int] = {}  # anchor -> values in its node, aliases inside it expanded
    open_collections: list[list[Any]] = []  # [values so far, anchor] of each collection being read
    total = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_collections) >= MAX_DEPTH:
                raise _limit_error(f"collections nested more than {MAX_DEPTH} deep", event)
            open_collections.append([1, event.anchor])
            size = 1
        elif isinstance(event, yaml.CollectionEndEvent):
            done, anchor = open_collections.pop()
            if anchor is not None:
                sizes[anchor] = done
            if open_collections:
                open_collections[-1][0] += done
            continue
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for _, anchor in open_collections):
                raise _limit_error("an alias refers to a collection that contains it (a cycle)", event)
            size = sizes.get(event.anchor, 1)  # an undefined alias: the loader says so
        else:
            continue
        total += size
        if total > MAX_NODES:
            raise _limit_error(f"more than {MAX_NODES:,} values (each alias *name counted as a copy of its value)",
                               event)
        if open_collections and not isinstance(event, yaml.CollectionStartEvent):
            open_collections[-1][0] += size


def load_yaml_text(text: str) -> Any:
    """`yaml.safe_load` within this module's depth and size limits (`_check_limits` first). Raises
    yaml.YAMLError, or ValueError for a scalar YAML resolves but Python cannot build (a timestamp like
    2026-13-45, an integer of more than 4,300 digits)."""
    _check_limits(text)
    try:
        return yaml.load(text, Loader=_LOADER)  # CSafeLoader or SafeLoader: plain data only
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"a value YAML cannot turn into a number or date: {shorten(str(e))}") from None


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk `loc` through nested pydantic models to list the field names allowed where an extra key was."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(shorten(str(p), 60) for p in loc)


def format_validation_error(source: str, err: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: file, dotted field path, what was wrong and what is allowed. A value is quoted
    cut short (`quote`); a rule over several fields (a model validator: no single field) is its own message,
    which names the fields, without the whole file as "the value"."""
    lines = [f"{source}: invalid {model.__name__} ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = tuple(e["loc"])
        msg = shorten(e["msg"], 2 * QUOTE_CHARS).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            msg = "unknown field" + (f"; allowed fields: {', '.join(allowed)}" if allowed else "")
        if not loc and e["type"] == "value_error":  # a cross-field rule: its message starts with the field
            lines.append(f"  {msg}")
            continue
        # a rule of a whole section (its input the section's mapping) names what is wrong in its message
        whole = e["type"] == "value_error" and isinstance(e.get("input"), dict)
        shown = "" if whole or e["type"] in ("extra_forbidden", "missing") else f" (got {quote(e.get('input'))})"
        lines.append(f"  {_field_path(loc) or '<top level>'}: {msg}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping within this module's limits, with errors that name the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:  # a path with a NUL byte
        raise ConfigError(f"{quote(str(path))}: not a usable file path ({e})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_BYTES:,} bytes; level and run files are a few kB of YAML; is it the "
            "right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{raw[e.start]:02x} at offset {e.start}); level and run files "
            "are YAML text") from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as e:
        kind = "YAML beyond the limits of a level or run file" if isinstance(e, YAMLLimitError) else "malformed YAML"
        raise ConfigError(f"{path}: {kind}{yaml_problem(e)}") from None
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def yaml_problem(error: yaml.YAMLError, where: bool = True) -> str:
    """` at line L, column C: what is wrong` (without the place if not `where`) on one line: PyYAML's own
    message spans several, with a snippet."""
    if not isinstance(error, yaml.MarkedYAMLError):
        return f": {shorten(' '.join(str(error).split()), 2 * QUOTE_CHARS)}"
    mark = error.problem_mark or error.context_mark
    place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None and where else ""
    what = "; ".join(part for part in (error.context, error.problem) if part)
    return f"{place}: {shorten(what, 2 * QUOTE_CHARS)}"


def _exists(path: Path) -> bool:
    """`path.exists()`, False for names the OS cannot even look up (too long, a NUL byte)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_yaml_path(
    name_or_path: str | Path, relative_to: Path | None, packaged: Callable[[str], Path], what: str
) -> Path:
    """The packaged file `packaged(name)` for a bare name the package ships a file for, else a file path
    (relative to `relative_to`, if given) that must exist. `packaged(name)` is `<folder>/<name>.yaml`: the
    names the folder holds are the packaged ones, which the error lists; `what` names the kind of file."""
    text = str(name_or_path)
    if text and Path(text).name == text:  # a bare name (no folder) may be a packaged one
        shipped = packaged(text)
        if _exists(shipped) and shipped.is_file():
            return shipped
    path = Path(text)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not _exists(path):
        names = sorted(p.stem for p in packaged("_").parent.glob("*.yaml"))
        raise ConfigError(
            f"{shorten(text)}: no such {what} file, and not a packaged {what}; packaged {what}s: {', '.join(names)}"
        )
    return path


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, as a new dict (neither is changed): mappings merge key by key, everything
    else (lists too) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_extended_yaml(
    path: Path, resolve: Callable[[str, Path], Path], seen: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """A YAML mapping with its `extends:` chain applied (each file's fields `deep_merge`d over its parent's);
    `resolve(parent, folder)` finds the parent's file (e.g. a packaged name, or a path relative to the
    extending file's folder). A cycle of `extends:`, or a chain longer than MAX_EXTENDS files, is a
    ConfigError naming the files in it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends: cycle through {[str(p) for p in seen]}")
    if len(seen) >= MAX_EXTENDS:
        raise ConfigError(f"{path}: extends: a chain of more than {MAX_EXTENDS} files, from {seen[0]}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends: must be a packaged name or a file path, got {quote(parent)}")
    base = read_extended_yaml(resolve(parent, path.parent), resolve, (*seen, path.resolve()))
    return deep_merge(base, data)


__all__ = [
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "ConfigError",
    "YAMLLimitError",
    "deep_merge",
    "format_validation_error",
    "load_yaml_text",
    "quote",
    "read_extended_yaml",
    "read_yaml",
    "resolve_yaml_path",
    "shorten",
    "yaml_problem",
]
