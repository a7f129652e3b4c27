"""What the embedded endpoint's TOO_MANY_PARTS check costs a streaming insert.

chDB's streaming insert swallows TOO_MANY_PARTS (and a few other codes the sink throws at
commit), so after each one the endpoint reads their counts in ``system.errors``
(``chworkers/embedded/swallowed.py``, ``error_counts`` before and ``swallowed_error`` after). This measures, in one chDB
process, a streaming insert of ``--rows`` JSONEachRow rows without the check and with it
(the same function the endpoint runs), and with a ``SELECT 1`` instead (what any query
costs), in interleaved rounds, and reports the median microseconds per insert of each.

Run: ``.venv/bin/python benchmarks/bench_insert_check.py [--inserts 300] [--rows 10]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from chworkers.embedded import engine, queries, swallowed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inserts", type=int, default=300)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as path:
        from pathlib import Path

        eng = engine.Engine(Path(path))
        conn = eng.connect()
        queries.run(conn, "CREATE TABLE t (n UInt64, s String) ENGINE = Memory")
        body = b"".join(b'{"n":%d,"s":"row %d"}\n' % (i, i) for i in range(args.rows))
        plain: list[float] = []
        floor: list[float] = []
        checked: list[float] = []

        def one(mode: str) -> None:
            before = swallowed.error_counts(conn) if mode == "check" else {}
            handle = conn.send_insert(b"INSERT INTO t", "JSONEachRow")
            conn.insert_append(handle, body)
            conn.insert_done(handle)
            if mode == "check":
                swallowed.swallowed_error(conn, before, int(time.time()))
            elif mode == "select 1":
                queries.run(conn, "SELECT 1")

        for _ in range(args.rounds):
            for mode, out in (("plain", plain), ("select 1", floor), ("check", checked)):
                started = time.perf_counter()
                for _ in range(args.inserts):
                    one(mode)
                out.append((time.perf_counter() - started) / args.inserts * 1e6)
        conn.close()
        eng.close()
    a, b = statistics.median(plain), statistics.median(checked)
    f = statistics.median(floor)
    print(f"streaming insert of {args.rows} rows, median of {args.rounds} rounds:")
    print(f"  without the check: {a:8.0f} us per insert")
    print(f"  with a SELECT 1:   {f:8.0f} us per insert (+{f - a:.0f} us: any query's cost)")
    print(f"  with the check:    {b:8.0f} us per insert (+{b - a:.0f} us, +{(b - a) / a:.0%})")


if __name__ == "__main__":
    main()
