"""A small, thread-safe metrics registry that renders the Prometheus text format (version 0.0.4).

No external dependency: counters, gauges and histograms with labels, enough for the service's
``/metrics``. :class:`ServiceMetrics` declares what the service exports::

    >>> reg = Registry()
    >>> hits = reg.counter("demo_requests_total", "Requests.", ("route", "status"))
    >>> hits.inc(route="/v1/search", status="200")
    >>> print(reg.render().splitlines()[2])
    demo_requests_total{route="/v1/search",status="200"} 1.0

Label values are escaped as the format requires (backslash, double quote, newline). The number of
distinct label sets of each metric is capped (``max_series``, :data:`MAX_SERIES` by default): a new
label set beyond the cap is counted in one ``other`` series instead, so that a client cannot blow up
memory or ``/metrics`` by sending many distinct values. :class:`ServiceMetrics` sizes each cap to its
labels' closed sets, which bounds the whole exposition (:attr:`ServiceMetrics.max_series`).
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterable, Sequence

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

#: the Content-Type Prometheus expects for the text format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: latency buckets in seconds, from 1 ms to 10 s
DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
#: at most this many label sets per metric; further ones are folded into one ``other`` series
MAX_SERIES = 1000
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(float(v))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values)) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (), *,
                 max_series: int = MAX_SERIES) -> None:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not valid in Prometheus ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        for ln in self.labelnames:
            if not _LABEL.match(ln) or ln.startswith("__") or ln == "le":
                raise ValueError(f"label name {ln!r} is not allowed in metric {name}")
        if int(max_series) < 1:
            raise ValueError(f"metric {name} needs max_series >= 1, got {max_series}")
        self.max_series = int(max_series)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, object], series: dict) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        if key not in series and len(series) >= self.max_series:
            key = tuple("other" for _ in self.labelnames)
        return key

    def header(self) -> list[str]:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


class _Scalar(_Metric):
    """One float per label set: the storage, reading and exposition Counter and Gauge share."""

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (), *,
                 max_series: int = MAX_SERIES) -> None:
        super().__init__(name, help, labelnames, max_series=max_series)
        self._values: dict[tuple[str, ...], float] = {}

    def _add(self, amount: float, labels: dict[str, object]) -> None:
        with self._lock:
            key = self._key(labels, self._values)
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        """The current value of one series (0 when it was never touched)."""
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels_text(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Counter(_Scalar):
    """A monotonically increasing count, per label set."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount={amount})")
        self._add(amount, labels)


class Gauge(_Scalar):
    """A value that goes up and down, per label set."""

    kind = "gauge"

    def set(self, value: float, **labels: object) -> None:
        with self._lock:
            self._values[self._key(labels, self._values)] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self._add(-amount, labels)


class Histogram(_Metric):
    """Observations counted into cumulative buckets (``_bucket``, ``_sum``, ``_count`` series)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS, *, max_series: int = MAX_SERIES) -> None:
        super().__init__(name, help, labelnames, max_series=max_series)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name} needs distinct, finite bucket bounds")
        self.buckets = tuple(bounds)
        # per series: counts per bucket (non-cumulative, last = +Inf), sum
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: object) -> None:
        """Record one observation (e.g. a latency in seconds)."""
        value = float(value)
        with self._lock:
            key = self._key(labels, self._series)
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def count(self, **labels: object) -> int:
        """How many observations one series holds."""
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            entry = self._series.get(key)
            return sum(entry[0]) if entry else 0

    def samples(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._series.items())
        names = (*self.labelnames, "le")
        for key, (counts, total) in items:
            running = 0
            for bound, c in zip((*self.buckets, math.inf), counts):
                running += c
                out.append(f"{self.name}_bucket{_labels_text(names, (*key, _fmt(bound)))} {_fmt(running)}")
            out.append(f"{self.name}_sum{_labels_text(self.labelnames, key)} {_fmt(total)}")
            out.append(f"{self.name}_count{_labels_text(self.labelnames, key)} {_fmt(running)}")
        return out


class Registry:
    """Holds metrics by name and renders them all."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = (), *,
                max_series: int = MAX_SERIES) -> Counter:
        metric = Counter(name, help, labelnames, max_series=max_series)
        return self._add(metric)  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = (), *,
              max_series: int = MAX_SERIES) -> Gauge:
        return self._add(Gauge(name, help, labelnames, max_series=max_series))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, labelnames: Iterable[str] = (),
                  buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS, *,
                  max_series: int = MAX_SERIES) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets,  # type: ignore[return-value]
                                   max_series=max_series))

    @property
    def max_series(self) -> int:
        """The most series all registered metrics can hold together (each cap, plus its ``other``)."""
        with self._lock:
            return sum(m.max_series + 1 for m in self._metrics.values())

    def render(self) -> str:
        """All metrics in the Prometheus text format (ends with a newline)."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for m in metrics:
            lines.extend(m.header())
            lines.extend(m.samples())
        return "\n".join(lines) + "\n"


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
