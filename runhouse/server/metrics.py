"""The daemon's Prometheus metrics (``GET /metrics``, token required like every route but ``/health``).

One :class:`prometheus_client.CollectorRegistry` of the daemon's own (never the process-wide default one)::

    runhouse_calls_total{name, method, kind}              runs finished: calls, map batches, commands (method "")
    runhouse_call_errors_total{name, method, kind}        of those, the ones not done (failed, crashed, cancelled)
    runhouse_call_duration_seconds{name, method, kind}    histogram of their durations
    runhouse_runs_in_flight                               runs going now
    runhouse_worker_restarts_total{env, role}             workers that exited on their own (a crash, a kill)
    runhouse_bytes_in_total / runhouse_bytes_out_total    bytes of requests and answers (direct calls' too)

The label children of each (name, method, kind) are looked up once and cached: a finished run costs three
dictionary lookups and three increments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from runhouse.server.runs import COMMAND, DONE, Run

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Call latencies are sub-millisecond on the hot path and hours for training jobs.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class DaemonMetrics:
    """The counters and histograms of one daemon."""

    def __init__(self, in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("name", "method", "kind")
        self.calls = Counter("runhouse_calls", "Runs finished", labels, registry=self.registry)
        self.errors = Counter("runhouse_call_errors", "Runs that failed, crashed or were cancelled", labels,
                              registry=self.registry)
        self.latency = Histogram("runhouse_call_duration_seconds", "How long runs took", labels,
                                 buckets=_BUCKETS, registry=self.registry)
        self.restarts = Counter("runhouse_worker_restarts", "Workers that exited on their own (crash, kill)",
                                ("env", "role"), registry=self.registry)
        self.bytes_in = Counter("runhouse_bytes_in", "Request body bytes received", registry=self.registry)
        self.bytes_out = Counter("runhouse_bytes_out", "Response body bytes sent", registry=self.registry)
        Gauge("runhouse_runs_in_flight", "Runs going now", registry=self.registry).set_function(in_flight)
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def run_finished(self, run: Run) -> None:
        key = (run.name, "" if run.kind == COMMAND else run.method, run.kind)  # a command's text is no label
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.calls.labels(*key), self.errors.labels(*key),
                                              self.latency.labels(*key))
        calls, errors, latency = children
        calls.inc()
        if run.status != DONE:
            errors.inc()
        latency.observe((run.ended_at or run.started_at) - run.started_at)

    def worker_exited(self, env: str, role: str) -> None:
        self.restarts.labels(env, role).inc()

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
