"""Benchmark the connection pool and the cross-process leases.

Run: ``.venv/bin/python benchmarks/bench_pool.py`` (starts its own embedded ClickHouse).

1. Uncontended ``get_connection`` + ``release_connection`` (target: p50 <= 20 us,
   p99 <= 100 us).
2. 16 threads contending for 4 connections, each holding its connection for a real
   ``SELECT 1``: the longest wait must stay below ``acquire_timeout``, and the spread of
   acquisitions per thread (max / min) within 2x.
3. Cross-process lease round trip (``acquire`` + ``release`` from a worker process to the
   broker), and a leased ``get_connection`` + ``release_connection`` in that process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from typing import Any

import multiprocess

from chworkers import ConnectionPool, EmbeddedClickHouse, LeaseBroker, LeaseClient


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


def bench_uncontended(url: str, n: int) -> dict[str, float]:
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 4})
    get, release = pool.get_connection, pool.release_connection
    for _ in range(2000):  # warm up
        release(get())
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        conn = get()
        release(conn)
        samples.append(clock() - t0)
    pool.close()
    return {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99), "mean": statistics.fmean(samples)}


def bench_contended(url: str, seconds: float, acquire_timeout: float) -> dict[str, Any]:
    pool = ConnectionPool(
        url, {"min_connections": 4, "max_connections": 4, "acquire_timeout": acquire_timeout}
    )
    stop = threading.Event()
    counts = [0] * 16
    max_wait = [0.0] * 16
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                conn = pool.get_connection()
                max_wait[i] = max(max_wait[i], time.perf_counter() - t0)
                try:
                    conn.command("SELECT 1")
                finally:
                    pool.release_connection(conn)
                counts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    stats = pool.stats()
    pool.close()
    return {
        "acquisitions": sum(counts),
        "per_thread_min": min(counts),
        "per_thread_max": max(counts),
        "spread": max(counts) / max(1, min(counts)),
        "max_wait": max(max_wait),
        "p50_wait": stats.acquire_wait_p50,
        "p99_wait": stats.acquire_wait_p99,
        "timeouts": stats.timeouts,
        "errors": len(errors),
        "queries_per_second": sum(counts) / seconds,
    }


def _lease_child(client: LeaseClient, url: str, n: int, out: Any) -> None:
    for _ in range(200):
        client.acquire(5)
        client.release()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.acquire(5)
        client.release()
        samples.append(time.perf_counter() - t0)
    pool = ConnectionPool(url, {"min_connections": 1, "max_connections": 4}, lease=client)
    leased = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = pool.get_connection()
        pool.release_connection(conn)
        leased.append(time.perf_counter() - t0)
    pool.close()
    out.put(
        {
            "lease_p50": pct(samples, 0.5),
            "lease_p99": pct(samples, 0.99),
            "leased_pool_p50": pct(leased, 0.5),
            "leased_pool_p99": pct(leased, 0.99),
        }
    )


def bench_lease(url: str, n: int, method: str) -> dict[str, float]:
    ctx = multiprocess.get_context(method)
    broker = LeaseBroker(4, context=ctx)
    broker.start()
    out = ctx.Queue()
    p = ctx.Process(target=_lease_child, args=(broker.client("bench"), url, n, out))
    p.start()
    result: dict[str, float] = out.get(timeout=300)
    p.join()
    broker.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="uncontended iterations")
    parser.add_argument("--seconds", type=float, default=5.0, help="contended run length")
    parser.add_argument("--lease-n", type=int, default=5_000, help="lease round trips")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedClickHouse(tmp) as ch:
        print(f"embedded ClickHouse at {ch.url}")
        r = bench_uncontended(ch.url, args.n)
        print(
            f"uncontended get+release ({args.n}): p50 {us(r['p50'])}  p99 {us(r['p99'])}  "
            f"mean {us(r['mean'])}   (target p50 <= 20 us, p99 <= 100 us)"
        )
        c = bench_contended(ch.url, args.seconds, acquire_timeout=5.0)
        print(
            f"16 threads / 4 connections, {args.seconds:g} s of SELECT 1: "
            f"{c['acquisitions']} acquisitions ({c['queries_per_second']:.0f}/s), per thread "
            f"{c['per_thread_min']}..{c['per_thread_max']} (spread {c['spread']:.2f}x, target <= 2x), "
            f"wait p50 {us(c['p50_wait'])} p99 {us(c['p99_wait'])} max {c['max_wait'] * 1e3:.1f} ms "
            f"(acquire_timeout 5 s), timeouts {c['timeouts']}, errors {c['errors']}"
        )
        for method in ("fork", "spawn"):
            lr = bench_lease(ch.url, args.lease_n, method)
            print(
                f"cross-process lease acquire+release ({method}, {args.lease_n}): "
                f"p50 {us(lr['lease_p50'])}  p99 {us(lr['lease_p99'])};  leased pool "
                f"get+release: p50 {us(lr['leased_pool_p50'])}  p99 {us(lr['leased_pool_p99'])}"
            )


if __name__ == "__main__":
    main()
