"""The memory limit this process runs under: its cgroup's (systemd's ``MemoryMax=``, a
container's memory limit), read from ``/proc/self/cgroup`` and the cgroup filesystem.

Memory the supervisor keeps for later (the memory files of :mod:`chworkers.workers.sharedbuf`)
is charged to its cgroup like any other: under ``MemoryMax=`` it counts towards the limit
at which the kernel's OOM killer picks a process of the unit. :func:`memory_limit` lets
such a default be a fraction of what the unit allows.

cgroup v2 (one hierarchy): the lowest ``memory.max`` of the process's cgroup and its
ancestors (a slice's limit binds the units in it). cgroup v1: the memory controller's
``memory.limit_in_bytes`` of the same cgroups (about 2**63 means no limit). Whatever
cannot be read (not Linux, no cgroup filesystem, a cgroup namespace that hides its
path) counts as no limit.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["memory_limit"]

#: cgroup v1 writes "no limit" as the largest page-aligned 63-bit number.
_V1_UNLIMITED = 1 << 62


def memory_limit(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's cgroup in bytes, None when there is none (or
    it cannot be read). ``proc`` and ``root`` are for tests."""
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        return None
    found: list[int] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2's single hierarchy
            for base in (Path(root), Path(root) / "unified"):
                found += _limits(base, path, "memory.max")
        elif "memory" in controllers.split(","):
            found += _limits(Path(root) / "memory", path, "memory.limit_in_bytes")
    return min(found, default=None)


def _limits(base: Path, path: str, name: str) -> list[int]:
    """The limits set on ``path`` and each of its ancestors under ``base``."""
    out: list[int] = []
    here = PurePosixPath(path)
    for cgroup in (here, *here.parents):
        try:
            text = (base / cgroup.relative_to("/") / name).read_text().strip()
        except (OSError, ValueError):  # no such file (the root has none), a relative path
            continue
        if text.isdigit() and 0 < int(text) < _V1_UNLIMITED:
            out.append(int(text))
    return out
