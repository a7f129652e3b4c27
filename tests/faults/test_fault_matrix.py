"""The fault matrix: each drill ends with rows sent == rows in ClickHouse == distinct ids.

Every scenario runs a real ``chworkers run`` (see harness.py), feeds it data with unique
ids, breaks something at moments drawn from a seeded random generator (the seed is in
every failure report; ``CHWORKERS_FAULT_SEED=<seed>`` replays it), lets the daemon
recover, and counts. Sizes fit CI; ``benchmarks/bench_faults.py`` runs the same drills
in a loop for minutes.
"""

from __future__ import annotations

import json
import time

import pytest
from harness import SCHEMA, TABLE, Drill, DrillError, file_pipeline, push_pipeline

pytestmark = pytest.mark.timeout(240)

#: A stopping daemon must be gone within graceful_timeout plus this.
STOP_SLACK = 10.0


def test_kill_9_rounds_of_the_main_process_and_the_whole_group(drill: Drill) -> None:
    """kill -9 at random moments (while starting, replaying or ingesting), alternately
    the main process alone (its workers must notice and go) and its whole group."""
    feed = drill.file_feed(60_000, chunk=500, pause=0.02, poison_every=9_973)
    daemon = drill.make_daemon([file_pipeline(feed)])
    daemon.start()
    feed.start()
    for round_ in range(4):
        group = drill.rng.random() < 0.5
        time.sleep(drill.rng.uniform(0.2, 2.0))
        drill.note(
            f"round {round_}: kill -9 {'group' if group else 'main'}, "
            f"{feed.progress():.0%} written, {drill.count()} rows in"
        )
        daemon.kill9(group=group)
        wait_ready = drill.rng.random() < 0.7
        daemon.start(wait_ready=wait_ready)
    if not daemon.ready():
        daemon.wait_ready()
    feed.join()
    drill.settle()
    drill.verify(dead_letter_duplicates_allowed=True)
    daemon.terminate(within=10.0 + STOP_SLACK)
    drill.verify(dead_letter_duplicates_allowed=True)


def test_workers_killed_while_busy(drill: Drill) -> None:
    """Inserts are slowed down so the workers are mid-request, and one is SIGKILLed
    every fraction of a second: the maybe-applied inserts are retried with their tokens."""
    feed = drill.file_feed(40_000, chunk=1000, pause=0.02)
    daemon = drill.make_daemon([file_pipeline(feed, max_rows=1000)])
    daemon.start()
    drill.proxy.slow(0.15)
    feed.start()
    killed = 0
    deadline = time.monotonic() + 90
    while drill.count() < drill.expected_rows() or not feed.done():
        assert time.monotonic() < deadline, drill.fail("the inserts did not finish")
        time.sleep(drill.rng.uniform(0.2, 0.6))
        pid = daemon.kill_worker(drill.rng)
        if pid is not None:
            killed += 1
            drill.note(f"killed worker {pid}; {drill.count()} rows in")
        if killed >= 12:
            break
    drill.proxy.up()
    drill.settle()
    drill.verify()
    daemon.terminate(within=10.0 + STOP_SLACK)
    assert killed >= 5, drill.fail(f"only {killed} workers were killed")


def test_sigterm_at_every_stage(drill: Drill) -> None:
    """SIGTERM while starting, while reading and pushing, with inserts in flight, with
    ClickHouse down and a backlog spooled, and a second SIGTERM while draining: each time
    the daemon exits within graceful_timeout (+ slack), every 202 stays true, and the
    next start finishes the job."""
    graceful = 3.0
    feed = drill.file_feed(40_000, chunk=250, pause=0.1)
    daemon = drill.make_daemon(
        [file_pipeline(feed), push_pipeline()],
        {"supervisor": {"graceful_timeout": graceful}},
    )
    daemon.start()
    feed.start()
    push = drill.push_clients(clients=3, requests=30, rows=100, pause=0.05).start()
    target = drill.proxy

    def stop(stage: str, codes: tuple[int, ...] = (0,)) -> None:
        drill.note(
            f"SIGTERM {stage}: {feed.progress():.0%} written, {push.acked_rows} pushed "
            f"rows acknowledged, {drill.count()} rows in"
        )
        took = daemon.terminate(within=graceful + STOP_SLACK, expect_codes=codes)
        drill.note(f"stopped in {took:.1f} s")

    time.sleep(drill.rng.uniform(0.3, 1.5))
    stop("while reading and pushing")

    daemon.start(wait_ready=False)
    time.sleep(drill.rng.uniform(0.0, 1.0))
    # Before its signal handlers are in place the default action ends the daemon.
    stop("while starting", codes=(0, -15))

    daemon.start()
    target.slow(1.0)
    time.sleep(drill.rng.uniform(0.5, 1.5))
    stop("with inserts in flight (ClickHouse answering after 1 s)")
    target.up()

    daemon.start()
    target.down()
    time.sleep(drill.rng.uniform(1.0, 2.0))
    stop("with ClickHouse down and a backlog in the spool")
    target.up()  # (ClickHouse down at start is a scenario of its own)

    daemon.start()
    target.down()
    time.sleep(drill.rng.uniform(0.5, 1.0))
    assert daemon.proc is not None
    daemon.proc.send_signal(15)
    time.sleep(drill.rng.uniform(0.1, 0.5))
    stop("again while draining (ClickHouse still down)")
    target.up()

    daemon.start()
    feed.join()
    push.join()
    drill.settle()
    drill.verify()
    stop("at the end", codes=(0,))
    drill.verify()


def test_the_drill_catches_a_duplicate_a_loss_and_a_stray_dead_letter(drill: Drill) -> None:
    """The final check itself can fail: a row twice, a row missing, an unknown dead letter."""
    feed = drill.file_feed(10, poison_every=5).write_all_now()
    daemon = drill.make_daemon([file_pipeline(feed)])  # never started: only its paths count
    client = drill.proxy.client()
    client.command(f"CREATE TABLE {TABLE} ({SCHEMA}) ENGINE = MergeTree ORDER BY id")
    client.command(f"INSERT INTO {TABLE} (id) VALUES " + ",".join(f"({i})" for i in range(8)))
    letters = daemon.state_dir / "dead-letter" / TABLE / "today.jsonl"
    letters.parent.mkdir(parents=True)
    letters.write_text("".join(json.dumps({"record": p}) + "\n" for p in feed.poison))
    drill.verify()
    client.command(f"INSERT INTO {TABLE} (id) VALUES (3)")
    with pytest.raises(DrillError, match="1 duplicated"):
        drill.verify()
    client.command(f"TRUNCATE TABLE {TABLE}")
    client.command(f"INSERT INTO {TABLE} (id) VALUES " + ",".join(f"({i})" for i in range(7)))
    with pytest.raises(DrillError, match="1 missing"):
        drill.verify()
    client.command(f"INSERT INTO {TABLE} (id) VALUES (7)")
    with letters.open("a") as fh:
        fh.write(json.dumps({"record": "not a poison line"}) + "\n")
    with pytest.raises(DrillError, match="unexpected"):
        drill.verify()
    client.close()
