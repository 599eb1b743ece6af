"""Every route is guarded: with ``MOBILE_MM_AUTH=required``, a request without a key is refused
(401 ``MISSING_API_KEY``) on every route of the served OpenAPI schema except the health and
metrics routes, which a probe or a scraper calls without one.

The schema is read from the real server (``GET /openapi.json``), so a route added later is
walked too; and the app's own route table is checked against the schema, so a route hidden
from the schema cannot skip the walk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from tests.serving.conftest import LiveServer, make_settings, tiny_model

# Called by probes and scrapers that hold no API key (DESIGN.md: "Health and metrics routes
# need no API key"); /metrics has its own optional bearer token.
PUBLIC = {"/alive", "/ready", "/health", "/model/health", "/metrics", "/model/metrics"}
# FastAPI's own documentation routes (the schema and its viewers), not part of the schema.
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("guarded")
    server = LiveServer(make_settings(tmp, auth="required"), tiny_model).start()
    server.wait_ready()
    yield server
    server.stop()


def _operations(schema: dict[str, object]) -> list[tuple[str, str]]:
    paths = schema["paths"]
    assert isinstance(paths, dict)
    return sorted((path, method.upper()) for path, item in paths.items() for method in item)


def test_every_schema_route_but_health_and_metrics_refuses_a_request_without_a_key(
    keyed_server: LiveServer,
) -> None:
    with keyed_server.client() as client:
        schema = client.get("/openapi.json").json()
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
    with keyed_server.client() as client:
        in_schema = {p for p, _ in _operations(client.get("/openapi.json").json())}
    served = {route.path for route in keyed_server.app.routes if isinstance(route, APIRoute)}
    hidden = served - in_schema - DOCS
    assert hidden <= PUBLIC, f"routes the schema walk cannot see: {sorted(hidden - PUBLIC)}"
    with httpx.Client(base_url=keyed_server.url, timeout=60) as client:
        for path in sorted(hidden):
            assert client.get(path).status_code == 200, path  # the metrics routes: public, as documented
