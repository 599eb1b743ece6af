"""The OpenAI-compatible route with the official ``openai`` client, and API keys on the inference routes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from mobile_multimodal.security.api_keys import create_key
from mobile_multimodal.serving.routers.openai_compat import infer_task
from mobile_multimodal.store import Database

from .conftest import LiveServer, data_uri, metric_value


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("What does the text say?", "ocr"),
        ("Read this", "ocr"),
        ("ocr please", "ocr"),
        ("what color is the circle ?", "vqa"),
        ("Is there a red star", "vqa"),
        ("how many shapes are there", "vqa"),
        ("the shapes?", "vqa"),
        ("Describe the image.", "captioning"),
        ("", "captioning"),
        ("thread", "captioning"),  # 'read' only as a word
    ],
)
def test_task_rule(text: str, task: str) -> None:
    assert infer_task(text) == task


def _messages(text: str) -> Any:
    return [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": data_uri()}},
            ],
        },
    ]


def test_official_client_chat_completion(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-when-auth-disabled", max_retries=0)
    before = server.client().get("/metrics").text
    completion = client.chat.completions.create(
        model="mobile-multimodal-llm",
        messages=_messages("What color is the circle?"),
        max_tokens=3,
    )
    after = server.client().get("/metrics").text
    assert completion.object == "chat.completion" and completion.model == "mobile-multimodal-llm"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.usage.prompt_tokens == 3 + 6  # <bos> <vqa> <sep> + what color is the circle ?
    labels = {"model_type": "multimodal", "task": "vqa", "status": "success"}
    assert metric_value(after, "model_inference_requests_total", **labels) == (
        metric_value(before, "model_inference_requests_total", **labels) + 1
    )
    models = client.models.list()
    assert [m.id for m in models.data] == ["mobile-multimodal-llm"]


def test_official_client_streaming(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    full = client.chat.completions.create(
        model="mobile-multimodal-llm",
        messages=_messages("Describe it"),
        max_tokens=5,
    )
    stream = client.chat.completions.create(
        model="mobile-multimodal-llm",
        messages=_messages("Describe it"),
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == full.choices[0].message.content  # the same greedy answer, in pieces
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_the_chat_answer_carries_the_models_confidence(server: LiveServer) -> None:
    """The confidence POST /inference reports for the same image and question, in the choice
    (an extension field the official client keeps) and in the stream's last choice chunk."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    question = "What color is the circle?"
    with server.client() as http:
        direct = http.post(
            "/inference", json={"image": data_uri(), "task": "vqa", "question": question, "max_tokens": 3}
        )
    assert direct.status_code == 200, direct.text
    expected = direct.json()["result"]["confidence"]
    completion = client.chat.completions.create(
        model="mobile-multimodal-llm", messages=_messages(question), max_tokens=3
    )
    extra = completion.choices[0].model_extra or {}
    assert 0.0 <= extra["confidence"] <= 1.0
    assert extra["confidence"] == pytest.approx(expected, abs=1e-6)
    stream = client.chat.completions.create(
        model="mobile-multimodal-llm", messages=_messages(question), max_tokens=3, stream=True
    )
    last = [c.choices[0] for c in stream if c.choices][-1]
    assert last.finish_reason is not None
    assert (last.model_extra or {})["confidence"] == pytest.approx(expected, abs=1e-6)


def test_openai_errors_reach_the_client_as_api_errors(server: LiveServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=_messages("hi"))
    with pytest.raises(openai.UnprocessableEntityError) as no_image:
        client.chat.completions.create(
            model="mobile-multimodal-llm", messages=[{"role": "user", "content": "hi"}]
        )
    assert "no image" in str(no_image.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="mobile-multimodal-llm",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}],
                }
            ],
        )


def test_api_keys_are_required_when_auth_is_on(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = live_server(auth="required")
    db = Database(server.settings.resolved_database_url)
    key, _ = create_key(db, "alice", "pro")
    db.dispose()
    body = {"image": data_uri(), "task": "ocr"}
    with server.client() as client:
        missing = client.post("/inference", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "MISSING_API_KEY"
        wrong = client.post("/inference", json=body, headers={"Authorization": "Bearer mmk_nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "INVALID_API_KEY"
        # A request without a key is refused before its body is even validated.
        assert client.post("/inference", json={"task": 3}).status_code == 401
        before = client.get("/metrics").text
        ok = client.post("/inference", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        after = client.get("/metrics").text
        assert client.get("/health").status_code == 200  # health needs no key
        assert client.get("/openapi.json").status_code == 401  # the schema takes the key too
        spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {key}"}).json()
        assert set(spec["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyHeader"}
        assert spec["paths"]["/inference"]["post"]["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
        assert "security" not in spec["paths"]["/health"]["get"]
    assert metric_value(after, "model_usage_by_task_total", task="ocr", user_type="pro") == (
        metric_value(before, "model_usage_by_task_total", task="ocr", user_type="pro") + 1
    )
    oa = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    assert oa.chat.completions.create(model="default", messages=_messages("read it")).choices
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="mmk_bad", max_retries=0).models.list()
