"""Measure what hostile or careless clients cost chworkers' three HTTP servers (issue 9, item 7).

Each server runs in a process of its own with its default limits (what users get): the
daemon's push endpoint, the metrics endpoint and the embedded ClickHouse endpoint. Raw
sockets then send it:

- ``Content-Length: -1`` and a chunk size of -1, each followed by ``--junk-mib`` of data
  sent as fast as the server takes it: the answer, how much was sent before it, and the
  growth of the server's RSS (sampled every 20 ms);
- 200 concurrent requests, once each (no retry): how many were answered, refused with
  503, reset or left unanswered;
- 300 idle connections: the server's thread count a second later, and how many the
  server closed within ``idle_timeout`` + 5 s (``--idle-wait``);
- a slowloris client (one header byte every 0.5 s): how long until the server cut it off.

Run: ``.venv/bin/python benchmarks/bench_http_limits.py [--junk-mib 1024] [--only ingest]``.
With ``PYTHONPATH`` pointing at an older checkout it measures that code (servers without
limits are started with the arguments they had).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SERVER = r"""
import sys, threading
from pathlib import Path
kind, directory = sys.argv[1], Path(sys.argv[2])
if kind == "ingest":
    from chworkers.daemon.batcher import Batcher, BatchLimits
    from chworkers.daemon.ingest import IngestServer, Route
    from chworkers.daemon.options import HttpSettings, SpoolSettings
    from chworkers.daemon.spool import Spool
    spool = Spool(directory / "spool", SpoolSettings(fsync=False, policy="reject"))
    batcher = Batcher(spool, lambda batch: None, limits=BatchLimits(max_delay=0.01))
    server = IngestServer({"events": Route("events", "push")}, batcher, HttpSettings(port=0))
    server.start()
    print(server.url, flush=True)
else:
    from prometheus_client import CollectorRegistry
    from chworkers.ops.exposition import MetricsEndpoint
    print(MetricsEndpoint(CollectorRegistry()).url, flush=True)
threading.Event().wait()
"""

REQUESTS = {
    "ingest": ("POST /ingest/events", b'{"a": 1}\n'),
    "metrics": ("GET /metrics", b""),
    "embedded": ("POST /", b"SELECT 1"),
}
MiB = 1 << 20


class Server:
    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self._ch: Any = None
        if kind == "embedded":
            from chworkers.embedded import EmbeddedClickHouse

            self._ch = EmbeddedClickHouse(directory).start()
            self.host, self.port, self.pid = self._ch.host, self._ch.port, self._ch.pid
            return
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, kind, str(directory)], stdout=subprocess.PIPE
        )
        assert self._proc.stdout is not None
        url = self._proc.stdout.readline().decode().strip()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.pid = host, int(port), self._proc.pid

    def close(self) -> None:
        if self._ch is not None:
            self._ch.close()
        else:
            self._proc.kill()
            self._proc.wait()

    def head(self, *headers: str) -> bytes:
        line = REQUESTS[self.kind][0]
        return ("\r\n".join([f"{line} HTTP/1.1", "Host: bench", *headers]) + "\r\n\r\n").encode()

    def request(self) -> bytes:
        body = REQUESTS[self.kind][1]
        return self.head(*([f"Content-Length: {len(body)}"] if body else [])) + body

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))


def status_of(data: bytes) -> int | None:
    if not data.startswith(b"HTTP/1."):
        return None
    return int(data.split(b" ", 2)[1])


def junk_after(server: Server, head: bytes, junk_mib: int) -> dict[str, Any]:
    """Send ``head`` then junk until the server answers (or the junk is all sent)."""
    rss_before = server.rss()
    peak = rss_before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, server.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sock = server.connect()
    sock.sendall(head)
    answer = b""
    sent = 0
    piece = b"x" * MiB
    started = time.monotonic()
    try:
        sock.setblocking(False)
        while sent < junk_mib * MiB and not answer:
            try:
                answer = sock.recv(65536)
                if not answer:
                    break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(piece)
            except BlockingIOError:
                time.sleep(0.001)
        sock.settimeout(10)
        if not answer:
            sock.shutdown(socket.SHUT_WR)  # all sent: the server may answer now
            answer = sock.recv(65536)
    except OSError as exc:
        answer = answer or type(exc).__name__.encode()
    finally:
        sock.close()
    time.sleep(0.5)
    stop.set()
    sampler.join()
    return {
        "answer": status_of(answer) or answer[:40].decode("latin-1", "replace") or None,
        "sent_mib": round(sent / MiB, 1),
        "seconds": round(time.monotonic() - started, 2),
        "rss_growth_mib": round((peak - rss_before) / MiB, 1),
    }


def concurrent(server: Server, clients: int = 200) -> dict[str, int]:
    barrier = threading.Barrier(clients)
    outcomes: Counter[str] = Counter()

    def client() -> None:
        barrier.wait(60)
        try:
            with server.connect(timeout=60) as sock:
                sock.sendall(server.request())
                outcomes[str(status_of(sock.recv(65536)) or "no answer")] += 1
        except OSError as exc:
            outcomes[type(exc).__name__] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return dict(outcomes)


def idle(server: Server, count: int, wait: float) -> dict[str, Any]:
    before = server.threads()
    socks = [server.connect() for _ in range(count)]
    time.sleep(1.0)
    threads = server.threads() - before
    closed = 0
    deadline = time.monotonic() + wait
    for sock in socks:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while sock.recv(65536):
                pass
            closed += 1
        except TimeoutError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return {"extra_threads": threads, "closed_by_server": closed, "of": count}


def slowloris(server: Server, cap: float = 60.0) -> dict[str, Any]:
    line = REQUESTS[server.kind][0]
    sock = server.connect()
    sock.sendall(f"{line} HTTP/1.1\r\n".encode())
    started = time.monotonic()
    answer = b""
    try:
        sock.settimeout(0.5)
        while time.monotonic() - started < cap:
            try:
                answer = sock.recv(65536)
                break
            except TimeoutError:
                sock.send(b"X")
    except OSError:
        pass
    finally:
        sock.close()
    held = time.monotonic() - started
    return {
        "cut_off_after_s": round(held, 1) if held < cap else f"not within {cap:g} s",
        "answer": status_of(answer) if answer else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--junk-mib", type=int, default=1024)
    parser.add_argument("--idle-wait", type=float, default=35.0)
    parser.add_argument("--only", choices=sorted(REQUESTS), action="append")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for kind in args.only or ["ingest", "metrics", "embedded"]:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(kind, Path(tmp))
            try:
                r: dict[str, Any] = {"baseline_rss_mib": round(server.rss() / MiB)}
                r["content_length_-1"] = junk_after(
                    server, server.head("Content-Length: -1"), args.junk_mib
                )
                r["chunk_size_-1"] = junk_after(
                    server, server.head("Transfer-Encoding: chunked") + b"-1\r\n", args.junk_mib
                )
                r["200_concurrent"] = concurrent(server)
                r["300_idle"] = idle(server, 300, args.idle_wait)
                r["slowloris"] = slowloris(server)
            finally:
                server.close()
        results[kind] = r
        print(json.dumps({kind: r}), flush=True)


if __name__ == "__main__":
    main()
