"""Every audit event type carries every guide field, checked per event type.

The guide's audit fields are user identity, timestamp, action, resource, result and source IP
(tests/security/audit_fields.py). Each event type the code can record is triggered here for
real (the security context, the key store, the configuration record, the ``mobile-mm db`` and
``mobile-mm users`` operations), on SQLite and PostgreSQL, and every row it wrote is checked
together with its line in ``audit.jsonl``. The events only a running service records (model
load and reload, a refused reload, export jobs, runtime tampering) are checked the same way in
the serving tests named in :data:`CHECKED_ELSEWHERE`.

A scan of the source finds every action string passed to the audit log, so an event type added
later without such a check fails :func:`test_every_event_type_in_the_source_has_a_guide_field_check`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.security.audit_fields import assert_guide_fields, file_lines, rows

from mobile_multimodal.ops.db_commands import db_backup, db_cleanup, db_downgrade, db_restore, db_upgrade
from mobile_multimodal.ops.key_commands import keys_list
from mobile_multimodal.ops.user_commands import users_delete, users_export
from mobile_multimodal.security import SecurityContext, SecurityError, create_key, record_config_state
from mobile_multimodal.security.anomaly import Anomaly
from mobile_multimodal.security.api_keys import revoke_key
from mobile_multimodal.security.audit_file import AuditFile, configure_audit_file
from mobile_multimodal.security.audit_query import audit_query_command
from mobile_multimodal.security.auth_failure_throttle import FailureAuditThrottle
from mobile_multimodal.security.ratelimit import RateLimit, RateLimiter
from mobile_multimodal.settings import Settings, get_settings
from mobile_multimodal.store import Database

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "mobile_multimodal"
BAD_KEY = "mmk_" + "x" * 43

# Recorded only by a running service: checked with assert_guide_fields in these tests.
CHECKED_ELSEWHERE = {
    "model.load": "tests/serving/test_reload.py",
    "model.reload": "tests/serving/test_reload.py",
    "config.reload": "tests/serving/test_reload.py",
    "model.integrity_check": "tests/serving/test_runtime_tampering.py",
    "export.request": "tests/serving/test_served_audit_events.py",
    "export.finish": "tests/serving/test_served_audit_events.py",
    "export.run": "tests/security/test_audit_trail.py",
}


class Env:
    """One test's database, settings (pointing the CLI operations at it) and directories."""

    def __init__(self, db: Database, tmp_path: Path) -> None:
        self.db = db
        self.tmp = tmp_path

    def context(self, **overrides: object) -> SecurityContext:
        values: dict[str, object] = {"data_dir": self.tmp, "auth": "required", **overrides}
        return SecurityContext(Settings(**values), self.db)  # type: ignore[arg-type]


def _auth_success(env: Env) -> None:
    key, _ = create_key(env.db, "alice")
    env.context().authenticate({"x-api-key": key}, source_ip="203.0.113.9", resource="POST /inference")


def _auth_failure(env: Env) -> None:
    with pytest.raises(SecurityError):
        env.context().authenticate(
            {"x-api-key": BAD_KEY}, source_ip="198.51.100.1", resource="POST /inference"
        )


def _auth_suppressed(env: Env) -> None:
    # one row per window, the rest summarised; a frozen clock keeps all three in one window
    throttle = FailureAuditThrottle(limit=1, window_s=60.0, clock=lambda: 0.0)
    context = SecurityContext(Settings(data_dir=env.tmp, auth="required"), env.db, failure_audits=throttle)
    for _ in range(3):
        with pytest.raises(SecurityError):
            context.authenticate({"x-api-key": BAD_KEY}, source_ip="198.51.100.2", resource="GET /v1/models")
    assert context.flush_suppressed_audits(final=True) == 1


def _rate_limit(env: Env) -> None:
    key, _ = create_key(env.db, "bob")
    context = env.context()
    frozen = RateLimiter({"free": RateLimit(per_minute=1, burst=1)}, clock=lambda: 0.0)  # no refill
    context.limiter = frozen
    principal = context.authenticate({"x-api-key": key}, source_ip="10.0.0.7", resource="POST /inference")
    context.check_rate_limit(principal, source_ip="10.0.0.7", resource="POST /inference")
    with pytest.raises(SecurityError):
        context.check_rate_limit(principal, source_ip="10.0.0.7", resource="POST /inference")


def _admin_access(env: Env) -> None:
    admin, _ = create_key(env.db, "root", admin=True)
    plain, _ = create_key(env.db, "carol")
    context = env.context()
    context.authorize_admin({"x-api-key": admin}, source_ip="10.0.0.1", resource="GET /export/x")
    with pytest.raises(SecurityError):
        context.authorize_admin({"x-api-key": plain}, source_ip="10.0.0.2", resource="GET /export/x")


def _anomaly(env: Env) -> None:
    anomaly = Anomaly("path_traversal", "198.51.100.3", "/../etc/passwd")
    env.context().report_anomaly(anomaly, resource="GET /../etc/passwd")


def _key_revoke(env: Env) -> None:
    _, record = create_key(env.db, "dave")
    revoke_key(env.db, record.id, actor="cli:root")


def _keys_list(env: Env) -> None:
    create_key(env.db, "erin")
    keys_list(False, False, db=env.db)


def _audit_query(env: Env) -> None:
    audit_query_command(
        env.db, actor="cli:root", user=None, action="key.*", since="1h", result=None, limit=10, as_json=True
    )


def _config(env: Env) -> None:
    base = Settings(data_dir=env.tmp, port=8080)
    record_config_state(env.db, base)
    record_config_state(env.db, base.model_copy(update={"port": 8081}))


