"""Typed, layered configs: dataclass defaults ← preset or YAML file ← ``key=value`` overrides.

A config class is a dataclass whose fields are declared with :func:`opt`, so each carries a
one-line doc. Validation lives in the class's ``__post_init__`` and raises
:class:`InstructSDError`; unknown keys and badly typed values are refused with the key named.

A field may itself be a config class (a group of settings, e.g. TrainConfig's ``validation``):
YAML gives it as a mapping (``validation: {num_inference_steps: 20}``; keys left out keep their
defaults, and a file's mapping is merged with the overrides'), ``key=value`` as a dotted key
(``validation.num_inference_steps=20``) or a whole flow mapping, and the saved config nests it
with a doc line per key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from instructsd.errors import InstructSDError
from instructsd.files import atomic_write_text

T = TypeVar("T")


def opt(default: Any, doc: str) -> Any:
    """Declare a config field with its default and a one-line doc."""
    if dataclasses.is_dataclass(default):  # a nested config: each instance gets its own copy
        return dataclasses.field(default_factory=lambda: dataclasses.replace(default), metadata={"doc": doc})
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


def _is_config(hint: Any) -> bool:
    """True for a nested config class (a dataclass type)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def keys(cls: type) -> list[str]:
    """Every settable key of ``cls``, nested ones dotted (``validation.num_inference_steps``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        out += [f"{f.name}.{k}" for k in keys(hints[f.name])] if _is_config(hints[f.name]) else [f.name]
    return out


def _moved(cls: type, key: str, source: str) -> None:
    """Refuse a key the class renamed (its ``MOVED`` map: old key -> new key), naming the new one."""
    new = getattr(cls, "MOVED", {}).get(key)
    if new:
        raise InstructSDError(f"config key '{key}' is now '{new}' (issue 13); rename it in {source}")


def presets() -> dict[str, Path]:
    """Named presets shipped in ``instructsd/configs/*.yaml``."""
    folder = resources.files("instructsd") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


# How a config value is read (issue 11, item 4): by the field's declared type, never by what
# the text happens to look like. YAML alone gets this wrong: it reads ``no`` as False and
# ``123`` as an int whatever the field holds, so ``mixed_precision=no`` used to be refused.
_NONE_WORDS = ("null", "none", "~", "")
"""Override text that means None, for Optional fields only (case-insensitive)."""
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
"""Override text a bool field accepts (case-insensitive)."""
_YAML11_BOOLS = {
    True: ("yes", "Yes", "YES", "on", "On", "ON", "true", "True", "TRUE"),
    False: ("no", "No", "NO", "off", "Off", "OFF", "false", "False", "FALSE"),
}
"""The plain words PyYAML (YAML 1.1) turns into booleans; the only ones ever read back as text."""
_BOOL_TAG = "tag:yaml.org,2002:bool"


def _arms(hint: Any) -> tuple[list[Any], bool]:
    """A hint's non-None alternatives, and whether None is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def _wants_text(hint: Any) -> bool:
    """True for str fields and Literal-of-strings fields (optionally Optional)."""
    arms, _ = _arms(hint)
    return all(
        arm is str or (typing.get_origin(arm) is typing.Literal and all(isinstance(c, str) for c in typing.get_args(arm)))
        for arm in arms
    )


def _describe(hint: Any) -> str:
    """The expected type, in the words of an error message."""
    arms, optional = _arms(hint)
    names = []
    for arm in arms:
        if typing.get_origin(arm) is typing.Literal:
            names.append("one of " + ", ".join(map(str, typing.get_args(arm))))
        elif arm is bool:
            names.append("bool (true/false, yes/no, on/off, 1/0)")
        elif _is_config(arm):
            names.append("a mapping of " + ", ".join(f.name for f in dataclasses.fields(arm)))
        elif arm is float:
            names.append("a number")
        else:
            names.append(getattr(typing.get_origin(arm) or arm, "__name__", str(arm)))
    return " or ".join(names) + (" or null" if optional else "")


def _bool_as_text(value: bool, hint: Any, key: str) -> str:
    """A bool that reached a text field: YAML 1.1 read an unquoted yes/no/on/off as a boolean.

    For a Literal field the word is recovered when exactly one of its choices is such a word for
    that boolean (``mixed_precision: no`` → "no"); the spelling itself is lost by then, so for a
    plain str field (any word could have been meant) the user is asked to quote it.
    """
    arms, _ = _arms(hint)
    choices = [c for arm in arms if typing.get_origin(arm) is typing.Literal for c in typing.get_args(arm)]
    matches = [c for c in choices if c in _YAML11_BOOLS[value]]
    if len(matches) == 1:
        return matches[0]
    raise InstructSDError(
        f"config key '{key}': expected {_describe(hint)}, got the boolean {str(value).lower()} (YAML reads "
        f"unquoted yes/no/on/off/true/false as booleans); quote the word you mean, e.g. {key}: \"{_YAML11_BOOLS[value][0]}\""
    )


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint (converting int→float, list→tuple, bool words→bool)."""
    if _is_config(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise InstructSDError(f"config key '{key}': expected {_describe(hint)}, got {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        if isinstance(value, bool) and _wants_text(hint):
            return _coerce(_bool_as_text(value, hint, key), hint, key)
        errors = []
        for arm in typing.get_args(hint):
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key)
            except InstructSDError as err:
                errors.append(str(err))
        raise InstructSDError(errors[0] if len(errors) == 1 else f"config key '{key}': expected {_describe(hint)}, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and _wants_text(hint):
            value = _bool_as_text(value, hint, key)
        if value not in choices:
            raise InstructSDError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InstructSDError(f"config key '{key}': expected a list, e.g. [a, b], got {value!r}")
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value] if inner is not Any else list(value)
        return tuple(items) if tuple in (origin, hint) else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise InstructSDError(f"config key '{key}': expected a mapping, e.g. {{a: 1, b: 2}}, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
    if hint is str and isinstance(value, bool):
        _bool_as_text(value, hint, key)  # always raises: a plain str field cannot know the word
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        # YAML 1.1 reads "5e-5" (no dot) as a string; accept the float the user meant.
        try:
            value = float(value)
        except ValueError:
            raise InstructSDError(f"config key '{key}': expected a number, got {value!r}") from None
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise InstructSDError(f"config key '{key}': expected a finite number, got {value!r}")
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise InstructSDError(f"config key '{key}': expected {_describe(hint)}, got {value!r}")
    return value


def _from_text(raw: str, hint: Any, key: str) -> Any:
    """Read one ``key=value`` override's text as the field's type (before :func:`_coerce` checks it).

    str and Literal-of-strings fields take the text verbatim; bool fields a word of
    ``_BOOL_WORDS``; int and float fields a number (``5e-5`` included); Optional fields also
    null/none/~/empty; lists and mappings YAML flow syntax (``[a, b]``, ``{a: 1}``).
    """
    arms, optional = _arms(hint)
    expected = _describe(hint)
    if optional and raw.strip().lower() in _NONE_WORDS:
        return None
    if len(arms) > 1:
        for arm in arms:
            try:
                return _coerce(_from_text(raw, arm, key), arm, key)
            except InstructSDError:
                continue
        raise InstructSDError(f"config key '{key}': expected {expected}, got {raw!r}")
    (arm,) = arms
    if _wants_text(arm):
        return raw
    if typing.get_origin(arm) is typing.Literal:
        return next((c for c in typing.get_args(arm) if str(c) == raw.strip()), raw)
    if arm is bool:
        word = raw.strip().lower()
        if word not in _BOOL_WORDS:
            raise InstructSDError(f"config key '{key}': expected {expected}, got {raw!r}")
        return _BOOL_WORDS[word]
    if arm in (int, float):
        try:
            return arm(raw.strip())
        except ValueError:
            raise InstructSDError(f"config key '{key}': expected {expected}, got {raw!r}") from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        shape = typing.get_origin(arm) or arm
        example = f"{key}={{a: 1, b: 2}}" if shape is dict or _is_config(shape) else f"{key}=[a, b]"
        raise InstructSDError(
            f"config key '{key}': {raw!r} is not valid YAML flow syntax ({_yaml_problem(err)}); "
            f"expected {expected}, e.g. {example}"
        ) from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: its problem and, when known, where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build ``cls`` from a mapping, refusing unknown keys and mistyped values.

    A nested config field takes a mapping (or an instance); ``prefix`` spells where a nested
    class sits (``validation.``), so messages name the key as the user writes it.
    """
    return cls(**typed_fields(cls, data, source, prefix))


def typed_fields(cls: type, data: dict[str, Any], source: str = "config", prefix: str = "") -> dict[str, Any]:
    """``data`` as ``cls``'s fields: unknown keys refused, each value read as its field's type.

    For ``dataclasses.replace(cfg, **typed_fields(type(cfg), changes))`` where the changes come
    from a file (a recipe's mapping of TrainConfig keys), so they are checked like the file itself.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        _moved(cls, unknown[0], source)
        raise InstructSDError(
            f"unknown config key '{prefix}{unknown[0]}' in {source}; known keys: {', '.join(prefix + k for k in keys(cls))}"
        )
    return {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}


def _field_hint(cls: type, key: str) -> Any:
    """The type of a (possibly dotted) key of ``cls``; unknown keys are refused, listing the known ones."""
    hint: Any = cls
    for part in key.split("."):
        fields = {f.name for f in dataclasses.fields(hint)} if _is_config(hint) else set()
        if part not in fields:
            _moved(cls, key, "the key=value overrides")
            raise InstructSDError(
                f"unknown config key '{key}' in the key=value overrides; known keys: {', '.join(sorted(keys(cls)))}"
            )
        hint = typing.get_type_hints(hint)[part]
    return hint


def merge(base: dict[str, Any], extra: dict[str, Any], cls: type) -> dict[str, Any]:
    """``base`` updated by ``extra`` for config ``cls``: a nested config's keys merge layer over layer;
    any other value, a plain mapping field such as ``task_weights`` included, is replaced whole."""
    out = dict(base)
    hints = typing.get_type_hints(cls)
    for key, value in extra.items():
        hint = hints.get(key)
        both = _is_config(hint) and isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = merge(out[key], value, hint) if both else value
    return out


def parse_overrides(items: list[str], cls: type) -> dict[str, Any]:
    """Turn ``["learning_rate=1e-4", "mixed_precision=no"]`` into values typed by ``cls``'s fields.

    Each value is read as its field's declared type (see :func:`_from_text`), so a str field
    keeps ``yes`` or ``123`` as text and ``mixed_precision=no`` stays the string "no". A dotted
    key sets one key of a nested config: ``validation.scheduler=ddim`` gives
    ``{"validation": {"scheduler": "ddim"}}``.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InstructSDError(f"override '{item}' is not of the form key=value")
        *path, last = key.split(".")
        value = _from_text(raw, _field_hint(cls, key), key)
        nested = {last: value}
        for part in reversed(path):
            nested = {part: nested}
        out = merge(out, nested, cls)
    return out


def read_yaml(path: str | Path, cls: type | None = None) -> dict[str, Any]:
    """A config file's top-level mapping.

    With ``cls``: a top-level value that YAML 1.1 read as a boolean only because it is an
    unquoted yes/no/on/off/true/false word (``mixed_precision: no``) is given back as the word
    written, exactly as spelled, when ``cls`` declares that field as text (str or a Literal of
    strings). Quoted values, bool fields and values nested inside lists or mappings are left
    as YAML read them.
    """
    path = Path(path)
    if not path.is_file():
        raise InstructSDError(
            f"config '{path}' not found; pass a YAML file or one of the presets: {', '.join(sorted(presets()))}"
        )
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else {}
    except yaml.YAMLError as err:
        raise InstructSDError(f"config '{path}' is not valid YAML: {_yaml_problem(err)}") from None
    finally:
        loader.dispose()
    data = data or {}
    if not isinstance(data, dict):
        raise InstructSDError(f"config '{path}' must be a mapping of key: value")
    hints = typing.get_type_hints(cls) if cls is not None else {}
    for key_node, value_node in node.value if isinstance(node, yaml.MappingNode) else []:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        read_as = data.get(key) if key in hints else None
        # The word is restored only where it is what YAML turned into this very value (a key
        # given twice keeps YAML's last-wins reading).
        if (isinstance(read_as, bool) and value_node.tag == _BOOL_TAG and value_node.style is None
                and _wants_text(hints[key]) and value_node.value in _YAML11_BOOLS[read_as]):
            data[key] = value_node.value
    return data


def load_config(cls: type[T], source: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Resolve a config: defaults ← ``source`` (preset name or YAML path) ← overrides."""
    data: dict[str, Any] = {}
    label = "defaults"
    if source:
        named = presets()
        path = named.get(str(source), Path(source))
        data = read_yaml(path, cls)
        label = str(path)
    data = merge(data, parse_overrides(overrides or [], cls), cls)
    return from_dict(cls, data, source=label)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able values: tuples as lists, nested configs as mappings."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _yaml_lines(cfg: Any, indent: str = "") -> list[str]:
    """Each key under its doc comment; a nested config as an indented block with its own docs."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        lines.append(f"{indent}# {f.metadata.get('doc', '')}")
        if dataclasses.is_dataclass(value):
            lines += [f"{indent}{f.name}:", *_yaml_lines(value, indent + "  ")]
            continue
        value = list(value) if isinstance(value, tuple) else value
        # One-key flow mapping "{key: value}": drop only its own braces (value may be a mapping).
        lines.append(indent + yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()[1:-1])
    return lines


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically, with each field's doc as a comment."""
    lines = [f"# resolved {type(cfg).__name__} (instructsd)", *_yaml_lines(cfg)]
    return atomic_write_text(path, "\n".join(lines) + "\n")
