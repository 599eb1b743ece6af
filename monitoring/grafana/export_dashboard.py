"""The Mobile Export Monitoring dashboard: success rates, size trends, per-platform duration and the
comparison of runtimes and precisions, over the series real exports push.

Export series reach Prometheus through the Pushgateway (a CLI export is a short-lived process;
src/mobile_multimodal/observability/pushgateway.py): job="mobile-multimodal-llm" with
``instance`` = the host that exported, and ``format`` from the push's grouping key. That host
is not one of the server instances the ``$instance`` variable lists, so these panels select by
job and environment only.
"""

from __future__ import annotations

from panels import EXPORT_TIME, LOGS, NONE, QUANT_LOSS, Dashboard, quantile, target, thresholds

EXPORTS = 'job="mobile-multimodal-llm", environment=~"$environment"'
APP_QUANT = 'job="mobile-multimodal-llm", environment=~"$environment", instance=~"$instance"'
COMBINATION = "{{platform}} {{format}} {{quantization}}"
BY_COMBINATION = "sum by (platform, format, quantization)"


def mobile_export() -> Dashboard:
    d = Dashboard(
        "mobile-mm-export",
        "Mobile Export Monitoring",
        "Export success rates, model size trends, platform-specific metrics and runtime comparisons.",
        ["mobile-multimodal-llm", "export"],
    )
    d.row("Success")
    d.stat(
        "Export success rate (24h)",
        "Successful exports / all finished exports in the last 24 hours (mobile_exports_total).",
        [
            target(
                f'sum(increase(mobile_exports_total{{{EXPORTS}, status="success"}}[24h]))'
                f" / sum(increase(mobile_exports_total{{{EXPORTS}}}[24h]))",
                "success rate",
            )
        ],
        "percentunit",
        thresholds((0.9, "orange"), (0.99, "green"), base="red"),
        w=6,
        h=8,
    )
    d.timeseries(
        "Exports by outcome",
        "Finished exports per hour, successful and failed.",
        [target(f"sum by (status) (increase(mobile_exports_total{{{EXPORTS}}}[1h]))", "{{status}}")],
        "short",
        colours=["success"],
        w=9,
    )
    d.timeseries(
        "Export failures",
        "Failed exports per hour by platform and precision (the MobileExportFailures alert's series).",
        [
            target(
                f"sum by (platform, quantization) (increase(mobile_export_failures_total{{{EXPORTS}}}[1h]))",
                "{{platform}} {{quantization}}",
            )
        ],
        "short",
        w=9,
    )
    d.row("Duration and size")
    d.timeseries(
        "Export duration p95 by platform",
        "Validation included. Target below 1 min; SlowMobileExport above 5 min.",
        [
            target(
                quantile(0.95, "mobile_export_duration_seconds", EXPORTS, "platform", window="1h"),
                "{{platform}}",
            )
        ],
        "s",
        EXPORT_TIME,
        colours=["android", "ios"],
    )
    d.timeseries(
        "Exported bundle size",
        "Bytes of the latest successful bundle of each platform, format and precision: its trend.",
        [
            target(
                f"max by (platform, format, quantization) (mobile_export_size_bytes{{{EXPORTS}}})",
                COMBINATION,
            )
        ],
        "bytes",
    )
    d.row("Platform and runtime comparison")
    d.bargauge(
        "Size by platform, format and precision",
        "Latest successful bundle of each combination.",
        [
            target(
                f"max by (platform, format, quantization) (mobile_export_size_bytes{{{EXPORTS}}})",
                COMBINATION,
                instant=True,
            )
        ],
        "bytes",
        NONE,
        w=8,
    )
    d.table(
        "Mean export time (24h)",
        "Mean duration of the successful exports per platform, format and precision.",
        [
            target(
                f"{BY_COMBINATION} (increase(mobile_export_duration_seconds_sum{{{EXPORTS}}}[24h]))"
                f" / {BY_COMBINATION} (increase(mobile_export_duration_seconds_count{{{EXPORTS}}}[24h]))",
                "",
                instant=True,
                fmt="table",
            )
        ],
        unit="s",
        w=8,
    )
    d.bargauge(
        "Runtime latency by task",
        "Mean seconds per example of each task in the export's own runtime, measured at validation: "
        "runtimes and precisions side by side.",
        [
            target(
                f"max by (format, quantization, task) (mobile_export_runtime_latency_seconds{{{EXPORTS}}})",
                "{{format}} {{quantization}} {{task}}",
                instant=True,
            )
        ],
        "s",
        NONE,
        w=8,
    )
    d.bargauge(
        "Validation score by task",
        "Each task's primary metric on the exported bundle in its runtime (the PyTorch reference is in "
        "the bundle's manifest.json; a mismatch fails the export).",
        [
            target(
                f"max by (format, quantization, task) (mobile_export_validation_score{{{EXPORTS}}})",
                "{{format}} {{quantization}} {{task}}",
                instant=True,
            )
        ],
        "short",
        NONE,
        w=12,
    )
    d.bargauge(
        "Quantization accuracy loss",
        "The accuracy price of each quantization level on the served model; alert above 5%.",
        [
            target(
                f"quantization_accuracy_loss{{{APP_QUANT}}}", "{{quantization_type}} {{task}}", instant=True
            )
        ],
        "percentunit",
        QUANT_LOSS,
        w=12,
    )
    d.logs(
        "Export logs",
        "The guide's query: every log line of a mobile export.",
        f'{LOGS} | json | operation="mobile_export"',
    )
    return d
