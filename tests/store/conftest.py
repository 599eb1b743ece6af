"""Store fixtures: a SQLite file per test, or a database in the session's PostgreSQL cluster
(tests/postgres.py), for the same test on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mobile_multimodal.store import Database


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'mm.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same store test against SQLite and against a real PostgreSQL."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()
