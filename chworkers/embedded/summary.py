"""The statistics of one request, sent back as ``X-ClickHouse-Summary``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Stats:
    """What ClickHouse reports in ``X-ClickHouse-Summary``."""

    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    started: float = 0.0

    def add_result(self, res: Any) -> None:
        self.read_rows += int(res.rows_read())
        self.read_bytes += int(res.bytes_read())
        self.written_rows += int(res.rows_written())
        self.written_bytes += int(res.bytes_written())

    def summary(self) -> str:
        elapsed_ns = int((time.monotonic() - self.started) * 1e9) if self.started else 0
        result_rows, result_bytes = self.result_rows, self.result_bytes
        if self.written_rows and not result_rows:
            # An INSERT's result is what it wrote (query_log's result_rows, and the
            # summary ClickHouse sends for it).
            result_rows, result_bytes = self.written_rows, self.written_bytes
        values = {
            "read_rows": self.read_rows,
            "read_bytes": self.read_bytes,
            "written_rows": self.written_rows,
            "written_bytes": self.written_bytes,
            "total_rows_to_read": self.read_rows,
            "result_rows": result_rows,
            "result_bytes": result_bytes,
            "elapsed_ns": elapsed_ns,
        }
        # ClickHouse writes every number as a JSON string.
        return json.dumps({k: str(v) for k, v in values.items()}, separators=(",", ":"))
