"""Push the export history of one (host, platform, format, quantization) to a Prometheus Pushgateway.

A CLI export is a short-lived process: its in-process series (export_telemetry.py) die with it, so
nothing would ever scrape them. It pushes instead, when ``MOBILE_MM_PUSHGATEWAY_URL`` is set.

What is pushed, and why it is a *history* rather than this process's counters: a Pushgateway
keeps the last push of each group and Prometheus scrapes that. Were every export to push its own
fresh counters, ``mobile_exports_total`` would read 1 for ever (``increase()`` sees nothing, the
success rate and MobileExportFailures go blind), and the next export of the same group would
replace the previous one's series. So the exporting process first records the export in the
database (store/export_records.py), then pushes the complete history of its group as counted
there: totals by outcome, a duration histogram over every successful export, and the latest
successful export's size, validation scores and runtime latency. Each push is the whole truth
about its group (PUT replaces the group), counters only grow while the database keeps its rows,
and a scrape shows:

- one group per ``{job="mobile-multimodal-llm", instance=<host>, platform, format, quantization}``:
  exports of other formats, precisions or machines never overwrite each other;
- per host, because each machine's database counts its own exports: two machines sharing a
  PostgreSQL database still push disjoint histories (the store filters by host).

The metric names, help texts and buckets are those declared in metrics.py (read from the
declarations, not repeated here), so a pushed series and an in-process one are the same series.
Prometheus scrapes the Pushgateway with ``honor_labels: true`` so the pushed job and instance win.

Example::

    group = ExportGroup("build-host", "android", "onnx", "int2", counts={"success": 3, "failure": 1},
                        durations_s=[41.0, 39.5, 40.2], size_bytes=2_400_000,
                        validation_scores={"ocr": 0.93}, runtime_latency_s={"ocr": 0.004})
    push_export_group("http://pushgateway:9091", group)
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.error import URLError

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.identity import SERVICE_NAME

JOB = SERVICE_NAME  # dashboards and alert rules select job="mobile-multimodal-llm"
STATUSES = ("success", "failure")
_log = logging.getLogger("mobile_multimodal.export")


@dataclass(frozen=True)
class ExportGroup:
    """Every finished export of one platform, format and precision on one host."""

    host: str
    platform: str
    format: str
    quantization: str
    counts: Mapping[str, int] = field(default_factory=dict)  # status (success|failure) -> exports
    durations_s: Sequence[float] = ()  # of the successful exports, as the in-process histogram
    size_bytes: int | None = None  # the latest successful export's
    validation_scores: Mapping[str, float] = field(default_factory=dict)  # task -> primary metric
    runtime_latency_s: Mapping[str, float] = field(default_factory=dict)  # task -> s per example

    def __post_init__(self) -> None:
        unknown = set(self.counts) - set(STATUSES)
        if unknown:
            # probably a store status (succeeded/failed) passed as is, so refuse rather than push it
            raise ValueError(f"export status labels are {STATUSES}, got {sorted(unknown)}")

    @property
    def grouping_key(self) -> dict[str, str]:
        return {
            "instance": self.host,
            "platform": self.platform,
            "format": self.format,
            "quantization": self.quantization,
        }


def _describe(metric: object) -> tuple[str, str]:
    """(name, help) of a metric declared in metrics.py; counters without their _total suffix."""
    (family,) = metric.describe()  # type: ignore[attr-defined]
    return str(family.name), str(family.documentation)


def _cumulative_buckets(durations: Sequence[float]) -> list[tuple[str, float]]:
    ordered = sorted(durations)
    buckets = [
        (repr(float(edge)), float(bisect.bisect_right(ordered, edge))) for edge in metrics.EXPORT_BUCKETS
    ]
    return [*buckets, ("+Inf", float(len(ordered)))]


class ExportGroupCollector(Collector):
    """The series of one :class:`ExportGroup`, named exactly as metrics.py declares them."""

    def __init__(self, group: ExportGroup) -> None:
        self.group = group

    def collect(self) -> Iterator[Metric]:
        g = self.group
        short = [g.platform, g.quantization]  # the guide's metrics carry only these two labels
        full = [g.platform, g.format, g.quantization]

        name, doc = _describe(metrics.EXPORTS)
        exports = CounterMetricFamily(name, doc, labels=["platform", "format", "quantization", "status"])
        for status in STATUSES:
            exports.add_metric([*full, status], g.counts.get(status, 0))
        yield exports

        name, doc = _describe(metrics.EXPORT_FAILURES)
        failures = CounterMetricFamily(name, doc, labels=["platform", "quantization"])
        failures.add_metric(short, g.counts.get("failure", 0))
        yield failures

        name, doc = _describe(metrics.EXPORT_DURATION)
        duration = HistogramMetricFamily(name, doc, labels=["platform", "quantization"])
        duration.add_metric(short, _cumulative_buckets(g.durations_s), float(sum(g.durations_s)))
        yield duration

        if g.size_bytes is not None:
            name, doc = _describe(metrics.EXPORT_SIZE)
            size = GaugeMetricFamily(name, doc, labels=["platform", "quantization"])
            size.add_metric(short, g.size_bytes)
            yield size

        for metric, values in (
            (metrics.EXPORT_VALIDATION_SCORE, g.validation_scores),
            (metrics.EXPORT_RUNTIME_LATENCY, g.runtime_latency_s),
        ):
            if values:
                name, doc = _describe(metric)
                family = GaugeMetricFamily(name, doc, labels=["platform", "format", "quantization", "task"])
                for task, value in sorted(values.items()):
                    family.add_metric([*full, task], value)
                yield family


def group_registry(group: ExportGroup) -> CollectorRegistry:
    """A registry holding only ``group``'s series (what a push sends)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ExportGroupCollector(group))
    return registry


def push_export_group(url: str, group: ExportGroup, *, timeout_s: float = 10.0) -> bool:
    """Replace ``group`` on the Pushgateway at ``url``; False (and a warning) when it cannot.

    A failed push never fails the export: the export is recorded in the database either way
    and the next push of the group carries it.
    """
    try:
        push_to_gateway(
            url, job=JOB, registry=group_registry(group), grouping_key=group.grouping_key, timeout=timeout_s
        )
    except (URLError, OSError, ValueError) as exc:  # HTTPError is a URLError; ValueError: bad URL
        _log.warning(
            "export metrics not pushed to %s: %s",
            url,
            exc,
            extra={"operation": "mobile_export_push", **group.grouping_key},
        )
        return False
    _log.info(
        "export metrics pushed",
        extra={"operation": "mobile_export_push", "pushgateway": url, **group.grouping_key},
    )
    return True
