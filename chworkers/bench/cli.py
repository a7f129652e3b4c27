"""``chworkers bench``: issue 11's comparisons against any ClickHouse, as a table and JSON."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.util
import logging
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from chworkers.bench import report
from chworkers.bench.data import QUICK, Env, Sizes, make_workdir
from chworkers.bench.runner import Result, measure
from chworkers.bench.target import DEFAULT_DATABASE, open_target
from chworkers.errors import BenchError, ChworkersError
from chworkers.settings import flags

log = logging.getLogger(__name__)
EXIT_INTERRUPTED = 130  # as the CLI's (chworkers.cli.main is above this layer's reach)

#: The comparison families (module ``chworkers.bench.NAME`` each), in the order they
#: run; ``--only`` takes their names. Imported only when they run: ``chworkers run``
#: builds this parser too and must start fast.
FAMILIES: dict[str, str] = {
    "rows": "row inserts: plain clickhouse-connect loop, fork-inherited Pool(2), "
    "Supervisor(workers=1/2).insert, rows made in the workers by submit",
    "columnar": "sup.insert(DataFrame) vs insert_df, Arrow tables and slices vs insert_arrow",
    "raw": "insert_raw vs raw POSTs of the same Native payload, by request size",
    "tasks": "sup.submit(trivial) and sup.call vs multiprocess.Pool(2).apply_async",
    "lease": "cross-process lease acquire+release p50/p99 vs a raw Pipe echo",
    "daemon": "chworkers run on a file of JSON lines vs raw POSTs of it in batch-sized pieces",
}


def register(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="measure chworkers' paths against plain clients on a ClickHouse server",
        description="Run issue 11's comparisons side by side (interleaved rounds, medians, "
        "ratios) against a ClickHouse server: the embedded endpoint by default, or --url. "
        "The benchmark creates its own database there and drops it at the end. Families: "
        + "; ".join(f"{name}: {text}" for name, text in FAMILIES.items()),
    )
    bench.add_argument(
        "--url",
        help="the ClickHouse server, http(s)://user:password@host:port without a database "
        "(default: start the embedded endpoint in a temporary directory)",
    )
    bench.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help="the database the benchmark creates and drops (default: %(default)s; an "
        "existing one not made by the benchmark is refused)",
    )
    bench.add_argument(
        "--only",
        action="append",
        choices=list(FAMILIES),
        metavar="NAME",
        help=f"run only this family (repeatable): {', '.join(FAMILIES)}",
    )
    bench.add_argument(
        "--quick", action="store_true", help="small sizes and 3 rounds: about two minutes"
    )
    bench.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    sizes = bench.add_argument_group("sizes (defaults: the full run; --quick makes them small)")
    sizes.add_argument("--rounds", type=int, help="counted rounds per comparison (5)")
    sizes.add_argument("--rows", type=int, help="rows per round (2,000,000)")
    sizes.add_argument("--batch", type=int, help="rows per batch (100,000)")
    sizes.add_argument(
        "--raw-sizes",
        type=_sizes,
        help="rows per request for insert_raw vs raw POST, comma-separated "
        "(10000,100000,1000000,2000000)",
    )
    sizes.add_argument("--tasks", type=int, help="tasks per round for submit (20,000)")
    sizes.add_argument("--lease-trips", type=int, help="lease round trips per round (5,000)")
    sizes.add_argument("--daemon-lines", type=int, help="JSON lines for the daemon (1,000,000)")
    sizing = bench.add_argument_group("sizing for your server")
    sizing.add_argument(
        "--workers",
        type=_sizes,
        help="worker counts to run the Supervisor and daemon paths with, comma-separated "
        "(default 1,2; issue 11's targets are for 1 and 2)",
    )
    sizing.add_argument(
        "--connections",
        type=int,
        help="max_connections of those paths: ClickHouse requests in flight across the "
        "workers (default: one per worker)",
    )
    bench.set_defaults(handler=_bench)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"chworkers.bench.{name}")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected counts like 1,2,4") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive counts like 1,2,4")
    return values


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    given = {
        name: getattr(args, name)
        for name in (
            "rounds",
            "rows",
            "batch",
            "raw_sizes",
            "tasks",
            "lease_trips",
            "daemon_lines",
            "workers",
            "connections",
        )
        if getattr(args, name) is not None
    }
    sizes = replace(sizes, **given)
    sizes.check()
    return sizes


class Progress:
    """One line on a terminal, rewritten in place."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r\x1b[K{elapsed:5.0f} s  {text}"[:200])
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def _available(name: str) -> str | None:
    """Why family ``name`` cannot run here (a missing optional package), or None."""
    missing = [
        m for m in getattr(_module(name), "REQUIRES", ()) if importlib.util.find_spec(m) is None
    ]
    return f"needs {', '.join(missing)} (pip install {' '.join(missing)})" if missing else None


