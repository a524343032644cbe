"""What ``GET /metrics`` reports, kept and rendered by ``prometheus_client``.

One process: the values live in this app's own registry. Several worker processes (``tracker
serve --workers N``): the main process points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before it starts them, so every worker keeps its values in memory-mapped files there (the
library's multiprocess mode, chosen when it is imported), and a scrape on any worker sums the
files of every worker, those of workers that died included: the counts are the service's, not
one process's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.values import MutexValue, ValueClass

from tracker.events import V1_TYPES, V2_TYPES

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Label values of tracker_events_ingested_total: the types Bandwidth documents, and "other" for
# every type it does not (a client may send any string, and each label value lives for ever)
EVENT_TYPE_LABELS = V1_TYPES | V2_TYPES
OTHER = "other"
MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"  # set: several workers share the counts


class _AtScrape(Collector):
    """A gauge whose value is read at each scrape (from the storage: the log's, whichever
    process committed), not kept per process: ``tracker_log_last_seq``."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.value is not None:
            yield GaugeMetricFamily(self.name, self.documentation, value=self.value)


class Metrics:
    """Everything ``GET /metrics`` reports (a registry per app, so apps never share counts)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.ingested = Counter(
            "tracker_events_ingested",
            "Distinct events appended to the log, by type (types Bandwidth does not document "
            'count as "other").',
            ["event_type"],
            registry=r,
        )
        self._ingested: dict[str, Counter] = {}
        self.duplicates = Counter(
            "tracker_duplicates", "Deliveries recognised as duplicates (not logged).", registry=r
        )
        self.rejects = Counter(
            "tracker_rejects", "Refused bodies (quarantined), by reason.", ["reason"], registry=r
        )
        failures = Counter(
            "tracker_auth_failures",
            "Requests refused for missing or wrong credentials.",
            ["scope"],
            registry=r,
        )
        self.auth_failures = failures.labels("ingest")
        self.query_auth_failures = failures.labels("query")
        self.storage_errors = Counter(
            "tracker_storage_errors", "Group commits that failed (answered 503).", registry=r
        )
        self.forward_errors = Counter(
            "tracker_forward_errors",
            "Forwarded callbacks that failed, by kind.",
            ["kind"],
            registry=r,
        )
        self.stream_clients = Gauge(
            "tracker_stream_clients",
            "Open /events/stream connections.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_events = Histogram(
            "tracker_batch_events", "Events per group commit.", buckets=SIZE_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "tracker_commit_seconds",
            "Time to write and commit one group.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "tracker_ingest_seconds",
            "Time from request start to answer on /callbacks.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_seconds = Histogram(
            "tracker_forward_seconds",
            "Time the application took to answer.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconcile_answers = Counter(
            "tracker_reconcile_answers",
            "Answers of Bandwidth's call API about stale calls, by kind"
            ' ("ended" ones are recorded as reconciled events).',
            ["kind"],
            registry=r,
        )
        self._head = _AtScrape("tracker_log_last_seq", "The highest committed log position.")
        self._stale = _AtScrape(
            "tracker_stale_calls",
            "Calls not ended with nothing received for [reconcile] stale_after_seconds.",
        )
        r.register(self._head)
        r.register(self._stale)
        # the library's mode was chosen when it was imported: in-process values ignore the dir
        self._shared = None if ValueClass is MutexValue else os.environ.get(MULTIPROC_DIR)

    def count_ingested(self, event_type: str, n: int = 1) -> None:
        label = event_type if event_type in EVENT_TYPE_LABELS else OTHER
        child = self._ingested.get(label)
        if child is None:
            child = self._ingested[label] = self.ingested.labels(label)
        child.inc(n)

    def count_reconcile(self, kind: str) -> None:
        self.reconcile_answers.labels(kind).inc()

    def render(self, last_seq: int, stale: int | None = None) -> bytes:
        """The Prometheus text of this app, or of every worker together (multiprocess mode);
        ``last_seq`` and ``stale`` are read from the storage at the scrape."""
        self._head.value = last_seq
        self._stale.value = stale
        if not self._shared:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        together = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(together, path=self._shared)  # type: ignore[no-untyped-call]
        together.register(self._head)
        together.register(self._stale)
        return generate_latest(together)
