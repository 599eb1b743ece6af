"""OpenAPI documentation of error responses, so the schema lists every status a route can answer.

FastAPI documents a route's success body and, by default, a 422 shaped like its own validation
error, which is not what this service sends. :func:`error_responses` declares each status with
the service's :class:`ErrorResponse` body (FastAPI then omits its default 422), and the codes
that status can carry.

Example::

    @router.post("/inference", responses=error_responses(400, 413, 422, 503))
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from mobile_multimodal.serving.error_handlers import STATUS
from mobile_multimodal.serving.schemas import ErrorResponse

_DESCRIPTIONS = {
    400: "Malformed input (bad JSON, base64 or data URI, or an undecodable image)",
    401: "Missing or unknown API key",
    403: "The API key is revoked or lacks access",
    404: "Not found",
    413: "The body or the image is too large",
    415: "Unsupported content type or image format",
    422: "Invalid field values (unknown task, missing question, max_tokens out of range, wrong types)",
    429: "Rate limit of this API key exceeded (see Retry-After)",
    500: "Unexpected failure; the trace_id identifies it in the logs",
    503: "Overloaded, not ready or shutting down (see Retry-After)",
    504: "No result within the request timeout",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the error body and its possible codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = sorted(code.value for code, s in STATUS.items() if s == status)
        description = _DESCRIPTIONS.get(status, "Error")
        if codes:
            description += ". Codes: " + ", ".join(codes)
        headers = (
            {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
            if status in (429, 503)
            else None
        )
        entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
        if headers:
            entry["headers"] = headers
        out[status] = entry
    return out


_METRICS_OPERATION: dict[str, Any] = {
    "summary": "Prometheus metrics (text format; OpenMetrics with exemplars when asked)",
    "responses": {
        "200": {
            "description": "The exposition; every worker's samples with --workers N",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        },
        "401": {
            "description": "MOBILE_MM_METRICS_TOKEN is set and the bearer token is missing or wrong",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        },
    },
}


# Routes that take an API key when MOBILE_MM_AUTH=required (health and metrics never do).
_KEYED_PREFIXES = ("/inference", "/model/inference", "/v1/")
_SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def install_openapi(app: FastAPI, *, auth_required: bool = False) -> None:
    """Make the generated schema describe what the service really sends.

    * FastAPI documents a 422 shaped like its own ``HTTPValidationError`` on routes with
      parameters; our handler answers every validation error with ``ErrorResponse``, so those
      references are rewritten and the unused components dropped.
    * ``/metrics`` and ``/model/metrics`` are mounted by the observability package outside the
      schema; they are documented here.
    * With ``auth_required``, the API-key schemes (Bearer or ``X-API-Key``) are declared on the
      inference and OpenAI routes.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, summary=app.summary, description=app.description,
            routes=app.routes,
        )  # fmt: skip
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                response = operation.get("responses", {}).get("422")
                schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("$ref", "").endswith("/HTTPValidationError"):
                    response["content"]["application/json"]["schema"] = error_ref
                    response["description"] = _DESCRIPTIONS[422]
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        if auth_required:
            spec["components"]["securitySchemes"] = _SECURITY_SCHEMES
            for path, operations in spec["paths"].items():
                if path.startswith(_KEYED_PREFIXES):
                    for operation in operations.values():
                        operation["security"] = [{"bearerAuth": []}, {"apiKeyHeader": []}]
        for path in ("/metrics", "/model/metrics"):
            spec["paths"][path] = {
                "get": {
                    **_METRICS_OPERATION,
                    "operationId": f"metrics_{path.strip('/')}",
                    "tags": ["observability"],
                }
            }
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
