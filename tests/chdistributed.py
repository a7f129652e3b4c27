"""Which shard a real ``Distributed`` table in chDB sends each row to.

chDB runs no server, so a Distributed table cannot deliver to its shards; but an
asynchronous insert into it (``distributed_foreground_insert = 0``) first splits the
block with ClickHouse's own selector and writes each shard's part to the table's
``shardN_replica1/`` directory, where it waits for a sender we keep stopped. Reading
those files back with the ``Distributed`` input format tells exactly which rows
ClickHouse put on which shard.

It runs in a child process (chDB is ~280 MB and starts threads a later ``fork()`` in the
test process should not inherit); ``distributed_shards()`` is the test's side.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

_CONFIG = """<clickhouse>
  <remote_servers>
    <sharded>
{shards}
    </sharded>
  </remote_servers>
</clickhouse>
"""
_SHARD = (
    "      <shard><weight>{weight}</weight><replica><host>127.0.0.1</host>"
    "<port>19000</port></replica></shard>"
)


def distributed_shards(
    columns: str, sharding_key: str, weights: Sequence[int], rows: Sequence[dict[str, object]]
) -> list[list[dict[str, object]]]:
    """The rows (JSONEachRow objects of ``columns``) each shard of a Distributed table with
    ``sharding_key`` and shard ``weights`` receives, in shard order."""
    spec = {"columns": columns, "key": sharding_key, "weights": list(weights), "rows": list(rows)}
    with tempfile.TemporaryDirectory(prefix="chdistributed-") as tmp:
        done = subprocess.run(
            [sys.executable, __file__, tmp],
            input=json.dumps(spec).encode(),
            capture_output=True,
            timeout=180,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the chDB Distributed child failed: {done.stderr.decode()[-2000:]}")
    result: list[list[dict[str, object]]] = json.loads(done.stdout)
    return result


def _child(tmp: str) -> None:
    from chdb import _chdb

    spec = json.loads(sys.stdin.buffer.read())
    config = os.path.join(tmp, "config.xml")
    shards = "\n".join(_SHARD.format(weight=w) for w in spec["weights"])
    with open(config, "w") as f:
        f.write(_CONFIG.format(shards=shards))
    conn = _chdb.connect(f"file:{os.path.join(tmp, 'data')}?config-file={config}")

    def query(sql: str, fmt: str = "TSV") -> str:
        return str(conn.query(sql, fmt).bytes().decode())

    query(f"CREATE TABLE local ({spec['columns']}) ENGINE = Memory")
    query(
        f"CREATE TABLE dist ({spec['columns']}) "
        f"ENGINE = Distributed('sharded', currentDatabase(), 'local', {spec['key']})"
    )
    query("SYSTEM STOP DISTRIBUTED SENDS dist")
    body = "\n".join(json.dumps(r) for r in spec["rows"])
    query("INSERT INTO dist SETTINGS distributed_foreground_insert = 0 FORMAT JSONEachRow\n" + body)
    (path,) = json.loads(
        query("SELECT data_paths FROM system.tables WHERE name = 'dist'", "JSONCompactEachRow")
    )[0]
    out: list[list[object]] = []
    for shard in range(1, len(spec["weights"]) + 1):
        files = sorted(glob.glob(os.path.join(path, f"shard{shard}_replica1", "*.bin")))
        rows: list[object] = []
        for name in files:
            text = query(f"SELECT * FROM file('{name}', 'Distributed')", "JSONEachRow")
            rows.extend(json.loads(line) for line in text.split("\n") if line)
        out.append(rows)
    conn.close()
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    _child(sys.argv[1])
