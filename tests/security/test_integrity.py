"""Model tampering: a real directory of files, hashed, then modified by the test."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from mobile_multimodal.security import AuditLog, IntegrityMonitor
from mobile_multimodal.store import AuditEvent, Database


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def make_model_dir(root: Path) -> tuple[Path, list[dict[str, object]]]:
    model = root / "model"
    (model / "tokenizer").mkdir(parents=True)
    files = {"model.safetensors": bytes(range(256)) * 4000, "tokenizer/vocab.json": b'{"a": 1, "b": 2}'}
    manifest = []
    for rel, data in files.items():
        (model / rel).write_bytes(data)
        manifest.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return model, manifest


def test_untouched_model_passes(tmp_path: Path) -> None:
    model, manifest = make_model_dir(tmp_path)
    result = IntegrityMonitor(model, manifest).check()
    assert result.ok and result.checked_files == 2 and result.mismatches == []


def test_modified_file_is_detected(tmp_path: Path) -> None:
    model, manifest = make_model_dir(tmp_path)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[5000] ^= 0xFF  # same size, one flipped byte
    weights.write_bytes(bytes(data))
    result = IntegrityMonitor(model, manifest).check()
    assert not result.ok
    (m,) = result.mismatches
    assert (m.path, m.reason, m.expected_sha256) == ("model.safetensors", "sha256", manifest[0]["sha256"])
    assert m.actual_sha256 == hashlib.sha256(bytes(data)).hexdigest()


def test_missing_and_resized_files(tmp_path: Path) -> None:
    model, manifest = make_model_dir(tmp_path)
    (model / "tokenizer" / "vocab.json").unlink()
    with open(model / "model.safetensors", "ab") as f:
        f.write(b"appended payload")
    reasons = {m.path: m.reason for m in IntegrityMonitor(model, manifest).check().mismatches}
    assert reasons == {"model.safetensors": "size", "tokenizer/vocab.json": "missing"}


def test_manifest_is_validated(tmp_path: Path) -> None:
    model, manifest = make_model_dir(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        IntegrityMonitor(model, [{**manifest[0], "path": "../../etc/passwd"}])
    with pytest.raises(ValueError, match="64 hex"):
        IntegrityMonitor(model, [{**manifest[0], "sha256": "abc"}])
    with pytest.raises(ValueError, match="no files"):
        IntegrityMonitor(model, [])


def test_report_sets_metrics_and_audits(tmp_path: Path, db: Database) -> None:
    model, manifest = make_model_dir(tmp_path)
    monitor = IntegrityMonitor(model, manifest, model_type="multimodal", audit=AuditLog(db))
    failures = value("model_integrity_failures_total", {"model_type": "multimodal"})
    tampering = value("security_events_total", {"event_type": "model_tampering"})

    assert monitor.check_and_report().ok
    assert value("model_integrity_ok") == 1
    first_check = value("model_integrity_last_check_timestamp_seconds")
    assert first_check > 0
    assert value("model_integrity_failures_total", {"model_type": "multimodal"}) == failures

    (model / "tokenizer" / "vocab.json").write_bytes(b'{"a": 1, "b": 3}')
    assert not monitor.check_and_report().ok
    assert value("model_integrity_ok") == 0
    assert value("model_integrity_failures_total", {"model_type": "multimodal"}) == failures + 1
    assert value("security_events_total", {"event_type": "model_tampering"}) == tampering + 1
    assert value("model_integrity_last_check_timestamp_seconds") >= first_check

    (model / "tokenizer" / "vocab.json").write_bytes(b'{"a": 1, "b": 2}')  # restored
    assert monitor.check_and_report().ok
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    assert [(r.action, r.result) for r in rows] == [
        ("model.integrity_check", "failure"),
        ("model.integrity_check", "success"),
    ]
    assert rows[0].user_id == "system" and rows[0].details["mismatches"][0]["path"] == "tokenizer/vocab.json"


def test_background_loop_catches_tampering(tmp_path: Path) -> None:
    model, manifest = make_model_dir(tmp_path)
    monitor = IntegrityMonitor(model, manifest)
    tampering = value("security_events_total", {"event_type": "model_tampering"})

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60  # the loop checks every 50 ms: only a failure gets near this
        while not condition():
            assert time.monotonic() < deadline, f"{what} not seen in 60 s"
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        monitor.start(interval_s=0.05)
        await until(lambda: monitor.last_result is not None, "a first check")
        assert monitor.last_result is not None and monitor.last_result.ok
        (model / "model.safetensors").write_bytes(b"\x00" * (256 * 4000))
        await until(lambda: monitor.last_result is not None and not monitor.last_result.ok, "the tampering")
        await monitor.stop()

    asyncio.run(scenario())
    assert monitor.last_result is not None and not monitor.last_result.ok
    assert value("model_integrity_ok") == 0
    assert value("security_events_total", {"event_type": "model_tampering"}) >= tampering + 1


def test_saved_model_directory_is_checked_against_its_manifest(tmp_path: Path) -> None:
    # The real thing: a model saved by the model package, its manifest, one flipped weight byte.
    from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig

    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0)
    model_dir = model.save(tmp_path / "tiny")
    loaded = MobileMultiModalLLM.from_pretrained(str(model_dir))
    assert loaded.model_dir is not None
    monitor = IntegrityMonitor(loaded.model_dir, loaded.manifest["files"])
    assert monitor.check().ok
    weights = Path(loaded.model_dir) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    result = monitor.check()
    assert not result.ok and [m.path for m in result.mismatches] == ["model.safetensors"]


def test_one_modification_is_one_incident_however_often_it_is_found(tmp_path: Path, db: Database) -> None:
    model, manifest = make_model_dir(tmp_path)
    reporting = [True]
    monitor = IntegrityMonitor(model, manifest, audit=AuditLog(db), reports_incidents=lambda: reporting[0])
    failures = value("model_integrity_failures_total", {"model_type": "multimodal"})
    vocab = model / "tokenizer" / "vocab.json"

    vocab.write_bytes(b'{"a": 1, "b": 3}')
    for _ in range(3):  # found again on every interval: still the same incident
        assert not monitor.check_and_report().ok
    assert value("model_integrity_failures_total", {"model_type": "multimodal"}) == failures + 1

    vocab.write_bytes(b'{"a": 1, "b": 4}')  # modified again, differently: a new incident
    assert not monitor.check_and_report().ok
    assert value("model_integrity_failures_total", {"model_type": "multimodal"}) == failures + 2

    reporting[0] = False  # a worker that does not lead (serve --workers N): gauges only
    vocab.write_bytes(b'{"a": 1, "b": 5}')
    last_check = value("model_integrity_last_check_timestamp_seconds")
    assert not monitor.check_and_report().ok
    assert value("model_integrity_failures_total", {"model_type": "multimodal"}) == failures + 2
    assert value("model_integrity_ok") == 0
    assert value("model_integrity_last_check_timestamp_seconds") >= last_check
    with db.session() as s:
        rows = list(s.scalars(select(AuditEvent)))
    assert [r.result for r in rows] == ["failure", "failure"]
