"""Typed configs: dataclasses loaded from YAML, with unknown keys as errors.

`load_config(path, cls, overrides)` reads YAML into the dataclass ``cls``, recursing into nested
dataclasses, ``list[Dataclass]`` and ``dict``; ``overrides`` are ``"a.b.c=value"`` strings
(values parsed as YAML), applied before conversion. A list element is addressed by its index
(``stages.0.lr=1e-4``) or, when its items have a ``name`` field, by that name
(``stages.supervised.lr=1e-4``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mvf.errors import INPUT_ERRORS, MvfError, file_error

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from plain data, raising `MvfError` on unknown or ill-typed keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MvfError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise MvfError(f"unknown config key '{key}' (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise MvfError(f"{where or 'config'}: {e}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for a in non_none:
            try:
                return _convert(a, value, where)
            except INPUT_ERRORS as e:
                errors.append(str(e))
        raise MvfError(errors[0])
    if _is_dataclass_type(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise MvfError(f"config key '{where}': expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}.{i}") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise MvfError(f"config key '{where}': expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise MvfError(f"config key '{where}': {value!r} is not one of {list(args)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MvfError(f"config key '{where}': expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MvfError(f"config key '{where}': expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise MvfError(f"config key '{where}': expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise MvfError(f"config key '{where}': expected a string, got {value!r}")
        return str(value)
    return value


def to_dict(cfg: Any) -> Any:
    """Plain-data (YAML-safe) form of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def apply_override(data: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override to plain config data, in place."""
    if "=" not in override:
        raise MvfError(f"--set {override}: expected key=value")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_index(node, part, key)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise MvfError(f"--set {key}: '{parts[i - 1]}' is not a section")


def _list_index(node: list, part: str, key: str) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise MvfError(f"--set {key}: no list item '{part}'")


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, raising `MvfError` naming the file on any problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise file_error(path, "config file not found") from None
    except OSError as e:
        raise file_error(path, f"cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise file_error(path, f"invalid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise file_error(path, "a config must be a YAML mapping")
    return data


def load_config(path: str | Path | None, cls: type[T], overrides: list[str] | None = None) -> T:
    """Load ``cls`` from YAML at ``path`` (or defaults when None), applying ``overrides``."""
    data = read_yaml(path) if path else {}
    for ov in overrides or []:
        apply_override(data, ov)
    try:
        return from_dict(cls, data)
    except INPUT_ERRORS as e:
        raise (file_error(path, str(e)) if path else e) from None
