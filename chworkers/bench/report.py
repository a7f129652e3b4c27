"""The benchmark's results as a Markdown table (for people and docs/) and as JSON (for
CI history)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chworkers.bench.runner import Result

#: Version of the JSON document's layout.
JSON_FORMAT = 1


def number(value: float, unit: str) -> str:
    """``value`` the way the table shows it: 712k rows/s, 5.31M rows/s, 243 us, 1.25x."""
    if unit in ("x", "s"):
        return f"{value:.2f}"
    if unit.endswith("/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M"
        if value >= 1e4:
            return f"{value / 1e3:.0f}k"
        if value >= 1e3:
            return f"{value / 1e3:.1f}k"
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def ratio_text(result: Result) -> str:
    if result.ratio is None:
        return "" if result.versus is None else "-"
    text = f"{result.ratio:.2f}"
    if len(result.round_ratios) > 1:
        text += f" ({min(result.round_ratios):.2f}-{max(result.round_ratios):.2f})"
    return text


def target_text(result: Result) -> str:
    if result.target is None:
        return ""
    sign = ">=" if result.metric.better == "higher" else "<="
    verdict = "met" if result.meets_target else "MISSED"
    return f"{sign} {result.target:g}: {verdict}"


def table(results: Sequence[Result]) -> str:
    """A Markdown table: one line per case and metric, grouped by comparison; the ratio
    is the medians' (with the range of the paired per-round ratios)."""
    header = ["path", "unit", "median", "min", "max", "ratio (rounds)", "vs", "target"]
    lines: list[list[str]] = []
    group = None
    for r in results:
        if r.group != group:
            group = r.group
            lines.append([f"**{group}**", "", "", "", "", "", "", ""])
        unit = r.metric.unit if r.metric.name == "rate" else f"{r.metric.name} {r.metric.unit}"
        lines.append(
            [
                r.case,
                unit,
                number(r.median, r.metric.unit),
                number(r.low, r.metric.unit),
                number(r.high, r.metric.unit),
                ratio_text(r),
                r.versus or "",
                target_text(r),
            ]
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    right = {2, 3, 4}

    def render(row: list[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "| " + " | ".join(cells) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([render(header), rule, *(render(row) for row in lines)])


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and what else was loading it)."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def document(
    results: Sequence[Result],
    *,
    server: Mapping[str, Any],
    options: Mapping[str, Any],
    started: dt.datetime,
    seconds: float,
    load_before: Sequence[float],
) -> dict[str, Any]:
    """The JSON document ``--json`` writes."""
    from chworkers._version import __version__

    return {
        "format": JSON_FORMAT,
        "chworkers": __version__,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before]},
        "server": dict(server),
        "options": dict(options),
        "results": [
            {
                "group": r.group,
                "path": r.case,
                "metric": r.metric.name,
                "unit": r.metric.unit,
                "better": r.metric.better,
                "values": r.values,
                "median": r.median,
                "min": r.low,
                "max": r.high,
                "versus": r.versus,
                "ratio": r.ratio,
                "round_ratios": r.round_ratios,
                "target": r.target,
                "meets_target": r.meets_target,
            }
            for r in results
        ],
    }


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` whole or not at all (a temporary file renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
