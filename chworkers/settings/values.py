"""How a setting's value is read: from TOML, an environment variable or a flag.

Durations (``unit="seconds"``) accept ``30``, ``2.5``, ``"250ms"``, ``"5s"``, ``"2m"``,
``"1h"``; sizes (``unit="bytes"``) accept ``1048576``, ``"64MiB"``, ``"1GB"``; booleans
``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``; lists are TOML arrays or
comma-separated strings. A bad value is a :class:`~chworkers.errors.ConfigError` that
names the key, the value (``***`` for a secret) and what was expected.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from chworkers.errors import ConfigError

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2, "mi": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4,
}  # fmt: skip
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def invalid(key: str, value: Any, expected: str, source: str) -> ConfigError:
    """The error for ``key = value`` where ``expected`` was expected."""
    return ConfigError(
        f"{source}: {key} = {value!r} is invalid: expected {expected}",
        key=key,
        value=value,
        expected=expected,
        source=source,
    )


def parse_value(tp: Any, meta: Mapping[str, Any], raw: Any, key: str, source: str) -> Any:
    """Convert ``raw`` (a TOML value, or a string from the environment) to ``tp``."""
    if meta.get("secret"):
        try:
            return _parse_value(tp, meta, raw, key, source)
        except ConfigError as exc:  # an error message is printed and logged
            raise invalid(key, "***", exc.expected or "a string", source) from None
    return _parse_value(tp, meta, raw, key, source)


def _parse_value(tp: Any, meta: Mapping[str, Any], raw: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "null")):
            return None
        return parse_value(args[0], meta, raw, key, source)
    if origin is Literal:
        choices = typing.get_args(tp)
        value = raw.strip() if isinstance(raw, str) else raw
        if value not in choices:
            return _raise(key, raw, "one of " + ", ".join(repr(c) for c in choices), source)
        return value
    if origin in (tuple, frozenset):
        item = typing.get_args(tp)[0]
        if typing.get_origin(item) is tuple:
            return _parse_nested(item, meta, raw, key, source)
        items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if isinstance(items, (set, frozenset)):
            items = sorted(items)
        if not isinstance(items, (list, tuple)):
            return _raise(key, raw, f"a list of {plural(item)}", source)
        if item is int:
            try:
                parsed: list[Any] = [int(x) for x in items if not isinstance(x, bool)]
            except (TypeError, ValueError):
                return _raise(key, raw, "a list of integers", source)
            if len(parsed) != len(items):
                return _raise(key, raw, "a list of integers", source)
        elif all(isinstance(x, str) for x in items):
            parsed = list(items)
        else:
            return _raise(key, raw, f"a list of {plural(item)}", source)
        return origin(parsed)
    unit = meta.get("unit")
    if tp is bool:
        value = _parse_bool(raw)
        if value is None:
            return _raise(key, raw, "true or false", source)
        return value
    if tp in (int, float):
        value = _parse_number(tp, unit, raw)
        if value is None:
            expected = {
                "seconds": "a duration such as 30, 2.5, '250ms', '5s', '2m' or '1h'",
                "bytes": "a size such as 1048576, '64MiB' or '1GB'",
            }.get(unit or "", f"a{'n integer' if tp is int else ' number'}")
            return _raise(key, raw, expected, source)
        lo, hi = meta.get("minimum"), meta.get("maximum")
        if lo is not None and value < lo:
            return _raise(key, raw, f"a value >= {_bound(lo, unit)}", source)
        if hi is not None and value > hi:
            return _raise(key, raw, f"a value <= {_bound(hi, unit)}", source)
        return value
    if tp is str:
        if not isinstance(raw, str):
            return _raise(key, raw, "a string", source)
        return raw
    raise TypeError(f"unsupported setting type {tp!r} for {key}")


def _bound(bound: float, unit: str | None) -> str:
    """A setting's bound as a person reads it: 1048576 (1 MiB), never 1.04858e+06."""
    exact = str(int(bound)) if float(bound).is_integer() else repr(float(bound))
    if unit == "bytes" and float(bound).is_integer():
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if bound >= size and bound % size == 0:
                return f"{exact} ({int(bound) // size} {name})"
    return exact


def plural(item: Any) -> str:
    """How a list's items are named in messages and docs."""
    if typing.get_origin(item) is tuple:
        return f"lists of {plural(typing.get_args(item)[0])}"
    return "integers" if item is int else "strings"


def _parse_nested(item: Any, meta: Mapping[str, Any], raw: Any, key: str, source: str) -> Any:
    """A list of lists (``[["a1", "a2"], ["b1"]]``); from the environment, the inner
    lists separated by ``;`` and their items by ``,`` (``"a1,a2;b1"``)."""
    groups = [g for g in raw.split(";") if g.strip()] if isinstance(raw, str) else raw
    if not isinstance(groups, (list, tuple)):
        return _raise(key, raw, f"a list of {plural(item)}", source)
    out = []
    for index, group in enumerate(groups):
        if isinstance(group, (list, tuple)) and not group:
            return _raise(
                f"{key}[{index}]",
                group,
                f"a non-empty list of {plural(typing.get_args(item)[0])}",
                source,
            )
        out.append(_parse_value(item, meta, group, f"{key}[{index}]", source))
    return tuple(out)


def _raise(key: str, value: Any, expected: str, source: str) -> Any:
    raise invalid(key, value, expected, source)


def _parse_bool(raw: Any) -> bool | None:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    return None


def _parse_number(tp: type, unit: str | None, raw: Any) -> float | int | None:
    if isinstance(raw, bool):
        return None
    value: float
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        pattern, units = (_SIZE, _SIZE_UNITS) if unit == "bytes" else (_DURATION, _DURATION_UNITS)
        m = pattern.match(raw)
        if m is None:
            return None
        suffix = m.group(2)
        if unit is None and suffix:
            return None
        factor = units[suffix.lower() if suffix else ("" if unit == "bytes" else None)]  # type: ignore[index]
        value = float(m.group(1)) * factor
    else:
        return None
    if tp is int:
        if value != int(value):
            return None
        return int(value)
    return value
