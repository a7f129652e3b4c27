"""A saturated soak of ``chworkers run``: RSS of every process and the rate over time.

Starts an embedded endpoint (a process of its own) and ``chworkers run`` (another) with
one generator pipeline of ``--rows`` rows made as fast as the daemon takes them
(``generator_rate = 0``) into a MergeTree table, and samples every ``--every`` seconds:
the RSS of the daemon, of each of its child processes (workers, fork server) and of
the endpoint, and the table's row count (the rate is its growth between samples). The
daemon exits by itself once every row is in ClickHouse; the table must then hold
exactly ``--rows`` rows (deduplication tokens: no row twice, the spool: none lost).

Pick ``--rows`` for the duration you want: a short run with few rows gives the rate
(``--rows`` for 10 minutes is 600 times it).

It prints the samples, then per process the RSS after the warm-up (the first fifth of
the run) at its start, its end and its least-squares growth per minute, and the rate's
median, 10th and 90th percentiles over the same stretch. ``--json FILE`` writes it all.

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_soak.py --rows N``
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import clickhouse_connect

from chworkers.embedded import EmbeddedClickHouse

SCHEMA = "ts DateTime, user_id UInt64, event LowCardinality(String), value Float64, url String"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (by /proc's parent pids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def kind_of(pid: int, daemon: int) -> str:
    """resource-tracker; forkserver (a child of the daemon the workers fork from); worker."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return "gone"
    if b"resource_tracker" in cmd:
        return "resource-tracker"
    return "forkserver" if ppid == daemon and b"forkserver" in cmd else "worker"


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    num = sum((t - mean_t) * (v - mean_v) for t, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den * 60 if den else 0.0


def soak(
    rows: int, every: float, workers: int, max_rows: int, timeout: float, tmp: Path
) -> dict[str, object]:
    with EmbeddedClickHouse(tmp / "ch") as ch:
        config = f"""
state_dir = "{tmp / "state"}"
[clickhouse]
url = "{ch.url}"
[supervisor]
workers = {workers}
[metrics]
port = 0
[[pipelines]]
name = "soak"
source = "generator"
generator_count = {rows}
generator_rate = 0
table = "soak"
create = "{SCHEMA}"
max_rows = {max_rows}
"""
        path = tmp / "chworkers.toml"
        path.write_text(config)
        client = clickhouse_connect.get_client(dsn=ch.url, autogenerate_session_id=False)
        log = tmp / "daemon.log"
        started = time.monotonic()
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "chworkers", "run", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        samples: list[dict[str, object]] = []
        try:
            while daemon.poll() is None:
                if time.monotonic() - started > timeout:
                    print(f"still running after {timeout:.0f} s: stopping the daemon", flush=True)
                    break
                time.sleep(every)
                t = time.monotonic() - started
                procs = {"daemon": rss_mb(daemon.pid), "endpoint": rss_mb(ch.pid or 0)}
                for pid in children(daemon.pid):
                    procs[f"{kind_of(pid, daemon.pid)}:{pid}"] = rss_mb(pid)
                try:
                    count = int(client.command("SELECT count() FROM soak"))  # type: ignore[arg-type]
                except Exception:  # the table is created by the daemon once it is ready
                    count = 0
                samples.append({"t": round(t, 1), "rows": count, "rss_mb": procs})
                line = " ".join(f"{k}={v:.0f}" for k, v in procs.items() if v)
                print(f"{t:7.1f} s {count:>12,} rows  {line}", flush=True)
        finally:
            if daemon.poll() is None:
                daemon.terminate()
            daemon.wait(60)
        if daemon.returncode:
            print(log.read_text()[-3000:])
        elapsed = time.monotonic() - started
        final = int(client.command("SELECT count() FROM soak"))  # type: ignore[arg-type]
        client.close()
    return {
        "rows": rows,
        "final_count": final,
        "exit_code": daemon.returncode,
        "elapsed_s": round(elapsed, 1),
        "samples": samples,
    }


def report(result: dict[str, object]) -> None:
    samples: list[dict[str, object]] = result["samples"]  # type: ignore[assignment]
    rows, final = result["rows"], result["final_count"]
    print(
        f"\n{rows:,} rows in {result['elapsed_s']} s, daemon exit code {result['exit_code']}; "
        f"the table holds {final:,} rows: {'EXACT' if final == rows else 'MISMATCH'}"
    )
    # The steady stretch: after the first fifth, before the last sample (the drain).
    steady = samples[len(samples) // 5 : -1] or samples
    rates = []
    for a, b in itertools.pairwise(steady):
        dt = float(b["t"]) - float(a["t"])  # type: ignore[arg-type]
        rates.append((int(b["rows"]) - int(a["rows"])) / dt if dt else 0.0)  # type: ignore[call-overload]
    if len(rates) >= 2:
        q = statistics.quantiles(rates, n=10)
        print(
            f"rate over the steady stretch: median {statistics.median(rates):,.0f} rows/s, "
            f"p10 {q[0]:,.0f}, p90 {q[-1]:,.0f}, min {min(rates):,.0f}, max {max(rates):,.0f}"
        )
    names = sorted({k for s in steady for k in s["rss_mb"]})  # type: ignore[attr-defined]
    print(f"{'process':<26} {'RSS start MB':>12} {'RSS end MB':>10} {'MB/min':>7}")
    for name in names:
        points = [
            (float(s["t"]), float(s["rss_mb"][name]))  # type: ignore[index, arg-type]
            for s in steady
            if s["rss_mb"].get(name)  # type: ignore[attr-defined]
        ]
        if not points:
            continue
        print(
            f"{name:<26} {points[0][1]:12.1f} {points[-1][1]:10.1f} {slope_per_minute(points):7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-rows", type=int, default=100_000, help="the pipeline's max_rows")
    parser.add_argument("--timeout", type=float, default=1500.0, help="stop the daemon after")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(args.rows, args.every, args.workers, args.max_rows, args.timeout, Path(tmp))
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
