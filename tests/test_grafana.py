"""grafana/: the dashboard and the Prometheus rules use only metrics chworkers exports.

The names in chworkers/ops/*metrics.py are the contract. Here they are taken from what
prometheus_client actually exposes for a fully populated :class:`Metrics` registry
(``_total``, ``_bucket``, ``_info`` suffixes included), and every metric name in every
dashboard query and rule expression must be one of them, or a recording rule the rules
file defines. tests/test_prometheus.py runs the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from chworkers.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "chworkers-dashboard.json"
RULES = ROOT / "grafana" / "prometheus" / "chworkers.rules.yml"

#: Series Prometheus itself provides.
BUILTIN_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
#: Labels Prometheus or the multiprocess exposition add to every chworkers series.
TARGET_LABELS = {"job", "instance", "pid"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "atan2", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(\s*\()?")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels,
    durations and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match[1], match[2]
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, str]]:
    """``(metric, matchers)`` for each ``metric{...}`` in an expression."""
    return [(m[1], m[2]) for m in _SELECTOR.finditer(expr)]


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, table) (rate(chworkers_x_bucket{job=~"$job", '
        'le!="1"}[$__rate_interval]))) / on (job) group_left max without (pid) '
        '(job:chworkers_y:rate5m offset 5m) > 0.5 and up{job="a"} unless vector(1) or '
        'label_replace(foo, "dst", "$1", "src", "(.*)")'
    )
    assert metric_names(expr) == {"chworkers_x_bucket", "job:chworkers_y:rate5m", "up", "foo"}


def populated_metrics() -> Metrics:
    """A Metrics registry with one child for every labelled instrument."""
    metrics = Metrics(CollectorRegistry())
    for instrument in vars(metrics).values():
        if isinstance(instrument, MetricWrapperBase) and instrument._labelnames:
            instrument.labels(*("x" for _ in instrument._labelnames))
    return metrics


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample names chworkers exposes, each with its label names."""
    text = generate_latest(populated_metrics().registry).decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """``(where, expr)`` for every query of the dashboard: panels, variables, annotations."""
    d = dashboard()
    found = [
        (f"panel {p['title']!r}", t["expr"]) for p in d["panels"] for t in p.get("targets", [])
    ]
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            query = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"])
            assert query, var["query"]
            found.append((f"variable ${var['name']}", query[1]))
    for annotation in d["annotations"]["list"]:
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def known_names(exported: dict[str, set[str]]) -> set[str]:
    return set(exported) | recorded() | BUILTIN_SERIES


# --- names ---------------------------------------------------------------------------


def test_catalogue_exposes_what_the_rules_expect(exported: dict[str, set[str]]) -> None:
    # A few anchors, so that a broken exposition cannot make the checks below vacuous.
    assert "chworkers_rows_inserted_total" in exported
    assert "chworkers_insert_duration_seconds_bucket" in exported
    assert "chworkers_build_info" in exported
    assert exported["chworkers_errors_total"] == {"kind", "code"}


def test_dashboard_uses_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    known = known_names(exported)
    for where, expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: unknown {sorted(names - known)} in {expr!r}"


def test_rules_use_only_exported_metrics(exported: dict[str, set[str]]) -> None:
    known = known_names(exported)
    for rule in rules():
        names = metric_names(rule["expr"])
        where = rule.get("alert") or rule["record"]
        assert names, f"{where}: no metric in {rule['expr']!r}"
        assert names <= known, f"{where}: unknown {sorted(names - known)}"


def test_label_matchers_name_real_labels(exported: dict[str, set[str]]) -> None:
    exprs = dashboard_exprs() + [(r.get("alert") or r["record"], r["expr"]) for r in rules()]
    checked = 0
    for where, expr in exprs:
        for metric, matchers in selectors(_STRING.sub('""', expr)):
            if metric not in exported:
                continue  # recording rules and built-ins
            labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
            allowed = exported[metric] | TARGET_LABELS
            assert labels <= allowed, f"{where}: {metric} has no label {labels - allowed}"
            checked += 1
    assert checked > 20


def test_every_recording_rule_is_used() -> None:
    used = set()
    for _, expr in dashboard_exprs():
        used |= metric_names(expr)
    for rule in rules():
        used |= metric_names(rule["expr"])
    assert recorded() <= used, recorded() - used


