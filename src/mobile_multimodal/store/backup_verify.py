"""Check a database backup without trusting the process that wrote it.

``verify(path)`` re-reads the copy itself: for SQLite it opens the file read-only and runs
``PRAGMA integrity_check`` and a row count of every table; for a PostgreSQL plain-format dump it
checks the trailer pg_dump writes last (a truncated dump lacks it) and counts the rows of each
``COPY`` block. Either way it compares the file's sha256 and row counts with the sidecar JSON
(``<backup>.json``) written at backup time, so a copy altered or swapped later is caught.

Example::

    result = verify(Path("var/backups/mobile_mm-20250101T020000Z.db"))
    assert result.ok, result.errors
    print(result.row_counts["api_keys"])
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mobile_multimodal.filehash import sha256_file

SQLITE_MAGIC = b"SQLite format 3\x00"
PG_DUMP_HEAD = "-- PostgreSQL database dump"
PG_DUMP_TRAILER = "-- PostgreSQL database dump complete"
_COPY_RE = re.compile(r"^COPY (?:\"?[\w]+\"?\.)?\"?(\w+)\"? \(.*\) FROM stdin;$")

BackupFormat = Literal["sqlite", "pg_dump", "unknown"]


@dataclass
class VerifyResult:
    """What :func:`verify` found. ``ok`` is true only when every check passed."""

    path: Path
    ok: bool
    format: BackupFormat
    integrity: str  # "ok", or what the integrity check reported
    row_counts: dict[str, int]
    sha256: str
    sha256_expected: str | None  # from the sidecar; None when the sidecar is missing
    schema_version: int | None
    size_bytes: int
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def sidecar_path(backup_path: Path) -> Path:
    return backup_path.with_name(backup_path.name + ".json")


def detect_format(path: Path) -> BackupFormat:
    with open(path, "rb") as f:
        head = f.read(256)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    text = head.decode("utf-8", errors="replace")
    if PG_DUMP_HEAD in text:
        return "pg_dump"
    return "unknown"


def inspect_sqlite(path: Path) -> tuple[str, dict[str, int], int | None]:
    """(integrity_check result, row count per table, schema version) of a SQLite file, read-only."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
        integrity = "ok" if rows == ["ok"] else "; ".join(rows[:10])
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        # Table names come from the file's own catalogue; quoting keeps odd names harmless.
        counts = {t: int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}
        version = None
        if "schema_version" in tables:
            version = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        return integrity, counts, (int(version) if version is not None else None)
    finally:
        conn.close()


def inspect_pg_dump(path: Path) -> tuple[str, dict[str, int], int | None]:
    """(completeness, row count per table, schema version) of a plain-format pg_dump file."""
    counts: dict[str, int] = {}
    version: int | None = None
    current: str | None = None
    current_is_version = False
    complete = False
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if current is not None:
                if line == "\\.":
                    current = None
                    continue
                counts[current] += 1
                if current_is_version:
                    first = line.split("\t", 1)[0]
                    version = max(version or 0, int(first)) if first.isdigit() else version
                continue
            m = _COPY_RE.match(line)
            if m:
                current = m.group(1)
                counts[current] = 0
                current_is_version = current == "schema_version"
            elif line.startswith(PG_DUMP_TRAILER):
                complete = True
    if current is not None:
        return f"incomplete: COPY block for {current!r} never ends", counts, version
    if not complete:
        return f"incomplete: no '{PG_DUMP_TRAILER}' trailer (truncated dump?)", counts, version
    return "ok", counts, version


def verify(path: Path) -> VerifyResult:
    """Open the backup at ``path`` and check it; see the module docstring for what is checked."""
    path = Path(path)
    if not path.is_file():
        missing = [f"{path} does not exist"]
        return VerifyResult(path, False, "unknown", "missing", {}, "", None, None, 0, missing)
    errors: list[str] = []
    fmt = detect_format(path)
    integrity, version = "unreadable", None
    counts: dict[str, int] = {}
    try:
        if fmt == "sqlite":
            integrity, counts, version = inspect_sqlite(path)
        elif fmt == "pg_dump":
            integrity, counts, version = inspect_pg_dump(path)
        else:
            errors.append("not a SQLite database nor a PostgreSQL plain dump")
    except (sqlite3.Error, OSError, UnicodeDecodeError) as exc:
        integrity = f"unreadable: {exc}"
    if integrity != "ok" and fmt != "unknown":
        errors.append(f"integrity check failed: {integrity}")

    digest = sha256_file(path)
    expected: str | None = None
    side = sidecar_path(path)
    if not side.is_file():
        errors.append(f"sidecar {side.name} is missing: cannot confirm this is the file the backup wrote")
    else:
        try:
            meta = json.loads(side.read_text())
            expected = str(meta["sha256"])
            if expected != digest:
                errors.append(f"sha256 {digest[:12]}… differs from the sidecar's {expected[:12]}…")
            recorded = {str(k): int(v) for k, v in dict(meta.get("row_counts", {})).items()}
            if recorded and integrity == "ok" and recorded != counts:
                errors.append(f"row counts {counts} differ from the sidecar's {recorded}")
        except (ValueError, KeyError, TypeError) as exc:
            errors.append(f"sidecar {side.name} is unreadable: {exc}")
    return VerifyResult(
        path=path,
        ok=not errors,
        format=fmt,
        integrity=integrity,
        row_counts=counts,
        sha256=digest,
        sha256_expected=expected,
        schema_version=version,
        size_bytes=path.stat().st_size,
        errors=errors,
    )
