"""Every route is guarded: with ``MOBILE_MM_AUTH=required``, a request without a key is refused
(401 ``MISSING_API_KEY``) on every route of the served OpenAPI schema except the health and
metrics routes, which a probe or a scraper calls without one; the schema itself and its viewers
(``/openapi.json``, ``/docs``, ``/redoc``) take the key too.

The schema is read from the real server (``GET /openapi.json`` with a key), so a route added
later is walked too; and the app's own route table is checked against the schema, so a route
hidden from the schema cannot skip the walk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from tests.serving.conftest import LiveServer, make_settings, tiny_model

from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import Database

# Called by probes and scrapers that hold no API key (DESIGN.md: "Health and metrics routes
# need no API key"); /metrics has its own optional bearer token.
PUBLIC = {"/alive", "/ready", "/health", "/model/health", "/metrics", "/model/metrics"}
# The schema and its viewers (serving/routers/api_docs.py): outside the schema they describe.
DOCS = {"/openapi.json", "/docs", "/redoc"}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("guarded")
    server = LiveServer(make_settings(tmp, auth="required"), tiny_model).start()
    server.wait_ready()
    db = Database(server.settings.resolved_database_url)
    key, _ = create_key(db, "guard", "pro")
    db.dispose()
    server.key = key  # type: ignore[attr-defined]
    yield server
    server.stop()


def _schema(server: LiveServer) -> dict[str, object]:
    with server.client() as client:
        response = client.get("/openapi.json", headers={"Authorization": f"Bearer {server.key}"})  # type: ignore[attr-defined]
    assert response.status_code == 200, response.text[:200]
    schema: dict[str, object] = response.json()
    return schema


def _served_paths(routes: Sequence[BaseRoute], prefix: str = "") -> set[str]:
    """Every path the app routes, through included routers (FastAPI >= 0.13x keeps an included
    router as one ``_IncludedRouter`` entry in ``app.routes``, not its routes flattened)."""
    paths: set[str] = set()
    for route in routes:
        if isinstance(route, APIRoute):
            paths.add(prefix + route.path)
        elif hasattr(route, "original_router"):
            inner = prefix + str(getattr(route.include_context, "prefix", "") or "")
            paths |= _served_paths(route.original_router.routes, inner)
    return paths


def _operations(schema: dict[str, object]) -> list[tuple[str, str]]:
    paths = schema["paths"]
    assert isinstance(paths, dict)
    return sorted((path, method.upper()) for path, item in paths.items() for method in item)


def test_every_schema_route_but_health_and_metrics_refuses_a_request_without_a_key(
    keyed_server: LiveServer,
) -> None:
    schema = _schema(keyed_server)
    with keyed_server.client() as client:
        operations = _operations(schema)
        assert len(operations) >= 8  # inference, its alias, chat, models, export x3, health...
        guarded = [(p, m) for p, m in operations if p not in PUBLIC]
        assert {"/inference", "/v1/chat/completions", "/export"} <= {p for p, _ in guarded}
        for path, method in guarded:
            url = re.sub(r"\{[^}]+\}", "anything", path)
            response = client.request(method, url, json={} if method in ("POST", "PUT", "PATCH") else None)
            assert response.status_code == 401, (
                f"{method} {path}: {response.status_code} {response.text[:200]}"
            )
            assert response.json()["error"]["code"] == "MISSING_API_KEY", f"{method} {path}"
        for path, method in [(p, m) for p, m in operations if p in PUBLIC]:
            assert client.request(method, path).status_code != 401, f"{method} {path} needs no key"
        # (a wrong key is refused the same way, not only a missing one)
        wrong = client.post("/inference", json={}, headers={"Authorization": "Bearer mmk_" + "A" * 43})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "INVALID_API_KEY"


def test_no_route_hides_from_the_schema(keyed_server: LiveServer) -> None:
    in_schema = {p for p, _ in _operations(_schema(keyed_server))}
    served = _served_paths(keyed_server.app.routes)
    assert {"/inference", "/v1/chat/completions", "/export", "/health"} <= served
    assert served >= DOCS  # served by us (with the key check), not by FastAPI's built-in routes
    hidden = served - in_schema - DOCS
    assert hidden <= PUBLIC, f"routes the schema walk cannot see: {sorted(hidden - PUBLIC)}"
    with httpx.Client(base_url=keyed_server.url, timeout=60) as client:
        for path in sorted(hidden):
            assert client.get(path).status_code == 200, path  # the metrics routes: public, as documented


def test_the_schema_and_its_viewers_take_the_key(keyed_server: LiveServer) -> None:
    key = {"Authorization": f"Bearer {keyed_server.key}"}  # type: ignore[attr-defined]
    with httpx.Client(base_url=keyed_server.url, timeout=60) as client:
        for path in sorted(DOCS):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "MISSING_API_KEY", path
            answered = client.get(path, headers=key)
            assert answered.status_code == 200, path
        assert "swagger-ui" in client.get("/docs", headers=key).text
        assert "redoc" in client.get("/redoc", headers=key).text
        assert client.get("/docs/oauth2-redirect", headers=key).status_code == 404  # not served


def test_with_auth_disabled_the_schema_is_open(tmp_path: Path) -> None:
    server = LiveServer(make_settings(tmp_path, auth="disabled"), tiny_model).start()
    try:
        server.wait_ready()
        with server.client() as client:
            assert client.get("/openapi.json").json()["paths"]["/inference"]
            assert client.get("/docs").status_code == 200
    finally:
        server.stop()