def test_recording_rules_follow_the_naming_convention() -> None:
    for name in recorded():
        level, metric, operation = name.split(":")
        assert level and operation, name
        assert metric.startswith("chworkers_"), name


# --- dashboard structure -----------------------------------------------------------------


def test_dashboard_is_importable_json() -> None:
    d = dashboard()
    assert d["uid"] == "chworkers-overview"
    assert d["title"] == "chworkers"
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert "id" not in d or d["id"] is None  # an id would clash on import
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[:3] == ["datasource", "job", "instance"]
    assert d["templating"]["list"][0]["query"] == "prometheus"


def test_every_panel_has_a_query_on_the_chosen_datasource() -> None:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["title"] and panel.get("description"), panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no query"
        refs = [t["refId"] for t in targets]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_is_templated_on_job_and_instance() -> None:
    for where, expr in dashboard_exprs():
        if where.startswith("variable"):
            continue
        for metric, matchers in selectors(expr):
            assert 'job=~"$job"' in matchers, f"{where}: {metric} not filtered by $job"
            assert 'instance=~"$instance"' in matchers, f"{where}: {metric} not by $instance"


def test_panel_ids_are_unique_and_the_grid_does_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize(
    ("needle", "what"),
    [
        ("chworkers_pool_connections_in_use", "pool in use"),
        ("chworkers_pool_connections_idle", "pool idle"),
        ("chworkers_pool_connections_max", "pool max"),
        ("chworkers_pool_waiters", "pool waiting"),
        ("chworkers_rows_inserted", "rows/s per table"),
        ("chworkers_bytes_inserted", "bytes/s per table"),
        ("histogram_quantile(0.5, sum by (le) (job_instance_table_le:chworkers_insert", "p50"),
        ("histogram_quantile(0.95, sum by (le) (job_instance_table_le:chworkers_insert", "p95"),
        ("histogram_quantile(0.99, sum by (le) (job_instance_table_le:chworkers_insert", "p99"),
        ("sum by (kind, code) (rate(chworkers_errors_total", "errors by kind and code"),
        ("chworkers_retries_total", "retries"),
        ("chworkers_queue_depth", "queue depth"),
        ("chworkers_spool_bytes", "spool size"),
        ("chworkers_spool_oldest_age_seconds", "spool age"),
        ("chworkers_dead_letter_rows_total", "dead letters"),
        ("chworkers_table_active_parts", "active parts per partition"),
        ("chworkers_parts_batch_factor", "slowed tables"),
        ("chworkers_too_many_parts_total", "TOO_MANY_PARTS refusals"),
        ("chworkers_partition_splits_total", "batches split by partition"),
        ("sum by (state) (chworkers_workers", "workers by state"),
        ("chworkers_worker_restarts_total", "restarts"),
        ("chworkers_worker_memory_bytes", "worker memory"),
        ("chworkers_worker_memory_limit_bytes", "the memory limit workers are recycled at"),
        ("chworkers_table_limit_wait_seconds_bucket", "waits for per-table insert limits"),
        ("chworkers_table_limit_waiting", "inserts waiting for their table's limits"),
        ("chworkers_workers_target", "the worker count aimed at"),
        ("chworkers_worker_scaling_total", "autoscaling's changes"),
        ("sum by (shard) (rate(chworkers_shard_rows_total", "rows per shard"),
        ("chworkers_shard_backlog_batches", "each shard's parts waiting"),
        ("chworkers_shard_errors_total", "each shard's failed attempts"),
        ("chworkers_shard_replicas_up", "each shard's replicas that answer"),
    ],
)
def test_dashboard_shows(needle: str, what: str) -> None:
    assert any(needle in expr for _, expr in dashboard_exprs()), what


# --- docs --------------------------------------------------------------------------------

INSTALL = ROOT / "deploy" / "INSTALL.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_is_documented_where_its_runbook_points() -> None:
    text = INSTALL.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    alerts = [rule for rule in rules() if "alert" in rule]
    assert alerts
    for rule in alerts:
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "deploy/INSTALL.md", rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]


def test_install_guide_names_only_files_that_exist() -> None:
    text = INSTALL.read_text()
    paths = set(re.findall(r"(?<![\w/])((?:deploy|grafana)/[\w./@-]+\w)", text))
    assert len(paths) >= 6
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing


def test_readme_links_the_deployment_guide() -> None:
    assert "(deploy/INSTALL.md)" in (ROOT / "README.md").read_text()
