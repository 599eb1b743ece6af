"""The Mobile Multi-Modal Overview and Model Performance dashboards."""

from __future__ import annotations

from panels import (
    APP,
    CPU,
    DISK_FREE,
    ERROR_RATIO,
    ERROR_RATIO_EXPR,
    LATENCY,
    LOAD_TIME,
    LOGS,
    MEMORY,
    MODEL,
    NONE,
    QUANT_LOSS,
    UP_MAPPINGS,
    Dashboard,
    quantile,
    target,
    thresholds,
)


def overview() -> Dashboard:
    d = Dashboard(
        "mobile-mm-overview",
        "Mobile Multi-Modal Overview",
        "System health, key performance indicators, error rates, response times and resources.",
        ["mobile-multimodal-llm", "overview"],
    )
    d.row("System health")
    d.stat(
        "Service status",
        "up: Prometheus can scrape the app (ServiceDown fires after 1 min of DOWN).",
        [target(f"up{{{APP}}}", "{{instance}}")],
        "none",
        thresholds((1, "green"), base="red"),
        UP_MAPPINGS,
    )
    d.stat(
        "Firing alerts",
        "Alerts of this service firing now (all severities).",
        [
            target(
                'count(ALERTS{alertstate="firing", service="mobile-multimodal-llm"}) or vector(0)', "alerts"
            )
        ],
        "none",
        thresholds((1, "red")),
    )
    d.stat(
        "Requests / s",
        "Inference requests per second, every task and outcome.",
        [target(f"sum(rate(model_inference_requests_total{{{MODEL}}}[$__rate_interval]))", "requests")],
        "reqps",
    )
    d.stat(
        "Error rate (5m)",
        "Share of inference requests that did not succeed (alerts at 10% and 50%).",
        [target(ERROR_RATIO_EXPR, "errors")],
        "percentunit",
        ERROR_RATIO,
    )
    d.stat(
        "p95 latency (5m)",
        "95th percentile inference latency (alerts at 100 ms and 1 s).",
        [target(quantile(0.95, "model_inference_duration_seconds", MODEL, window="5m"), "p95")],
        "s",
        LATENCY,
    )
    d.stat(
        "Uptime",
        "Time since the app process started.",
        [target(f"time() - process_start_time_seconds{{{APP}}}", "{{instance}}")],
        "s",
    )
    d.row("Traffic, errors and response times")
    d.timeseries(
        "Requests by task",
        "Inference requests per second by task.",
        [
            target(
                f"sum by (task) (rate(model_inference_requests_total{{{MODEL}}}[$__rate_interval]))",
                "{{task}}",
            )
        ],
        "reqps",
        colours=["captioning", "ocr", "vqa", "retrieval"],
        stack=True,
    )
    d.timeseries(
        "Requests by outcome",
        "success, error, rejected (queue full) and timeout.",
        [
            target(
                f"sum by (status) (rate(model_inference_requests_total{{{MODEL}}}[$__rate_interval]))",
                "{{status}}",
            )
        ],
        "reqps",
        colours=["success", "error", "rejected", "timeout"],
        stack=True,
    )
    d.timeseries(
        "Inference latency p50 / p95 / p99",
        "Dashed lines: the 100 ms warning and 1 s critical alerts.",
        [
            target(quantile(q, "model_inference_duration_seconds", MODEL), name, ref)
            for q, name, ref in ((0.5, "p50", "A"), (0.95, "p95", "B"), (0.99, "p99", "C"))
        ],
        "s",
        LATENCY,
        colours=["p50", "p95", "p99"],
    )
    d.timeseries(
        "Error rate",
        "Share of requests that did not succeed; dashed: the 10% and 50% alerts.",
        [target(ERROR_RATIO_EXPR, "error rate")],
        "percentunit",
        ERROR_RATIO,
    )
    d.timeseries(
        "Errors per second by endpoint",
        "The app's own 60 s window (error_rate_by_endpoint).",
        [target(f"error_rate_by_endpoint{{{APP}}}", "{{endpoint}} {{error_type}}")],
        "reqps",
    )
    d.timeseries(
        "HTTP responses by status code",
        "Every HTTP response of the app, by status code.",
        [target(f"sum by (status) (rate(http_requests_total{{{APP}}}[$__rate_interval]))", "{{status}}")],
        "reqps",
    )
    d.row("Resource utilization")
    d.timeseries(
        "CPU",
        "Host CPU (alert at 90%) and the app process (percent of one core).",
        [
            target(f"system_cpu_usage_percent{{{APP}}}", "host {{instance}}"),
            target(f"process_cpu_usage_percent{{{APP}}}", "process {{instance}}", "B"),
        ],
        "percent",
        CPU,
        w=6,
    )
    d.timeseries(
        "Memory",
        "Host memory in use (alerts at 80% and 95%).",
        [target(f"system_memory_usage_percent{{{APP}}}", "{{instance}}")],
        "percent",
        MEMORY,
        w=6,
    )
    d.timeseries(
        "Disk free",
        "Free space on the data directory's filesystem (alert below 20%).",
        [target(f"disk_free_percent{{{APP}}}", "{{instance}} {{path}}")],
        "percent",
        DISK_FREE,
        w=6,
    )
    d.timeseries(
        "Model memory by component",
        "Bytes held by each model component (packed when quantized).",
        [target(f"sum by (component) (model_memory_usage_bytes{{{MODEL}}})", "{{component}}")],
        "bytes",
        w=6,
        stack=True,
    )
    d.row("Logs")
    d.logs("Errors in the app's logs", "The guide's query: all errors.", f'{LOGS} |= "ERROR"')
    return d


