"""Configuration files written from their data: TOML for nested dicts of scalars and
lists (``pipelines`` as ``[[arrays]]``), and data merged section by section."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document for nested dicts of scalars and lists; ``pipelines`` as [[arrays]]."""
    out: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            out.append(f"{key} = {_toml_value(value)}")
    for key, value in tables:
        name = f"{prefix}{key}"
        out.append(f"\n[{name}]")
        out.append(to_toml(value, f"{name}.").strip("\n"))
    for key, items in arrays:
        for item in items:
            out.append(f"\n[[{prefix}{key}]]")
            out.append(to_toml(item, f"{prefix}{key}.").strip("\n"))
    return "\n".join(line for line in out if line != "") + "\n"


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out
