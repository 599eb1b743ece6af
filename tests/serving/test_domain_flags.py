"""Served results say out_of_domain, and the metric counts such inputs per task."""

from __future__ import annotations

from collections.abc import Callable

from mobile_multimodal.data.natural_images import empty_images, natural_photographs
from mobile_multimodal.data.splits import load_eval_split
from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.serving.domain_flags import annotate
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, data_uri, metric_value


def test_a_model_without_a_threshold_leaves_results_alone(tiny_model: MobileMultiModalLLM) -> None:
    results: list[dict[str, object]] = [{"caption": "x"}]
    annotate(tiny_model, "captioning", empty_images()[:1], results)
    assert results == [{"caption": "x"}]  # no field rather than a false "in domain"


def test_ocr_lines_are_not_checked(bundled_model: MobileMultiModalLLM) -> None:
    ocr: list[dict[str, object]] = [{"text": "a"}]
    annotate(bundled_model, "ocr", natural_photographs(crops_per_photo=0)[:1], ocr)
    assert ocr == [{"text": "a"}]


def _bundled(settings: Settings | None = None) -> MobileMultiModalLLM:
    return MobileMultiModalLLM.from_pretrained("default")


def test_the_service_flags_a_photograph_and_counts_it(live_server: Callable[..., LiveServer]) -> None:
    server = live_server(loader=_bundled, domain_check_tasks="captioning,vqa")
    client = server.client()
    photo = natural_photographs(crops_per_photo=0)[0]
    scene = load_eval_split("vqa", 1)[0]

    def flagged(task: str) -> float:
        text = client.get("/metrics").text
        return metric_value(text, "model_out_of_domain_inputs_total", task=task)

    before = {task: flagged(task) for task in ("captioning", "vqa")}
    answer = client.post("/inference", json={"image": data_uri(photo), "task": "captioning"})
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert result["out_of_domain"] is True and 0 < result["domain_score"] < 1
    assert -1 <= result["domain_agreement"] <= 1  # the second signal (model/domain.py)
    ok = client.post(
        "/inference", json={"image": data_uri(scene.image), "task": "vqa", "question": scene.question}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["result"]["out_of_domain"] is False
    blank = client.post(
        "/inference",
        json={"image": data_uri(empty_images()[0]), "task": "vqa", "question": "what color is the star ?"},
    )
    assert blank.json()["result"]["out_of_domain"] is True
    assert flagged("captioning") == before["captioning"] + 1
    assert flagged("vqa") == before["vqa"] + 1


def test_by_default_only_captions_are_checked(live_server: Callable[..., LiveServer]) -> None:
    """A caption is scored by its own decode; vqa (one more decode) is opt-in."""
    client = live_server(loader=_bundled).client()
    photo = natural_photographs(crops_per_photo=0)[0]
    caption = client.post("/inference", json={"image": data_uri(photo), "task": "captioning"})
    assert caption.json()["result"]["out_of_domain"] is True
    answer = client.post(
        "/inference", json={"image": data_uri(photo), "task": "vqa", "question": "what color is the star ?"}
    )
    assert answer.status_code == 200, answer.text
    assert "out_of_domain" not in answer.json()["result"]


def test_the_checked_tasks_setting_refuses_other_tasks() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ocr"):
        Settings(domain_check_tasks="captioning,ocr")
    assert Settings(domain_check_tasks=" vqa , retrieval ").domain_check_tasks == "vqa,retrieval"
