"""The audit trail's completeness: successful authentications, data access (key listing, audit
queries), CLI exports, each with every guide field, in the database and in ``audit.jsonl``;
the file rotates; ``mobile-mm audit query`` reads the database (the CLI tests on SQLite and on
PostgreSQL, ``db_url`` of tests/security/conftest.py).

The events the running service records (model load and reload, configuration changes,
``POST /export`` jobs) are tested against a served app in tests/serving/test_reload.py and
tests/serving/test_served_audit_events.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.security.audit_fields import assert_guide_fields, file_lines, rows
from typer.testing import CliRunner

from mobile_multimodal.cli import app as cli
from mobile_multimodal.security import AuditLog, SecurityContext, create_key
from mobile_multimodal.security.audit_file import AuditFile, configure_audit_file
from mobile_multimodal.security.audit_query import parse_since
from mobile_multimodal.settings import Settings, get_settings
from mobile_multimodal.store import Database


@pytest.fixture
def audit_dir(tmp_path: Path) -> Iterator[Path]:
    """This process's audit file, in a fresh log dir, for one test."""
    log_dir = tmp_path / "logs"
    configure_audit_file(AuditFile(log_dir / "audit.jsonl"))
    yield log_dir
    configure_audit_file(None)


def test_a_successful_authentication_is_audited_once_per_key_per_interval(
    db: Database, audit_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, auth="required", auth_success_audit_interval_s=3600)
    context = SecurityContext(settings, db)
    alice_key, alice = create_key(db, "alice")
    bob_key, _ = create_key(db, "bob", "pro")
    for _ in range(3):
        context.authenticate({"x-api-key": alice_key}, source_ip="203.0.113.9", resource="POST /inference")
    context.authenticate(
        {"authorization": f"Bearer {bob_key}"}, source_ip="10.0.0.7", resource="GET /v1/models"
    )

    audited = rows(db, "auth.success")
    assert [(r.user_id, r.source_ip, r.resource) for r in audited] == [
        ("alice", "203.0.113.9", "POST /inference"),
        ("bob", "10.0.0.7", "GET /v1/models"),
    ]
    assert audited[0].details["key_id"] == alice.id
    lines = file_lines(audit_dir, "auth.success")
    for row, line in zip(audited, lines, strict=True):
        assert_guide_fields(row, line)
    assert alice_key not in (audit_dir / "audit.jsonl").read_text()

    # a failure is still audited on its own, with its fields
    with pytest.raises(Exception, match="not valid"):
        context.authenticate(
            {"x-api-key": "mmk_" + "x" * 43}, source_ip="198.51.100.1", resource="POST /inference"
        )
    (failure,) = rows(db, "auth.authenticate")
    assert_guide_fields(failure, file_lines(audit_dir, "auth.authenticate")[0])
    assert (failure.result, failure.user_id) == ("failure", "anonymous")


def test_the_audit_file_rotates_and_loses_no_event(tmp_path: Path, db: Database) -> None:
    audit_file = AuditFile(tmp_path / "logs" / "audit.jsonl", max_bytes=2048, backup_count=50)
    configure_audit_file(audit_file)
    try:
        audit = AuditLog(db)
        for i in range(40):
            audit.record(user_id=f"u{i}", action="test.rotation", resource=f"r/{i}", result="success")
    finally:
        configure_audit_file(None)
    files = sorted((tmp_path / "logs").glob("audit.jsonl*"))
    assert len(files) > 2  # rotated at 2 KiB: audit.jsonl, audit.jsonl.1, ...
    assert all(f.stat().st_size <= 2048 + 400 for f in files)  # at most one line past the limit
    lines = [json.loads(text) for f in files for text in f.read_text().splitlines()]
    assert sorted(int(line["user_id"][1:]) for line in lines) == list(range(40))
    assert all(line["source_ip"] == "local" for line in lines)  # no network client caused them


