"""``chworkers bench``: the runner's statistics, the table and the JSON, on real (tiny)
runs against the embedded endpoint; the command cleans up after itself. No timing is
asserted: only what was measured, how it was summarized, and what is left behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from chclients import make_client, unique_name

from chworkers.bench import report
from chworkers.bench.daemon import PIPELINE, all_confirmed, daemon_environ
from chworkers.bench.raw import answer_times
from chworkers.bench.runner import Case, Group, Metric, measure, summarize, timed
from chworkers.bench.target import MARK
from chworkers.cli.main import main
from chworkers.daemon import config as daemon_config
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import BenchError

TINY = ["--rounds", "2", "--rows", "3000", "--batch", "1000", "--raw-sizes", "1000,3000"]


def test_summary_pairs_rounds_and_takes_medians() -> None:
    group = Group("g", [Case("base", lambda: {}), Case("fast", lambda: {}, target=1.5)])
    samples = {
        "base": [{"rate": 100.0}, {"rate": 50.0}, {"rate": 200.0}],
        "fast": [{"rate": 300.0}, {"rate": 100.0}, {"rate": 100.0}],
    }
    base, fast = summarize(group, samples)
    assert (base.median, base.low, base.high, base.ratio) == (100.0, 50.0, 200.0, 1.0)
    assert base.versus is None and base.meets_target is None
    assert fast.versus == "base" and fast.median == 100.0
    assert fast.ratio == 1.0  # of the medians
    assert fast.round_ratios == [3.0, 2.0, 0.5]  # round by round
    assert fast.meets_target is False
    lower = Metric("p50", "us", "lower")
    slow = summarize(
        Group("h", [Case("a", lambda: {}), Case("b", lambda: {}, target=2.0)], metrics=[lower]),
        {"a": [{"p50": 10.0}], "b": [{"p50": 15.0}]},
    )[1]
    assert slow.ratio == 1.5 and slow.meets_target is True  # lower is better: <= 2x


def test_raw_answer_times_are_first_and_median_step() -> None:
    # Answers at 0.5 s, then 0.1, 0.3 and 0.1 s apart (out of order: sorted first).
    times = answer_times(10.0, [10.6, 10.5, 11.0, 10.9])
    assert times == pytest.approx({"first": 500.0, "step": 100.0})
    with pytest.raises(BenchError, match="two answers"):
        answer_times(10.0, [10.5])


def test_measure_interleaves_real_inserts(ch_client: Any) -> None:
    calls: list[str] = []
    rows = [(i, "u", i * 0.5) for i in range(500)]
    ch_client.command("CREATE TABLE t (id UInt64, u String, v Float64) ENGINE = Memory")

    def inserting(name: str, batches: int) -> Case:
        def run() -> int:
            calls.append(name)
            for _ in range(batches):
                ch_client.insert("t", rows, column_names=["id", "u", "v"])
            return batches * len(rows)

        def check() -> None:
            assert ch_client.command("SELECT count() FROM t") == batches * len(rows)

        return Case(name, timed(run), lambda: ch_client.command("TRUNCATE TABLE t"), check)

    group = Group("inserts", [inserting("one", 1), inserting("two", 2), inserting("three", 3)])
    seen: list[str] = []
    results = measure(group, rounds=3, progress=seen.append)
    # A warm-up, then 3 rounds, each starting one case further along.
    warm_up, first, second, third = calls[:3], calls[3:6], calls[6:9], calls[9:]
    assert warm_up == ["one", "two", "three"] and first == ["two", "three", "one"]
    assert second == ["three", "one", "two"] and third == ["one", "two", "three"]
    assert len(seen) == 12 and seen[0] == "inserts [warm-up] one"
    assert seen[-1] == "inserts [round 3/3] three"
    one, two, three = results
    for r in results:
        assert len(r.values) == 3 and all(v > 0 for v in r.values)
        assert r.low <= r.median <= r.high
    assert one.ratio == 1.0
    assert two.ratio == pytest.approx(two.median / one.median)
    assert len(three.round_ratios) == 3
    assert three.round_ratios[0] == pytest.approx(three.values[0] / one.values[0])

    text = report.table(results)
    lines = text.splitlines()
    assert lines[0].startswith("| path") and "**inserts**" in lines[2]
    assert len({len(line) for line in lines}) == 1  # aligned
    assert f"{two.ratio:.2f} (" in text


def test_a_case_that_loses_rows_fails_the_comparison(ch_client: Any) -> None:
    ch_client.command("CREATE TABLE t (id UInt64) ENGINE = Memory")

    def check() -> None:
        got = int(ch_client.command("SELECT count() FROM t"))
        if got != 2:
            raise BenchError(f"lossy: t holds {got:,} rows, not 2")

    def insert_one_of_two() -> int:
        ch_client.insert("t", [[1]])
        return 2

    lossy = Case("lossy", timed(insert_one_of_two), after=check)
    with pytest.raises(BenchError, match="lossy: t holds 1 rows, not 2"):
        measure(Group("g", [lossy]), rounds=1)


@pytest.fixture
def no_temp_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Temporary files go under ``tmp_path/tmp``, which must be empty afterwards (but for
    the forkserver's ``pymp-*``, which lives as long as the test process)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    assert [p for p in tmp.iterdir() if not p.name.startswith("pymp-")] == []


def databases(endpoint: EmbeddedClickHouse) -> set[str]:
    admin = make_client(endpoint)
    try:
        return {row[0] for row in admin.query("SELECT name FROM system.databases").result_rows}
    finally:
        admin.close()


def test_bench_against_a_url_writes_json_and_drops_its_database(
    endpoint: EmbeddedClickHouse,
    no_temp_left: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    db = unique_name("bench")
    out = tmp_path / "bench.json"
    families = ["rows", "columnar", "raw", "tasks", "lease"]
    args = ["bench", "--url", endpoint.url, "--database", db, "--json", str(out), *TINY]
    args += ["--tasks", "50", "--lease-trips", "50", "--workers", "2"]  # one supervisor each
    quieted = [logging.getLogger(n) for n in ("chworkers.workers", "chworkers.embedded")]
    levels = [logger.level for logger in quieted]
    assert main(args + [a for f in families for a in ("--only", f)]) == 0
    assert db not in databases(endpoint)
    # It quiets the supervisors' lines while it runs, and gives the levels back: left at
    # WARNING, a later test of the same process saw no INFO line of the workers' layer.
    assert [logger.level for logger in quieted] == levels

    doc = json.loads(out.read_text())
    assert doc["format"] == report.JSON_FORMAT and doc["options"]["rounds"] == 2
    assert doc["server"]["database"] == db and doc["machine"]["cpus"] == os.cpu_count()
    groups = {r["group"] for r in doc["results"]}
    assert {g.split(":")[0] for g in groups} == set(families)
    assert "raw: 3 Native request(s) of 1,000 rows" in groups  # 3000 rows // 1000
    assert "raw: 3 Native request(s) of 3,000 rows" in groups  # at least MIN_REQUESTS
    for r in doc["results"]:
        assert len(r["values"]) == 2 and r["min"] <= r["median"] <= r["max"]
    lease = [r for r in doc["results"] if r["group"].startswith("lease")]
    assert {(r["metric"], r["unit"], r["better"]) for r in lease} == {
        ("p50", "us", "lower"),
        ("p99", "us", "lower"),
    }
    sup2 = next(r for r in doc["results"] if r["path"] == "Supervisor(workers=2).insert(rows)")
    assert sup2["versus"] == "plain clickhouse-connect loop" and sup2["target"] == 1.2
    assert sup2["meets_target"] == (sup2["ratio"] >= 1.2)
    raw = [r for r in doc["results"] if r["group"].startswith("raw")]
    # Each raw round says when its first request was answered and what each further
    # one took, on both sides, so a slow round shows where it lost its time.
    assert {(r["metric"], r["unit"], r["better"]) for r in raw} >= {
        ("rate", "rows/s", "higher"),
        ("first", "ms", "lower"),
        ("step", "ms", "lower"),
    }
    assert all(r["min"] > 0 for r in raw if r["metric"] in ("first", "step"))
    spread = [r for r in doc["results"] if r["metric"] == "spread"]
    assert {r["path"] for r in spread} >= {"Supervisor(workers=2).insert(rows)"}
    assert all(r["min"] >= 1.0 and r["ratio"] is None for r in spread)  # most / fewest

    printed = capsys.readouterr().out
    for r in doc["results"]:
        assert r["path"] in printed
    assert "2 interleaved round(s) after a warm-up" in printed


def test_bench_refuses_a_database_it_did_not_make(
    endpoint: EmbeddedClickHouse, database: str, restore_logging: None
) -> None:
    admin = make_client(endpoint)
    try:
        admin.command(f"CREATE TABLE {database}.keep (x UInt8) ENGINE = Memory")
        code = main(["bench", "--url", endpoint.url, "--database", database, "--only", "lease"])
        assert code == 1
        assert admin.command(f"EXISTS TABLE {database}.keep") == 1  # untouched
        # A URL that names a database of its own is refused before anything is created.
        url = f"{endpoint.url}/{database}"
        assert main(["bench", "--url", url, "--only", "lease"]) == 3
    finally:
        admin.close()


def test_bench_takes_over_what_a_killed_run_left(
    endpoint: EmbeddedClickHouse, restore_logging: None, no_temp_left: Path
) -> None:
    db = unique_name("bench")
    admin = make_client(endpoint)
    try:
        admin.command(f"CREATE DATABASE {db} COMMENT '{MARK}'")
        admin.command(f"CREATE TABLE {db}.left_over (x UInt8) ENGINE = Memory")
    finally:
        admin.close()
    args = ["bench", "--url", endpoint.url, "--database", db, "--only", "lease"]
    assert main([*args, "--rounds", "1", "--lease-trips", "20"]) == 0
    assert db not in databases(endpoint)


def _session_processes(sid: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(stat[:80])
    return found


SMALL = ("--daemon-lines", "2000", "--batch", "1000", "--workers", "1")


def test_bench_on_its_own_embedded_endpoint_leaves_nothing() -> None:
    """The default: the command starts the embedded endpoint and stops it; the daemon
    family runs ``chworkers run`` in processes of its own. Afterwards no process of its
    session is left, and its temporary directories are gone."""
    # A short TMPDIR of its own: the daemons' fork server binds a Unix socket under it,
    # and pytest's tmp_path (its numbered directory grows) can pass AF_UNIX's 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="chwb-", dir="/tmp"))
    env: Mapping[str, str] = {**os.environ, "TMPDIR": str(tmp)}
    try:
        _run_bench_and_check(env, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_bench_and_check(env: Mapping[str, str], tmp: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chworkers", "bench", "--only", "daemon", "--rounds", "1", *SMALL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert "chworkers run, workers=1" in out and "ready" in out
    assert "endpoint_cpu" in out  # the CPU each path costs the embedded endpoint
    assert "(embedded)" in out
    assert _session_processes(proc.pid) == []
    assert list(tmp.iterdir()) == []


def test_the_daemon_runs_with_compiled_bytecode_and_only_the_url_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployed daemon reads its modules' bytecode; one started under
    PYTHONDONTWRITEBYTECODE with no cache would compile them all at every start. The
    daemon's environment keeps a bytecode cache in the benchmark's directory, and the
    caller's CHWORKERS_* settings out of what is measured; a real start fills the cache."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("CHWORKERS_SUPERVISOR_WORKERS", "7")
    env = daemon_environ("http://127.0.0.1:1", tmp_path / "pycache")
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"] == str(tmp_path / "pycache")
    assert {k: v for k, v in env.items() if k.startswith("CHWORKERS_")} == {
        "CHWORKERS_CLICKHOUSE_URL": "http://127.0.0.1:1"
    }
    subprocess.run(
        [sys.executable, "-c", "import chworkers.daemon.config"], env=env, check=True, timeout=60
    )
    source = Path(daemon_config.__file__).resolve()
    mirror = tmp_path / "pycache" / source.parent.relative_to(source.anchor)
    assert list(mirror.glob("config.*.pyc")), "no bytecode cached for chworkers.daemon.config"


def test_the_daemon_is_done_when_its_file_is_read_and_its_spool_empty(tmp_path: Path) -> None:
    """The benchmark times the daemon's end from its state directory, not by counting
    the table's rows on the endpoint: done once the saved position is the file's end and
    no batch is left in the spool."""
    source = tmp_path / "lines.json"
    source.write_bytes(b'{"id":1}\n' * 10)
    state = tmp_path / "state"
    spool = state / "spool"
    spool.mkdir(parents=True)
    size = source.stat().st_size
    positions = Checkpoints(state / "positions")
    assert not all_confirmed(state, PIPELINE, source, size)  # nothing read yet
    st = source.stat()
    positions.commit(PIPELINE, {str(source): {"dev": st.st_dev, "ino": st.st_ino, "offset": 9}})
    assert not all_confirmed(state, PIPELINE, source, size)  # read halfway
    positions.commit(PIPELINE, {str(source): {"dev": st.st_dev, "ino": st.st_ino, "offset": size}})
    batch = spool / f"{7:020d}.batch"
    batch.write_bytes(b"")
    assert not all_confirmed(state, PIPELINE, source, size)  # a batch not confirmed yet
    batch.unlink()
    assert all_confirmed(state, PIPELINE, source, size)
