"""Processes of a drill read from ``/proc``: which exist, which descend from a daemon,
which of those still run (the same process, not a reused pid)."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str
    #: Start time in clock ticks since boot: with the pid, who the process is (pids are
    #: reused, and quickly where pid_max is 32768).
    started: int


def process_table() -> dict[int, Proc]:
    """Every live process visible in /proc, by pid."""
    table: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            continue  # a zombie is dead; only its parent has not reaped it yet
        table[int(entry)] = Proc(
            int(entry), int(fields[1]), cmdline.decode(errors="replace"), int(fields[19])
        )
    return table


def descendants(pid: int) -> list[Proc]:
    """The processes below ``pid`` (children, grandchildren...), as /proc shows them now."""
    table = process_table()
    children: dict[int, list[Proc]] = collections.defaultdict(list)
    for proc in table.values():
        children[proc.ppid].append(proc)
    out: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def still_running(procs: Iterable[Proc]) -> list[Proc]:
    """Those of ``procs`` that still run (the same processes, not others with their pids)."""
    table = process_table()
    return [p for p in procs if (now := table.get(p.pid)) is not None and now.started == p.started]