def _backup(env: Env) -> Path:
    out, ok = db_backup(env.tmp / "bk", False, db=env.db)
    assert ok, out
    (path,) = [p for p in (env.tmp / "bk").iterdir() if not p.name.endswith(".json")]
    return path


def _restore(env: Env) -> None:
    path = _backup(env)
    out, ok = db_restore(path, False, db=env.db)
    assert ok, out


def _migrations(env: Env) -> None:
    for out, ok in (db_downgrade("r0001"), db_upgrade()):
        assert ok, out


def _cleanup(env: Env) -> None:
    out, ok = db_cleanup(False, db=env.db)
    assert ok, out


def _user_export(env: Env) -> None:
    create_key(env.db, "frank")
    out, ok = users_export("frank", None, db=env.db)
    assert ok, out


def _user_erase(env: Env) -> None:
    create_key(env.db, "grace")
    out, ok = users_delete("grace", db=env.db)
    assert ok, out


TRIGGERS: dict[str, Callable[[Env], object]] = {
    "auth.success": _auth_success,
    "auth.authenticate": _auth_failure,
    "auth.authenticate.suppressed": _auth_suppressed,
    "rate_limit": _rate_limit,
    "admin.access": _admin_access,
    "request.anomaly": _anomaly,
    "key.create": _keys_list,
    "key.revoke": _key_revoke,
    "keys.list": _keys_list,
    "audit.query": _audit_query,
    "config.baseline": _config,
    "config.change": _config,
    "db.backup": _backup,
    "db.restore": _restore,
    "db.upgrade": _migrations,
    "db.downgrade": _migrations,
    "retention.cleanup": _cleanup,
    "user.export": _user_export,
    "user.erase": _user_erase,
}


@pytest.fixture
def env(db: Database, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The database, with the CLI operations' settings pointing at it and a fresh audit file."""
    monkeypatch.setenv("MOBILE_MM_DATABASE_URL", db_url)
    monkeypatch.setenv("MOBILE_MM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MOBILE_MM_LOG_DIR", str(tmp_path / "logs"))
    get_settings.cache_clear()
    configure_audit_file(AuditFile(tmp_path / "logs" / "audit.jsonl"))
    try:
        yield Env(db, tmp_path)
    finally:
        configure_audit_file(None)
        get_settings.cache_clear()


@pytest.mark.parametrize("action", sorted(TRIGGERS))
def test_each_event_type_carries_every_guide_field(env: Env, action: str) -> None:
    TRIGGERS[action](env)
    recorded = rows(env.db, action)
    lines = file_lines(env.tmp / "logs", action)
    assert recorded, f"{action}: no audit row"
    assert len(lines) == len(recorded), f"{action}: {len(recorded)} rows but {len(lines)} audit.jsonl lines"
    for row, line in zip(recorded, lines, strict=True):
        assert row.action == action
        assert_guide_fields(row, line)


def _recorded_actions() -> set[str]:
    """Every action string the source passes to ``AuditLog.record`` or ``make_event``."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            if node.func.attr == "record":
                values = [k.value for k in node.keywords if k.arg == "action"]
            elif node.func.attr == "make_event" and len(node.args) >= 2:
                values = [node.args[1]]
            else:
                continue
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.add(value.value)
                else:  # a variable or an f-string: named by its source text and module
                    found.add(f"<{ast.unparse(value)} in {path.relative_to(SRC)}>")
    return found


# Actions the scan sees as an expression, and the event types they stand for.
EXPRESSIONS = {
    "<f'db.{step}' in ops/db_commands.py>": {"db.upgrade", "db.downgrade"},
    "<action in security/audit.py>": set(),  # AuditLog.record passes its own argument on
    "<action in security/config_audit.py>": {"config.baseline", "config.change"},
    "<action in security/export_audit.py>": {"export.run"},
}


def _event_types() -> set[str]:
    """The event types the source records, expressions resolved through :data:`EXPRESSIONS`."""
    in_source: set[str] = set()
    for action in _recorded_actions():
        if action in EXPRESSIONS:
            in_source |= EXPRESSIONS[action]
        else:
            assert not action.startswith("<"), f"an action the scan cannot name: {action}"
            in_source.add(action)
    return in_source


def test_every_event_type_in_the_source_has_a_guide_field_check() -> None:
    in_source = _event_types()
    checked = set(TRIGGERS) | set(CHECKED_ELSEWHERE)
    assert in_source - checked == set(), "event types without a per-type guide-field test"
    assert checked - in_source == set(), "tests of event types the code no longer records"
    for action, test_file in CHECKED_ELSEWHERE.items():
        text = (REPO / test_file).read_text()
        assert f'"{action}"' in text and "assert_guide_fields(" in text, f"{action} in {test_file}"


def test_the_guide_names_every_event_type_and_no_other() -> None:
    """docs/monitoring.md's "Audit logging" section lists the actions an operator can query."""
    text = (REPO / "docs" / "monitoring.md").read_text()
    section = text[text.index("### Audit logging") :]
    section = section[: section.index("\n### ", 1)]
    prose = re.sub(r"```.*?```", "", section, flags=re.DOTALL)  # fences would pair backticks wrongly
    quoted = set(re.findall(r"`([^`]+)`", prose))
    in_source = _event_types()
    assert in_source - quoted == set(), "event types the guide does not name"
    dotted = {q for q in quoted if re.fullmatch(r"[a-z_]+(?:\.[a-z_]+)+", q)}
    assert dotted - in_source == set(), "actions the guide names that the code never records"
