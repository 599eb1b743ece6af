"""Every environment variable the service reads, in one place.

Service configuration lives here (pydantic-settings, read at the edge); architecture
configuration lives in ``model.config`` as dataclasses. Tests override settings through
:func:`get_settings.cache_clear` plus environment variables, or by passing a ``Settings``
instance to the app factory.
"""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Quantization = Literal["fp32", "int8", "int4", "int2"]
MAX_CONCURRENT_BATCHES = 16  # the engine keeps as many batch threads (started only when used)


def _default_data_dir() -> Path:
    return Path.cwd() / "var"


class Settings(BaseSettings):
    """Service settings. Environment variables use the ``MOBILE_MM_`` prefix, except the
    names the operator's guide fixes (``ENABLE_PROFILING`` and friends) and ``OTEL_*``."""

    model_config = SettingsConfigDict(env_prefix="MOBILE_MM_", extra="ignore", populate_by_name=True)

    # --- model -------------------------------------------------------------------------
    model: str = Field("default", description="Model directory, or 'default' for the bundled model.")
    quantization: Quantization = "fp32"
    model_type: str = "multimodal"

    # --- HTTP --------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    # Intra-op threads per worker for the model; 0 = auto. PyTorch: (cores // workers) - 1, at
    # least 1, so the event loop keeps a core (two spinning OpenMP threads beside it cost 10-100x
    # latency). ONNX Runtime: cores // (workers * batch_concurrency); its threads sleep between graphs.
    torch_threads: int = Field(0, ge=0, le=256)
    auth: Literal["required", "disabled"] = "disabled"
    metrics_token: str | None = Field(None, repr=False)
    # The token read from a file (a Docker/Kubernetes secret) when metrics_token is not set.
    metrics_token_file: Path | None = None
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=64)
    max_image_side: int = Field(4096, ge=16)
    request_timeout_s: float = Field(10.0, gt=0)
    # /model/health runs one probe inference per this many seconds at most (it needs no key).
    model_health_cache_s: float = Field(5.0, ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: comma-separated IPs or
    # CIDRs, "*" for any. None by default, so no client chooses the address the audit records.
    trusted_proxies: str = ""
    # Slow or oversized clients (serving/http_limits.py): request line + headers at most
    # max_header_bytes in max_headers fields, all within header_timeout_s; a body that pauses
    # body_timeout_s, or averages under body_min_rate_bytes_s after the first body_timeout_s, is
    # cut off; past max_connections open connections new requests get 503.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_headers: int = Field(100, ge=8)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(15.0, gt=0)
    body_min_rate_bytes_s: float = Field(1024.0, gt=0)
    max_connections: int = Field(1024, ge=1)
    keep_alive_timeout_s: int = Field(5, ge=1)

    # --- live model quality (serving/canary.py, serving/shadow.py) --------------------------
    # A held-out canary set is scored on the model thread, between requests, at start-up and
    # every canary_interval_s (0 = no canary): model_accuracy_score, quantization_accuracy_loss.
    canary_interval_s: float = Field(300.0, ge=0)
    canary_size: int = Field(32, ge=4, le=1000, description="Canary examples per task.")
    # A sampled fraction of live requests is replayed through the fp32 reference (quantized
    # models only), off the request path; at most shadow_queue wait, the rest are dropped.
    shadow_sample_rate: float = Field(0.01, ge=0, le=1)
    shadow_queue: int = Field(32, ge=1, le=10_000)
    # Scene tasks whose results say out_of_domain (model/domain.py), comma-separated. A caption
    # (budget of 32 tokens or more) is scored by its own decode and pays only for the image's and
    # the caption's embeddings; vqa and retrieval each cost one more caption decode of the image,
    # so they are opt-in. "" = none.
    domain_check_tasks: str = "captioning"
    # auto = cuda when torch sees a GPU, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # What runs the model: eager PyTorch, or ONNX Runtime driving an export bundle's graphs as a
    # phone does (serving/onnx_runtime_model.py). The bundle: MOBILE_MM_BUNDLE, else one exported
    # from MOBILE_MM_MODEL at MOBILE_MM_QUANTIZATION into <data_dir>/bundles on first start.
    runtime: Literal["pytorch", "onnxruntime"] = "pytorch"
    bundle: Path | None = None
    # How ONNX Runtime holds a quantized bundle's weights (the files are never changed): packed =
    # MatMulNBits on the codes (2-bit ones widened to 4-bit containers: x64 has no fast 2-bit
    # kernel); float = each weight dequantized to a float MatMul at load, the same values, faster
    # per token on x64 (benchmarks/runtime) for the fp32 model's weight memory
    onnx_weights: Literal["packed", "float"] = "packed"
    # How OCR turns the reader's frames into text, on either runtime. lm = a beam search scored
    # by a character language model fitted on the training text (model/ctc_lm.py: more words read
    # right for 1-1.7 ms more a line, benchmarks/ocr_decoding): the one the model directory or
    # export bundle ships (`mobile-mm train` ships it), else fitted at the first start (6-9 s on
    # two cores) and cached in <data_dir>/ocr_lm; greedy = each frame's best class; auto = lm
    # when the model ships a language model, greedy when it does not
    ocr_decoding: Literal["auto", "greedy", "lm"] = "auto"

    # --- batching / backpressure -------------------------------------------------------
    max_batch_size: int = Field(16, ge=1, le=256)
    # continuous: captions and answers join and leave the running decode at every token (at most
    # max_batch_size decode at once; serving/continuous_batcher.py); static: batches of one
    # (task, max_tokens) run to their end (serving/batcher.py). Both runtimes do both.
    batching: Literal["continuous", "static"] = "static"
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    # Static batches run at once; 0 = auto: 2 on the ONNX Runtime backend, whose sessions take
    # concurrent calls (measured on two cores, the task mix at c=32: 1.25x the requests, p99 0.83x),
    # 1 on PyTorch. Continuous batching runs one decode loop and ignores it.
    concurrent_batches: int = Field(0, ge=0, le=MAX_CONCURRENT_BATCHES)
    max_queue: int = Field(256, ge=1)
    # Admission by expected wait (serving/admission.py): a request the queue ahead would make
    # wait longer than this (measured drain rate x work ahead) is refused 503 + Retry-After,
    # before its body is read when the engine is over it already. At most half of
    # request_timeout_s applies, so an accepted request does not time out queueing (504).
    max_queue_wait_s: float = Field(2.0, gt=0)

    # --- storage -----------------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    log_dir: Path | None = None
    database_url: str | None = Field(None, repr=False)
    integrity_check_interval_s: float = Field(60.0, gt=0)
    # HMAC-SHA256 key for model and export manifests (manifest_signing.py): set, every manifest
    # written is signed and an unsigned or wrongly signed one refuses to load. The _FILE form
    # reads it from a Docker/Kubernetes secret.
    manifest_signing_key: str | None = Field(None, repr=False)
    manifest_signing_key_file: Path | None = None
    observability_config: Path = Path("monitoring/observability.yml")
    # A dotenv file of MOBILE_MM_* lines under the environment (load_settings); re-read on SIGHUP.
    settings_file: Path | None = None
    backup_dir: Path | None = Field(None, description="Where backups go; default <data_dir>/backups.")
    backup_interval_s: float = Field(0.0, ge=0, description="Server-side backup period; 0 = off (use cron).")
    # How often the server reads backup_runs into its backup metrics (backups made by other processes).
    backup_sync_interval_s: float = Field(60.0, gt=0)
    # Backups kept: at most backup_keep newest (0 = no count limit), none older than the backup
    # retention; the newest is never pruned (store/retention.py).
    backup_keep: int = Field(0, ge=0)
    # Retention (store/retention.py): audit rows, rotated log files, profiles and backups older
    # than this many days are removed by the cleanup (every cleanup_interval_s in the service, 0 =
    # off; `mobile-mm db cleanup` by hand). A per-kind setting overrides it for that kind.
    retention_days: float = Field(90.0, gt=0)
    audit_retention_days: float | None = Field(None, gt=0)
    log_retention_days: float | None = Field(None, gt=0)
    profile_retention_days: float | None = Field(None, gt=0)
    backup_retention_days: float | None = Field(None, gt=0)
    cleanup_interval_s: float = Field(86400.0, ge=0)

    # --- security: per-key token buckets and anomaly rules (security/) -----------------
    rate_limit_free_per_minute: float = Field(60.0, gt=0)
    rate_limit_free_burst: int = Field(10, ge=1)
    rate_limit_pro_per_minute: float = Field(600.0, gt=0)
    rate_limit_pro_burst: int = Field(50, ge=1)
    # Shared by every replica and worker when set (security/redis_ratelimit.py), e.g.
    # redis://redis:6379/0; unset = each process keeps its own buckets. A Redis slower than
    # redis_timeout_s counts as down: the local buckets decide until it answers again.
    redis_url: str | None = Field(None, repr=False)
    redis_timeout_s: float = Field(0.25, gt=0)
    # How many instances (pods) of the service share this configuration, as the deployment
    # declares it (deploy/kubernetes sets it). More than one needs a shared PostgreSQL: SQLite
    # is one file on one machine, and each replica would keep its own keys and audit trail.
    replicas: int = Field(1, ge=1)
    anomaly_error_burst: int = Field(20, ge=2, description="4xx answers to one source in the window.")
    anomaly_window_s: float = Field(60.0, gt=0)
    # Failed authentications audited one by one per source IP and window; the rest are counted
    # in one summary row per window (security/auth_failure_throttle.py). Metrics count every one.
    auth_failure_audit_limit: int = Field(10, ge=1)
    auth_failure_audit_window_s: float = Field(60.0, gt=0)
    # A successful authentication is audited at most once per key per this many seconds.
    auth_success_audit_interval_s: float = Field(300.0, gt=0)
    # <log_dir>/audit.jsonl (security/audit_file.py), rotated like the application log.
    audit_log_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    audit_log_backup_count: int = Field(10, ge=0)
    audit_log_rotate_hours: float = Field(24.0, gt=0)

    # --- mobile export ------------------------------------------------------------------
    # A CLI export is a short-lived process: its metrics reach Prometheus through this
    # Pushgateway (e.g. http://pushgateway:9091); unset = no push.
    pushgateway_url: str | None = Field(None, repr=False)
    pushgateway_timeout_s: float = Field(10.0, gt=0)
    # POST /export jobs: a child process killed after this long, at this nice level and torch threads.
    export_timeout_s: float = Field(1800.0, gt=0)
    export_nice: int = Field(10, ge=0, le=19)
    export_threads: int = Field(1, ge=1, le=256)

    # --- health thresholds -------------------------------------------------------------
    health_memory_max_percent: float = Field(95.0, gt=0, le=100)
    health_disk_min_free_percent: float = Field(10.0, ge=0, lt=100)
    health_database_max_latency_ms: float = Field(1000.0, gt=0)
    # Seconds a SIGTERM'd server waits for in-flight requests before it gives up on them.
    shutdown_grace_s: float = Field(30.0, gt=0)

    # --- profiling: the guide's own names, no prefix -----------------------------------
    enable_profiling: bool = Field(False, validation_alias=AliasChoices("ENABLE_PROFILING"))
    cpu_profile_duration: float = Field(30.0, gt=0, validation_alias=AliasChoices("CPU_PROFILE_DURATION"))
    cpu_profile_interval: float = Field(3600.0, gt=0, validation_alias=AliasChoices("CPU_PROFILE_INTERVAL"))
    memory_profile_duration: float = Field(
        60.0, gt=0, validation_alias=AliasChoices("MEMORY_PROFILE_DURATION")
    )
    memory_profile_interval: float = Field(
        1800.0, gt=0, validation_alias=AliasChoices("MEMORY_PROFILE_INTERVAL")
    )
    profile_dir: Path = Path("profiles")

    # --- observability: None = take monitoring/observability.yml's value -----------------
    telemetry_enabled: bool | None = None
    log_level: str | None = None
    log_sample_ratio: float | None = Field(None, ge=0, le=1)
    # tracing.fast_path: false = request-path spans are the OpenTelemetry SDK's own (fasttrace/)
    tracing_fast_path: bool | None = None
    otel_sdk_disabled: bool | None = Field(None, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))
    otel_service_name: str | None = Field(None, validation_alias=AliasChoices("OTEL_SERVICE_NAME"))
    otel_traces_sampler: str | None = Field(None, validation_alias=AliasChoices("OTEL_TRACES_SAMPLER"))
    otel_traces_sampler_arg: float | None = Field(
        None, validation_alias=AliasChoices("OTEL_TRACES_SAMPLER_ARG")
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otel_exporter_otlp_protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_PROTOCOL")
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8)") from exc
        return ",".join(items)

    @field_validator("domain_check_tasks")
    @classmethod
    def _domain_tasks_are_scene_tasks(cls, value: str) -> str:
        items = [item.strip() for item in value.split(",") if item.strip()]
        unknown = sorted(set(items) - {"captioning", "vqa", "retrieval"})
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: only captioning, vqa and retrieval are checked")
        return ",".join(items)

    @model_validator(mode="after")
    def _concurrent_batches_need_onnxruntime(self) -> Settings:
        if self.concurrent_batches > 1 and self.runtime != "onnxruntime":
            raise ValueError(
                f"MOBILE_MM_CONCURRENT_BATCHES={self.concurrent_batches} needs MOBILE_MM_RUNTIME="
                "onnxruntime: the PyTorch backend runs one batch at a time (its model is not shared "
                "between threads)"
            )
        return self

    @property
    def batch_concurrency(self) -> int:
        """Static batches run at once: ``concurrent_batches``, or 2 on ONNX Runtime, 1 on PyTorch."""
        if self.concurrent_batches:
            return self.concurrent_batches
        return 2 if self.runtime == "onnxruntime" else 1

    @model_validator(mode="after")
    def _replicas_share_one_database(self) -> Settings:
        if self.replicas > 1 and self.resolved_database_url.startswith("sqlite"):
            raise ValueError(
                f"MOBILE_MM_REPLICAS={self.replicas} needs a database every replica shares: set "
                "MOBILE_MM_DATABASE_URL to a PostgreSQL URL (postgresql+psycopg://...). SQLite is a "
                "file on one machine (single writer): each replica would have its own keys, "
                "revocations and audit trail. (--workers N on one machine may share SQLite.)"
            )
        return self

    @model_validator(mode="after")
    def _read_metrics_token_file(self) -> Settings:
        if self.metrics_token_file is not None and not self.metrics_token:
            try:
                token = self.metrics_token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"metrics_token_file {self.metrics_token_file}: {exc.strerror}") from exc
            if not token:
                raise ValueError(f"metrics_token_file {self.metrics_token_file} is empty")
            self.metrics_token = token
        return self

    @model_validator(mode="after")
    def _read_manifest_signing_key_file(self) -> Settings:
        if self.manifest_signing_key_file is not None and not self.manifest_signing_key:
            try:
                key = self.manifest_signing_key_file.read_text().strip()
            except OSError as exc:
                raise ValueError(
                    f"manifest_signing_key_file {self.manifest_signing_key_file}: {exc.strerror}"
                ) from exc
            if not key:
                raise ValueError(f"manifest_signing_key_file {self.manifest_signing_key_file} is empty")
            self.manifest_signing_key = key
        return self

    @property
    def resolved_log_dir(self) -> Path:
        return self.log_dir if self.log_dir is not None else self.data_dir / "logs"

    @property
    def resolved_backup_dir(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def exports_dir(self) -> Path:
        """Where POST /export writes bundles (one directory per export id); never client-chosen."""
        return self.data_dir / "exports"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mobile_mm.db').as_posix()}"


SETTINGS_FILE_ENV = "MOBILE_MM_SETTINGS_FILE"


def load_settings() -> Settings:
    """Settings from the environment, over ``MOBILE_MM_SETTINGS_FILE`` (``MOBILE_MM_*=value``
    lines, dotenv syntax) when it is set: the variables win over the file. A running server
    reads them again on SIGHUP (serving/reload.py); the file is what can change meanwhile."""
    env_file = os.environ.get(SETTINGS_FILE_ENV)
    if not env_file:
        return Settings()
    if not Path(env_file).is_file():
        raise ValueError(f"{SETTINGS_FILE_ENV}={env_file}: no such file")
    return Settings(_env_file=env_file)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (and the settings file)."""
    return load_settings()
