from __future__ import annotations

from pathlib import Path

import pytest

from mobile_multimodal.observability.config import (
    DEFAULT_LATENCY_BUCKETS,
    ObservabilityConfig,
    ObservabilityConfigError,
    load_config,
    read_file,
)
from mobile_multimodal.observability.metrics import LATENCY_BUCKETS
from mobile_multimodal.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "monitoring" / "observability.yml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "observability.yml"
    path.write_text(text)
    return path


def test_shipped_file_is_valid_and_equals_the_builtin_defaults(settings: Settings) -> None:
    data, source = read_file(SHIPPED)
    assert source == str(SHIPPED)
    # Every section is spelled out in the file (operators edit it, so nothing is hidden in code) ...
    assert set(data) == set(ObservabilityConfig.model_fields)
    # ... and its values are the defaults an installed wheel falls back to without the file.
    assert load_config(settings, SHIPPED) == ObservabilityConfig()


def test_histograms_use_the_configured_buckets() -> None:
    assert LATENCY_BUCKETS == DEFAULT_LATENCY_BUCKETS
    for edge in (0.1, 0.5, 1.0):  # the alert thresholds must be bucket edges
        assert edge in LATENCY_BUCKETS


def test_file_values_are_read(tmp_path: Path, settings: Settings) -> None:
    path = _write(
        tmp_path, "logging:\n  level: debug\n  request_sample_ratio: 0.25\ntracing:\n  sample_ratio: 0.5\n"
    )
    cfg = load_config(settings, path)
    assert cfg.logging.level == "DEBUG"
    assert cfg.logging.request_sample_ratio == 0.25
    assert cfg.tracing.sample_ratio == 0.5
    assert cfg.tracing.endpoint is None


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(
        tmp_path,
        "logging:\n  level: INFO\n"
        "tracing:\n  sample_ratio: 0.1\n  sampler: always_on\n"
        "profiling:\n  enabled: false\n",
    )
    monkeypatch.setenv("MOBILE_MM_LOG_LEVEL", "warning")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.75")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "mm-staging")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("ENABLE_PROFILING", "true")
    monkeypatch.setenv("CPU_PROFILE_DURATION", "5")
    monkeypatch.setenv("MEMORY_PROFILE_INTERVAL", "120")
    cfg = load_config(Settings(), path)
    assert cfg.logging.level == "WARNING"
    assert cfg.tracing.sampler == "traceidratio"
    assert cfg.tracing.sample_ratio == 0.75
    assert cfg.service_name == "mm-staging"
    # The generic OTLP endpoint is a base URL: the HTTP exporter posts to <base>/v1/traces.
    assert cfg.tracing.endpoint == "http://collector:4318/v1/traces"
    assert cfg.profiling.enabled is True
    assert cfg.profiling.cpu.duration_s == 5
    assert cfg.profiling.cpu.interval_s == 3600  # not overridden: the default stands
    assert cfg.profiling.memory.interval_s == 120


def test_signal_specific_endpoint_and_grpc(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    cfg = load_config(Settings(), SHIPPED)
    assert cfg.tracing.endpoint == "http://jaeger:4317"
    assert cfg.tracing.protocol == "grpc"


def test_sdk_disabled_turns_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert load_config(Settings(), SHIPPED).tracing.enabled is False


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("logging:\n  levle: INFO\n", "logging.levle"),
        ("logging:\n  level: LOUD\n", "logging.level"),
        ("tracing:\n  sample_ratio: 1.5\n", "tracing.sample_ratio"),
        ("tracing:\n  sampler: sometimes\n", "tracing.sampler"),
        ("metrics:\n  latency_buckets: [0.1, 0.05]\n", "metrics.latency_buckets"),
        ("profiling:\n  cpu:\n    duration_s: 0\n", "profiling.cpu.duration_s"),
        ("- just\n- a list\n", "mapping at the top level"),
        ("logging: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_files_are_refused_with_the_key_named(
    tmp_path: Path, settings: Settings, text: str, needle: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ObservabilityConfigError) as info:
        load_config(settings, path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.code == "OBSERVABILITY_CONFIG_INVALID"


def test_invalid_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "jaeger_remote")
    with pytest.raises(ObservabilityConfigError, match=r"environment overrides.*tracing\.sampler"):
        load_config(Settings(), SHIPPED)


def test_an_explicitly_named_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ObservabilityConfigError, match="not found"):
        load_config(Settings(), missing)
    monkeypatch.setenv("MOBILE_MM_OBSERVABILITY_CONFIG", str(missing))
    with pytest.raises(ObservabilityConfigError, match="not found"):
        load_config(Settings())


def test_default_path_may_be_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no monitoring/observability.yml here: an installed wheel run elsewhere
    assert load_config(Settings()) == ObservabilityConfig()
