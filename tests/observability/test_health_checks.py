"""The /health checks against their thresholds, with a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from mobile_multimodal.observability.health_checks import HealthChecker
from mobile_multimodal.settings import Settings
from mobile_multimodal.store import Database


def _checker(tmp_path: Path, database: Database | None = None, **overrides: float) -> HealthChecker:
    settings = Settings(data_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    return HealthChecker(
        settings,
        database=database,
        model_status=lambda: (None, "ready"),
        database_unavailable_reason="database unavailable: test",
    )


def test_all_healthy_with_a_real_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'h.db'}")
    report = _checker(tmp_path, db).run()
    db.dispose()
    assert report["status"] == "healthy" and report["errors"] == []
    assert set(report["checks"]) == {"database", "model", "memory", "disk"}
    assert report["details"]["database_latency_ms"] >= 0
    assert report["timestamp"].endswith("Z") and report["version"]


def test_each_threshold_turns_its_check_unhealthy(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'h.db'}")
    report = _checker(
        tmp_path,
        db,
        health_memory_max_percent=0.01,
        health_disk_min_free_percent=99.99,
        health_database_max_latency_ms=1e-6,
    ).run()
    db.dispose()
    assert report["status"] == "unhealthy"
    assert report["checks"] == {
        "database": "unhealthy",
        "model": "healthy",
        "memory": "unhealthy",
        "disk": "unhealthy",
    }
    codes = {e["component"]: e["code"] for e in report["errors"]}
    assert codes == {"database": "DATABASE_UNAVAILABLE", "memory": "MEMORY_HIGH", "disk": "DISK_LOW"}
    assert all("threshold" in e["message"] for e in report["errors"])


def test_missing_or_broken_database_and_failed_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    checker = HealthChecker(
        settings,
        database=None,
        database_unavailable_reason="database unavailable: boom",
        model_status=lambda: ("MODEL_LOAD_FAILED", "Model failed to load"),
    )
    report = checker.run()
    assert report["errors"] == [
        {"component": "database", "message": "database unavailable: boom", "code": "DATABASE_UNAVAILABLE"},
        {"component": "model", "message": "Model failed to load", "code": "MODEL_LOAD_FAILED"},
    ]
    db = Database(f"sqlite:///{tmp_path / 'gone.db'}")
    db.engine.dispose()
    (tmp_path / "gone.db").unlink()
    (tmp_path / "gone.db").mkdir()  # a directory where the file was: every connection now fails
    broken = _checker(tmp_path, db).run()
    assert broken["checks"]["database"] == "unhealthy"
    assert broken["errors"][0]["code"] == "DATABASE_UNAVAILABLE"


def test_disk_check_follows_a_data_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    report = _checker(tmp_path / "not" / "yet").run()
    assert report["checks"]["disk"] == "healthy" and report["details"]["disk_free_percent"] > 0
