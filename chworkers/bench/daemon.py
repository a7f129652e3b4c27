"""``chworkers run`` on a file of JSON lines against raw POSTs of the same file in
batch-sized pieces (the ceiling for that request shape), and against what one would
write without chworkers: ``json.loads`` each line and insert the rows with
clickhouse-connect.

The daemon runs as users run it: ``python -m chworkers run -c FILE`` in a process of its
own (the URL in its environment, not in the file), with its defaults (fsync'd spool,
dedup tokens), until the file is in. The raw POSTs send each piece with what every
insert of the daemon's pipeline carries (its ClickHouse settings, among them
``date_time_input_format = best_effort``, and a deduplication token of its own), so
that the endpoint does the same work for both and the difference is the daemon's. Reported: the rate from the command's start to its
exit, the steady rate (from ready, ``/readyz`` answering 200, until every line is in
ClickHouse), the start-up time and CPU (until ``/readyz``: the daemon accepts data), when
a first worker is up (``workers_ready`` in ``/readyz``'s body: inserts can start), and
the stop (from the last line in to the exit).

When every line is in is read from the daemon's state directory every 5 ms: its saved
position in the file is the file's end (every batch spooled) and no batch is left in
its spool (ClickHouse confirmed each). That costs the endpoint nothing; one count of the
table's rows then checks it. Counting the rows instead (a query each time, every 100 ms
and every 10 ms near the end) took about 3 ms of the endpoint's CPU per count on the
2-core development machine, some 10% of what it spent on the daemon's inserts, on the
cores those inserts needed, where the raw POSTs had no such load.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chworkers.bench import data
from chworkers.bench.runner import Case, Group, Metric
from chworkers.clickhouse.insertmode import insert_settings
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.pipelines import PipelineSettings
from chworkers.errors import BenchError
from chworkers.freeport import free_port

RATE = Metric("rate", "rows/s")  # from the command's start to its exit
STEADY = Metric("steady", "rows/s")  # from ready to the last line in ClickHouse
READY = Metric("ready", "s", "lower")  # until /readyz: the daemon accepts data
UP = Metric("up", "s", "lower")  # until a first worker is ready: inserts can start
STOP = Metric("stop", "s", "lower")  # from the last line in ClickHouse to the exit
#: CPU the daemon and its children (fork server, workers) spent until ready: what the
#: start-up costs on an idle machine, where a busy one's wall-clock time says little.
READY_CPU = Metric("ready_cpu", "s", "lower")
#: CPU per 100,000 rows while the rows go in (the daemon: from ready until every line is
#: in ClickHouse): the path's own processes (the daemon, its fork server and workers; for
#: the raw POSTs and the plain client, the benchmark's process), and the embedded
#: endpoint's. On a machine where the endpoint and the daemon share the cores, every
#: CPU-ms the daemon spends on a batch is taken from the endpoint's parsing; unlike a
#: rate, these hardly move with the machine's load.
CPU = Metric("cpu", "ms/100k rows", "lower")
ENDPOINT_CPU = Metric("endpoint_cpu", "ms/100k rows", "lower")
_PROC = Path("/proc")
#: How often ``/readyz`` is asked until a first worker is up, then the daemon's state
#: directory read (:func:`all_confirmed`) until every line is in.
_POLL = 0.005
#: How often the table's rows are counted if the state directory said done too early.
_COUNT_POLL = 0.05
#: The daemon's pipeline.
PIPELINE = "bench"
#: The plain clickhouse-connect path parses at most this many of the lines.
PARSED_LINES = 1_000_000


def write_lines(path: Path, count: int) -> None:
    """``count`` JSON lines of the benchmark's rows (``ts`` as Unix seconds)."""
    with open(path, "w") as fh:
        for start in range(0, count, 10_000):
            fh.write(
                "".join(
                    f'{{"id":{i},"user":"user-{i % 1000:04d}","ts":{1_767_225_600 + i % 86_400},'
                    f'"value":{i * 0.25}}}\n'
                    for i in range(start, min(count, start + 10_000))
                )
            )


def pieces(path: Path, lines: int) -> list[bytes]:
    """The file cut into pieces of ``lines`` lines (the daemon's ``max_rows``)."""
    out: list[bytes] = []
    with open(path, "rb") as fh:
        while chunk := list(itertools.islice(fh, lines)):
            out.append(b"".join(chunk))
    return out


def pipeline_settings(source: Path, table: str, batch: int) -> dict[str, Any]:
    """The ClickHouse settings the daemon's pipeline sends with every insert (the raw
    POSTs send the same: ``date_time_input_format = best_effort`` and the rest)."""
    return PipelineSettings(
        name="bench", source="file", paths=(str(source),), table=table, max_rows=batch
    ).settings


def config_text(
    state_dir: Path, source: Path, table: str, workers: int, connections: int, batch: int, port: int
) -> str:
    return f"""state_dir = "{state_dir}"

[clickhouse.pool]
max_connections = {connections}

[supervisor]
workers = {workers}

[metrics]
port = {port}

[[pipelines]]
name = "{PIPELINE}"
source = "file"
paths = ["{source}"]
table = "{table}"
max_rows = {batch}
max_bytes = {1 << 30}
spool_data = "reference"
"""


