"""The embedded endpoint's fixed cost per request: CPU seconds in the endpoint process.

Sends many small requests one after another over one keep-alive connection and reads
the endpoint process's CPU time (user + system, all its threads, from
``/proc/PID/stat``) before and after, so what the client spends does not count. Shapes:

- ``insert-raw``: ``INSERT INTO t FORMAT TSV`` of one row, the query in the URL, no
  settings, no session (the smallest insert there is);
- ``insert-cc``: clickhouse-connect's ``insert()`` of one row with the settings
  chworkers' workers send (a deduplication token), no session, as chworkers'
  connections use it;
- ``insert-session``: the same in a session (clickhouse-connect's default);
- ``select``: ``SELECT 1`` through clickhouse-connect, no session;
- ``direct``: the engine's own share, no endpoint: the same one-row insert through
  chDB's streaming insert in this process (its own data directory), CPU of this process;
- ``direct-select``: ``SELECT 1`` through chDB in this process, the least a chDB query
  costs.

``--code LABEL=DIR`` (repeatable) runs the endpoint shapes against endpoints started from
other checkouts of the project (``git worktree add --detach DIR REV``; the endpoint runs
with ``DIR`` first on ``PYTHONPATH``, the client side stays this checkout's), all of them
in every round, in a rotating order: the same requests, the same machine, interleaved,
so an old revision's fixed cost and this one's compare directly. Rows then read
``shape@LABEL``; ``--code here=.`` adds this checkout's.
On a machine shared with other disk work, ``TMPDIR=/dev/shm`` puts the data
directories on tmpfs: a MergeTree part's files then cost the same CPU every round.

``insert-raw`` minus ``direct`` is what the endpoint adds to an insert. A MergeTree part
costs most of an insert's CPU, and much of it in the kernel (creating its ten files), so
it varies with what else the machine does; ``--engine Null`` leaves the part out and
shows the fixed costs alone, and ``--engine Checked`` (a Memory table with a
CONSTRAINT) does the same for a table the endpoint handles as a MergeTree one (one
that may refuse an insert as it commits).

Every shape runs ``--rounds`` times, interleaved; the table gives the median, min and
max CPU per request in milliseconds and the requests per second (wall clock, which
depends on what else runs on the machine). ``--json FILE`` writes the medians.

Run: ``.venv/bin/python benchmarks/bench_embedded_requests.py [--requests N] [--rounds K]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import clickhouse_connect

from chworkers.embedded import EmbeddedClickHouse

COLUMNS = "(id UInt64, user String, ts DateTime, value Float64)"
ENGINES = {
    "MergeTree": "MergeTree ORDER BY id",
    "Null": "Null",
    "Memory": "Memory",
    # A CONSTRAINT makes the endpoint treat an insert as it treats a MergeTree one (its
    # table may refuse it at commit), without the part write that dwarfs the rest.
    "Checked": "Memory",
}
ROW = b"1\tu\t2024-01-01 00:00:00\t1.5\n"


def table_sql(engine: str) -> str:
    columns = COLUMNS
    if engine == "Checked":
        columns = COLUMNS[:-1] + ", CONSTRAINT positive CHECK value > 0)"
    return f"CREATE TABLE t {columns} ENGINE = {ENGINES[engine]}"


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


Shape = Callable[[int], Callable[[int], None]]


@dataclass
class Endpoint:
    """An endpoint to send requests to: where it listens, and its process."""

    host: str
    port: int
    pid: int


@contextmanager
def endpoint_from(code: Path, data: Path) -> Iterator[Endpoint]:
    """``python -m chworkers embedded`` with ``code`` first on ``PYTHONPATH`` (any
    revision's checkout: its command line has not changed since the first one)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "chworkers", "embedded", "--path", str(data), "--port", "0"]
    cmd += ["--exit-with-parent", str(os.getpid())]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=code
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            if not line.startswith("chworkers embedded: serving "):
                log.seek(0)
                tail = log.read().decode(errors="replace")[-2000:]
                raise SystemExit(f"the endpoint from {code} did not start:\n{tail}")
            url = line.split()[3]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            yield Endpoint(host, int(port), proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


@contextmanager
def endpoint_here(data: Path) -> Iterator[Endpoint]:
    with EmbeddedClickHouse(data) as ch:
        assert ch.pid is not None
        yield Endpoint(ch.host, ch.port, ch.pid)


def endpoint_shapes(ch: Endpoint) -> dict[str, Shape]:
    """Each shape: set up (given the request count), then a step per request."""

    def raw(_n: int) -> Callable[[int], None]:
        conn = http.client.HTTPConnection(ch.host, ch.port, timeout=60)
        target = "/?query=" + quote("INSERT INTO t FORMAT TSV")

        def step(i: int) -> None:
            conn.request("POST", target, body=ROW)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise SystemExit(f"insert failed: {resp.status} {body[:300]!r}")

        return step

    def cc(session: bool) -> Callable[[int], Callable[[int], None]]:
        def setup(_n: int) -> Callable[[int], None]:
            client = clickhouse_connect.get_client(
                host=ch.host, port=ch.port, autogenerate_session_id=session
            )
            row = [[1, "u", 1_700_000_000, 1.5]]
            cols = ["id", "user", "ts", "value"]

            def step(i: int) -> None:
                token = uuid.uuid4().hex
                client.insert(
                    "t", row, column_names=cols, settings={"insert_deduplication_token": token}
                )

            return step

        return setup

    def select(_n: int) -> Callable[[int], None]:
        client = clickhouse_connect.get_client(
            host=ch.host, port=ch.port, autogenerate_session_id=False
        )

        def step(_i: int) -> None:
            client.query("SELECT 1")

        return step

    return {
        "insert-raw": raw,
        "insert-cc": cc(False),
        "insert-session": cc(True),
        "select": select,
    }


def direct_shapes(direct: Any) -> dict[str, Shape]:
    """The engine alone, in this process: the same shape of step."""

    def engine_only(_n: int) -> Callable[[int], None]:
        def step(_i: int) -> None:
            handle = direct.send_insert(b"INSERT INTO t", "TSV")
            direct.insert_append(handle, ROW)
            direct.insert_done(handle)

        return step

    def engine_select(_n: int) -> Callable[[int], None]:
        def step(_i: int) -> None:
            direct.query(b"SELECT 1", "TSV")

        return step

    return {"direct": engine_only, "direct-select": engine_select}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="", help="comma-separated subset of the shapes")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="MergeTree")
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="instead of this checkout's endpoint, one started from the checkout DIR (repeatable)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the medians here")
    args = parser.parse_args()
    from chdb import _chdb  # this process's own chDB, for ``direct``

    codes: list[tuple[str, Path | None]] = []
    for spec in args.code:
        label, sep, where = spec.partition("=")
        if not sep or not label or not (Path(where) / "chworkers").is_dir():
            raise SystemExit(f"--code {spec!r}: expected LABEL=DIR, DIR a checkout of chworkers")
        codes.append((label, Path(where).resolve()))
    if not codes:
        codes.append(("", None))
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-requests-") as tmp, ExitStack() as stack:
        steps: dict[str, tuple[Shape, int]] = {}
        for n, (label, code) in enumerate(codes):
            data = Path(tmp) / f"data{n}"
            ch = stack.enter_context(
                endpoint_here(data) if code is None else endpoint_from(code, data)
            )
            admin = clickhouse_connect.get_client(host=ch.host, port=ch.port)
            admin.command(table_sql(args.engine))
            admin.close()
            for name, shape in endpoint_shapes(ch).items():
                steps[f"{name}@{label}" if label else name] = (shape, ch.pid)
        direct = _chdb.connect(str(Path(tmp) / "direct"))
        direct.query(table_sql(args.engine), "TSV")
        for name, shape in direct_shapes(direct).items():
            steps[name] = (shape, os.getpid())
        wanted = [s for s in args.shapes.split(",") if s]
        chosen = [n for n in steps if not wanted or n.split("@")[0] in wanted]
        for name in chosen:  # warm up: chDB loads lazily, the first requests cost more
            step = steps[name][0](50)
            for i in range(50):
                step(i)
        for r in range(args.rounds):
            # A rotating order: no shape always runs right after the same other one.
            for name in chosen[r % len(chosen) :] + chosen[: r % len(chosen)]:
                shape, pid = steps[name]
                step = shape(args.requests)
                cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
                for i in range(args.requests):
                    step(i)
                cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - wall0
                results.setdefault(name, []).append(
                    (cpu / args.requests * 1e3, args.requests / wall)
                )
        direct.close()
    print(
        f"{args.requests} requests x {args.rounds} rounds, interleaved, {args.engine} table; "
        "CPU per request in the endpoint process (direct: in this one)"
    )
    print(f"{'shape':<16}{'CPU ms median':>14}{'min':>8}{'max':>8}{'req/s median':>14}")
    medians: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        cpus = [c for c, _ in runs]
        rates = [r for _, r in runs]
        medians[name] = {
            "cpu_ms": statistics.median(cpus),
            "requests_per_s": statistics.median(rates),
        }
        print(
            f"{name:<16}{statistics.median(cpus):>14.2f}{min(cpus):>8.2f}{max(cpus):>8.2f}"
            f"{statistics.median(rates):>14.0f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(medians, indent=2) + "\n")


if __name__ == "__main__":
    main()
