"""Reading configuration YAML files: errors that name the file and field, and `extends:` chains.

Level files (`townlet.world.config`) and run files (`townlet.train.config`) are both YAML mappings that may
start with `extends: NAME_OR_PATH` and override only what they change; this module is what they share, and
knows nothing about levels or runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the file and field."""


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


def format_validation_error(source: str, err: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: file, dotted field path, what was wrong and what is allowed."""
    lines = [f"{source}: invalid {model.__name__} ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc) or "<top level>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            msg = "unknown field" + (f"; allowed fields: {', '.join(allowed)}" if allowed else "")
        got = e.get("input")
        shown = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
        lines.append(f"  {field}: {msg}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data


def resolve_yaml_path(
    name_or_path: str | Path, relative_to: Path | None, packaged: Callable[[str], Path], what: str
) -> Path:
    """The packaged file `packaged(name)` for a bare name the package ships a file for, else a file path
    (relative to `relative_to`, if given) that must exist. `packaged(name)` is `<folder>/<name>.yaml`: the
    names the folder holds are the packaged ones, which the error lists; `what` names the kind of file."""
    text = str(name_or_path)
    if text and Path(text).name == text:  # a bare name (no folder) may be a packaged one
        shipped = packaged(text)
        if shipped.is_file():
            return shipped
    path = Path(text)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.exists():
        names = sorted(p.stem for p in packaged("_").parent.glob("*.yaml"))
        raise ConfigError(
            f"{text}: no such {what} file, and not a packaged {what}; packaged {what}s: {', '.join(names)}"
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
    extending file's folder). A cycle of `extends:` is a ConfigError naming the files in it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends: cycle through {[str(p) for p in seen]}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: must be a packaged name or a file path, got {parent!r}")
    base = read_extended_yaml(resolve(parent, path.parent), resolve, (*seen, path.resolve()))
    return deep_merge(base, data)


__all__ = [
    "ConfigError",
    "deep_merge",
    "format_validation_error",
    "read_extended_yaml",
    "read_yaml",
    "resolve_yaml_path",
]