def daemon_environ(url: str, pycache: Path) -> dict[str, str]:
    """The daemon's environment: this one's without ``CHWORKERS_*`` settings (a setting
    of the caller's would change what is measured) but the URL, and with a bytecode
    cache of the benchmark's own.

    The daemon is measured as it runs where it is deployed, where the package's
    bytecode is compiled (pip and distribution packages compile it when they install).
    Under ``PYTHONDONTWRITEBYTECODE`` (set in many development and CI environments) and
    with no ``__pycache__`` beside the sources, every start would compile every module
    of the daemon and of its fork server again (0.2-0.3 s of CPU), which is no cost a
    deployed daemon pays. ``PYTHONPYCACHEPREFIX`` keeps that cache in the benchmark's
    temporary directory, so nothing is written beside the sources: the warm-up round
    fills it and the counted rounds read it."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHWORKERS_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    out["PYTHONPYCACHEPREFIX"] = str(pycache)
    out["CHWORKERS_CLICKHOUSE_URL"] = url
    return out


def readyz(port: int) -> tuple[bool, int]:
    """Whether the daemon's ``/readyz`` says ready (it accepts data), and how many of
    its workers are ready (0 while none is, or when it does not answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/readyz")
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
        return resp.status == 200, int(body.get("workers_ready", 0))
    except (OSError, ValueError):
        return False, 0
    finally:
        conn.close()


def _cpu_and_parent(pid: int) -> tuple[float, int]:
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile
        return 0.0, -1
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` (0 when it cannot be read)."""
    return 0.0 if pid is None or not _PROC.is_dir() else _cpu_and_parent(pid)[0]


def per_100k(seconds: float, rows: int) -> float:
    """CPU ``seconds`` for ``rows`` rows as milliseconds per 100,000 rows."""
    return seconds * 1000 * 100_000 / max(rows, 1)


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of process ``root`` and its live descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            cpu[int(entry.name)], parents[int(entry.name)] = _cpu_and_parent(int(entry.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def all_confirmed(state_dir: Path, pipeline: str, source: Path, size: int) -> bool:
    """Whether a daemon with ``state_dir`` has read ``source`` (``size`` bytes) to its end
    and ClickHouse has confirmed every batch of it: its saved position there is the end,
    and its spool holds no batch (a batch leaves it once its insert was answered 200).
    Read from files, at no cost to the endpoint."""
    position = Checkpoints(state_dir / "positions").load(pipeline).get(str(source), {})
    if position.get("offset", -1) < size:
        return False
    return next((state_dir / "spool").glob("*.batch"), None) is None


def run_daemon(
    env: data.Env, client: Any, workers: int, table: str, source: Path, lines: int
) -> Mapping[str, float]:
    """One ``chworkers run`` over ``source``: its rates, start-up and stop times. The
    steady rate counts from ready until every line is in ``table`` (the daemon's state
    directory says so, :func:`all_confirmed`, and ``client`` counts them), so that the
    stop (draining, workers exiting, the interpreter's exit) is apart."""
    work = env.workdir / f"daemon-{workers}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    port = free_port()
    cfg = work / "chworkers.toml"
    connections = env.sizes.connections or workers
    state = work / "state"
    cfg.write_text(config_text(state, source, table, workers, connections, env.sizes.batch, port))
    child_env = daemon_environ(env.target.url, env.workdir / "pycache")
    log_path = work / "daemon.log"
    size = source.stat().st_size
    with open(log_path, "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "chworkers", "--log-level", "WARNING", "run", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
        try:
            up: float | None = None
            workers_up: float | None = None
            landed: float | None = None
            up_cpu = 0.0
            at_up = (0.0, 0.0)  # the daemon's and the endpoint's CPU at ready
            at_landed = (0.0, 0.0)
            confirmed = False  # the state directory said every batch is in
            while proc.poll() is None:
                if workers_up is None:
                    is_ready, workers = readyz(port)
                    if up is None and is_ready:
                        up = time.monotonic()
                        up_cpu = tree_cpu(proc.pid) if _PROC.is_dir() else 0.0
                        at_up = (up_cpu, process_cpu(env.target.pid))
                    if up is not None and workers:
                        workers_up = time.monotonic()
                if up is not None and (confirmed or all_confirmed(state, PIPELINE, source, size)):
                    now = time.monotonic()
                    cpu = (
                        (tree_cpu(proc.pid), process_cpu(env.target.pid))
                        if _PROC.is_dir()
                        else at_landed
                    )
                    if data.count(client, table) >= lines:
                        landed, at_landed = now, cpu
                        proc.wait()
                        break
                    confirmed = True  # not counted yet: count until they are
                time.sleep(_COUNT_POLL if confirmed else _POLL)
            end = time.monotonic()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise BenchError(f"chworkers run exited with code {proc.returncode}:\n{tail}")
    up = end if up is None else up  # done before /readyz was seen: too small to tell
    workers_up = up if workers_up is None else max(up, workers_up)
    landed = end if landed is None else landed
    return {
        "rate": lines / (end - start),
        "steady": lines / max(landed - up, 1e-9),
        "stop": end - landed,
        "ready": up - start,
        "up": workers_up - start,
        "ready_cpu": up_cpu,
        "cpu": per_100k(at_landed[0] - at_up[0], lines),
        "endpoint_cpu": per_100k(at_landed[1] - at_up[1], lines),
    }


def groups(env: data.Env, stack: contextlib.ExitStack) -> list[Group]:
    lines = env.sizes.daemon_lines
    batch = env.sizes.batch
    source = env.workdir / "lines.json"
    write_lines(source, lines)
    stack.callback(source.unlink, missing_ok=True)
    bodies = pieces(source, batch)
    client = env.target.client()
    stack.callback(client.close)
    http_raw = env.target.http()
    stack.callback(http_raw.close)

    posts = itertools.count()

    def checked(table: str, rows: int, path: str) -> None:
        """Check the round's rows, then drop the table: its parts would otherwise go on
        merging on the endpoint's cores while the next path is measured (10M lines make
        a hundred parts), billing that path for this one's merges."""
        data.expect(client, table, rows, path)
        client.command(f"DROP TABLE IF EXISTS {table} SYNC")

    def spent(cpu: tuple[float, float], rows: int = lines) -> dict[str, float]:
        """The CPU this process and the endpoint spent since ``cpu`` was read."""
        own, endpoint = time.process_time() - cpu[0], process_cpu(env.target.pid) - cpu[1]
        return {"cpu": per_100k(own, rows), "endpoint_cpu": per_100k(endpoint, rows)}

    def posted() -> Mapping[str, float]:
        settings = pipeline_settings(source, "d_post", batch)
        run = next(posts)
        cpu = (time.process_time(), process_cpu(env.target.pid))
        start = time.perf_counter()
        for i, body in enumerate(bodies):
            # A token per piece and round, as the daemon's batches each have their own.
            params = insert_settings(settings, token=f"bench-post-{run}-{i}")
            http_raw.post("INSERT INTO d_post FORMAT JSONEachRow", body, params)
        rate = lines / (time.perf_counter() - start)
        return {"rate": rate, "steady": rate, **spent(cpu)}

    # The plain client's rate does not depend on the file's size (~100-200k rows/s here):
    # at most PARSED_LINES of it, so that a run of 10M lines fits in a few minutes.
    parsed_lines = min(lines, PARSED_LINES)

    def parsed() -> Mapping[str, float]:
        cpu = (time.process_time(), process_cpu(env.target.pid))
        start = time.perf_counter()
        names = list(data.COLUMNS)
        with open(source, "rb") as fh:
            left = parsed_lines
            while left and (chunk := list(itertools.islice(fh, min(batch, left)))):
                left -= len(chunk)
                rows = [[record[c] for c in names] for record in map(json.loads, chunk)]
                client.insert("d_parsed", rows, column_names=names)
        rate = parsed_lines / (time.perf_counter() - start)
        return {"rate": rate, "steady": rate, **spent(cpu, parsed_lines)}

    def daemon_case(workers: int) -> Case:
        table = f"d_run{workers}"
        connections = env.sizes.connections
        name = f"chworkers run, workers={workers}" + (
            f", max_connections={connections}" if connections else ""
        )
        return Case(
            name,
            lambda: run_daemon(env, client, workers, table, source, lines),
            before=lambda: env.table(client, table),
            after=lambda: checked(table, lines, name),
            target={"steady": 0.8},
            extra=(READY, READY_CPU, UP, STOP) if _PROC.is_dir() else (READY, UP, STOP),
        )

    # CPU is read from /proc (Linux); the endpoint's only when it is the embedded one.
    cpu_metrics = (() if not _PROC.is_dir() else (CPU,)) + (
        (ENDPOINT_CPU,) if _PROC.is_dir() and env.target.pid is not None else ()
    )
    return [
        Group(
            f"daemon: {lines:,} JSON lines in batches of {batch:,}",
            [
                Case(
                    f"raw POSTs of {batch:,}-line pieces",
                    posted,
                    before=lambda: env.table(client, "d_post"),
                    after=lambda: checked("d_post", lines, "raw POSTs"),
                ),
                Case(
                    "clickhouse-connect, json.loads + insert"
                    + (f" (first {parsed_lines:,} lines)" if parsed_lines < lines else ""),
                    parsed,
                    before=lambda: env.table(client, "d_parsed"),
                    after=lambda: checked("d_parsed", parsed_lines, "parsed rows"),
                ),
                *(daemon_case(w) for w in env.sizes.workers),
            ],
            metrics=(RATE, STEADY, *cpu_metrics),
            note="issue 11's daemon targets: ready within 0.5 s of start; steady >= 0.8x the "
            "raw POSTs (the target column applies to steady); the daemon's file is read once "
            'and spooled by reference (spool_data = "reference", the default; "copy" '
            "writes each batch into the spool too)",
        )
    ]