def test_since_accepts_ages_and_iso_times() -> None:
    now = parse_since("2026-12-05T10:00:00Z")
    assert parse_since("90m", now=now).isoformat() == "2026-12-05T08:30:00+00:00"
    assert parse_since("2d", now=now).isoformat() == "2026-12-03T10:00:00+00:00"
    assert parse_since("2026-12-01T00:00:00").tzinfo is not None
    with pytest.raises(ValueError, match="use an age"):
        parse_since("yesterday")


@pytest.fixture
def cli_env(tmp_path: Path, db_url: str) -> Iterator[dict[str, str]]:
    """The CLI's environment: its database (SQLite or PostgreSQL, ``db_url``) and log dir."""
    env = {
        "MOBILE_MM_DATA_DIR": str(tmp_path / "data"),
        "MOBILE_MM_LOG_DIR": str(tmp_path / "logs"),
        "MOBILE_MM_DATABASE_URL": db_url,
    }
    yield env
    configure_audit_file(None)  # the CLI configured this process's audit file
    get_settings.cache_clear()


def _invoke(args: list[str], env: dict[str, str]) -> str:
    result = CliRunner().invoke(cli, args, env=env)
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return result.output


def test_key_listing_and_audit_queries_are_data_access_events(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    created = json.loads(_invoke(["keys", "create", "--user", "carol", "--json"], cli_env))
    _invoke(["keys", "list"], cli_env)
    db = Database(cli_env["MOBILE_MM_DATABASE_URL"])
    try:
        (listing,) = rows(db, "keys.list")
        assert_guide_fields(listing, file_lines(log_dir, "keys.list")[0])
        assert listing.user_id.startswith("cli:") and listing.details["rows"] == 1
        (creation,) = rows(db, "key.create")
        assert_guide_fields(creation, file_lines(log_dir, "key.create")[0])

        printed = json.loads(
            _invoke(
                [
                    "audit",
                    "query",
                    "--user",
                    creation.user_id,
                    "--action",
                    "key.*",
                    "--since",
                    "1h",
                    "--json",
                ],
                cli_env,
            )
        )
        assert [(e["action"], e["resource"]) for e in printed] == [
            ("key.create", f"api_keys/{created['id']}")
        ]
        assert set(printed[0]) >= {"user_id", "timestamp", "action", "resource", "result", "source_ip"}
        table = _invoke(["audit", "query", "--action", "keys.list"], cli_env)
        assert table.splitlines()[0].split()[:6] == [
            "TIMESTAMP",
            "USER",
            "ACTION",
            "RESULT",
            "SOURCE_IP",
            "RESOURCE",
        ]
        assert len(table.splitlines()) == 2 and "keys.list" in table
        assert "no audit events match" in _invoke(["audit", "query", "--user", "nobody"], cli_env)

        queries = rows(db, "audit.query")
        assert len(queries) == 3 and queries[0].details["rows"] == 1
        assert queries[0].details["filters"]["action"] == "key.*"
        assert_guide_fields(queries[0], file_lines(log_dir, "audit.query")[0])
    finally:
        db.dispose()
    bad = CliRunner().invoke(cli, ["audit", "query", "--since", "yesterday"], env=cli_env)
    assert bad.exit_code == 2 and "use an age" in bad.output
    assert created["key"] not in (log_dir / "audit.jsonl").read_text()


def test_a_cli_export_is_audited_with_its_outcome(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--platform",
            "android",
            "--format",
            "onnx",
            "--model",
            str(missing),
            "--out",
            str(tmp_path / "b"),
        ],
        env=cli_env,
    )
    get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    db = Database(cli_env["MOBILE_MM_DATABASE_URL"])
    try:
        (run,) = rows(db, "export.run")
    finally:
        db.dispose()
    assert_guide_fields(run, file_lines(tmp_path / "logs", "export.run")[0])
    assert (run.result, run.resource) == ("failure", f"export:{tmp_path / 'b'}")
    assert run.details["platform"] == "android" and run.details["error_code"].startswith("EXPORT_")
