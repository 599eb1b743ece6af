"""Every Prometheus metric the project exposes, declared here and nowhere else.

Names are a contract (dashboards, alert rules and the operator's guide use them), see
DESIGN.md. Counters are exposed with the ``_total`` suffix the client adds.

Buckets are chosen for this model: a batch-1 inference on two CPU cores takes a few to a few
tens of milliseconds, so the latency histogram is fine-grained between 1 ms and 1 s, and still
has the 0.1 s / 0.5 s / 1 s edges the alert thresholds need.

Gauges set a ``multiprocess_mode`` so ``--workers N`` (PROMETHEUS_MULTIPROC_DIR) aggregates
correctly across processes.

Example::

    from mobile_multimodal.observability import metrics
    metrics.INFERENCE_REQUESTS.labels("multimodal", "captioning", "success").inc()
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from mobile_multimodal.observability.config import latency_buckets

# Latency of one model call, seconds: monitoring/observability.yml's metrics.latency_buckets (read
# here, at import, because a histogram's buckets are fixed when it is created), by default fine
# edges from 1 ms to 1 s with the 0.1 / 0.5 / 1.0 edges the alert thresholds need.
LATENCY_BUCKETS = latency_buckets()
EXPORT_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)

# Batch sizes are bucketed into these label values so the label set stays bounded.
BATCH_SIZE_LABELS = ("1", "2", "4", "8", "16", "32", "64+")


def batch_size_label(n: int) -> str:
    """Map a batch size to its bounded label: the smallest bucket edge >= n."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    for edge in (1, 2, 4, 8, 16, 32):
        if n <= edge:
            return str(edge)
    return "64+"


