"""Every route of a real server, each response checked against the OpenAPI schema."""

from __future__ import annotations

import math

import httpx
import pytest

from mobile_multimodal.observability import metrics

from .conftest import LiveServer, OpenAPIChecker, data_uri, metric_value

CAPTION = {"task": "captioning", "max_tokens": 4}


@pytest.fixture
def api(server: LiveServer) -> tuple[httpx.Client, OpenAPIChecker]:
    client = server.client()
    spec = client.get("/openapi.json").json()
    return client, OpenAPIChecker(spec)


def test_schema_lists_every_route_with_its_error_responses(server: LiveServer) -> None:
    spec = server.client().get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/inference", "/model/inference", "/v1/chat/completions"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422", "500", "503", "504"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        assert "Retry-After" in responses["503"]["headers"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's default 422 is not ours
    for path in ("/alive", "/ready", "/health", "/v1/models"):
        assert "get" in paths[path]
    assert {"get", "post"} <= set(paths["/model/health"])
    assert "503" in paths["/ready"]["get"]["responses"] and "503" in paths["/health"]["get"]["responses"]


@pytest.mark.parametrize("path", ["/inference", "/model/inference"])
def test_every_task_answers_with_the_documented_shape(
    api: tuple[httpx.Client, OpenAPIChecker], path: str
) -> None:
    client, schema = api
    image = data_uri()
    bodies = {
        "captioning": ({"image": image, **CAPTION}, "caption"),
        "ocr": ({"image": image, "task": "ocr"}, "text"),
        "vqa": (
            {"image": image, "task": "vqa", "question": "what color is the circle ?", "max_tokens": 2},
            "answer",
        ),
    }
    for task, (body, key) in bodies.items():
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        schema.check("POST", path, response)
        payload = response.json()
        assert payload["task"] == task and isinstance(payload["result"][key], str)
        assert payload["model"] == {
            "name": "mobile-multimodal-llm",
            "version": "0.1.0",
            "quantization": "fp32",
        }
        assert len(payload["trace_id"]) == 32 and payload["trace_id"] != "0" * 32
        assert response.headers["x-trace-id"] == payload["trace_id"]
        assert payload["latency_ms"] > 0


def test_retrieval_scores_texts_or_returns_the_embedding(api: tuple[httpx.Client, OpenAPIChecker]) -> None:
    client, schema = api
    texts = ["a large red circle in the center", "two small blue stars", "a word"]
    scored = client.post("/inference", json={"image": data_uri(), "task": "retrieval", "texts": texts})
    schema.check("POST", "/inference", scored)
    result = scored.json()["result"]
    assert len(result["scores"]) == 3 and all(-1.0001 <= s <= 1.0001 for s in result["scores"])
    assert result["best"] == texts[result["best_index"]]
    assert result["best_index"] == max(range(3), key=lambda i: result["scores"][i])
    embedded = client.post("/inference", json={"image": data_uri(), "task": "retrieval"})
    schema.check("POST", "/inference", embedded)
    vector = embedded.json()["result"]["embedding"]
    assert len(vector) == 32 and math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)


def test_inference_moves_the_inference_metrics(server: LiveServer) -> None:
    client = server.client()
    before = client.get("/metrics").text
    labels = {"model_type": "multimodal", "task": "ocr"}
    response = client.post("/inference", json={"image": data_uri(), "task": "ocr"})
    assert response.status_code == 200
    after = client.get("/metrics").text
    assert metric_value(after, "model_inference_requests_total", status="success", **labels) == (
        metric_value(before, "model_inference_requests_total", status="success", **labels) + 1
    )
    hist = {"model_type": "multimodal", "task": "ocr", "quantization": "fp32"}
    assert metric_value(after, "model_inference_duration_seconds_count", **hist) == (
        metric_value(before, "model_inference_duration_seconds_count", **hist) + 1
    )
    assert metric_value(after, "model_usage_by_task_total", task="ocr", user_type="free") == (
        metric_value(before, "model_usage_by_task_total", task="ocr", user_type="free") + 1
    )
    assert metric_value(after, "batch_processing_duration_seconds_count", batch_size="1", task="ocr") >= (
        metric_value(before, "batch_processing_duration_seconds_count", batch_size="1", task="ocr") + 1
    )
    assert (
        metric_value(after, "model_load_duration_seconds", model_type="multimodal", quantization="fp32") > 0
    )


def test_exemplar_links_latency_to_the_trace(server: LiveServer) -> None:
    client = server.client()
    trace_id = client.post("/inference", json={"image": data_uri(), "task": "ocr"}).json()["trace_id"]
    text = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith("model_inference_duration_seconds_bucket") and "# {" in ln
    ]
    assert any(f'trace_id="{trace_id}"' in ln for ln in lines)


def test_health_routes(api: tuple[httpx.Client, OpenAPIChecker], server: LiveServer) -> None:
    client, schema = api
    alive = client.get("/alive")
    schema.check("GET", "/alive", alive)
    assert alive.json()["status"] == "alive"
    ready = client.get("/ready")
    schema.check("GET", "/ready", ready)
    assert ready.json() == {"status": "ready", "model_loaded": True, "warmed_up": True, "reason": None}
    health = client.get("/health")
    schema.check("GET", "/health", health)
    body = health.json()
    assert health.status_code == 200 and body["status"] == "healthy"
    assert body["checks"] == {
        "database": "healthy",
        "model": "healthy",
        "memory": "healthy",
        "disk": "healthy",
    }
    assert body["errors"] == [] and body["version"] == "0.1.0" and body["uptime_seconds"] > 0
    assert body["details"]["database_latency_ms"] >= 0


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_model_health_runs_a_real_probe(api: tuple[httpx.Client, OpenAPIChecker], method: str) -> None:
    client, schema = api
    before = metrics.BATCH_DURATION.labels("1", "captioning")._sum.get()
    response = client.request(method, "/model/health")
    schema.check(method, "/model/health", response)
    body = response.json()
    probe = body["probe"]
    assert probe["expected"] == "a large red circle in the center" and probe["latency_ms"] > 0
    # The tiny model has random weights: its caption cannot name the red circle, and the probe says so.
    assert probe["correct"] is False and body["status"] == "unhealthy" and response.status_code == 503
    assert body["error"]["code"] == "MODEL_PROBE_FAILED"
    assert metrics.BATCH_DURATION.labels("1", "captioning")._sum.get() > before  # it really ran the model


def test_openai_models_and_unknown_routes(api: tuple[httpx.Client, OpenAPIChecker]) -> None:
    client, schema = api
    models = client.get("/v1/models")
    schema.check("GET", "/v1/models", models)
    assert [m["id"] for m in models.json()["data"]] == ["mobile-multimodal-llm"]
    missing = client.get("/v1/models/gpt-4")
    schema.check("GET", "/v1/models/{model_id}", missing)
    assert missing.json()["error"]["code"] == "UNKNOWN_MODEL"
    nowhere = client.get("/nowhere")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "NOT_FOUND"
    wrong_method = client.get("/inference")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_metrics_routes_are_served_and_documented(api: tuple[httpx.Client, OpenAPIChecker]) -> None:
    client, schema = api
    for path in ("/metrics", "/model/metrics"):
        response = client.get(path)
        assert response.status_code == 200 and "model_inference_requests_total" in response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "200" in schema.spec["paths"][path]["get"]["responses"]
