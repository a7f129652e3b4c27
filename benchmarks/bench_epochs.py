"""What reading JSON epoch numbers by magnitude costs a worker (chworkers/clickhouse/epochs.py).

Records of four fields whose timestamp is an epoch number in milliseconds (each one is
rewritten to an ISO string), and the same records with an ISO string already (none is:
one regex scan of the batch). Reports records per second of CPU time (``process_time``:
what a worker spends, whatever else the machine runs), the best of ``--rounds``.

Run: ``.venv/bin/python benchmarks/bench_epochs.py [--records 100000]``
"""

from __future__ import annotations

import argparse
import time

from chworkers.clickhouse.epochs import rewrite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.records
    numbers = b"".join(
        b'{"ts":%d,"user_id":%d,"event":"click","value":1.5}\n' % (1796119200123 + i, i)
        for i in range(n)
    )
    strings = b"".join(
        b'{"ts":"2026-12-01T10:00:00Z","user_id":%d,"event":"click","value":1.5}\n' % i
        for i in range(n)
    )
    for name, data in (("epoch numbers", numbers), ("ISO strings", strings)):
        best = min(_cpu(data) for _ in range(args.rounds))
        print(f"{name:14} {n / best:>13,.0f} records/s of CPU ({best * 1e9 / n:,.0f} ns each)")


def _cpu(data: bytes) -> float:
    started = time.process_time()
    rewrite(data, ["ts"])
    return time.process_time() - started


if __name__ == "__main__":
    main()