# --- the guide's core performance metrics ---------------------------------------------------
INFERENCE_DURATION = Histogram(
    "model_inference_duration_seconds",
    "Time spent in the model for one request (seconds), from batch start to result.",
    ["model_type", "task", "quantization"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_REQUESTS = Counter(
    "model_inference_requests",
    "Inference requests by outcome (status: success, error, rejected, timeout).",
    ["model_type", "task", "status"],
)
INFERENCE_ERRORS = Counter(
    "model_inference_errors",
    "Inference requests that failed, by bounded error code.",
    ["model_type", "task", "error_code"],
)
MODEL_MEMORY = Gauge(
    "model_memory_usage_bytes",
    "Bytes the process holds for the model by component: parameters and buffers of each part "
    "(as stored, packed if quantized; ONNX Runtime: each graph as its session got it), "
    "kv_cache_peak (largest decoding cache so far), reference_model (the fp32 shadow/canary "
    "reference once loaded: weights and its largest KV cache); 0 for what a reload dropped.",
    ["model_type", "component"],
    multiprocess_mode="max",
)
MODEL_LOAD_DURATION = Gauge(
    "model_load_duration_seconds",
    "Seconds the last model load took: read, verify integrity, build, warm-up.",
    ["model_type", "quantization"],
    multiprocess_mode="max",
)
MODEL_LOAD_FAILURES = Counter(
    "model_load_failures",
    "Model loads that failed (missing file, bad checksum, wrong format).",
    ["model_type", "reason"],
)
MODEL_ACCURACY = Gauge(
    "model_accuracy_score",
    "Primary metric of each task on the canary set, measured on the served model at start-up and "
    "every MOBILE_MM_CANARY_INTERVAL_S (0..1, or CIDEr-D for captioning); before the first run, "
    "the eval report's.",
    ["model_type", "quantization", "task"],
    multiprocess_mode="max",
)
# A gauge fixed at 1 rather than an Info: Info series vanish in multiprocess mode (--workers N).
MODEL_INFO = Gauge(
    "model_info",
    "The loaded model (always 1): name, version, quantization, parameters, size and sha256 of its "
    "weights, and the runtime that runs it (pytorch, or onnxruntime on an export bundle).",
    ["name", "version", "quantization", "parameters", "size_bytes", "weights_sha256", "runtime"],
    multiprocess_mode="max",
)

# --- live model quality: canary runs, shadow comparison, confidence ---------------------------
CANARY_RUNS = Counter(
    "model_canary_runs",
    "Canary evaluations of the served model (status: success, failure).",
    ["status"],
)
CANARY_LAST_SUCCESS = Gauge(
    "model_canary_last_success_timestamp_seconds",
    "Unix time the last canary evaluation of the served model finished successfully.",
    multiprocess_mode="max",
)
CANARY_INTERVAL = Gauge(
    "model_canary_interval_seconds",
    "MOBILE_MM_CANARY_INTERVAL_S of this process (0: canary off); ModelCanaryStale reads it.",
    multiprocess_mode="max",
)
CANARY_STARTED = Gauge(
    "model_canary_started_timestamp_seconds",
    "Unix time this process's canary loop started (its model became ready); ModelCanaryStale "
    "counts from here until the first success.",
    multiprocess_mode="max",
)
CANARY_DURATION = Gauge(
    "model_canary_duration_seconds",
    "Wall time of the last canary run, requests served in between included (seconds).",
    multiprocess_mode="max",
)
MODEL_ACCURACY_BASELINE = Gauge(
    "model_accuracy_baseline_score",
    "The released model's score on the canary set (its manifest's canary report, else the fp32 "
    "reference's live score): what model_accuracy_score is compared with.",
    ["model_type", "quantization", "task"],
    multiprocess_mode="max",
)
SHADOW_COMPARISONS = Counter(
    "quantization_shadow_comparisons",
    "Sampled live requests replayed through the fp32 reference (result: agree, disagree, or "
    "dropped when the shadow queue was full).",
    ["quantization_type", "task", "result"],
)
SHADOW_AGREEMENT = Gauge(
    "quantization_shadow_agreement_ratio",
    "Fraction of the last 200 shadow comparisons where the served model agreed with the fp32 "
    "reference (exact text, same best text, or embedding cosine >= 0.99).",
    ["quantization_type", "task"],
    multiprocess_mode="max",
)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
PREDICTION_CONFIDENCE = Histogram(
    "model_prediction_confidence",
    "The model's confidence in each answer, 0..1, no labels needed: geometric-mean token "
    "probability (captions, answers), CTC best-path probability per frame (OCR), best-minus-"
    "runner-up cosine margin (retrieval with texts).",
    ["model_type", "task"],
    buckets=CONFIDENCE_BUCKETS,
)
OUT_OF_DOMAIN_INPUTS = Counter(
    "model_out_of_domain_inputs",
    "Inputs flagged out of domain (a natural photograph, an empty image: the model's in-domain "
    "score, its confidence in the first caption tokens, under the model's calibrated threshold), "
    "per task; the response says so in out_of_domain.",
    ["model_type", "task"],
)

# --- mobile ------------------------------------------------------------------------------
EXPORT_DURATION = Histogram(
    "mobile_export_duration_seconds",
    "Wall time of one mobile export, including validation (seconds).",
    ["platform", "quantization"],
    buckets=EXPORT_BUCKETS,
)
EXPORT_SIZE = Gauge(
    "mobile_export_size_bytes",
    "Total bytes of the last exported artifact set.",
    ["platform", "quantization"],
    multiprocess_mode="max",
)
EXPORT_FAILURES = Counter(
    "mobile_export_failures",
    "Mobile exports that failed.",
    ["platform", "quantization"],
)
EXPORTS = Counter(
    "mobile_exports",
    "Mobile exports by outcome (status: success, failure).",
    ["platform", "format", "quantization", "status"],
)
EXPORT_VALIDATION_SCORE = Gauge(
    "mobile_export_validation_score",
    "Primary metric of each task measured on the exported artifact in its own runtime at validation "
    "(same held-out subset as the manifest's validation.tasks).",
    ["platform", "format", "quantization", "task"],
    multiprocess_mode="max",
)
EXPORT_RUNTIME_LATENCY = Gauge(
    "mobile_export_runtime_latency_seconds",
    "Mean seconds per example of each task in the export's own runtime at validation "
    "(a greedy decode driven by bundle.json): compare runtimes and precisions.",
    ["platform", "format", "quantization", "task"],
    multiprocess_mode="max",
)
QUANTIZATION_LOSS = Gauge(
    "quantization_accuracy_loss",
    "Relative loss of a task's primary metric against fp32: (fp32 - quantized) / fp32, measured "
    "by the canary run against the fp32 reference (before it, from the eval reports).",
    ["quantization_type", "task"],
    multiprocess_mode="max",
)
QUANTIZATION_LOSS_ALIAS = Gauge(
    "model_quantization_accuracy_loss",
    "Alias of quantization_accuracy_loss (the guide uses both names).",
    ["quantization_type", "task"],
    multiprocess_mode="max",
)

# --- system ------------------------------------------------------------------------------
GPU_MEMORY = Gauge(
    "gpu_memory_usage_bytes",
    "GPU memory by device and kind (allocated, reserved, used, total).",
    ["gpu_id", "memory_type"],
    multiprocess_mode="max",
)
BATCH_DURATION = Histogram(
    "batch_processing_duration_seconds",
    "Time to run one batch through the model (seconds); batch_size is bucketed.",
    ["batch_size", "task"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "inference_queue_depth",
    "Requests waiting in the dynamic batcher's queue.",
    ["task"],
    multiprocess_mode="livesum",
)
QUEUE_REJECTIONS = Counter(
    "inference_queue_rejections",
    "Requests refused with 503 because the queue was full: by count (MOBILE_MM_MAX_QUEUE) or by "
    "expected wait (MOBILE_MM_MAX_QUEUE_WAIT_S); task is unknown when refused before the body was read.",
    ["task"],
)
ADMISSION_REFUSALS = Counter(
    "inference_admission_refusals",
    "Requests refused with 503 OVERLOADED by admission, by reason (queue_full: MOBILE_MM_MAX_QUEUE; "
    "expected_wait: MOBILE_MM_MAX_QUEUE_WAIT_S) and stage (before_body: nothing read; "
    "before_decode: body parsed, image not decoded; at_queue: image decoded).",
    ["reason", "stage"],
)
QUEUE_EXPECTED_WAIT = Gauge(
    "inference_queue_expected_wait_seconds",
    "Expected wait of a request queued now (work ahead x measured drain seconds per item), "
    "updated after every batch; admission refuses past MOBILE_MM_MAX_QUEUE_WAIT_S.",
    multiprocess_mode="max",
)
CPU_PERCENT = Gauge(
    "process_cpu_usage_percent", "CPU use of this process, percent of one core.", multiprocess_mode="livesum"
)
SYSTEM_CPU_PERCENT = Gauge(
    "system_cpu_usage_percent", "CPU use of the host, percent of all cores.", multiprocess_mode="max"
)
SYSTEM_MEMORY_PERCENT = Gauge(
    "system_memory_usage_percent", "Host memory in use, percent.", multiprocess_mode="max"
)
PROCESS_MEMORY = Gauge(
    "process_memory_usage_bytes", "Resident memory of this process.", multiprocess_mode="livesum"
)
DISK_FREE_PERCENT = Gauge(
    "disk_free_percent",
    "Free space on the data directory's filesystem, percent.",
    ["path"],
    multiprocess_mode="min",
)
DISK_USAGE_PERCENT = Gauge(
    "disk_usage_percent",
    "Used space on the data directory's filesystem, percent.",
    ["path"],
    multiprocess_mode="max",
)

# --- business ------------------------------------------------------------------------------
API_REQUESTS_PER_USER = Counter(
    "api_requests_per_user",
    "API requests by user (known API keys only, else 'anonymous') and endpoint.",
    ["user_id", "endpoint"],
)
USAGE_BY_TASK = Counter(
    "model_usage_by_task",
    "Successful model calls by task and user tier.",
    ["task", "user_type"],
)
ERROR_RATE_BY_ENDPOINT = Gauge(
    "error_rate_by_endpoint",
    "Errors per second over the last 60 s, kept by the app (alerts use the counters instead).",
    ["endpoint", "error_type"],
    multiprocess_mode="livesum",
)
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests by route template, method and status code.",
    ["endpoint", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Wall time of one HTTP request in the app, first byte in to last byte out (seconds).",
    ["endpoint", "method"],
    buckets=LATENCY_BUCKETS,
)

# --- security / integrity / backup ----------------------------------------------------------
AUTH_FAILURES = Counter(
    "auth_failures",
    "Requests refused for a missing, unknown or revoked API key.",
    ["reason"],
)
SECURITY_EVENTS = Counter(
    "security_events",
    "Security-relevant events (unauthorized, anomalous_request, rate_limited, config_change, ...).",
    ["event_type"],
)
MODEL_INTEGRITY_FAILURES = Counter(
    "model_integrity_failures",
    "Tampering incidents: an integrity check found model files differing from the manifest "
    "(counted once per change of the files, not again on each re-check).",
    ["model_type"],
)
MODEL_INTEGRITY_LAST_CHECK = Gauge(
    "model_integrity_last_check_timestamp_seconds",
    "Unix time of the last integrity check of the loaded model files.",
    multiprocess_mode="max",
)
MODEL_INTEGRITY_OK = Gauge(
    "model_integrity_ok",
    "1 if the last integrity check matched the manifest, else 0.",
    # --workers N: every worker checks the same files, so the newest verdict is the server's. Not
    # "min": a worker that has not checked yet (still 0) would look like tampering to the alert.
    multiprocess_mode="livemostrecent",
)
BACKUP_LAST_SUCCESS = Gauge(
    "backup_last_success_timestamp_seconds",
    "Unix time of the last successful database backup.",
    multiprocess_mode="max",
)
BACKUP_FAILURES = Counter("backup_failures", "Database backups that failed.")
# Database (store/db_metrics.py). Buckets from a SQLite point read (~50 us) to a stuck query;
# the SlowDatabaseQueries alert compares the p95 with 0.5 s.
DB_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DB_QUERY_DURATION = Histogram(
    "db_query_duration_seconds",
    "Time of one SQL statement on the database driver, by operation (select, insert, update, delete, other).",
    ["operation"],
    buckets=DB_QUERY_BUCKETS,
)
DB_POOL_CONNECTIONS = Gauge(
    "db_pool_connections",
    "Database connections the app holds open, by state: in_use (checked out) or idle (in the pool).",
    ["state"],
    multiprocess_mode="livesum",
)
RATE_LIMIT_BACKEND_ERRORS = Counter(
    "rate_limit_backend_errors",
    "Rate-limit decisions made by this process's local buckets because the shared backend "
    "(Redis, MOBILE_MM_REDIS_URL) failed or was marked down: limits are per instance meanwhile.",
)
CONFIG_RELOADS = Counter(
    "config_changes", "Configuration changes applied at start or at run time.", ["source"]
)

# Label values known before any event happens. Their series are exported at 0 from start
# (:func:`initialize_known_series`): increase() over a series born in a burst returns 0, so
# an alert on the first burst (12 bad keys in a second) would never fire otherwise.
AUTH_FAILURE_REASONS = ("missing", "invalid", "revoked", "missing_metrics_token", "invalid_metrics_token")
ADMISSION_REFUSAL_REASONS = ("queue_full", "expected_wait")
ADMISSION_STAGES = ("before_body", "before_decode", "at_queue")
# The task label of a request refused before its body (which names the task) was read.
UNREAD_TASK = "unknown"
SECURITY_EVENT_TYPES = (
    "authentication_failure",
    "unauthorized",
    "anomalous_request",
    "rate_limited",
    "model_tampering",
    "config_change",
)


def initialize_known_series(tasks: tuple[str, ...]) -> None:
    """Create every counter child whose label values are known up front, at 0."""
    for reason in AUTH_FAILURE_REASONS:
        AUTH_FAILURES.labels(reason)
    for event_type in SECURITY_EVENT_TYPES:
        SECURITY_EVENTS.labels(event_type)
    for task in (*tasks, UNREAD_TASK):
        QUEUE_REJECTIONS.labels(task)
    for reason in ADMISSION_REFUSAL_REASONS:
        for stage in ADMISSION_STAGES:
            ADMISSION_REFUSALS.labels(reason, stage)


# --- the telemetry pipeline itself ------------------------------------------------------------
TRACE_SPANS_DROPPED = Counter(
    "trace_spans_dropped",
    "Finished spans that were never exported (reason: queue_full, exporter_down).",
    ["reason"],
)
LOG_RECORDS_DROPPED = Counter(
    "log_records_dropped",
    "Log lines never written (reason: queue_full = the writer's bounded queue was full; "
    "file_write_error / stdout_write_error = that sink raised, e.g. a full or read-only disk).",
    ["reason"],
)
