"""The real app exports its spans over OTLP/HTTP to a real receiver; trace ids match the logs.

Everything on 127.0.0.1: ``mobile-mm serve`` in a subprocess, configured only through the
standard OTEL_* variables, and an OTLP/HTTP receiver decoding the protobuf it is sent.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from mobile_multimodal.observability.logging import BASE_FIELDS, REQUEST_FIELDS

from .otlp_receiver import OtlpReceiver, ReceivedSpan
from .servers import AppServer, scene_png_b64

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ("authentication", "model_loading", "preprocessing", "inference", "postprocessing", "response")
POLLED = ("/metrics", "/model/metrics", "/alive", "/ready", "/health")


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, f"00-{trace_id}-{parent}-01"


def test_spans_reach_an_otlp_receiver_and_match_the_log_lines(served_model_dir: Path, tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_SERVICE_NAME": "mobile-multimodal-llm",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export quickly so the test need not wait
        }
        app = AppServer(served_model_dir, tmp_path, env)
        with app, httpx.Client(base_url=app.url, timeout=60) as client:
            callers: dict[str, str] = {}  # trace id -> caller's parent span id
            answered: list[str] = []  # trace ids the app returned in its responses
            for i, task in enumerate(["captioning", "ocr", "vqa", "captioning"]):
                trace_id, parent, header = _traceparent()
                body = {"image": scene_png_b64(seed=i), "task": task}
                if task == "vqa":
                    body["question"] = "what color is the circle?"
                response = client.post("/inference", json=body, headers={"traceparent": header})
                assert response.status_code == 200, response.text
                callers[trace_id] = parent
                answered.append(response.json()["trace_id"])
                assert response.headers["x-trace-id"] == trace_id
            for _ in range(2):  # no caller context: the app starts the trace
                response = client.post("/inference", json={"image": scene_png_b64(), "task": "ocr"})
                answered.append(response.json()["trace_id"])
            for path in POLLED:
                client.get(path, headers={"traceparent": _traceparent()[2]})

            spans = receiver.wait_for(
                lambda got: {s.trace_id for s in got if s.name == "response"} >= set(answered), timeout_s=60
            )
        # the app has shut down gracefully: its log file is complete
        lines = app.log_lines()
        stdout = [json.loads(text) for text in app.stdout_lines()]  # stdout + stderr: JSON only

    assert set(callers) <= set(answered)
    by_trace: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)

    for trace_id in answered:
        trace = {s.name: s for s in by_trace[trace_id]}
        server = next(s for s in by_trace[trace_id] if s.name.startswith("POST "))
        assert server.name == "POST /inference"
        assert server.resource["service.name"] == "mobile-multimodal-llm"
        assert server.attributes["http.response.status_code"] == 200
        # W3C traceparent honoured: the server span is the caller's child
        assert server.parent_span_id == callers.get(trace_id)
        root = trace["model_inference"]
        assert root.parent_span_id == server.span_id
        for key in ("model.type", "model.task", "model.quantization", "input.size", "output.size"):
            assert key in root.attributes, key
        assert root.attributes["model.type"] == "multimodal"
        present = [s for s in STAGES if s in trace]
        assert present == list(STAGES), f"stages of trace {trace_id}: {sorted(trace)}"
        for name in STAGES:
            # each stage lies inside model_inference (directly or under another stage)
            assert root.start_ns <= trace[name].start_ns <= trace[name].end_ns <= root.end_ns

    # the polled routes are never traced
    for span in spans:
        assert span.attributes.get("url.path") not in POLLED, span.name

    # every line of the log is JSON with the guide's fields
    assert lines, "the app wrote no log lines"
    assert [line["message"] for line in stdout] == [line["message"] for line in lines]
    for line in lines:
        for field in BASE_FIELDS:
            assert field in line, (field, line)
        assert line["service"] == "mobile-multimodal-llm"
    access = [
        line for line in lines if line.get("operation") == "http_request" and line["path"] == "/inference"
    ]
    assert len(access) == len(answered)
    for line in access:
        for field in REQUEST_FIELDS:
            assert field in line, (field, line)
        assert line["task"] in ("captioning", "ocr", "vqa")
    # ... and their trace ids are the exported traces'
    assert [line["trace_id"] for line in access] == answered
    exported_servers = {s.trace_id: s.span_id for s in spans if s.name == "POST /inference"}
    for line in access:
        assert line["span_id"] == exported_servers[line["trace_id"]]
