"""The API's own description: ``/openapi.json`` and its viewers ``/docs`` (Swagger UI), ``/redoc``.

They take the same key as the API (security's ``require_api_key``): with ``MOBILE_MM_AUTH=
required`` a caller without a key learns nothing about the routes either (401), and only health
and metrics stay open to probes and scrapers. With auth disabled they are open, as everything is.
The viewer pages fetch the schema from the browser without a key, so with keys required they are
for development; fetch the schema with the key instead::

    curl -H "Authorization: Bearer $KEY" http://127.0.0.1:8080/openapi.json

FastAPI's built-in routes for these are turned off in the app factory (they cannot take a
dependency) and served here, outside the schema they describe.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from mobile_multimodal.security import require_api_key

SCHEMA_URL = "/openapi.json"

router = APIRouter(include_in_schema=False, dependencies=[Depends(require_api_key)])


@router.get(SCHEMA_URL)
async def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=SCHEMA_URL, title=f"{request.app.title} - Swagger UI")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=SCHEMA_URL, title=f"{request.app.title} - ReDoc")
