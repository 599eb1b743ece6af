"""Export history pushed to a real Pushgateway: what a Prometheus scrape of it then shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mobile_multimodal.observability import metrics
from mobile_multimodal.observability.pushgateway import (
    JOB,
    ExportGroup,
    group_registry,
    push_export_group,
)
from monitoring.pushgateway import PushgatewayProcess, running_pushgateway


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[PushgatewayProcess]:
    yield from running_pushgateway(tmp_path)


def _group(fmt: str = "onnx", success: int = 2, failure: int = 1, **kw: object) -> ExportGroup:
    values: dict[str, object] = {
        "host": "build-1",
        "platform": "android",
        "format": fmt,
        "quantization": "int2",
        "counts": {"success": success, "failure": failure},
        "durations_s": [12.0, 70.0][:success],
        "size_bytes": 2_000_000,
        "validation_scores": {"ocr": 0.93, "vqa": 0.97},
        "runtime_latency_s": {"ocr": 0.004, "vqa": 0.02},
    }
    values.update(kw)
    return ExportGroup(**values)  # type: ignore[arg-type]


def _by(samples: list[tuple[dict[str, str], float]], **match: str) -> float:
    (value,) = [v for labels, v in samples if all(labels.get(k) == x for k, x in match.items())]
    return value


def test_a_push_shows_the_groups_history_under_its_grouping_key(pushgateway: PushgatewayProcess) -> None:
    assert push_export_group(pushgateway.url, _group())
    exports = pushgateway.samples("mobile_exports_total")
    key = {"job": JOB, "instance": "build-1", "platform": "android", "format": "onnx", "quantization": "int2"}
    assert {tuple(sorted(labels.items())) for labels, _ in exports} == {
        tuple(sorted({**key, "status": s}.items())) for s in ("success", "failure")
    }
    assert _by(exports, status="success") == 2 and _by(exports, status="failure") == 1
    assert _by(pushgateway.samples("mobile_export_failures_total"), format="onnx") == 1
    # the histogram: one export of 12 s (under 30) and one of 70 s (over 60)
    # the Go exposition writes le="30" where the Python client writes le="30.0"
    buckets = {
        float(labels["le"]): v for labels, v in pushgateway.samples("mobile_export_duration_seconds_bucket")
    }
    assert (buckets[30.0], buckets[60.0], buckets[120.0], buckets[float("inf")]) == (1, 1, 2, 2)
    assert _by(pushgateway.samples("mobile_export_duration_seconds_sum"), format="onnx") == 82.0
    assert _by(pushgateway.samples("mobile_export_size_bytes"), format="onnx") == 2_000_000
    scores = pushgateway.samples("mobile_export_validation_score")
    assert _by(scores, task="ocr") == pytest.approx(0.93)
    assert _by(pushgateway.samples("mobile_export_runtime_latency_seconds"), task="vqa") == pytest.approx(
        0.02
    )


def test_other_groups_are_not_overwritten_and_a_push_replaces_its_own(
    pushgateway: PushgatewayProcess,
) -> None:
    push_export_group(pushgateway.url, _group("onnx", success=1, failure=0))
    push_export_group(pushgateway.url, _group("executorch", success=1, failure=0))
    push_export_group(pushgateway.url, _group("onnx", success=1, failure=0, host="build-2"))
    # the next onnx export on build-1 failed: its push carries the group's whole history
    push_export_group(pushgateway.url, _group("onnx", success=1, failure=1))
    exports = pushgateway.samples("mobile_exports_total")
    assert _by(exports, instance="build-1", format="onnx", status="success") == 1
    assert _by(exports, instance="build-1", format="onnx", status="failure") == 1
    assert _by(exports, instance="build-1", format="executorch", status="success") == 1
    assert _by(exports, instance="build-2", format="onnx", status="failure") == 0
    assert len(exports) == 6  # three groups, two statuses each: nothing duplicated


def test_pushed_series_are_the_declared_metrics() -> None:
    """Same names, types and help as the in-process metrics of metrics.py."""
    pushed = {
        f.name: f for f in text_string_to_metric_families(generate_latest(group_registry(_group())).decode())
    }
    local = {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    assert set(pushed) == {
        "mobile_exports",
        "mobile_export_failures",
        "mobile_export_duration_seconds",
        "mobile_export_size_bytes",
        "mobile_export_validation_score",
        "mobile_export_runtime_latency_seconds",
    }
    for name, family in pushed.items():
        assert (family.type, family.documentation) == (local[name].type, local[name].documentation), name
    buckets = [s.labels["le"] for s in pushed["mobile_export_duration_seconds"].samples if "le" in s.labels]
    assert buckets == [*(str(float(b)) for b in metrics.EXPORT_BUCKETS), "+Inf"]


def test_an_unexecuted_group_pushes_no_scores() -> None:
    text = generate_latest(group_registry(_group(validation_scores={}, runtime_latency_s={}))).decode()
    assert "mobile_export_validation_score{" not in text
    assert "mobile_export_runtime_latency_seconds{" not in text


def test_store_statuses_are_refused() -> None:
    with pytest.raises(ValueError, match="succeeded"):
        _group(counts={"succeeded": 1})


def test_an_unreachable_gateway_is_a_warning_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    from monitoring.localstack import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert push_export_group(url, _group(), timeout_s=2) is False
    assert any("not pushed" in r.getMessage() for r in caplog.records)
