"""A record longer than the limit is skipped whole, to its end; the records around it
are kept.

The framer dropped what it held of a too-long line (16 MiB without a newline) and then
took the rest of that line, up to its newline, for a record of its own: stdin and file
sources sent a fragment of it to ClickHouse (a parse error and a dead letter in
JSONEachRow; in TSV or CSV a row of wrong values that could land), and said "skipped"
once for every 16 MiB of it. A broker message of one whole record over the limit went
into memory whole (the framer checked only a record still open at the end of a read).
"""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect
import pytest
from clirun import run_chworkers
from daemonthread import daemon_config
from tomlfile import to_toml

from chworkers.daemon.brokers.assembly import Assembler, Message
from chworkers.daemon.framing import Framer
from chworkers.embedded import EmbeddedClickHouse
from chworkers.errors import PoisonMessageError

LIMIT = 16 * 1024 * 1024  # the sources' max_record_bytes


@pytest.mark.parametrize("fmt", ["JSONEachRow", "CSV", "TSV"])
def test_the_rest_of_a_skipped_record_is_no_record(fmt: str) -> None:
    skipped: list[str] = []
    framer = Framer(fmt, max_record_bytes=1000, on_skip=skipped.append)
    if fmt == "JSONEachRow":
        giant = b'{"s":"' + b"x" * 5000 + b'"}\n'
        data = b'{"n":1}\n' + giant + b'{"n":2}\n'
    elif fmt == "CSV":  # quoted newlines inside it: its end is the first one outside quotes
        giant = b'9,"' + b"x\n" * 2500 + b'"\n'
        data = b"1,a\n" + giant + b"2,b\n"
    else:
        giant = b"9\t" + b"x" * 5000 + b"\t7\n"  # its tail alone would be a valid row
        data = b"1\ta\t0\n" + giant + b"2\tb\t0\n"
    out = b""
    rows = 0
    for i in range(0, len(data), 300):
        records, count = framer.feed(data[i : i + 300])
        out, rows = out + records, rows + count
    records, count = framer.finish()
    out, rows = out + records, rows + count
    assert out == data.replace(giant, b"")
    assert rows == 2
    assert len(skipped) == 1, skipped


def test_a_broker_message_of_one_record_over_the_limit_is_poison() -> None:
    assembler = Assembler("JSONEachRow", max_record_bytes=1000)
    big = Message("1-0", b'{"s":"' + b"x" * 5000 + b'"}\n')
    with pytest.raises(PoisonMessageError, match="a record of 5009 bytes"):
        assembler.frame(big)
    many = Message("2-0", b'{"n":1}\n' * 500)  # over the limit in all, each record small
    assert assembler.frame(many)[1] == 500


@pytest.mark.timeout(180)
def test_stdin_with_a_giant_line_inserts_the_others_and_nothing_of_it(
    tmp_path: Path, endpoint: EmbeddedClickHouse, database: str
) -> None:
    conf = tmp_path / "c.toml"
    cfg = daemon_config(tmp_path / "state", f"{endpoint.url}/{database}", {"source": "stdin"})
    cfg["supervisor"]["workers"] = 1
    conf.write_text(to_toml(cfg))
    small = "".join(f'{{"n":{i},"s":"ok"}}\n' for i in range(1000))
    giant = '{"n":99999,"s":"' + "x" * (LIMIT + 3 * 1024 * 1024) + '"}\n'
    result = run_chworkers(
        "run", "-c", str(conf), input=small + giant + small.replace('"ok"', '"after"'), timeout=150
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stderr = result.stderr
    assert stderr.count("it was skipped") == 1, stderr[-3000:]
    client = clickhouse_connect.get_client(host=endpoint.host, port=endpoint.port)
    try:
        rows = client.query(f"SELECT s, count() FROM {database}.ev GROUP BY s ORDER BY s")
        assert rows.result_rows == [("after", 1000), ("ok", 1000)]
    finally:
        client.close()
    dead = [p for p in (tmp_path / "state" / "dead-letter").rglob("*") if p.is_file()]
    assert dead == []  # no fragment of the giant line went to ClickHouse
