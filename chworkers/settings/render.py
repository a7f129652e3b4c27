"""What is written from the declarations: ``chworkers config --defaults`` (a commented
TOML file), the Markdown reference in docs/configuration.md, and what a reload changed
(:func:`render_changes`, for the log; a password in a URL as ``***``, :func:`redact_url`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from chworkers.settings.declare import describe, env_name, hints_of, is_section, settings_fields


def render_defaults(
    cls: type[Any],
    prefix: str = "",
    *,
    header: str = "",
    exclude: frozenset[str] = frozenset(),
    env_for: Callable[[str], str] | None = None,
    table: str | None = None,
    commented: bool = False,
) -> str:
    """A commented TOML file with every default, derived from the declarations.

    ``env_for(key)`` names a key's environment variable (default: the daemon's own,
    ``CHWORKERS_<KEY>``; keys are given without ``table``); ``table`` is the TOML table
    the keys go in when it is not ``prefix``'s (``pipelines``: one of ``[[pipelines]]``).
    ``commented``: tables and keys are commented out too (``# key = default``), and the
    explanations then start with ``## `` so that they are not taken for keys.
    """
    lines: list[str] = [header] if header else []
    hints = hints_of(cls)
    plain = [f for f in settings_fields(cls, exclude) if not is_section(hints[f.name])]
    name_of = env_for or env_name
    say, off = ("## ", "# ") if commented else ("# ", "")
    if plain and (prefix or table):
        name = table or prefix.rstrip(".")
        lines.append(f"{off}[[{name}]]" if commented and "." not in name else f"{off}[{name}]")
    for f in plain:
        key = prefix + f.name
        lines.append(f"{say}{f.metadata.get('help', '')}")
        lines.append(f"{say}env: {name_of(key)}")
        default = f.default
        if f.metadata.get("secret"):
            lines.append(f'# {f.name} = ...   (or {f.name}_file = "/path/to/secret")')
        elif f.metadata.get("shown"):
            lines.append(f"# {f.name} = ...   (default: {f.metadata['shown']})")
        elif default is None:
            lines.append(f"# {f.name} =")
        else:
            lines.append(f"{off}{f.name} = {_toml(default)}")
        lines.append("")
    for f in settings_fields(cls, exclude):
        if is_section(hints[f.name]):
            inner = table + "." + f.name if table else None
            lines.append(
                render_defaults(
                    hints[f.name],
                    prefix + f.name + ".",
                    exclude=f.metadata.get("exclude", frozenset()),
                    env_for=env_for,
                    table=inner,
                    commented=commented,
                )
            )
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, frozenset)):
        items = sorted(value) if isinstance(value, frozenset) else value
        return "[" + ", ".join(_toml(v) for v in items) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_reference(cls: type[Any], env_for: Callable[[str], str] | None = None) -> str:
    """The Markdown reference table of every setting, derived from the declarations.

    ``env_for(key)`` names the environment variable when it is not the default one.
    """
    rows = [
        "| key | type | default | environment variable | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for info in describe(cls):
        if info.secret:
            default = "(secret)"
        elif info.shown:
            default = info.shown
        else:
            default = "" if info.default is None else f"`{_toml(info.default)}`"
        env = env_for(info.key) if env_for is not None else info.env
        help_text = info.help.replace("|", "\\|")
        if info.secret:
            help_text += f" Also `{info.key}_file` / `{env}_FILE`."
        type_name = info.type_name.replace("|", "\\|")  # a choice's "a | b" is one cell
        rows.append(f"| `{info.key}` | {type_name} | {default} | `{env}` | {help_text} |")
    return "\n".join(rows) + "\n"


def render_changes(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Each setting that differs between two instances of one settings dataclass, as
    ``"key old -> new"`` in declaration order (subsections by their dotted keys), its
    value as a person writes it: ``"30 s"``, ``"64 MiB"``, ``none``; a secret only as
    ``"(secret) changed"``, the password of a URL as ``***``. Fields that are not settings (internal state) are left out."""
    lines: list[str] = []
    if before == after:
        return lines
    for f in dataclasses.fields(before):
        if "help" not in f.metadata:
            continue
        old, new = getattr(before, f.name), getattr(after, f.name)
        if old == new:
            continue
        key = prefix + f.name
        if dataclasses.is_dataclass(old) and type(old) is type(new):
            lines += render_changes(old, new, key + ".")
        elif f.metadata.get("secret"):
            lines.append(f"{key} (secret) changed")
        else:
            unit = f.metadata.get("unit")
            shown_old, shown_new = (_shown(redact_urls(v), unit) for v in (old, new))
            if shown_old == shown_new:  # only a password in a URL changed
                lines.append(f"{key} {shown_new} (a password in it changed)")
            else:
                lines.append(f"{key} {shown_old} -> {shown_new}")
    return lines


def redact_urls(value: Any) -> Any:
    """A setting's value (a string, or a list of them) with the password of each URL in
    it as ``***`` (``clickhouse.url``): what is logged or printed must not carry it."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, tuple | list):
        return type(value)(redact_urls(v) for v in value)
    return value


def _shown(value: Any, unit: str | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if unit == "seconds" and isinstance(value, int | float):
        return f"{value:g} s"
    if unit == "bytes" and isinstance(value, int):
        for size, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if value >= size and value % size == 0:
                return f"{value // size} {name}"
        return f"{value} bytes"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | frozenset | list):
        return _toml(tuple(value) if not isinstance(value, frozenset) else value)
    if isinstance(value, str):
        return repr(value)
    return str(value)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user info or a ``password`` option) as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, qsep, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, has_pw, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if has_pw else netloc
    if query:
        query = "&".join(
            f"{part.partition('=')[0]}=***" if part.partition("=")[0] == "password" else part
            for part in query.split("&")
        )
    return f"{scheme}{sep}{netloc}{slash}{path}{qsep}{query}"
