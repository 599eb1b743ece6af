"""Bad input through HTTP: each is a 4xx with a clear code, never a 500, and the service stays ready."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from .conftest import LiveServer, OpenAPIChecker, data_uri, metric_value

GOOD = data_uri()


def _tiff_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="TIFF")
    return "data:image/tiff;base64," + base64.b64encode(buf.getvalue()).decode()


CASES: list[tuple[str, object, int, str]] = [
    ("unknown task", {"image": GOOD, "task": "summarize"}, 422, "UNKNOWN_TASK"),
    ("missing question", {"image": GOOD, "task": "vqa"}, 422, "MISSING_QUESTION"),
    ("empty question", {"image": GOOD, "task": "vqa", "question": ""}, 422, "VALIDATION_ERROR"),
    (
        "max_tokens too big",
        {"image": GOOD, "task": "captioning", "max_tokens": 10_000},
        422,
        "INVALID_MAX_TOKENS",
    ),
    ("max_tokens zero", {"image": GOOD, "task": "captioning", "max_tokens": 0}, 422, "INVALID_MAX_TOKENS"),
    (
        "max_tokens as string",
        {"image": GOOD, "task": "captioning", "max_tokens": "5"},
        422,
        "INVALID_MAX_TOKENS",
    ),
    ("image as number", {"image": 12345, "task": "ocr"}, 422, "VALIDATION_ERROR"),
    ("task as list", {"image": GOOD, "task": ["ocr"]}, 422, "UNKNOWN_TASK"),
    ("missing image", {"task": "ocr"}, 422, "MISSING_IMAGE"),
    ("unknown field", {"image": GOOD, "task": "ocr", "temperature": 1}, 422, "VALIDATION_ERROR"),
    ("texts for captioning", {"image": GOOD, "task": "captioning", "texts": ["a"]}, 422, "INVALID_TEXTS"),
    ("blank text", {"image": GOOD, "task": "retrieval", "texts": ["  "]}, 422, "INVALID_TEXTS"),
    ("body is a list", [GOOD, "ocr"], 422, "VALIDATION_ERROR"),
    ("bad base64", {"image": "not*base64!", "task": "ocr"}, 400, "INVALID_BASE64"),
    ("non-base64 data URI", {"image": "data:image/png,abc", "task": "ocr"}, 400, "INVALID_DATA_URI"),
    ("tiff", {"image": _tiff_uri(), "task": "ocr"}, 415, "UNSUPPORTED_IMAGE_FORMAT"),
    (
        "text bytes",
        {"image": base64.b64encode(b"plain text").decode(), "task": "ocr"},
        415,
        "UNSUPPORTED_IMAGE_FORMAT",
    ),
    ("truncated png", {"image": GOOD[: len(GOOD) // 2 // 4 * 4], "task": "ocr"}, 400, "IMAGE_DECODE_FAILED"),
    ("too small", {"image": data_uri(Image.new("RGB", (2, 2))), "task": "ocr"}, 422, "IMAGE_TOO_SMALL"),
    ("too large", {"image": data_uri(Image.new("RGB", (5000, 8))), "task": "ocr"}, 413, "IMAGE_TOO_LARGE"),
]


@pytest.mark.parametrize(("name", "body", "status", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_4xx_with_its_code(
    server: LiveServer, name: str, body: object, status: int, code: str
) -> None:
    with server.client() as client:
        spec = OpenAPIChecker(client.get("/openapi.json").json())
        response = client.post("/inference", json=body)
        assert response.status_code == status, response.text
        payload = response.json()
        assert payload["error"]["code"] == code
        assert len(payload["error"]["message"]) > 10
        assert len(payload["trace_id"]) == 32
        spec.check("POST", "/inference", response)
        assert client.get("/ready").status_code == 200


def test_raw_body_problems(live_server: object) -> None:
    server = live_server(max_body_bytes=64 * 1024)  # type: ignore[operator]
    with server.client() as client:
        not_json = client.post(
            "/inference", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "INVALID_JSON"
        empty = client.post("/inference", content=b"", headers={"content-type": "application/json"})
        assert empty.status_code == 422 and empty.json()["error"]["code"] == "VALIDATION_ERROR"
        declared = client.post(
            "/inference", content=b"x" * 100_000, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for _ in range(40):
                yield b"x" * 4096

        streamed = client.post("/inference", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert client.get("/ready").status_code == 200


def test_errors_are_counted_by_code(server: LiveServer) -> None:
    with server.client() as client:
        before = client.get("/metrics").text
        response = client.post("/inference", json={"image": "not*base64!", "task": "ocr"})
        assert response.status_code == 400
        after = client.get("/metrics").text
    labels = {"model_type": "multimodal", "task": "ocr"}
    assert metric_value(after, "model_inference_errors_total", error_code="INVALID_BASE64", **labels) == (
        metric_value(before, "model_inference_errors_total", error_code="INVALID_BASE64", **labels) + 1
    )
    assert metric_value(after, "model_inference_requests_total", status="error", **labels) == (
        metric_value(before, "model_inference_requests_total", status="error", **labels) + 1
    )


def test_no_500_under_random_garbage(server: LiveServer) -> None:
    """Property check: arbitrary JSON values in every field never produce a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    bodies = st.fixed_dictionaries(
        {},
        optional={
            "image": json_values | st.just(GOOD),
            "task": json_values | st.sampled_from(["ocr", "vqa"]),
            "question": json_values,
            "texts": json_values,
            "max_tokens": json_values,
        },
    )
    client = httpx.Client(base_url=server.url, timeout=60)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies | json_values)
    def check(body: object) -> None:
        response = client.post("/inference", json=body)
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]["code"].isupper()

    check()
    client.close()