SHADOW = "quantization_shadow_comparisons_total"


def model_performance() -> Dashboard:
    d = Dashboard(
        "mobile-mm-model",
        "Model Performance",
        "Inference latency percentiles, accuracy over time, memory and quantization impact.",
        ["mobile-multimodal-llm", "model"],
    )
    d.row("Latency")
    d.timeseries(
        "p95 latency by task",
        "Dashed lines: the 100 ms warning and 1 s critical alerts.",
        [target(quantile(0.95, "model_inference_duration_seconds", MODEL, "task"), "{{task}}")],
        "s",
        LATENCY,
        colours=["captioning", "ocr", "vqa", "retrieval"],
    )
    d.timeseries(
        "p95 latency by quantization",
        "What each quantization level costs or saves in latency.",
        [
            target(
                quantile(0.95, "model_inference_duration_seconds", MODEL, "quantization"), "{{quantization}}"
            )
        ],
        "s",
        LATENCY,
        colours=["fp32", "int8", "int4", "int2"],
    )
    d.timeseries(
        "Batch processing time p95 by batch size",
        "One forward pass of the dynamic batcher.",
        [
            target(
                quantile(0.95, "batch_processing_duration_seconds", APP, "batch_size"), "batch {{batch_size}}"
            )
        ],
        "s",
        LATENCY,
    )
    d.timeseries(
        "Throughput by quantization",
        "Model calls per second.",
        [
            target(
                f"sum by (quantization) (rate(model_inference_duration_seconds_count{{{MODEL}}}"
                "[$__rate_interval]))",
                "{{quantization}}",
            )
        ],
        "reqps",
        colours=["fp32", "int8", "int4", "int2"],
    )
    d.row("Accuracy and quantization impact")
    d.timeseries(
        "Canary accuracy over time by task",
        "Primary metric of each task on the held-out canary set, measured on the served model at "
        "start-up and every MOBILE_MM_CANARY_INTERVAL_S; dashed: the release's baseline "
        "(ModelCanaryAccuracyDrop fires 5% below it).",
        [
            target(f"model_accuracy_score{{{MODEL}}}", "{{task}} ({{quantization}})"),
            target(f"model_accuracy_baseline_score{{{MODEL}}}", "baseline {{task}}"),
        ],
        "none",
        colours=["captioning", "ocr", "vqa", "retrieval"],
    )
    d.bargauge(
        "Quantization accuracy loss vs fp32",
        "(fp32 - quantized) / fp32 per task on the canary set, against the fp32 reference; alert above 5%.",
        [target(f"quantization_accuracy_loss{{{APP}}}", "{{quantization_type}} {{task}}", instant=True)],
        "percentunit",
        QUANT_LOSS,
    )
    d.timeseries(
        "Quantization loss over time by task",
        "The canary's quantization_accuracy_loss per task: a step is a model or input-path change.",
        [target(f"quantization_accuracy_loss{{{APP}}}", "{{quantization_type}} {{task}}")],
        "percentunit",
    )
    d.timeseries(
        "Live shadow agreement with fp32",
        "Share of sampled live requests (MOBILE_MM_SHADOW_SAMPLE_RATE) where the served quantized "
        "model answered as the fp32 reference, over 15 min; QuantizationShadowDisagreement below 80%.",
        [
            target(
                f'sum by (quantization_type, task) (rate({SHADOW}{{{APP}, result="agree"}}[15m]))'
                f" / sum by (quantization_type, task) "
                f'(rate({SHADOW}{{{APP}, result=~"agree|disagree"}}[15m]))',
                "{{quantization_type}} {{task}}",
            )
        ],
        "percentunit",
    )
    d.timeseries(
        "Confidence percentiles by task",
        "p10 and p50 of the model's own confidence per response (no labels needed): a drop is a "
        "shift in what clients send, even before accuracy can be measured.",
        [
            target(quantile(0.5, "model_prediction_confidence", MODEL, "task"), "p50 {{task}}"),
            target(quantile(0.1, "model_prediction_confidence", MODEL, "task"), "p10 {{task}}"),
        ],
        "percentunit",
    )
    d.stat(
        "Since the last canary run",
        "Seconds since the canary last succeeded (ModelCanaryStale after two intervals).",
        [target(f"time() - model_canary_last_success_timestamp_seconds{{{APP}}}", "{{instance}}")],
        "s",
        thresholds((900, "orange"), (1800, "red")),
        w=6,
        h=8,
    )
    d.row("Memory and loading")
    d.timeseries(
        "Model memory by component",
        "Parameters and buffers of each component, as stored.",
        [target(f"model_memory_usage_bytes{{{MODEL}}}", "{{component}}")],
        "bytes",
        stack=True,
    )
    d.stat(
        "Model load time",
        "Last model load including warm-up (target 10 s, alert 30 s).",
        [target(f"model_load_duration_seconds{{{MODEL}}}", "{{quantization}}")],
        "s",
        LOAD_TIME,
        w=6,
        h=8,
    )
    d.table(
        "Loaded model",
        "model_info: name, version, quantization and weights digest per instance.",
        [target(f"model_info{{{APP}}}", "", instant=True, fmt="table")],
        w=6,
    )
    d.timeseries(
        "GPU memory",
        "Per GPU and kind (allocated, reserved, used, total).",
        [target(f"gpu_memory_usage_bytes{{{APP}}}", "gpu {{gpu_id}} {{memory_type}}")],
        "bytes",
    )
    d.timeseries(
        "Model load failures",
        "Failed loads by reason (ModelLoadingFailure pages).",
        [
            target(
                f"sum by (reason) (increase(model_load_failures_total{{{MODEL}}}[$__rate_interval]))",
                "{{reason}}",
            )
        ],
        "short",
    )
    d.row("Errors, queue and usage")
    d.timeseries(
        "Inference errors by code",
        "Failed inferences per second by error code.",
        [
            target(
                f"sum by (error_code) (rate(model_inference_errors_total{{{MODEL}}}[$__rate_interval]))",
                "{{error_code}}",
            )
        ],
        "reqps",
        w=8,
    )
    d.timeseries(
        "Batcher queue",
        "Requests waiting, and requests refused because the queue was full.",
        [
            target(f"sum by (task) (inference_queue_depth{{{APP}}})", "waiting {{task}}"),
            target(
                f"sum by (task) (rate(inference_queue_rejections_total{{{APP}}}[$__rate_interval]))",
                "rejected/s {{task}}",
                "B",
            ),
        ],
        "short",
        w=8,
    )
    d.timeseries(
        "Usage by task and user tier",
        "Successful model calls per second.",
        [
            target(
                f"sum by (task, user_type) (rate(model_usage_by_task_total{{{APP}}}[$__rate_interval]))",
                "{{task}} {{user_type}}",
            )
        ],
        "reqps",
        w=8,
    )
    d.bargauge(
        "Top users (last hour)",
        "API requests per known key; unknown callers are 'anonymous'.",
        [
            target(
                f"topk(10, sum by (user_id) (increase(api_requests_per_user_total{{{APP}}}[1h])))",
                "{{user_id}}",
                instant=True,
            )
        ],
        "short",
        NONE,
    )
    d.logs(
        "Slow inferences (> 100 ms)",
        "The guide's query: inference log lines slower than 100 ms.",
        f"{LOGS} | json | duration_ms > 100",
        w=12,
        h=8,
    )
    return d
