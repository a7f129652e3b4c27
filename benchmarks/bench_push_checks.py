"""Measure what the push endpoint's body checks cost per request, for a large CSV body.

A push request's body is checked before it is spooled: is a body declared CSV or TSV
really JSON lines? That check needs the first line that is not blank, nothing more.
This script times it (and the Python memory it allocates, with tracemalloc) for a body
of ``--mib`` MiB of short CSV rows, the worst case for anything that splits the body
into lines.

Run: ``.venv/bin/python benchmarks/bench_push_checks.py [--mib 64]``. With
``PYTHONPATH`` pointing at an older checkout it measures that code.
"""

from __future__ import annotations

import argparse
import inspect
import time
import tracemalloc

from chworkers.daemon import pushbody


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="body size (default: 64)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    row = b"1234567,event-1234567,2026-12-01 15:00:00\n"
    body = row * (args.mib * 2**20 // len(row))
    check = pushbody.check_declared_format
    # Older code took the header and the records joined: (records, fmt, configured).
    joined = len(inspect.signature(check).parameters) == 3

    def run() -> None:
        if joined:
            check(b"" + body, "CSV", "CSV")  # type: ignore[call-arg]
        else:
            check(b"", body, "CSV", "CSV")

    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(
        f"declared-format check, {len(body) / 2**20:.0f} MiB CSV body: "
        f"{min(times) * 1000:.1f} ms (best of {args.rounds}), "
        f"{peak / 2**20:.1f} MiB allocated at the peak"
    )


if __name__ == "__main__":
    main()