def _bench(args: argparse.Namespace) -> int:
    sizes = sizes_from(args)
    names = [name for name in FAMILIES if name in (args.only or FAMILIES)]
    skipped: dict[str, str] = {}
    for name in names:
        why = _available(name)
        if why is not None and args.only:
            raise BenchError(f"{name}: {why}")
        if why is not None:
            skipped[name] = why
    progress = Progress(sys.stderr) if sys.stderr.isatty() else None
    started, clock, load_before = dt.datetime.now(dt.UTC), time.monotonic(), os.getloadavg()
    results: list[Result] = []
    notes: list[str] = []
    failed: dict[str, str] = {}
    with contextlib.ExitStack() as outer:
        if "log.level" not in flags.given(args):  # supervisors' start/stop lines would drown it
            for noisy in ("chworkers.workers", "chworkers.embedded"):
                logger = logging.getLogger(noisy)
                outer.callback(logger.setLevel, logger.level)  # as it was, for the caller
                logger.setLevel(logging.WARNING)
        if progress is not None:
            outer.callback(progress.clear)
        target = outer.enter_context(open_target(args.url, args.database))
        workdir = Path(outer.enter_context(make_workdir()))
        env = Env(target, sizes, workdir, progress)
        where = (
            "the embedded endpoint (started for this run)" if target.embedded else target.shown_url
        )
        log.info(
            "benchmarking ClickHouse %s at %s, database %s", target.version, where, target.database
        )
        for name in names:
            if name in skipped:
                log.warning("%s: skipped: %s", name, skipped[name])
                continue
            try:
                family_started = time.monotonic()
                results.extend(_family(name, env, notes))
                log.info("%s: measured in %.0f s", name, time.monotonic() - family_started)
            except KeyboardInterrupt:
                failed[name] = "interrupted"
                break
            except Exception as exc:  # one family's failure is no reason to lose the others
                log.error("%s: %s", name, exc, exc_info=not isinstance(exc, ChworkersError))
                failed[name] = f"{type(exc).__name__}: {exc}"
        server = {
            "url": "embedded" if target.embedded else target.shown_url,
            "version": target.version,
            "database": target.database,
        }
    seconds = time.monotonic() - clock
    print(report.table(results))
    print(
        f"\n{sizes.rounds} interleaved round(s) after a warm-up, medians; ClickHouse "
        f"{server['version']} ({server['url']}); {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} (was {load_before[0]:.1f} at the start); {seconds:.0f} s"
    )
    for note in notes:
        print(note)
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    for name, why in failed.items():
        print(f"{name}: FAILED: {why}")
    if args.json is not None:
        doc = report.document(
            results,
            server=server,
            options={**asdict(sizes), "only": names, "skipped": skipped, "failed": failed},
            started=started,
            seconds=seconds,
            load_before=load_before,
        )
        report.write_json(args.json, doc)
    if "interrupted" in failed.values():
        return EXIT_INTERRUPTED
    return 1 if failed else 0


def _family(name: str, env: Env, notes: list[str]) -> list[Result]:
    """Family ``name``'s results; its resources (supervisors, pools) are gone on return."""
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        for group in _module(name).groups(env, stack):
            results.extend(measure(group, env.sizes.rounds, env.progress))
            if group.note:
                notes.append(f"{group.title}: {group.note}")
    return results
