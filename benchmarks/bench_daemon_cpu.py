"""Where ``chworkers run``'s CPU goes, per process and per thread, for checkouts side by side.

The daemon (its defaults and a pipeline like ``chworkers bench --only daemon``'s: a file
of JSON lines read once and spooled by reference, 100,000-line batches) runs on
``--lines`` lines against one embedded endpoint, once per checkout per round, the
checkouts in turn (``--code NAME=DIR``: a source tree put first on ``PYTHONPATH``; none:
the installed package). From ``/readyz`` answering until every line is in ClickHouse
(the daemon's state directory says so, as the benchmark reads it) the CPU of the daemon's
process, of each of its threads and of its children (fork server, workers) is read from
``/proc`` every 5 ms (a thread's last reading kept when it ends) and printed in ms per
100,000 rows, with the endpoint's and the steady rate. On a shared machine the rates
say little; the CPU per row is what to compare. Thread names come from ``py-spy dump``
when py-spy is installed (``pip install py-spy``), else the threads are numbered.

Run: ``.venv/bin/python benchmarks/bench_daemon_cpu.py --lines 3000000 --rounds 3
--code before=/tmp/old --code after=.`` (a checkout to compare: ``git archive REV
chworkers | tar -x -C /tmp/old``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import clickhouse_connect

from chworkers.bench import daemon as bd
from chworkers.bench.target import ENGINE
from chworkers.embedded import EmbeddedClickHouse

TICK = os.sysconf("SC_CLK_TCK")
SCHEMA = "id UInt64, user String, ts DateTime, value Float64"
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def _stat(path: str) -> list[str] | None:
    try:
        with open(path) as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(root: int) -> dict[int, str]:
    """``root`` and its live descendants, each with its role: the daemon, its fork
    server (or another child of its own) and the workers (the fork server's children)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(f"/proc/{entry}/stat")) is not None:
            parents[int(entry)] = int(fields[1])
    out, todo = {root: "daemon"}, [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        for child in (c for c, parent in parents.items() if parent == pid):
            out[child] = "worker" if depth else _child_role(child)
            todo.append((child, depth + 1))
    return out


def _child_role(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return "child"
    return (
        next((name for name in (b"forkserver", b"resource_tracker") if name in cmdline), b"child")
        .decode()
        .replace("_", " ")
    )


def thread_cpu(root: int) -> dict[tuple[str, int, int], float]:
    """CPU seconds by (role, process, thread) of ``root``'s tree."""
    out: dict[tuple[str, int, int], float] = {}
    for pid, role in tree(root).items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            if (fields := _stat(f"/proc/{pid}/task/{tid}/stat")) is not None:
                out[(role, pid, int(tid))] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def thread_names(root: int) -> dict[int, str]:
    """Python thread names by thread id (py-spy; empty without it)."""
    names: dict[int, str] = {}
    if not os.path.exists(PY_SPY):
        return names
    for pid in tree(root):
        try:
            dump = subprocess.run(
                [PY_SPY, "dump", "--nonblocking", "-p", str(pid)],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in dump.splitlines():
            if line.startswith("Thread ") and '"' in line:
                try:
                    names[int(line.split()[1], 0)] = line.split('"')[1]
                except ValueError:
                    continue
    return names


def run_once(
    ch: EmbeddedClickHouse, client: Any, work: Path, source: Path, lines: int, code: str
) -> tuple[float, float, dict[str, float]]:
    """One daemon over ``source``: steady rows/s, the endpoint's and each thread's CPU
    (ms per 100,000 rows)."""
    client.command("DROP TABLE IF EXISTS d SYNC")
    client.command(f"CREATE TABLE d ({SCHEMA}) ENGINE = {ENGINE}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = bd.free_port()
    state = work / "state"
    config = work / "chworkers.toml"
    config.write_text(bd.config_text(state, source, "d", 1, 1, 100_000, port))
    env = bd.daemon_environ(ch.url, work.parent / f"pycache-{Path(code or 'installed').name}")
    if code:
        env["PYTHONPATH"] = code
    size = source.stat().st_size
    with open(work / "daemon.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "--log-level", "WARNING", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work,
        )
        try:
            while proc.poll() is None and not bd.readyz(port)[0]:
                time.sleep(0.005)
            ready = time.monotonic()
            start, endpoint0 = thread_cpu(proc.pid), bd.process_cpu(ch.pid)
            last, names, named = dict(start), {}, 0.0
            while proc.poll() is None and not bd.all_confirmed(state, bd.PIPELINE, source, size):
                if time.monotonic() - named > 1.0:  # threads come and go: look again
                    names.update(thread_names(proc.pid))
                    named = time.monotonic()
                last.update(thread_cpu(proc.pid))
                time.sleep(0.005)
            done = time.monotonic()
            last.update(thread_cpu(proc.pid))
            endpoint1 = bd.process_cpu(ch.pid)
        finally:
            proc.terminate()
            proc.wait()
    count = client.command("SELECT count() FROM d")
    if count != lines:
        raise SystemExit(f"{code or 'installed'}: {count} rows in ClickHouse, not {lines}")
    per: dict[str, float] = {}
    for (role, pid, tid), cpu in last.items():
        name = names.get(tid, "MainThread" if tid == pid else "a thread")
        key = f"{role}: {name}"
        spent = cpu - start.get((role, pid, tid), 0.0)
        per[key] = per.get(key, 0.0) + bd.per_100k(spent, lines)
    return lines / (done - ready), bd.per_100k(endpoint1 - endpoint0, lines), per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=3_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="counted, after a warm-up")
    parser.add_argument(
        "--code", action="append", default=[], help="NAME=DIR: a checkout's source tree"
    )
    args = parser.parse_args()
    codes = [tuple(c.split("=", 1)) for c in args.code] or [("installed", "")]
    codes = [(name, str(Path(path).resolve()) if path else "") for name, path in codes]
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-cpu-"))
    ch = EmbeddedClickHouse(tmp / "ch")
    ch.start()
    try:
        client = clickhouse_connect.get_client(host=ch.host, port=ch.port)
        source = tmp / "lines.json"
        bd.write_lines(source, args.lines)
        results: dict[str, list[tuple[float, float, dict[str, float]]]] = {n: [] for n, _ in codes}
        for round_ in range(args.rounds + 1):
            turn = codes[round_ % len(codes) :] + codes[: round_ % len(codes)]
            for name, path in turn:
                rate, endpoint, per = run_once(ch, client, tmp / name, source, args.lines, path)
                print(
                    f"round {round_}{' (warm-up)' if not round_ else ''} {name}: steady "
                    f"{rate / 1e6:.2f}M rows/s, daemon and children {sum(per.values()):.1f}, "
                    f"endpoint {endpoint:.1f} ms/100k rows",
                    flush=True,
                )
                if round_:
                    results[name].append((rate, endpoint, per))
        print(
            f"\nmedians of {args.rounds} rounds, ms of CPU per 100,000 rows (load {os.getloadavg()[0]:.1f})"
        )
        for name, rounds in results.items():
            keys = sorted({k for _, _, per in rounds for k in per})
            by_key = {k: statistics.median(per.get(k, 0.0) for _, _, per in rounds) for k in keys}
            total = statistics.median(sum(per.values()) for _, _, per in rounds)
            print(
                f"{name}: steady {statistics.median(r for r, _, _ in rounds) / 1e6:.2f}M rows/s, "
                f"daemon and children {total:.1f}, "
                f"endpoint {statistics.median(e for _, e, _ in rounds):.1f}"
            )
            for key, value in sorted(by_key.items(), key=lambda kv: -kv[1]):
                if value >= 0.3:
                    print(f"    {key:55s} {value:6.1f}")
    finally:
        ch.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
