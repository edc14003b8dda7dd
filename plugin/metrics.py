"""The service's metrics on ``prometheus-client``, with a cap on the label sets of each metric.

:class:`Registry` hands out counters, gauges and histograms registered on a registry of its own
(never the process-wide default), and renders them in the Prometheus text format::

    >>> reg = Registry()
    >>> hits = reg.counter("demo_requests_total", "Requests.", ("route", "status"))
    >>> hits.inc(route="/v1/search", status="200")
    >>> print(reg.render().splitlines()[2])
    demo_requests_total{route="/v1/search",status="200"} 1.0

The number of distinct label sets of each metric is capped (``max_series``, :data:`MAX_SERIES` by
default): a new label set beyond the cap is counted in one ``other`` series instead, so that a
client cannot blow up memory or ``/metrics`` by sending many distinct values. :class:`ServiceMetrics`
sizes each cap to its labels' closed sets, which bounds the whole exposition
(:attr:`ServiceMetrics.max_series`). The ``*_created`` timestamp series are switched off, so each
label set is one series (histograms: its buckets, sum and count).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_LATENCY_BUCKETS",
    "MAX_SERIES",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "ServiceMetrics",
]

prometheus_client.disable_created_metrics()

#: the Content-Type Prometheus expects for the text format
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
#: latency buckets in seconds, from 1 ms to 10 s
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
#: at most this many label sets per metric; further ones are folded into one ``other`` series
MAX_SERIES = 1000
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class _Metric:
    """A prometheus-client metric whose label sets are capped at ``max_series``."""

    _factory: Any = None
    #: the sample that holds a series' value (``value``/``count`` read it back)
    _suffix = ""

    def __init__(self, registry: CollectorRegistry, name: str, help: str, labelnames: Iterable[str] = (), *,
                 max_series: int = MAX_SERIES, **kwargs: Any) -> None:
        self.labelnames = tuple(labelnames)
        for ln in self.labelnames:
            if not _LABEL.match(ln) or ln.startswith("__") or ln == "le":
                raise ValueError(f"label name {ln!r} is not allowed in metric {name}")
        if int(max_series) < 1:
            raise ValueError(f"metric {name} needs max_series >= 1, got {max_series}")
        self.name = name
        self.max_series = int(max_series)
        self._registry = registry
        self._metric = self._factory(name, help, self.labelnames, registry=registry, **kwargs)
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def _child(self, labels: dict[str, object]) -> Any:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        if not self.labelnames:
            return self._metric
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            if key not in self._seen:
                if len(self._seen) >= self.max_series:
                    key = tuple("other" for _ in self.labelnames)
                else:
                    self._seen.add(key)
        return self._metric.labels(*key)

    def _sample(self, labels: dict[str, object]) -> float:
        name = self._metric._name + self._suffix  # the exposed name (a counter's ends in _total)
        value = self._registry.get_sample_value(name, {n: str(labels[n]) for n in self.labelnames})
        return 0.0 if value is None else float(value)


class Counter(_Metric):
    """A monotonically increasing count, per label set."""

    _factory = prometheus_client.Counter
    _suffix = "_total"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount={amount})")
        self._child(labels).inc(amount)

    def value(self, **labels: object) -> float:
        """The current value of one series (0 when it was never touched)."""
        return self._sample(labels)


class Gauge(_Metric):
    """A value that goes up and down, per label set."""

    _factory = prometheus_client.Gauge

    def set(self, value: float, **labels: object) -> None:
        self._child(labels).set(float(value))

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self._child(labels).dec(amount)

    def value(self, **labels: object) -> float:
        """The current value of one series (0 when it was never touched)."""
        return self._sample(labels)


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``_bucket``, ``_sum``, ``_count`` series)."""

    _factory = prometheus_client.Histogram
    _suffix = "_count"

    def __init__(self, registry: CollectorRegistry, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS, *, max_series: int = MAX_SERIES) -> None:
        bounds = sorted(float(b) for b in buckets if b != float("inf"))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name} needs distinct, finite bucket bounds")
        super().__init__(registry, name, help, labelnames, max_series=max_series, buckets=bounds)
        self.buckets = tuple(bounds)

    def observe(self, value: float, **labels: object) -> None:
        """Record one observation (e.g. a latency in seconds)."""
        self._child(labels).observe(float(value))

    def count(self, **labels: object) -> int:
        """How many observations one series holds."""
        return int(self._sample(labels))


