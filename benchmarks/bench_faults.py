"""The fault matrix in a loop: random scenarios at random moments for N minutes.

The scenarios are the test suite's (tests/faults/scenarios.py, run by
tests/faults/test_fault_matrix.py at a size that fits CI); here they run one after
another, each with a fresh seed from the run's seed, against one embedded ClickHouse
(through a fault proxy, in a database per round) or the daemon's own embedded child.
Every round ends with rows sent == rows in ClickHouse == distinct ids, an empty spool
and the dead letters accounted; a round that does not is printed with its seed (replay
it with ``--seed-round SEED --scenario NAME``) and its work directory is kept.

Run: ``.venv/bin/python benchmarks/bench_faults.py [--minutes 10] [--scale 1.0]
[--scenario NAME ...] [--seed N]``
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "faults"), str(ROOT / "tests")]

import clickhouse_connect  # noqa: E402
import scenarios  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from harness import Drill, DrillError, OwnClickHouse, ProxiedClickHouse  # noqa: E402

from chworkers.embedded import EmbeddedClickHouse  # noqa: E402


@dataclass
class Tally:
    rounds: int = 0
    ok: int = 0
    rows: int = 0
    dead_letters: int = 0
    starts: int = 0
    faults: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run_round(
    name: str, seed: int, scale: float, endpoint: EmbeddedClickHouse, workdir: Path
) -> tuple[dict[str, int], float]:
    """One scenario; its verified figures and duration (raises on a mismatch)."""
    sc = scenarios.SCENARIOS[name]
    admin = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    database = f"faults_{uuid.uuid4().hex[:12]}"
    proxy: FaultProxy | None = None
    drill: Drill | None = None
    started = time.monotonic()
    try:
        if sc.own_clickhouse:
            drill = Drill(workdir, OwnClickHouse(), seed)
        else:
            admin.command(f"CREATE DATABASE {database}")
            proxy = FaultProxy((endpoint.host, endpoint.port))
            drill = Drill(workdir, ProxiedClickHouse(endpoint, database, proxy), seed)
        sc.run(drill, scale)
        figures = {
            "rows": drill.expected_rows() + drill.generated,
            "faults": drill.faults(),
            "dead_letters": len(drill.files.poison) if drill.files is not None else 0,
            "starts": drill.daemon.starts if drill.daemon is not None else 0,
        }
        return figures, time.monotonic() - started
    finally:
        if drill is not None:
            drill.close()
        if proxy is not None:
            proxy.close()
        admin.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to loop")
    parser.add_argument("--scale", type=float, default=1.0, help="rows and rounds per scenario")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(scenarios.SCENARIOS),
        help="run only these (repeatable; default: all)",
    )
    parser.add_argument("--seed", type=int, help="the run's seed (default: random)")
    parser.add_argument("--seed-round", type=int, help="run one round with this seed and stop")
    args = parser.parse_args()

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    rng = random.Random(seed)
    names = args.scenario or sorted(scenarios.SCENARIOS)
    print(
        f"fault matrix: {', '.join(names)}; {args.minutes:g} min, scale {args.scale:g}, "
        f"run seed {seed}",
        flush=True,
    )
    tallies: dict[str, Tally] = collections.defaultdict(Tally)
    base = Path(tempfile.mkdtemp(prefix="chworkers-faults-"))
    endpoint = EmbeddedClickHouse(base / "clickhouse")
    endpoint.start()
    began = time.monotonic()
    deadline = began + args.minutes * 60
    kept: list[Path] = []
    try:
        n = 0
        one = args.seed_round is not None
        while (n == 0) if one else time.monotonic() < deadline:
            n += 1
            name = rng.choice(names)
            round_seed = args.seed_round if args.seed_round is not None else rng.randrange(1, 2**31)
            workdir = base / f"round-{n:04d}-{name}"
            workdir.mkdir()
            tally = tallies[name]
            tally.rounds += 1
            at = time.monotonic() - began
            try:
                figures, took = run_round(name, round_seed, args.scale, endpoint, workdir)
            except Exception as exc:  # a mismatch (DrillError) or the drill broke
                took = time.monotonic() - began - at
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                tally.failures.append(f"seed {round_seed}: {first}")
                tally.seconds += took
                kept.append(workdir)
                print(
                    f"[{at:6.0f}s] {name:<16} seed {round_seed:<10} FAILED after "
                    f"{took:.0f} s: {first}\n  kept {workdir}",
                    flush=True,
                )
                if not isinstance(exc, DrillError):
                    traceback.print_exc()
                continue
            tally.ok += 1
            tally.rows += figures["rows"]
            tally.dead_letters += figures["dead_letters"]
            tally.starts += figures["starts"]
            tally.faults += figures["faults"]
            tally.seconds += took
            print(
                f"[{at:6.0f}s] {name:<16} seed {round_seed:<10} ok: {figures['rows']:>7,} "
                f"rows exact, {figures['dead_letters']} dead letters, {figures['faults']} "
                f"faults, {figures['starts']} daemon starts, {took:.1f} s",
                flush=True,
            )
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        endpoint.close()
    elapsed = time.monotonic() - began
    print(
        f"\n{sum(t.rounds for t in tallies.values())} rounds in {elapsed / 60:.1f} min "
        f"(run seed {seed}):"
    )
    print(
        "| scenario | rounds | exact | rows sent = in ClickHouse = distinct | dead letters "
        "| faults injected | daemon starts | mean s/round |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in sorted(tallies):
        t = tallies[name]
        print(
            f"| {name} | {t.rounds} | {t.ok} | {t.rows:,} | {t.dead_letters} | {t.faults} "
            f"| {t.starts} | {t.seconds / max(1, t.rounds):.1f} |"
        )
    failures = [(name, f) for name, t in sorted(tallies.items()) for f in t.failures]
    for name, failure in failures:
        print(f"MISMATCH {name}: {failure}")
    if kept:
        print(f"work directories of failed rounds kept under {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
