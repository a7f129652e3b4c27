"""What is written from the declarations: ``chworkers config --defaults`` (a commented
TOML file) and the Markdown reference in docs/configuration.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chworkers.settings.declare import describe, env_name, hints_of, is_section, settings_fields


def render_defaults(
    cls: type[Any], prefix: str = "", *, header: str = "", exclude: frozenset[str] = frozenset()
) -> str:
    """A commented TOML file with every default, derived from the declarations."""
    lines: list[str] = [header] if header else []
    hints = hints_of(cls)
    plain = [f for f in settings_fields(cls, exclude) if not is_section(hints[f.name])]
    if plain and prefix:
        lines.append(f"[{prefix.rstrip('.')}]")
    for f in plain:
        key = prefix + f.name
        lines.append(f"# {f.metadata.get('help', '')}")
        lines.append(f"# env: {env_name(key)}")
        default = f.default
        if f.metadata.get("secret"):
            lines.append(f'# {f.name} = ...   (or {f.name}_file = "/path/to/secret")')
        elif f.metadata.get("shown"):
            lines.append(f"# {f.name} = ...   (default: {f.metadata['shown']})")
        elif default is None:
            lines.append(f"# {f.name} =")
        else:
            lines.append(f"{f.name} = {_toml(default)}")
        lines.append("")
    for f in settings_fields(cls, exclude):
        if is_section(hints[f.name]):
            lines.append(
                render_defaults(
                    hints[f.name],
                    prefix + f.name + ".",
                    exclude=f.metadata.get("exclude", frozenset()),
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