class Registry:
    """Metrics on a prometheus-client registry of their own, rendered together."""

    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        self._metrics: list[_Metric] = []
        self._lock = threading.Lock()

    def _add(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            metric = cls(self._registry, *args, **kwargs)  # a duplicate name raises ValueError
            self._metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = (), *,
                max_series: int = MAX_SERIES) -> Counter:
        return self._add(Counter, name, help, labelnames, max_series=max_series)

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = (), *,
              max_series: int = MAX_SERIES) -> Gauge:
        return self._add(Gauge, name, help, labelnames, max_series=max_series)

    def histogram(self, name: str, help: str, labelnames: Iterable[str] = (),
                  buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS, *,
                  max_series: int = MAX_SERIES) -> Histogram:
        return self._add(Histogram, name, help, labelnames, buckets, max_series=max_series)

    @property
    def max_series(self) -> int:
        """The most series all registered metrics can hold together (each cap, plus its ``other``)."""
        with self._lock:
            return sum(m.max_series + 1 for m in self._metrics)

    def render(self) -> str:
        """All metrics in the Prometheus text format (ends with a newline)."""
        return generate_latest(self._registry).decode("utf-8")


class ServiceMetrics:
    """The metrics ``esdistill serve`` exports, on a registry of their own.

    Attributes:
        requests: ``esdistill_http_requests_total{route,method,status}``.
        request_latency: ``esdistill_http_request_duration_seconds{route}``.
        search_latency: ``esdistill_search_duration_seconds{arm,mode}`` (end to end, per A/B arm).
        stage_latency: ``esdistill_search_stage_duration_seconds{stage}`` (embed, es, rerank, ...).
        rerank: ``esdistill_rerank_total{arm,outcome}`` (outcome: full, partial, none, ...).
        ingested: ``esdistill_ingest_documents_total{result}``.
        es_unavailable: ``esdistill_es_unavailable_total{route}`` (answers 503).
        ready: ``esdistill_ready`` (1 when the last readiness check passed; the service re-checks on a
            scrape when its last check is a few seconds old).

    Every label comes from a closed set (route templates, a fixed list of methods, status codes, arms,
    modes, stages), and each metric's cap is sized to it, so :attr:`max_series` bounds the whole
    exposition whatever clients send.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r = self.registry
        self.requests = r.counter("esdistill_http_requests_total", "HTTP requests by route, method and status.",
                                  ("route", "method", "status"), max_series=400)
        self.request_latency = r.histogram("esdistill_http_request_duration_seconds",
                                           "HTTP request latency by route, in seconds.", ("route",), max_series=32)
        self.search_latency = r.histogram("esdistill_search_duration_seconds",
                                          "Search latency by A/B arm and mode, embedding included, in seconds.",
                                          ("arm", "mode"), max_series=64)
        self.stage_latency = r.histogram("esdistill_search_stage_duration_seconds",
                                         "Time spent per search stage, in seconds.", ("stage",), max_series=16)
        self.rerank = r.counter("esdistill_rerank_total", "Searches by A/B arm and rerank outcome.",
                                ("arm", "outcome"), max_series=64)
        self.ingested = r.counter("esdistill_ingest_documents_total", "Documents received by ingest result.",
                                  ("result",), max_series=8)
        self.es_unavailable = r.counter("esdistill_es_unavailable_total",
                                        "Requests answered 503 because Elasticsearch was unavailable.",
                                        ("route",), max_series=32)
        self.ready = r.gauge("esdistill_ready", "1 when the last readiness check passed, else 0.", max_series=1)

    @property
    def max_series(self) -> int:
        """The most series ``/metrics`` can ever show (histograms count once per label set)."""
        return self.registry.max_series

    def render(self) -> str:
        return self.registry.render()
