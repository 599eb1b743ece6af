"""The export_records table, its store functions, and run_recorded_export (record + push)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.store import Database
from mobile_multimodal.store.export_records import (
    add_export,
    export_group,
    fail_unfinished,
    finish_export,
    get_export,
    list_exports,
    mark_running,
    this_host,
    to_json,
)
from mobile_multimodal.store.recorded_export import run_recorded_export
from monitoring.pushgateway import PushgatewayProcess, running_pushgateway


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[PushgatewayProcess]:
    yield from running_pushgateway(tmp_path)


def _manifest(size: int = 100, ocr: float = 0.9) -> dict[str, Any]:
    return {
        "format": "onnx",
        "platform": "android",
        "quantization": "int2",
        "duration_s": 1.0,
        "files": [{"path": "vision.onnx", "bytes": size, "sha256": "0" * 64}],
        "validation": {
            "executed": True,
            "runtime": "onnxruntime",
            "max_abs_diff": 0.0,
            "tasks": {"ocr": ocr},
            "latency_s": {"ocr": 0.005},
        },
    }


def _add(db: Database, status: str = "running", **kw: str) -> str:
    values = {"platform": "android", "fmt": "onnx", "quantization": "int2", **kw}
    return add_export(
        db, requested_by="cli:test", model="default", out_dir="/tmp/bundle", status=status, **values
    ).id


def test_a_record_moves_from_queued_to_succeeded(db: Database) -> None:
    export_id = _add(db, status="queued")
    assert get_export(db, export_id).status == "queued"  # type: ignore[union-attr]
    mark_running(db, export_id)
    with pytest.raises(ValueError, match="running, not queued"):
        mark_running(db, export_id)
    finish_export(db, export_id, duration_s=12.5, manifest=_manifest(size=4321))
    record = get_export(db, export_id)
    assert record is not None and record.status == "succeeded"
    view = to_json(record)
    assert view["size_bytes"] == 4321 and view["duration_s"] == 12.5 and view["error"] is None
    assert view["manifest"]["validation"]["tasks"] == {"ocr": 0.9}
    assert record.started_at is not None and record.finished_at is not None
    assert record.started_at <= record.finished_at


def test_a_failure_keeps_its_code_and_a_finished_row_keeps_its_first_outcome(db: Database) -> None:
    export_id = _add(db)
    finish_export(
        db, export_id, duration_s=3.0, error_code="EXPORT_VALIDATION_FAILED", error_message="ocr 0.1"
    )
    finish_export(db, export_id, duration_s=9.0, manifest=_manifest())  # too late: already failed
    view = to_json(get_export(db, export_id))  # type: ignore[arg-type]
    assert view["status"] == "failed"
    assert view["error"] == {"code": "EXPORT_VALIDATION_FAILED", "message": "ocr 0.1"}
    assert view["manifest"] is None and view["duration_s"] == 3.0
    with pytest.raises(ValueError, match="either"):
        finish_export(db, export_id, duration_s=1.0)
    with pytest.raises(KeyError):
        finish_export(db, "no-such-id", duration_s=1.0, error_code="X")


def test_list_is_newest_first_and_filters(db: Database) -> None:
    first = _add(db, platform="ios", fmt="coreml")
    second = _add(db)
    finish_export(db, second, duration_s=1.0, manifest=_manifest())
    assert [r.id for r in list_exports(db)] == [second, first]
    assert [r.id for r in list_exports(db, platform="ios")] == [first]
    assert [r.id for r in list_exports(db, status="succeeded")] == [second]
    assert [r.id for r in list_exports(db, limit=1)] == [second]
    with pytest.raises(ValueError, match="status"):
        list_exports(db, status="done")
    assert get_export(db, "missing") is None


def test_unfinished_rows_are_failed_when_their_process_is_gone(db: Database) -> None:
    queued, running, done = _add(db, status="queued"), _add(db), _add(db)
    finish_export(db, done, duration_s=1.0, manifest=_manifest())
    assert fail_unfinished(db, "EXPORT_INTERRUPTED", "the server restarted") == 2
    for export_id in (queued, running):
        record = get_export(db, export_id)
        assert record is not None and (record.status, record.error_code) == ("failed", "EXPORT_INTERRUPTED")
    assert get_export(db, done).status == "succeeded"  # type: ignore[union-attr]
    # a server fails only its own jobs, never a CLI export running in another process
    job = add_export(
        db,
        platform="ios",
        fmt="onnx",
        quantization="fp32",
        requested_by="api:ops/k1",
        model="default",
        out_dir="/tmp/job",
        status="queued",
    ).id
    cli = _add(db)
    assert fail_unfinished(db, "EXPORT_INTERRUPTED", "restarted", requested_by_prefix="api:") == 1
    assert get_export(db, job).status == "failed"  # type: ignore[union-attr]
    assert get_export(db, cli).status == "running"  # type: ignore[union-attr]


def test_the_group_history_counts_this_hosts_finished_exports_of_one_group(db: Database) -> None:
    ok1, ok2, bad, other_format, unfinished = (
        _add(db),
        _add(db),
        _add(db),
        _add(db, fmt="executorch"),
        _add(db),
    )
    finish_export(db, ok1, duration_s=10.0, manifest=_manifest(size=100, ocr=0.8))
    finish_export(db, bad, duration_s=2.0, error_code="EXPORT_DISK_FULL", error_message="disk full")
    finish_export(db, ok2, duration_s=20.0, manifest=_manifest(size=200, ocr=0.9))
    finish_export(db, other_format, duration_s=5.0, manifest=_manifest())
    group = export_group(db, host=this_host(), platform="android", fmt="onnx", quantization="int2")
    assert dict(group.counts) == {"success": 2, "failure": 1}
    assert sorted(group.durations_s) == [10.0, 20.0]  # successful ones, as the in-process histogram
    assert group.size_bytes == 200 and dict(group.validation_scores) == {"ocr": 0.9}  # the latest success
    assert dict(group.runtime_latency_s) == {"ocr": 0.005}
    elsewhere = export_group(db, host="another-host", platform="android", fmt="onnx", quantization="int2")
    assert dict(elsewhere.counts) == {"success": 0, "failure": 0} and elsewhere.size_bytes is None
    assert unfinished  # a running export is not counted yet


# ---- run_recorded_export with a small real export function ---------------------------------------
def _write_bundle(model: str, *, platform: str, fmt: str, quantization: str, out: Path) -> dict[str, Any]:
    """A real (tiny) export: writes a file under a temporary directory, renames it into place."""
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True)
    data = f"{model}/{platform}/{fmt}/{quantization}".encode()
    (tmp / "graph.bin").write_bytes(data)
    tmp.rename(out)
    manifest = _manifest(size=len(data))
    manifest["files"] = [
        {"path": "graph.bin", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    return manifest


def _fail_validation(model: str, **kw: Any) -> dict[str, Any]:
    raise ExportError(ExportErrorCode.EXPORT_VALIDATION_FAILED, "ocr accuracy 0.10 vs PyTorch 0.93")


def test_run_recorded_export_records_and_pushes_each_outcome(
    tmp_path: Path, pushgateway: PushgatewayProcess
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'mm.db'}")
    common: dict[str, Any] = {
        "platform": "android",
        "fmt": None,  # the platform's default format: onnx
        "quantization": "int2",
        "model": "default",
        "requested_by": "cli:test",
        "pushgateway_url": pushgateway.url,
    }
    manifest = run_recorded_export(db, out=tmp_path / "a", export=_write_bundle, **common)
    assert (tmp_path / "a" / "graph.bin").exists()
    (record,) = list_exports(db)
    assert (record.status, record.format, record.size_bytes) == (
        "succeeded",
        "onnx",
        manifest["files"][0]["bytes"],
    )
    with pytest.raises(ExportError) as failed:
        run_recorded_export(db, out=tmp_path / "b", export=_fail_validation, **common)
    assert failed.value.code == ExportErrorCode.EXPORT_VALIDATION_FAILED
    latest = list_exports(db, limit=1)[0]
    assert (latest.status, latest.error_code) == ("failed", "EXPORT_VALIDATION_FAILED")
    exports = {labels["status"]: v for labels, v in pushgateway.samples("mobile_exports_total")}
    assert exports == {"success": 1.0, "failure": 1.0}
    ((labels, failures),) = pushgateway.samples("mobile_export_failures_total")
    assert failures == 1.0 and labels["instance"] == this_host() and labels["format"] == "onnx"


def test_a_refused_pair_is_not_recorded(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'mm.db'}")
    with pytest.raises(ExportError) as refused:
        run_recorded_export(
            db,
            platform="android",
            fmt="coreml",
            quantization="int2",
            model="default",
            out=tmp_path / "x",
            requested_by="cli:test",
            export=_write_bundle,
        )
    assert refused.value.code == ExportErrorCode.UNSUPPORTED_PLATFORM_FORMAT
    assert list_exports(db) == [] and not (tmp_path / "x").exists()


def test_a_queued_job_row_is_run_by_id(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'mm.db'}")
    export_id = _add(db, status="queued", platform="ios", fmt="onnx", quantization="fp32")
    run_recorded_export(
        db,
        platform="ios",
        fmt="onnx",
        quantization="fp32",
        model="default",
        out=tmp_path / "job",
        requested_by="api:admin",
        export_id=export_id,
        export=_write_bundle,
    )
    assert [(r.id, r.status) for r in list_exports(db)] == [(export_id, "succeeded")]
