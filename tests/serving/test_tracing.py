"""The guide's inference trace: model_inference with its six stages, in order, with its attributes."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mobile_multimodal.observability.tracing import force_flush
from mobile_multimodal.security import ANONYMOUS
from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.store import Database

from .conftest import LiveServer, data_uri

STAGES = ["authentication", "model_loading", "preprocessing", "inference", "postprocessing", "response"]


def test_inference_trace_has_the_guides_stages(live_server: Callable[..., LiveServer]) -> None:
    exporter = InMemorySpanExporter()
    server = live_server(app_kwargs={"span_exporter": exporter})
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with server.client() as client:
        response = client.post(
            "/inference",
            json={"image": data_uri(), "task": "captioning", "max_tokens": 2},
            headers={"traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"},
        )
    assert response.status_code == 200
    assert response.json()["trace_id"] == parent_trace  # W3C traceparent honoured
    force_flush()
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(parent_trace, 16)]
    root = next(s for s in spans if s.name == "model_inference")
    children = sorted(
        (s for s in spans if s.parent and s.parent.span_id == root.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in children] == STAGES
    for earlier, later in itertools.pairwise(children):
        assert (earlier.end_time or 0) <= (later.start_time or 0)
    attrs = dict(root.attributes or {})
    assert attrs["model.type"] == "multimodal" and attrs["model.task"] == "captioning"
    assert attrs["model.quantization"] == "fp32"
    assert attrs["input.size"] == len(data_uri()) and int(str(attrs["output.size"])) > 0
    inference = next(s for s in children if s.name == "inference")
    assert int(str((inference.attributes or {})["batch_size"])) == 1
    http_span = next(s for s in spans if s.name == "POST /inference")
    assert root.parent is not None and root.parent.span_id == http_span.context.span_id


def test_a_refused_request_marks_its_stage_as_failed(live_server: Callable[..., LiveServer]) -> None:
    exporter = InMemorySpanExporter()
    server = live_server(app_kwargs={"span_exporter": exporter})
    with server.client() as client:
        response = client.post("/inference", json={"image": "bad!", "task": "ocr"})
    assert response.status_code == 400
    force_flush()
    trace_id = int(response.json()["trace_id"], 16)
    spans = {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
    assert not spans["preprocessing"].status.is_ok
    assert not spans["model_inference"].status.is_ok
    assert "inference" not in spans  # it never reached the model


def _trace(exporter: InMemorySpanExporter, trace_hex: str) -> list[ReadableSpan]:
    force_flush()
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == int(trace_hex, 16)]


def test_key_lookups_nest_under_authentication(live_server: Callable[..., LiveServer]) -> None:
    """With keys required, authentication is a full span: the lookup's database spans are its
    children. With auth disabled nothing opens spans there, and it is a leaf of model_inference."""
    exporter = InMemorySpanExporter()
    server = live_server(auth="required", app_kwargs={"span_exporter": exporter})
    db = Database(server.settings.resolved_database_url)
    key, _ = create_key(db, "alice", "pro")
    db.dispose()
    body = {"image": data_uri(), "task": "captioning", "max_tokens": 2}
    with server.client() as client:
        response = client.post("/inference", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    spans = _trace(exporter, response.json()["trace_id"])
    auth = next(s for s in spans if s.name == "authentication")
    queries = [s for s in spans if s.parent is not None and s.parent.span_id == auth.context.span_id]
    assert queries and all(s.attributes and "db.statement" in s.attributes for s in queries)
    assert (auth.attributes or {})["user.type"] == "pro"

    exporter = InMemorySpanExporter()
    server = live_server(app_kwargs={"span_exporter": exporter})  # auth disabled (the default)
    with server.client() as client:
        response = client.post("/inference", json=body)
    spans = _trace(exporter, response.json()["trace_id"])
    root = next(s for s in spans if s.name == "model_inference")
    auth = next(s for s in spans if s.name == "authentication")
    assert auth.parent is not None and auth.parent.span_id == root.context.span_id
    assert (auth.attributes or {})["user.type"] == ANONYMOUS.user_type
    assert not [s for s in spans if s.parent is not None and s.parent.span_id == auth.context.span_id]
