"""The app's observability configuration: ``monitoring/observability.yml`` beneath the environment.

The operator's guide names ``monitoring/observability.yml`` as the Application's configuration
(log level and sampling, tracing sampler and endpoint, metric buckets, profiling). It is read once
at start; every value can be overridden by an environment variable (``MOBILE_MM_LOG_LEVEL``,
the standard ``OTEL_*``, the guide's ``ENABLE_PROFILING`` ...), all declared in ``settings.py``.
A bad file stops the app with an :class:`ObservabilityConfigError` naming the key and the file.

Example::

    from mobile_multimodal.observability.config import load_config
    cfg = load_config(settings)          # file values, then environment overrides, validated
    cfg.tracing.sample_ratio, cfg.logging.level, cfg.metrics.latency_buckets
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mobile_multimodal.settings import Settings

DEFAULT_CONFIG_PATH = Path("monitoring/observability.yml")
CONFIG_ENV = "MOBILE_MM_OBSERVABILITY_CONFIG"

# Batch-1 inference of this model on two CPU cores takes a few to a few tens of ms: fine edges
# from 1 ms to 1 s, with the 0.1 / 0.5 / 1 s edges the latency alerts need.
DEFAULT_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# Routes that are polled by machines (scrapers, probes): never traced, never access-logged at INFO.
DEFAULT_UNTRACED = ("/metrics", "/model/metrics", "/alive", "/ready", "/health", "/model/health")


class ObservabilityConfigError(ValueError):
    """The observability configuration is invalid; the message names the key and the source."""

    code = "OBSERVABILITY_CONFIG_INVALID"


class _Strict(BaseModel):
    # An unknown key is almost always a typo in the YAML: refuse it rather than ignore it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogFileConfig(_Strict):
    enabled: bool = True
    name: str = "application.log"
    max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    backup_count: int = Field(10, ge=1, le=1000)
    rotate_interval_hours: float = Field(24.0, gt=0)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    request_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    slow_request_ms: float = Field(100.0, ge=0)
    stdout: bool = True
    file: LogFileConfig = LogFileConfig()

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class TracingConfig(_Strict):
    enabled: bool = True
    sampler: Literal[
        "always_on", "always_off", "traceidratio",
        "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
    ] = "parentbased_traceidratio"  # fmt: skip
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    # None: spans are made (trace ids reach the logs and responses) but not exported.
    endpoint: str | None = None
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    # Encode and send spans from a child process (fasttrace/export_process.py), off the serving GIL.
    export_process: bool = True
    # Request-path spans from the fast path (fasttrace/), else the SDK's own spans.
    fast_path: bool = True
    excluded_paths: tuple[str, ...] = DEFAULT_UNTRACED


class MetricsConfig(_Strict):
    latency_buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS
    error_rate_window_s: float = Field(60.0, gt=0, le=3600)
    resource_sample_interval_s: float = Field(15.0, gt=0)

    @field_validator("latency_buckets")
    @classmethod
    def _increasing(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(b <= 0 for b in v) or any(b2 <= b1 for b1, b2 in itertools.pairwise(v)):
            raise ValueError("must be a non-empty, strictly increasing list of positive seconds")
        return v


class CpuProfileConfig(_Strict):
    duration_s: float = Field(30.0, gt=0)
    interval_s: float = Field(3600.0, gt=0)
    sample_interval_ms: float = Field(10.0, ge=1, le=1000)


class MemoryProfileConfig(_Strict):
    duration_s: float = Field(60.0, gt=0)
    interval_s: float = Field(1800.0, gt=0)
    top: int = Field(25, ge=1, le=1000)
    frames: int = Field(10, ge=1, le=100)


class ProfilingConfig(_Strict):
    enabled: bool = False
    dir: Path = Path("profiles")
    cpu: CpuProfileConfig = CpuProfileConfig()
    memory: MemoryProfileConfig = MemoryProfileConfig()


class CompressionConfig(_Strict):
    gzip: bool = True
    minimum_size: int = Field(1000, ge=0)
    level: int = Field(6, ge=1, le=9)


class ObservabilityConfig(_Strict):
    # False: no request middleware (spans, HTTP metrics, access lines) and no tracing; /metrics
    # still serves what the app records. The benchmark's "telemetry off" arm.
    enabled: bool = True
    service_name: str = "mobile-multimodal-llm"
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    compression: CompressionConfig = CompressionConfig()


def _format_errors(err: ValidationError, source: str) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
    return f"invalid observability configuration in {source}: " + "; ".join(parts)


def read_file(path: Path | None = None) -> tuple[dict[str, Any], str]:
    """The YAML file as a dict, and a description of where it came from.

    An explicitly named file (argument or ``MOBILE_MM_OBSERVABILITY_CONFIG``) must exist; the
    default ``monitoring/observability.yml`` may be absent (an installed wheel run elsewhere), in
    which case the built-in defaults, which equal the shipped file, apply.
    """
    explicit = path is not None and Path(path) != DEFAULT_CONFIG_PATH
    if path is None and os.environ.get(CONFIG_ENV):
        path, explicit = Path(os.environ[CONFIG_ENV]), True
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.is_file():
        if explicit:
            raise ObservabilityConfigError(f"observability configuration file not found: {path}")
        return {}, "built-in defaults"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ObservabilityConfigError(
            f"observability configuration {path} is not valid YAML: {exc}"
        ) from exc
    if data is None:
        return {}, str(path)
    if not isinstance(data, dict):
        raise ObservabilityConfigError(
            f"observability configuration {path} must be a mapping at the top level"
        )
    return data, str(path)


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value


_SAMPLER_ARG_USERS = ("traceidratio", "parentbased_traceidratio")


def env_overrides(settings: Settings) -> dict[str, Any]:
    """Dotted keys -> values that the environment (through ``settings``) sets over the file."""
    out: dict[str, Any] = {}
    s = settings
    if s.telemetry_enabled is not None:
        out["enabled"] = s.telemetry_enabled
    if s.log_level is not None:
        out["logging.level"] = s.log_level
    if s.log_sample_ratio is not None:
        out["logging.request_sample_ratio"] = s.log_sample_ratio
    if s.otel_service_name:
        out["service_name"] = s.otel_service_name
    if s.otel_sdk_disabled is not None:
        out["tracing.enabled"] = not s.otel_sdk_disabled
    if s.otel_traces_sampler:
        out["tracing.sampler"] = s.otel_traces_sampler.strip().lower()
    if s.otel_traces_sampler_arg is not None:
        out["tracing.sample_ratio"] = s.otel_traces_sampler_arg
    endpoint = s.otel_exporter_otlp_traces_endpoint or s.otel_exporter_otlp_endpoint
    if endpoint:
        protocol = s.otel_exporter_otlp_protocol or "http/protobuf"
        # The spec: the generic endpoint is a base URL to which /v1/traces is appended for
        # http/protobuf; the signal-specific one is used as is.
        if not s.otel_exporter_otlp_traces_endpoint and protocol == "http/protobuf":
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        out["tracing.endpoint"] = endpoint
    if s.otel_exporter_otlp_protocol:
        out["tracing.protocol"] = s.otel_exporter_otlp_protocol
    if s.tracing_fast_path is not None:
        out["tracing.fast_path"] = s.tracing_fast_path
    fields_set = s.model_fields_set
    guide_names = {
        "enable_profiling": "profiling.enabled",
        "cpu_profile_duration": "profiling.cpu.duration_s",
        "cpu_profile_interval": "profiling.cpu.interval_s",
        "memory_profile_duration": "profiling.memory.duration_s",
        "memory_profile_interval": "profiling.memory.interval_s",
        "profile_dir": "profiling.dir",
    }
    for field, dotted in guide_names.items():
        if field in fields_set:
            out[dotted] = getattr(s, field)
    return out


def load_config(settings: Settings, path: Path | None = None) -> ObservabilityConfig:
    """Read the YAML (``path``, else ``settings.observability_config``), apply the environment, validate."""
    data, source = read_file(path if path is not None else settings.observability_config)
    try:
        ObservabilityConfig.model_validate(data)
    except ValidationError as exc:
        raise ObservabilityConfigError(_format_errors(exc, source)) from exc
    overrides = env_overrides(settings)
    for dotted, value in overrides.items():
        _set(data, dotted, value)
    try:
        return ObservabilityConfig.model_validate(data)
    except ValidationError as exc:
        raise ObservabilityConfigError(_format_errors(exc, f"{source} + environment overrides")) from exc


def latency_buckets() -> tuple[float, ...]:
    """Latency buckets for the histograms, read when ``metrics.py`` is imported.

    A histogram's buckets are fixed when it is created, so they come from the file named by
    ``MOBILE_MM_OBSERVABILITY_CONFIG`` (else the default path) at import, not from ``Settings``.
    """
    data, source = read_file(None)
    try:
        return MetricsConfig.model_validate(data.get("metrics", {})).latency_buckets
    except ValidationError as exc:
        raise ObservabilityConfigError(_format_errors(exc, source)) from exc
