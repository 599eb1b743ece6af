"""Shadow agreement rules, and a canary run that fails: counted, logged, the service unharmed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mobile_multimodal.serving.engine import retrieval_margin
from mobile_multimodal.serving.shadow import agrees
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, data_uri, metric_value, tiny_model


def test_agreement_rules() -> None:
    assert agrees("captioning", {"caption": "a red circle"}, {"caption": "a red circle"})
    assert not agrees("captioning", {"caption": "a red circle"}, {"caption": "a red square"})
    assert agrees("ocr", {"text": "hello", "confidence": 0.9}, {"text": "hello", "confidence": 0.7})
    assert not agrees("vqa", {"answer": "red"}, {"answer": "blue"})
    assert agrees(
        "retrieval", {"best_index": 1, "scores": [0.1, 0.5]}, {"best_index": 1, "scores": [0.2, 0.4]}
    )
    assert not agrees("retrieval", {"best_index": 0}, {"best_index": 1})
    e = np.array([1.0, 0.0, 0.0])
    near = np.array([1.0, 0.04, 0.0])  # cosine 0.9992
    far = np.array([1.0, 0.5, 0.0])  # cosine 0.894
    assert agrees("retrieval", {"embedding": list(e)}, {"embedding": list(near)})
    assert not agrees("retrieval", {"embedding": list(e)}, {"embedding": list(far)})


def test_retrieval_margin() -> None:
    assert retrieval_margin(np.array([0.2, 0.9, 0.5])) == pytest.approx(0.4)
    assert retrieval_margin(np.array([0.7])) == pytest.approx(0.7)
    assert retrieval_margin(np.array([-0.3])) == 0.0


def test_a_failing_canary_is_counted_and_serving_goes_on(live_server: Callable[..., LiveServer]) -> None:
    broken = {"ocr": False}

    def loader(settings: Settings) -> Any:
        model = tiny_model(settings)
        read = model.extract_texts

        def extract_texts(images: list[Any], *args: Any, **kwargs: Any) -> list[str]:
            if broken["ocr"]:
                raise RuntimeError("the OCR head is broken")
            return read(images, *args, **kwargs)

        model.extract_texts = extract_texts  # type: ignore[method-assign]
        return model

    server = live_server(loader=loader)
    duties = server.app.state.duties
    deadline = time.monotonic() + 60
    while (duties.canary is None or duties.loop is None) and time.monotonic() < deadline:
        time.sleep(0.02)
    with server.client() as client:
        before = client.get("/metrics").text
        broken["ocr"] = True
        report = asyncio.run_coroutine_threadsafe(duties.canary.run_once(), duties.loop).result(120)
        assert report is None
        after = client.get("/metrics").text
        fail = "model_canary_runs_total"
        assert metric_value(after, fail, status="failure") - metric_value(before, fail, status="failure") == 1
        assert metric_value(after, fail, status="success") == metric_value(before, fail, status="success")
        # the service still answers the tasks that work
        ok = client.post("/inference", json={"image": data_uri(), "task": "captioning"})
        assert ok.status_code == 200
