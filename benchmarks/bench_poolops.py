"""What the worker-pool operations cost: recycling by memory, rolling restarts.

memcheck   Empty tasks through 2 workers with and without max_worker_memory (each worker
           then reads its RSS after tasks at a bounded rate): tasks/s, interleaved rounds,
           medians. The claim: a stream of tiny tasks pays nothing measurable.
rolling    A steady stream of 10 ms tasks through 4 workers; tasks/s in the second before
           a rolling restart, during it, and how long the restart took. The claim: the
           rate does not drop while each worker is replaced.

Run one at a time under the bench lock: flock /work/coord/bench.lock .venv/bin/python
benchmarks/bench_poolops.py --only memcheck
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from chworkers import Supervisor


def noop() -> None:
    return None


def sleep10ms() -> None:
    time.sleep(0.01)


def rate(sup: Supervisor, n: int) -> float:
    t0 = time.perf_counter()
    for f in [sup.call(noop) for _ in range(n)]:
        f.result(120)
    return n / (time.perf_counter() - t0)


def bench_memcheck(n: int, rounds: int, method: str) -> None:
    print(f"\n== memcheck: {n} empty tasks, 2 workers, {rounds} interleaved rounds")
    results: dict[str, list[float]] = {"no limit": [], "max_worker_memory": []}
    with (
        Supervisor(workers=2, start_method=method, queue_size=10_000) as plain,
        Supervisor(
            workers=2, start_method=method, queue_size=10_000, max_worker_memory="8GiB"
        ) as limited,
    ):
        rate(plain, 2000), rate(limited, 2000)  # warm up
        for _ in range(rounds):
            results["no limit"].append(rate(plain, n))
            results["max_worker_memory"].append(rate(limited, n))
    for name, runs in results.items():
        print(
            f"   {name:18} {statistics.median(runs):>9,.0f} tasks/s (runs: "
            + ", ".join(f"{r:,.0f}" for r in runs)
            + ")"
        )
    ratio = statistics.median(results["max_worker_memory"]) / statistics.median(results["no limit"])
    print(f"   ratio {ratio:.2f}; load average {os.getloadavg()[0]:.1f}")


def bench_rolling(seconds: float, method: str) -> None:
    print("\n== rolling: 10 ms tasks through 4 workers, a rolling restart in the middle")
    done: list[float] = []
    stop = threading.Event()
    with Supervisor(workers=4, start_method=method, queue_size=200) as sup:

        def produce() -> None:
            while not stop.is_set():
                sup.call(sleep10ms).add_done_callback(lambda f: done.append(time.monotonic()))

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        time.sleep(seconds)
        started = time.monotonic()
        replaced = sup.restart_workers(timeout=120)
        ended = time.monotonic()
        time.sleep(seconds)
        stop.set()
        producer.join(10)

    def per_second(a: float, b: float) -> float:
        return sum(1 for t in done if a <= t < b) / (b - a)

    print(f"   replaced {replaced} workers in {ended - started:.2f} s")
    print(
        f"   tasks/s: before {per_second(started - seconds, started):,.0f}, during "
        f"{per_second(started, ended):,.0f}, after {per_second(ended, ended + seconds):,.0f} "
        f"(4 workers x 100/s at most); load average {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["memcheck", "rolling"])
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--start-method", default="forkserver")
    args = parser.parse_args()
    if args.only in (None, "memcheck"):
        bench_memcheck(args.tasks, args.rounds, args.start_method)
    if args.only in (None, "rolling"):
        bench_rolling(args.seconds, args.start_method)


if __name__ == "__main__":
    main()
