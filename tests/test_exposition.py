"""The supervisor's HTTP endpoint: /metrics parsed with prometheus_client's parser,
/healthz and /readyz."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from chworkers import Supervisor
from chworkers.http.limits import HttpLimits
from chworkers.ops.exposition import MetricsEndpoint
from chworkers.ops.metrics import Metrics

pytestmark = pytest.mark.timeout(60)


def get(url: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status), r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, text = get(url)
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def fail(msg: str) -> None:
    raise RuntimeError(msg)


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    with Supervisor(workers=2, start_method="fork", metrics_port=0, queue_size=50) as s:
        yield s


def test_metrics_reflect_tasks_errors_queue_and_workers(sup: Supervisor) -> None:
    assert sup.metrics_url is not None
    assert sup.metrics_url.startswith("http://127.0.0.1:") and sup.metrics_url.endswith("/metrics")
    for f in [sup.call(os.getpid) for _ in range(25)]:
        f.result(20)
    before = scrape(sup.metrics_url)
    assert before[("chworkers_tasks_total", (("kind", "call"), ("outcome", "success")))] == 25
    assert before.get(("chworkers_errors_total", (("code", ""), ("kind", "task"))), 0) == 0
    assert before[("chworkers_task_duration_seconds_count", (("kind", "call"),))] == 25
    assert before[("chworkers_queue_capacity", ())] == 50
    assert before[("chworkers_queue_depth", ())] == 0
    assert before[("chworkers_workers", (("state", "idle"),))] == 2
    assert before[("chworkers_workers", (("state", "busy"),))] == 0
    assert before[("chworkers_build_info", (("version", "0.1.0"),))] == 1

    with pytest.raises(Exception, match="injected"):
        sup.call(fail, "injected").result(20)
    after = scrape(sup.metrics_url)
    assert after[("chworkers_errors_total", (("code", ""), ("kind", "task")))] == 1
    assert after[("chworkers_tasks_total", (("kind", "call"), ("outcome", "failure")))] == 1


def test_dead_workers_leave_no_series_behind_and_restarts_count(sup: Supervisor) -> None:
    import signal

    pid = sup.call(os.getpid).result(20)
    os.kill(pid, signal.SIGKILL)
    for f in [sup.call(os.getpid) for _ in range(10)]:
        assert f.result(20) != pid
    deadline = time.monotonic() + 20
    while True:  # the replacement starts after a short backoff (the worker died young)
        metrics = scrape(sup.metrics_url or "")
        if metrics[("chworkers_workers", (("state", "idle"),))] == 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metrics[("chworkers_worker_restarts_total", (("reason", "crashed"),))] == 1
    assert sum(v for (name, _), v in metrics.items() if name == "chworkers_workers") == 2
    assert not any(str(pid) in str(labels) for (_, labels) in metrics)


def test_health_and_readiness(sup: Supervisor) -> None:
    base = (sup.metrics_url or "").rsplit("/", 1)[0]
    status, ctype, body = get(base + "/healthz")
    assert status == 200 and ctype == "application/json" and json.loads(body)["status"] == "ok"
    status, _, body = get(base + "/readyz")
    assert status == 200 and json.loads(body)["workers_ready"] == 2
    assert get(base + "/nope")[0] == 404
    status, ctype, _ = get(base + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    sup.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/healthz", timeout=2)


def test_endpoint_reports_unavailable_with_the_reason() -> None:
    registry = CollectorRegistry()
    Counter("chworkers_demo_total", "demo", registry=registry).inc(3)
    state: dict[str, Any] = {"ok": False}
    endpoint = MetricsEndpoint(
        registry,
        port=0,
        healthy=lambda: (state["ok"], {"reason": "loop stalled"}),
        ready=lambda: (False, {"reason": "draining"}),
    )
    try:
        status, _, body = get(endpoint.url + "/healthz")
        assert status == 503 and json.loads(body) == {
            "status": "unavailable",
            "reason": "loop stalled",
        }
        assert get(endpoint.url + "/readyz")[0] == 503
        state["ok"] = True
        assert get(endpoint.url + "/healthz")[0] == 200
        assert scrape(endpoint.url + "/metrics")[("chworkers_demo_total", ())] == 3
    finally:
        endpoint.close()


def test_a_taken_port_is_a_config_error_and_leaves_nothing_running() -> None:
    import socket
    import threading

    from chworkers.errors import ConfigError

    taken = socket.create_server(("127.0.0.1", 0))
    # Threads an earlier test left shutting down may end meanwhile; only new ones count.
    before = set(threading.enumerate())
    try:
        sup = Supervisor(workers=1, metrics_port=taken.getsockname()[1])
        with pytest.raises(ConfigError) as info:
            sup.start()
        assert info.value.key == "metrics_port"
        assert sup.state == "failed"
        assert set(threading.enumerate()) - before == set()
    finally:
        taken.close()


def test_refusals_and_connections_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    observer = metrics.http_endpoint("metrics")
    endpoint = MetricsEndpoint(
        registry, limits=HttpLimits(max_connections=1), on_refusal=observer.on_refusal
    )
    observer.connections = lambda: endpoint.connections
    endpoint.refresh = observer.refresh

    def refused(reason: str) -> float | None:
        labels = {"endpoint": "metrics", "reason": reason}
        return registry.get_sample_value("chworkers_http_refused_total", labels)

    try:
        assert refused("busy") == 0.0  # the series exist before anything happens
        with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        wait_for(lambda: refused("malformed") == 1.0 and endpoint.connections == 0)
        with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as held:
            held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert held.recv(100).startswith(b"HTTP/1.1 200 ")  # kept alive: 1 of 1
            with socket.create_connection((endpoint.host, endpoint.port), timeout=5) as extra:
                answer = extra.recv(1000)
            assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
            assert refused("busy") == 1.0
            held.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            page = b""
            while b"chworkers_http_connections{" not in page:
                page += held.recv(65536)
            assert b'chworkers_http_connections{endpoint="metrics"} 1.0' in page
    finally:
        endpoint.close()
