"""chDB's own non-streaming ``query()``, in a child process, as the reference for results.

The endpoint must answer a query with exactly what chDB returns for it in one piece.
The reference runs in a process of its own (chDB is ~280 MB and starts threads that a
later ``fork()`` in the test process should not inherit). Protocol on stdin/stdout: one
JSON line ``{"query": ..., "format": ...}`` per request; the answer is an 8-byte length
(negative for an error message) and the bytes.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tempfile
from typing import IO


class Reference:
    """``Reference().query(sql, fmt)``: the bytes chDB's ``query()`` returns."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def query(self, sql: str, fmt: str) -> bytes:
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps({"query": sql, "format": fmt}).encode() + b"\n")
        stdin.flush()
        (length,) = struct.unpack("<q", _read(stdout, 8))
        data = _read(stdout, abs(length))
        if length < 0:
            raise RuntimeError(data.decode("utf-8", "replace"))
        return data

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=60)


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise RuntimeError("the chDB reference process ended")
    return data


def _serve() -> None:
    from chdb import _chdb

    with tempfile.TemporaryDirectory(prefix="chdb-reference-") as path:
        conn = _chdb.connect(path)
        out = sys.stdout.buffer
        for line in sys.stdin.buffer:
            request = json.loads(line)
            try:
                data = conn.query(request["query"], request["format"]).bytes()
                out.write(struct.pack("<q", len(data)) + data)
            except RuntimeError as exc:
                message = str(exc).encode()
                out.write(struct.pack("<q", -len(message)) + message)
            out.flush()
        conn.close()


if __name__ == "__main__":
    _serve()
