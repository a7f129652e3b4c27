"""What a save of file positions costs with many files kept: time and bytes written.

A pipeline's positions hold ``--files`` files (10,000 by default, as a source tailing a
directory of many logs keeps); then ``--saves`` saves follow, each changing ``--changed``
of them (a batch's files), as the daemon does after each batch is spooled. Measured per
save: wall time, and bytes the process wrote (``wchar`` of /proc/self/io: what reached
write(2), whatever the code counts itself). Each round uses a fresh directory; rounds
repeat ``--rounds`` times and the medians are printed.

Run: ``.venv/bin/python benchmarks/bench_positions.py`` (a few seconds; ``--help``). To
compare with another checkout, run it with that checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from chworkers.daemon.checkpoints import Checkpoints


def written() -> int:
    """Bytes this process has passed to write(2) so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def position(i: int, offset: int) -> dict[str, int]:
    return {"dev": 2049, "ino": 1_000_000 + i, "offset": offset, "head": 12345, "head_len": 256}


def one_round(root: Path, files: int, saves: int, changed: int) -> tuple[list[float], float]:
    """(seconds per save, bytes written per save) after ``files`` positions are kept."""
    checkpoints = Checkpoints(root)
    paths = [f"/var/log/app/host-{i:05d}/service.log" for i in range(files)]
    checkpoints.commit("p", {p: position(i, 100) for i, p in enumerate(paths)})
    checkpoints.commit("p", {paths[0]: position(0, 101)})  # the first save compacts
    times: list[float] = []
    before = written()
    for n in range(saves):
        first = (n * changed) % files
        batch = {
            paths[(first + k) % files]: position((first + k) % files, 200 + n)
            for k in range(changed)
        }
        started = time.perf_counter()
        checkpoints.commit("p", batch)
        times.append(time.perf_counter() - started)
    return times, (written() - before) / saves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000, help="positions kept")
    parser.add_argument("--saves", type=int, default=200, help="saves per round")
    parser.add_argument("--changed", type=int, default=1, help="files changed per save")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where (default: a temporary directory)")
    args = parser.parse_args()
    medians, p90s, sizes = [], [], []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.rounds):
            times, per_save = one_round(Path(tmp) / str(r), args.files, args.saves, args.changed)
            medians.append(statistics.median(times))
            p90s.append(statistics.quantiles(times, n=10)[-1])
            sizes.append(per_save)
    print(
        f"{args.files} files kept, {args.changed} changed per save, {args.saves} saves x "
        f"{args.rounds} rounds (load {os.getloadavg()[0]:.2f}): median "
        f"{statistics.median(medians) * 1000:.2f} ms per save (p90 "
        f"{statistics.median(p90s) * 1000:.2f} ms), {statistics.median(sizes):,.0f} bytes "
        f"written per save"
    )


if __name__ == "__main__":
    main()
