"""What spooling by reference costs and saves on the daemon's side, without ClickHouse:
a file source reading into the spool (fsync on, as deployed), then every batch read back
as the dispatcher does, with ``spool_data = "copy"`` and ``"reference"``, interleaved.

Two shapes: one large file (the bulk load ``chworkers bench --only daemon`` measures
end to end), and many small files (where reference pays per file: a hard link and an
fsync of the file, against one batch file per batch for copies).

Run: ``flock /work/coord/bench.lock .venv/bin/python benchmarks/bench_spool_refs.py``
(``--help`` for sizes). Prints the median seconds and CPU seconds per mode and shape.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from chworkers.daemon.batcher import Batcher, BatchLimits
from chworkers.daemon.checkpoints import Checkpoints
from chworkers.daemon.filesource import FileSource
from chworkers.daemon.options import SpoolSettings
from chworkers.daemon.spool import Spool, SpooledBatch


def make_lines(start: int, stop: int) -> bytes:
    return b"".join(
        b'{"n":%d,"user":"u%d","event":"view","value":%d.5}\n' % (i, i % 977, i % 1000)
        for i in range(start, stop)
    )


def one_run(files: list[Path], work: Path, by_reference: bool) -> tuple[float, float]:
    """Read ``files`` into a fresh spool and read every batch back; (wall, CPU) seconds."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    spool = Spool(work / "spool", SpoolSettings())
    batches: list[SpooledBatch] = []
    batcher = Batcher(spool, batches.append)
    source = FileSource(
        [str(f) for f in files],
        checkpoints=Checkpoints(work / "positions"),
        name="bench",
        table="events",
        format="JSONEachRow",
        batcher=batcher,
        limits=BatchLimits(max_rows=100_000, max_bytes=1 << 30, max_delay=60),
        by_reference=by_reference,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    source.run(threading.Event())
    batcher.close()
    rows = 0
    for batch in batches:
        rows += spool.load(batch).rows
        spool.remove(batch)
    spool.links.refresh(force=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines of the large file")
    parser.add_argument("--files", type=int, default=2_000, help="number of small files")
    parser.add_argument("--file-lines", type=int, default=50, help="lines per small file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to work (default: a temp dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-spool-refs-", dir=args.dir))
    try:
        large = root / "large.json"
        large.write_bytes(make_lines(0, args.lines))
        small_dir = root / "small"
        small_dir.mkdir()
        small = []
        for i in range(args.files):
            path = small_dir / f"f{i:06d}.json"
            path.write_bytes(make_lines(i * args.file_lines, (i + 1) * args.file_lines))
            small.append(path)
        shapes = {
            f"1 file of {args.lines:,} lines": [large],
            f"{args.files:,} files of {args.file_lines} lines": small,
        }
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for files in shapes.values():
            for mode in ("copy", "reference"):  # a warm-up round each
                one_run(files, root / "work", mode == "reference")
        for _ in range(args.rounds):
            for shape, files in shapes.items():
                for mode in ("copy", "reference"):
                    got = one_run(files, root / "work", mode == "reference")
                    results.setdefault((shape, mode), []).append(got)
        print(f"{args.rounds} interleaved rounds after a warm-up, medians (fsync on)")
        print("| shape | mode | seconds | CPU seconds |\n| --- | --- | ---: | ---: |")
        for (shape, mode), runs in results.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(f"| {shape} | {mode} | {wall:.3f} | {cpu:.3f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
