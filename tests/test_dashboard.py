"""The Grafana dashboard in etc/ asks only for what the server exports: every
metric a query names, with the labels it groups or filters by."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from mcp_twisted.metrics import Metrics
from tests.test_tap import ETC

DASHBOARD = ETC / "grafana-mcp-twisted.json"
# Labels Prometheus adds when it scrapes, and the histogram's buckets.
SCRAPE_LABELS = {"instance", "job"}


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric the server exports (each
    labelled one used once, so that its labels show)."""
    metrics = Metrics()
    metrics.factory = SimpleNamespace(  # type: ignore[assignment]  # what the live gauges read
        connections=[], draining=False, host=SimpleNamespace(sessions={object(): "websocket"}, in_flight=0))
    metrics.observer("websocket")("tools/call", "ok", 0.01)
    metrics.handshake_refusals.labels("draining").inc()
    metrics.connections_accepted.labels("websocket").inc()
    metrics.connection_closed(1001)
    samples: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_every_query_names_an_exported_metric_and_its_labels():
    dashboard = json.loads(DASHBOARD.read_text())
    metrics = exported()
    found = list(queries(dashboard))
    assert len(found) > 15
    for query in found:
        names = re.findall(r"\bmcp_\w+", query)
        assert names, query
        for name in names:
            assert name in metrics, f"{name} (in {query}) is not exported"
        labels = set(re.findall(r"(\w+)\s*(?:=~|!=|=)\s*\"", query))
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", query):
            labels |= {label.strip() for label in grouping.split(",")}
        known = set().union(*(metrics[name] for name in names)) | SCRAPE_LABELS
        assert labels <= known, f"{query}: labels {labels - known} are not exported"


def test_the_dashboard_covers_what_operators_watch():
    text = DASHBOARD.read_text()
    for metric in ("mcp_sessions_open", "mcp_requests_total", "mcp_request_duration_seconds_bucket",
                   "mcp_buffered_bytes", "mcp_handshake_refusals_total", "mcp_draining"):
        assert metric in text, metric
    assert "histogram_quantile(0.99" in text
