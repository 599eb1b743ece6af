"""Shadow agreement rules, the canary's baseline and reference read text as the served model
does, and a canary run that fails: counted, logged, the service unharmed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.canary import CanaryEvaluator
from mobile_multimodal.serving.engine import retrieval_margin
from mobile_multimodal.serving.reference import ReferenceModel
from mobile_multimodal.serving.shadow import agrees
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, data_uri, make_settings, metric_value, tiny_model


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


def test_the_releases_canary_is_the_baseline_only_for_the_ocr_decoding_it_was_read_with() -> None:
    evaluator = SimpleNamespace(settings=SimpleNamespace(canary_size=32))
    read_with_lm = {"size": 32, "ocr_decoding": "lm", "tasks": {"ocr": {"primary": 0.94}}}
    reference = {"ocr": 0.88}  # the fp32 reference, read as the served model reads

    def baseline(canary: dict[str, Any], reader: object) -> dict[str, float]:
        served = SimpleNamespace(manifest={"canary": canary}, ocr_reader=reader)
        return CanaryEvaluator._baseline(evaluator, served, reference)  # type: ignore[arg-type]

    assert baseline(read_with_lm, object()) == {"ocr": 0.94}
    assert baseline(read_with_lm, None) == reference  # served greedily: the release's bar is not its
    older = {"size": 32, "tasks": {"ocr": {"primary": 0.875}}}  # before the field: read greedily
    assert baseline(older, None) == {"ocr": 0.875} and baseline(older, object()) == reference


def test_the_fp32_reference_reads_text_as_the_served_model_does(tmp_path: Path) -> None:
    served = MobileMultiModalLLM.from_pretrained("default", quantization="int2")
    reference = ReferenceModel(make_settings(tmp_path))
    model = asyncio.run(reference.get(served))
    assert model is not None and model.quantization == "fp32"
    assert model.ocr_reader is served.ocr_reader is not None  # the shipped language model
    served.ocr_reader = None  # MOBILE_MM_OCR_DECODING=greedy (after a reload, say)
    assert asyncio.run(reference.get(served)) is model and model.ocr_reader is None


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
