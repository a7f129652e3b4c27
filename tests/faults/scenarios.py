"""The fault matrix's scenarios, shared by the tests and ``benchmarks/bench_faults.py``.

Each scenario takes a :class:`~harness.Drill` (a workdir, a ClickHouse target, a seeded
random generator) and a ``scale`` (1.0: the size the test suite runs; the benchmark may
run bigger), runs a daemon through its faults, and ends with :meth:`Drill.verify`: rows
sent == rows in ClickHouse == distinct ids, nothing left in the spool, every poison line
in the dead letters. A scenario raises :class:`~drillbase.DrillError` (an AssertionError)
when that does not hold.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from drillbase import wait_until
from harness import Drill, file_pipeline, push_pipeline, tmpfs

#: A stopping daemon must be gone within graceful_timeout plus this.
STOP_SLACK = 10.0
GRACEFUL = 3.0
#: Failed operations a long outage makes (the cooldown overflowed at 1,025).
OUTAGE_FAILURES = 1200


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Drill, float], None]
    #: The daemon runs its own embedded ClickHouse (else: the shared one, proxied).
    own_clickhouse: bool = False


SCENARIOS: dict[str, Scenario] = {}


Run = TypeVar("Run", bound=Callable[[Drill, float], None])


def scenario(name: str, *, own_clickhouse: bool = False) -> Callable[[Run], Run]:
    """Register a scenario under ``name`` (the benchmark's ``--scenario``)."""

    def register(run: Run) -> Run:
        SCENARIOS[name] = Scenario(name, run, own_clickhouse)
        return run

    return register


def rows(n: int, scale: float) -> int:
    return max(1000, int(n * scale))


@scenario("kill-9")
def kill_9_rounds(drill: Drill, scale: float = 1.0) -> None:
    """kill -9 at random moments (while starting, replaying, reading a growing file and
    taking pushes with idempotency keys), the main process alone (its workers must notice
    and go) or its whole group."""
    feed = drill.file_feed(rows(60_000, scale), chunk=500, pause=0.02, poison_every=9_973)
    daemon = drill.make_daemon([file_pipeline(feed), push_pipeline()])
    daemon.start()
    feed.start()
    # Each request a batch of its own with a token from its key: a retry after an answer
    # lost to the kill lands once.
    push = drill.push_clients(
        clients=2, requests=max(5, round(20 * scale)), rows=250, pause=0.1, idempotency_keys=True
    ).start()
    for round_ in range(max(2, round(4 * scale))):
        group = drill.rng.random() < 0.5
        time.sleep(drill.rng.uniform(0.2, 2.0))
        drill.note(
            f"round {round_}: {feed.progress():.0%} written, {drill.count()} rows in ClickHouse"
        )
        daemon.kill9(group=group)
        daemon.start(wait_ready=drill.rng.random() < 0.7)
    if not daemon.ready():
        daemon.wait_ready()
    feed.join()
    drill.wait_pushed()
    drill.note(f"pushes answered {dict(push.statuses)}")
    drill.settle()
    # A batch's dead letters are written before it leaves the spool: a kill -9 in
    # between writes them again on replay (at least once, by design).
    drill.verify(dead_letter_duplicates_allowed=True)
    daemon.terminate(within=GRACEFUL + STOP_SLACK)
    drill.verify(dead_letter_duplicates_allowed=True)


@scenario("workers-killed")
def workers_killed_while_busy(drill: Drill, scale: float = 1.0) -> None:
    """Inserts are slowed down so the workers are mid-request, and one is SIGKILLed
    every fraction of a second: the maybe-applied inserts are retried with their tokens."""
    feed = drill.file_feed(rows(40_000, scale), chunk=1000, pause=0.02)
    generator = drill.generator_pipeline(rows(20_000, scale))
    daemon = drill.make_daemon([file_pipeline(feed, max_rows=1000), generator])
    daemon.start()
    drill.proxy.slow(0.15)
    drill.note("ClickHouse answers after 0.15 s")
    feed.start()
    killed, most = 0, max(6, round(12 * scale))
    deadline = time.monotonic() + 90 * scale
    while killed < most and (drill.count() < drill.expected_rows() or not feed.done()):
        if time.monotonic() > deadline:
            raise drill.fail("the inserts did not finish")
        time.sleep(drill.rng.uniform(0.2, 0.6))
        pid = daemon.kill_worker(drill.rng)
        if pid is not None:
            killed += 1
            drill.note(f"killed worker {pid}; {drill.count()} rows in ClickHouse")
    drill.proxy.up()
    drill.settle()
    # Workers killed under a batch say nothing about the batch: it must not be held as
    # poison for spool.permanent_error_backoff (it was, before c27447c).
    if "a permanent error" in daemon.log():
        raise drill.fail("a batch was held as a permanent error after its workers were killed")
    drill.verify()
    daemon.terminate(within=GRACEFUL + STOP_SLACK)
    if killed < 5:
        raise drill.fail(f"only {killed} workers were killed")


@scenario("sigterm")
def sigterm_at_every_stage(drill: Drill, scale: float = 1.0) -> None:
    """SIGTERM while reading and pushing, while starting, with inserts in flight, with
    ClickHouse down and a backlog spooled, and a second SIGTERM while draining: each time
    the daemon exits within graceful_timeout (+ slack), every 202 stays true, and the
    next start finishes the job."""
    feed = drill.file_feed(rows(40_000, scale), chunk=500, pause=0.1)
    daemon = drill.make_daemon(
        [file_pipeline(feed), push_pipeline()],
        {"supervisor": {"graceful_timeout": GRACEFUL}},
    )
    daemon.start()
    feed.start()
    push = drill.push_clients(
        clients=3, requests=max(10, round(30 * scale)), rows=100, pause=0.05
    ).start()
    target = drill.proxy

    def stop(stage: str, codes: tuple[int, ...] = (0,)) -> None:
        drill.note(
            f"SIGTERM {stage}: {feed.progress():.0%} written, {push.acked_rows} pushed "
            f"rows acknowledged, {drill.count()} rows in ClickHouse"
        )
        took = daemon.terminate(within=GRACEFUL + STOP_SLACK, expect_codes=codes)
        drill.note(f"stopped in {took:.1f} s")

    time.sleep(drill.rng.uniform(0.3, 1.5))
    stop("while reading and pushing")

    daemon.start(wait_ready=False)
    time.sleep(drill.rng.uniform(0.0, 1.0))
    # Before its signal handlers are in place the default action ends the daemon.
    stop("while starting", codes=(0, -signal.SIGTERM))

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
    daemon.proc.send_signal(signal.SIGTERM)
    drill.note("SIGTERM with ClickHouse down")
    time.sleep(drill.rng.uniform(0.1, 0.5))
    stop("again while draining")
    target.up()

    daemon.start()
    feed.join()
    drill.wait_pushed()
    drill.settle()
    drill.verify()
    stop("at the end")
    drill.verify()


@scenario("long-outage")
def outage_longer_than_the_cooldown_growth(drill: Drill, scale: float = 1.0) -> None:
    """ClickHouse down for well over 1,025 consecutive host failures (made quickly with
    a tiny cooldown and one worker): the cooldown stops doubling at its cap instead of
    overflowing, no connection slot leaks, and once ClickHouse is back everything lands."""
    feed = drill.file_feed(rows(20_000, scale), chunk=500, pause=0.05)
    daemon = drill.make_daemon(
        [file_pipeline(feed)],
        {
            "supervisor": {"workers": 1},
            "clickhouse": {
                "pool": {
                    "host_cooldown": 0.001,
                    "max_host_cooldown": 0.005,
                    "retry": {
                        "max_attempts": 50,
                        "initial_backoff": 0.001,
                        "max_backoff": 0.002,
                        "deadline": 5.0,
                    },
                }
            },
            "spool": {"retry_backoff_max": 0.1},
        },
    )
    daemon.start()
    feed.start()
    drill.wait_rows(1000)
    drill.proxy.down()
    drill.note("ClickHouse down")

    def failures() -> float:
        return daemon.metric("chworkers_errors_total") or 0.0

    # At the 1,025th failure the cooldown used to overflow and leak the pool's slots.
    wait_until(lambda: failures() >= OUTAGE_FAILURES, 60, "failures")
    seen = failures()
    drill.note(f"{seen:.0f} failed ClickHouse operations; ClickHouse up")
    drill.proxy.up()
    feed.join()
    drill.settle(timeout=60)
    drill.verify()
    daemon.terminate(within=GRACEFUL + STOP_SLACK)
    if seen < OUTAGE_FAILURES:
        raise drill.fail(f"the outage made only {seen:.0f} failures")


@scenario("small-spool")
def small_spool_filesystem_with_clickhouse_down(drill: Drill, scale: float = 1.0) -> None:
    """The spool lives on a 1 MiB filesystem (a tmpfs when mounting is permitted, else a
    1 MiB cap with policy "reject") and ClickHouse is down while three times that much
    comes in from files and pushes: the file source waits at its position instead of
    skipping what the spool refused, pushes get 503 and are retried, nothing is left
    half-written, and once ClickHouse is back everything lands exactly once."""
    feed = drill.file_feed(rows(40_000, scale), chunk=1000, pause=0.02)
    with tmpfs(drill.workdir / "state" / "spool", "1m") as mounted:
        drill.note("spool on a 1 MiB tmpfs" if mounted else "spool capped at 1 MiB")
        spool = {} if mounted else {"max_bytes": "1MiB", "policy": "reject"}
        daemon = drill.make_daemon(
            [file_pipeline(feed, max_rows=500), push_pipeline(max_rows=500)],
            {"spool": spool, "http": {"spool_timeout": 0.5}},
        )
        daemon.start()
        drill.proxy.down()
        drill.note("ClickHouse down")
        feed.start()
        feed.join()
        time.sleep(1.0)  # three times the spool was written: it is full, the source waits
        push = drill.push_clients(clients=2, requests=max(5, round(15 * scale)), rows=200)
        push.start()
        time.sleep(drill.rng.uniform(1.0, 3.0))
        drill.note(
            f"{feed.ids.sent} lines written, {push.acked_rows} pushed rows acknowledged, "
            f"{daemon.spooled_rows()} rows spooled, answers {dict(push.statuses)}; "
            "ClickHouse up"
        )
        drill.proxy.up()
        drill.wait_pushed()
        drill.settle()
        drill.verify()
        daemon.terminate(within=GRACEFUL + STOP_SLACK)
        if not push.statuses["503"]:
            raise drill.fail(f"a full spool answered no 503: {dict(push.statuses)}")


@scenario("push-pressure")
def push_clients_under_spool_pressure(drill: Drill, scale: float = 1.0) -> None:
    """A small spool (policy "block", 0.3 s spool_timeout) and a ClickHouse that is slow,
    then down, then back: pushes that waited too long are answered 503 and retried by
    their clients; a 503 must mean none of the request was kept, so every id lands once."""
    daemon = drill.make_daemon(
        [push_pipeline(max_rows=400)],
        {"spool": {"max_bytes": "256KiB", "policy": "block"}, "http": {"spool_timeout": 0.3}},
    )
    daemon.start()
    drill.proxy.slow(0.3)
    drill.note("ClickHouse answers after 0.3 s")
    push = drill.push_clients(
        clients=6, requests=max(4, round(12 * scale)), rows=200, pause=0.0, retry_pause=0.05
    )
    push.start()
    time.sleep(drill.rng.uniform(1.0, 2.0))
    drill.proxy.down()
    drill.note(f"ClickHouse down; answers so far {dict(push.statuses)}")
    time.sleep(drill.rng.uniform(1.0, 3.0))
    drill.proxy.up()
    drill.note(f"ClickHouse up; answers so far {dict(push.statuses)}")
    drill.wait_pushed()
    drill.note(f"all pushes acknowledged; answers {dict(push.statuses)}")
    drill.settle(timeout=60)
    drill.verify()
    daemon.terminate(within=GRACEFUL + STOP_SLACK)
    if not push.statuses["503"]:
        raise drill.fail(f"the spool never pushed back: {dict(push.statuses)}")


@scenario("down-at-start")
def clickhouse_down_at_start(drill: Drill, scale: float = 1.0) -> None:
    """ClickHouse is unreachable when the daemon starts: intake and spooling start at
    once (every push answered 202, the files read into the spool, all while ClickHouse is
    still down), the tables are created once it comes, and then everything lands."""
    feed = drill.file_feed(rows(20_000, scale), chunk=1000, pause=0.05)
    daemon = drill.make_daemon([file_pipeline(feed), push_pipeline()])
    drill.proxy.down()
    drill.note("ClickHouse down")
    daemon.start(wait_ready=False)
    feed.start()
    push = drill.push_clients(clients=2, requests=max(4, round(10 * scale)), rows=100).start()
    drill.wait_pushed(timeout=60)
    feed.join()
    if not drill.wait_spooled(feed.ids.sent + push.acked_rows):
        raise drill.fail("the daemon did not spool what it was given while ClickHouse was down")
    drill.note(f"{daemon.spooled_rows()} rows spooled with ClickHouse down")
    time.sleep(drill.rng.uniform(0.5, 3.0))
    drill.proxy.up()
    drill.note("ClickHouse up")
    daemon.wait_ready()
    drill.settle()
    drill.verify()
    daemon.terminate(within=GRACEFUL + STOP_SLACK)


@scenario("embedded-killed", own_clickhouse=True)
def embedded_child_killed(drill: Drill, scale: float = 1.0) -> None:
    """The daemon's own embedded ClickHouse is SIGKILLed twice while rows come in: the
    daemon restarts it (same data, same port) and goes on. Then the daemon itself is
    killed -9 (the main process alone, or its group): its orphaned ClickHouse child must
    exit by itself, so that the next start can take the data directory and finish."""
    feed = drill.file_feed(rows(30_000, scale), chunk=500, pause=0.05)
    daemon = drill.make_daemon([file_pipeline(feed)])
    daemon.start()
    feed.start()
    for n in range(2):
        drill.wait_rows(2000 * (n + 1))
        time.sleep(drill.rng.uniform(0.0, 1.0))
        pid = daemon.kill_embedded_child()
        drill.note(f"killed the embedded ClickHouse (pid {pid})")

        def restarted(killed: int = pid) -> bool:
            return daemon.embedded_child() not in (None, killed)

        if not wait_until(restarted, 60, "embedded restarted"):
            raise drill.fail("the daemon did not restart its embedded ClickHouse within 60 s")
        drill.note(f"embedded ClickHouse back as pid {daemon.embedded_child()}")
    # Maybe while the restarted child is still starting (it used to outlive the daemon
    # then, holding the data directory: 12e3442).
    time.sleep(drill.rng.uniform(0.0, 1.5))
    daemon.kill9(group=drill.rng.random() < 0.5)
    daemon.start()
    feed.join()
    drill.settle(timeout=60)
    drill.verify()
    daemon.terminate(within=GRACEFUL + STOP_SLACK)
