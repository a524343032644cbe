"""In-process counters and histograms, rendered as Prometheus text (no dependency needed)."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

from tracker.events import V1_TYPES, V2_TYPES

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Label values of tracker_events_ingested_total: the types Bandwidth documents, and "other" for
# every type it does not (a client may send any string, and each label value lives for ever)
EVENT_TYPE_LABELS = V1_TYPES | V2_TYPES
OTHER = "other"


class Histogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def render(self, name: str) -> list[str]:
        lines = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Everything ``GET /metrics`` reports. Updated on the event loop only (no locks needed)."""

    def __init__(self) -> None:
        self.ingested: defaultdict[str, int] = defaultdict(int)
        self.duplicates = 0
        self.rejects: defaultdict[str, int] = defaultdict(int)
        self.auth_failures = 0
        self.query_auth_failures = 0
        self.storage_errors = 0
        self.forward_errors: defaultdict[str, int] = defaultdict(int)
        self.batch_events = Histogram(SIZE_BUCKETS)
        self.commit_seconds = Histogram(LATENCY_BUCKETS)
        self.ingest_seconds = Histogram(LATENCY_BUCKETS)
        self.forward_seconds = Histogram(LATENCY_BUCKETS)
        self.reconcile_answers: defaultdict[str, int] = defaultdict(int)

    def count_reconcile(self, kind: str) -> None:
        self.reconcile_answers[kind] += 1

    def count_ingested(self, event_type: str) -> None:
        self.ingested[event_type if event_type in EVENT_TYPE_LABELS else OTHER] += 1

    def render(self, last_seq: int, sse_clients: int, stale: int | None = None) -> str:
        out = [
            (
                "# HELP tracker_events_ingested_total Distinct events appended to the log, by "
                'type (types Bandwidth does not document count as "other").'
            ),
            "# TYPE tracker_events_ingested_total counter",
        ]
        for et, n in sorted(self.ingested.items()):
            out.append(f'tracker_events_ingested_total{{event_type="{_escape(et)}"}} {n}')
        out += [
            "# HELP tracker_duplicates_total Deliveries recognised as duplicates (not logged).",
            "# TYPE tracker_duplicates_total counter",
            f"tracker_duplicates_total {self.duplicates}",
            "# HELP tracker_rejects_total Refused bodies (quarantined), by reason.",
            "# TYPE tracker_rejects_total counter",
        ]
        for reason, n in sorted(self.rejects.items()):
            out.append(f'tracker_rejects_total{{reason="{_escape(reason)}"}} {n}')
        out += [
            "# HELP tracker_auth_failures_total Requests refused for missing or wrong credentials.",
            "# TYPE tracker_auth_failures_total counter",
            f'tracker_auth_failures_total{{scope="ingest"}} {self.auth_failures}',
            f'tracker_auth_failures_total{{scope="query"}} {self.query_auth_failures}',
            "# HELP tracker_storage_errors_total Group commits that failed (answered 503).",
            "# TYPE tracker_storage_errors_total counter",
            f"tracker_storage_errors_total {self.storage_errors}",
            "# HELP tracker_forward_errors_total Forwarded callbacks that failed, by kind.",
            "# TYPE tracker_forward_errors_total counter",
        ]
        for kind, n in sorted(self.forward_errors.items()):
            out.append(f'tracker_forward_errors_total{{kind="{_escape(kind)}"}} {n}')
        out += [
            "# HELP tracker_reconcile_answers_total Answers of Bandwidth's call API about stale"
            ' calls, by kind ("ended" ones are recorded as reconciled events).',
            "# TYPE tracker_reconcile_answers_total counter",
        ]
        for kind, n in sorted(self.reconcile_answers.items()):
            out.append(f'tracker_reconcile_answers_total{{kind="{_escape(kind)}"}} {n}')
        if stale is not None:
            out += [
                "# HELP tracker_stale_calls Calls not ended with nothing received for"
                " [reconcile] stale_after_seconds.",
                "# TYPE tracker_stale_calls gauge",
                f"tracker_stale_calls {stale}",
            ]
        out += [
            "# HELP tracker_log_last_seq The highest committed log position.",
            "# TYPE tracker_log_last_seq gauge",
            f"tracker_log_last_seq {last_seq}",
            "# HELP tracker_stream_clients Open /events/stream connections.",
            "# TYPE tracker_stream_clients gauge",
            f"tracker_stream_clients {sse_clients}",
            "# HELP tracker_batch_events Events per group commit.",
            "# TYPE tracker_batch_events histogram",
            *self.batch_events.render("tracker_batch_events"),
            "# HELP tracker_commit_seconds Time to write and commit one group.",
            "# TYPE tracker_commit_seconds histogram",
            *self.commit_seconds.render("tracker_commit_seconds"),
            "# HELP tracker_ingest_seconds Time from request start to answer on /callbacks.",
            "# TYPE tracker_ingest_seconds histogram",
            *self.ingest_seconds.render("tracker_ingest_seconds"),
            "# HELP tracker_forward_seconds Time the application took to answer.",
            "# TYPE tracker_forward_seconds histogram",
            *self.forward_seconds.render("tracker_forward_seconds"),
        ]
        return "\n".join(out) + "\n"
