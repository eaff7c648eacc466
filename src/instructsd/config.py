"""Typed, layered configs: dataclass defaults ← preset or YAML file ← ``key=value`` overrides.

A config class is a dataclass whose fields are declared with :func:`opt`, so each carries a
one-line doc. Validation lives in the class's ``__post_init__`` and raises
:class:`InstructSDError`; unknown keys and badly typed values are refused with the key named.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from instructsd.errors import InstructSDError

T = TypeVar("T")


def opt(default: Any, doc: str) -> Any:
    """Declare a config field with its default and a one-line doc."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def presets() -> dict[str, Path]:
    """Named presets shipped in ``instructsd/configs/*.yaml``."""
    folder = resources.files("instructsd") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint (converting int→float and list→tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        errors = []
        for arm in typing.get_args(hint):
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key)
            except InstructSDError as err:
                errors.append(str(err))
        raise InstructSDError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise InstructSDError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InstructSDError(f"config key '{key}': expected a list, got {value!r}")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value] if inner is not Any else list(value)
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "5e-5" (no dot) as a string; accept the float the user meant.
        try:
            return float(value)
        except ValueError:
            raise InstructSDError(f"config key '{key}': expected a number, got {value!r}") from None
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise InstructSDError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping, refusing unknown keys and mistyped values."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InstructSDError(
            f"unknown config key '{unknown[0]}' in {source}; known keys: {', '.join(names)}"
        )
    values = {k: _coerce(v, hints[k], k) for k, v in data.items()}
    return cls(**values)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["lr=1e-4", "use_ema=true"]`` into typed values (parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InstructSDError(f"override '{item}' is not of the form key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InstructSDError(
            f"config '{path}' not found; pass a YAML file or one of the presets: {', '.join(sorted(presets()))}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InstructSDError(f"config '{path}' is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise InstructSDError(f"config '{path}' must be a mapping of key: value")
    return data


def load_config(cls: type[T], source: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Resolve a config: defaults ← ``source`` (preset name or YAML path) ← overrides."""
    data: dict[str, Any] = {}
    label = "defaults"
    if source:
        named = presets()
        path = named.get(str(source), Path(source))
        data.update(read_yaml(path))
        label = str(path)
    extra = parse_overrides(overrides or [])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InstructSDError(
            f"unknown config key '{unknown[0]}' in the key=value overrides; known keys: {', '.join(sorted(known))}"
        )
    data.update(extra)
    return from_dict(cls, data, source=label)


def to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically, with each field's doc as a comment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# resolved {type(cfg).__name__} (instructsd)"]
    docs = {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cfg)}
    for key, value in to_dict(cfg).items():
        lines.append(f"# {docs[key]}")
        # One-key flow mapping "{key: value}": drop only its own braces (value may be a mapping).
        lines.append(yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1])
    text = "\n".join(lines) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path


def describe(cls: type) -> str:
    """One line per key: name, default and doc — for ``--help``-style listings."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"{f.name} = {default!r}\n    {f.metadata.get('doc', '')}")
    return "\n".join(rows)
