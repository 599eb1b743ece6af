"""Attacks from issue 12 on single requests, kept here so they stay fixed.

1. a prompt of 100k words (the decoder's masks grow with its square) -> 422 PROMPT_TOO_LONG;
2. a 45+-word VQA question (IndexError mid-batch, failing its batch-mates) -> 422 for it alone,
   and a batch the model does fail is retried without the bad job;
3. a timed-out or abandoned request stops at its next decode step, shutdown does not wait for it;
8. a small-but-huge image (4096x4096 PNG, a few KB) is decoded off the event loop on every
   route; EXIF orientation is applied.

Every wait is bounded; nothing here decides an outcome by wall-clock speed.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.serving import images
from mobile_multimodal.serving.engine import InferenceEngine, Job
from mobile_multimodal.serving.images import INLINE_DECODE_PIXELS, ImageHeader, ImageLimits
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.serving.schemas import MAX_PROMPT_CHARS

from .conftest import LiveServer, OpenAPIChecker, data_uri, make_settings, tiny_model

IMAGE = data_uri()
QUESTION_LIMIT = 36  # the tiny model's max_question_tokens: max_text_len 48 - 3 markers - 9
LONG_QUESTION = "is " + "a " * 58 + "red"  # the issue's: 60 words, 122 characters
HUGE_PROMPT = "what " + "x " * 100_000 + "?"  # the issue's: killed the server by memory
GOOD_QUESTIONS = [
    "what color is the circle ?",
    "is there a red star ?",
    "how many shapes are there ?",
    "what shape is at the top left ?",
]


def _chat(text: str, image: str = IMAGE, **extra: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image}}]
    return {"model": "mobile-multimodal-llm", "messages": [{"role": "user", "content": content}], **extra}


def _assert_prompt_too_long(response: httpx.Response, *mentions: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "PROMPT_TOO_LONG"
    for text in mentions:
        assert text in error["message"], error["message"]


# --- 1 and 2 over HTTP: refused in tokens, before anything is built ---------------------------
@pytest.mark.parametrize("path", ["/inference", "/model/inference"])
def test_a_long_question_is_refused_alone_and_its_neighbours_are_answered(
    server: LiveServer, path: str
) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            bodies = [
                {"image": IMAGE, "task": "vqa", "question": q} for q in [*GOOD_QUESTIONS, LONG_QUESTION]
            ]
            return await asyncio.gather(*(client.post(path, json=b) for b in bodies))

    *good, bad = asyncio.run(burst())
    assert [r.status_code for r in good] == [200] * len(GOOD_QUESTIONS), [r.text for r in good]
    _assert_prompt_too_long(bad, f"at most {QUESTION_LIMIT} tokens")
    with server.client() as client:
        OpenAPIChecker(client.get("/openapi.json").json()).check("POST", path, bad)
        assert client.get("/ready").status_code == 200


def test_a_question_at_the_limit_is_answered(server: LiveServer) -> None:
    at_limit = " ".join(["a"] * (QUESTION_LIMIT - 1)) + " ?"
    over = "a " + at_limit
    with server.client() as client:
        assert (
            client.post("/inference", json={"image": IMAGE, "task": "vqa", "question": at_limit}).status_code
            == 200
        )
        response = client.post("/inference", json={"image": IMAGE, "task": "vqa", "question": over})
        _assert_prompt_too_long(response, f"has more than {QUESTION_LIMIT} tokens")


def test_a_retrieval_text_over_the_text_encoder_is_refused_by_index(server: LiveServer) -> None:
    texts = ["a red circle", "a " * 60]  # 120 characters (under 256), 60 tokens (over 48)
    with server.client() as client:
        response = client.post("/inference", json={"image": IMAGE, "task": "retrieval", "texts": texts})
        _assert_prompt_too_long(response, "texts[1]", "at most 48 tokens")
        ok = client.post("/inference", json={"image": IMAGE, "task": "retrieval", "texts": ["a " * 48]})
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("stream", [False, True])
def test_a_100k_word_chat_prompt_is_refused_before_it_is_read(server: LiveServer, stream: bool) -> None:
    with server.client() as client:
        spec = OpenAPIChecker(client.get("/openapi.json").json())
        response = client.post("/v1/chat/completions", json=_chat(HUGE_PROMPT, stream=stream))
        _assert_prompt_too_long(response, f"the limit is {MAX_PROMPT_CHARS} characters")
        spec.check("POST", "/v1/chat/completions", response)
        words = client.post("/v1/chat/completions", json=_chat(LONG_QUESTION + " ?", stream=stream))
        _assert_prompt_too_long(words, f"at most {QUESTION_LIMIT} tokens")
        fine = client.post("/v1/chat/completions", json=_chat("What color is the circle?", stream=stream))
        assert fine.status_code == 200, fine.text
        assert client.get("/ready").status_code == 200


# --- 2 and 3 in the engine, with the real (tiny) model -----------------------------------------
class DecodeGate:
    """A forward hook on the decoder's output norm (one call per decoder pass): counts passes and
    holds the first one until ``release`` is set, so a test can act while a job is mid-decode."""

    def __init__(self, engine: InferenceEngine) -> None:
        assert engine.model is not None
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        decoder = engine.model.network.decoder  # type: ignore[attr-defined]
        self._handle = decoder.norm.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(30), "the test never released the decoder"

    def close(self) -> None:
        self.release.set()
        self._handle.remove()


async def _ready_engine(tmp_path: Path, **settings: Any) -> InferenceEngine:
    engine = InferenceEngine(make_settings(tmp_path, **settings), loader=tiny_model)
    await engine.start()
    assert await engine.wait_ready(60)
    return engine


def test_a_batch_the_model_fails_is_retried_without_the_bad_job(tmp_path: Path) -> None:
    """The model itself refuses the long question (the route would have): only that job fails."""
    image = ProbeCase.default().image

    async def main() -> None:
        engine = await _ready_engine(tmp_path, max_batch_size=5, max_batch_wait_ms=1000)
        try:
            assert engine.model is not None
            solo = [engine.model.answer_questions([image], [q])[0] for q in GOOD_QUESTIONS]
            questions = [*GOOD_QUESTIONS[:2], LONG_QUESTION, *GOOD_QUESTIONS[2:]]
            outcomes = await asyncio.gather(
                *(engine.admit("vqa", Job(image, question=q), 8) for q in questions), return_exceptions=True
            )
            assert engine.batcher.largest_batch == 5  # they did share a batch, which failed
            bad = outcomes.pop(2)
            assert isinstance(bad, PromptTooLongError), bad
            answers = [o.result["answer"] for o in outcomes]  # type: ignore[union-attr]
            assert answers == solo
        finally:
            await engine.stop()

    asyncio.run(main())


def test_a_timed_out_job_stops_at_its_next_decode_step(tmp_path: Path) -> None:
    image = ProbeCase.default().image

    async def main() -> None:
        # 2 s: ample for the batch to start (max_batch_wait_ms=0); the gate then holds it past that
        engine = await _ready_engine(tmp_path, request_timeout_s=2.0, max_batch_wait_ms=0)
        gate = DecodeGate(engine)
        try:
            job = Job(image)
            with pytest.raises(TimeoutError):
                await engine.admit("captioning", job, 32)
            assert gate.entered.is_set(), "the job timed out before it ran; nothing was tested"
            assert job.cancelled.is_set()
            gate.release.set()
            # the model thread runs one thing at a time: this answer comes after the abandoned batch
            after = await engine.admit("ocr", Job(image), 0)
            assert "text" in after.result
            assert gate.calls == 1, f"the abandoned caption ran {gate.calls - 1} more decode steps"
        finally:
            gate.close()
            await engine.stop()

    asyncio.run(main())


def test_shutdown_does_not_wait_for_a_request_whose_client_left(tmp_path: Path) -> None:
    image = ProbeCase.default().image

    async def main() -> None:
        engine = await _ready_engine(tmp_path, max_batch_wait_ms=0)
        gate = DecodeGate(engine)
        try:
            job = Job(image)
            request = asyncio.create_task(engine.admit("captioning", job, 32))
            assert await asyncio.to_thread(gate.entered.wait, 30)
            request.cancel()  # what uvicorn does when the client disconnects
            with suppress(asyncio.CancelledError):
                await request
            assert job.cancelled.is_set()
            gate.release.set()
            await asyncio.wait_for(engine.stop(), 30)
            assert engine.state == "stopped"
            assert gate.calls == 1, f"shutdown waited for {gate.calls - 1} steps nobody wanted"
        finally:
            gate.close()

    asyncio.run(main())


# --- 8: image decoding off the event loop, by pixel count --------------------------------------
def _solid_png_uri(size: int) -> str:
    return data_uri(Image.new("RGB", (size, size), (200, 30, 30)))


class DecodeSpy:
    """Wraps the real ``decode_pixels``: records (pixels, ran on the event loop) and holds a large
    decode until ``release``, so the test can show the loop answers meanwhile."""

    def __init__(self, real: Callable[[ImageHeader], Image.Image]) -> None:
        self.real = real
        self.calls: list[tuple[int, bool]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, header: ImageHeader) -> Image.Image:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        self.calls.append((header.pixels, on_loop))
        if header.pixels > INLINE_DECODE_PIXELS:
            self.entered.set()
            self.release.wait(30)
        return self.real(header)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[DecodeSpy]:
    watcher = DecodeSpy(images.decode_pixels)
    monkeypatch.setattr(images, "decode_pixels", watcher)
    yield watcher
    watcher.release.set()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/inference", {"image": _solid_png_uri(4096), "task": "ocr"}),
        ("/model/inference", {"image": _solid_png_uri(4096), "task": "captioning", "max_tokens": 2}),
        ("/v1/chat/completions", _chat("read the text", _solid_png_uri(4096))),
    ],
    ids=["inference", "alias", "chat"],
)
def test_a_small_but_huge_image_is_decoded_off_the_event_loop(
    server: LiveServer, spy: DecodeSpy, path: str, body: dict[str, Any]
) -> None:
    payload = body["image"] if "image" in body else body["messages"][0]["content"][1]["image_url"]["url"]
    assert len(payload) < images.INLINE_DECODE_CHARS  # small in bytes: only its pixels say "large"
    with ThreadPoolExecutor(1) as pool, server.client() as client:
        pending = pool.submit(client.post, path, json=body)
        assert spy.entered.wait(30), "the image was never decoded"
        alive = httpx.get(server.url + "/alive", timeout=10)  # a blocked loop would time out here
        assert alive.status_code == 200
        spy.release.set()
        response = pending.result(timeout=60)
    assert response.status_code == 200, response.text
    assert spy.calls == [(4096 * 4096, False)]


def test_large_decodes_wait_for_a_decode_thread(
    server: LiveServer, spy: DecodeSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dozen 4096x4096 decodes at once would starve the event loop of CPU: they queue instead."""
    monkeypatch.setattr(images, "DECODE_THREADS", 1)
    monkeypatch.setattr(images, "_LIMITERS", weakref.WeakKeyDictionary())
    body = {"image": _solid_png_uri(4096), "task": "ocr"}
    with ThreadPoolExecutor(3) as pool, server.client() as client:
        pending = [pool.submit(client.post, "/inference", json=body) for _ in range(3)]
        assert spy.entered.wait(30), "the image was never decoded"
        deadline = time.monotonic() + 30
        while not images._LIMITERS or next(iter(images._LIMITERS.values())).statistics().tasks_waiting < 2:
            assert len(spy.calls) == 1, f"decodes ran side by side: {spy.calls}"
            assert time.monotonic() < deadline, "the other two requests never reached the decoder"
            time.sleep(0.01)
        assert len(spy.calls) == 1  # one decoding, two waiting for its thread
        spy.release.set()
        responses = [p.result(timeout=60) for p in pending]
    assert [r.status_code for r in responses] == [200] * 3
    assert spy.calls == [(4096 * 4096, False)] * 3


def test_a_small_image_is_decoded_inline(server: LiveServer, spy: DecodeSpy) -> None:
    with server.client() as client:
        assert client.post("/inference", json={"image": IMAGE, "task": "ocr"}).status_code == 200
        chat = client.post("/v1/chat/completions", json=_chat("read the text"))
        assert chat.status_code == 200, chat.text
    size = ProbeCase.default().image.size
    assert spy.calls == [(size[0] * size[1], True)] * 2  # no thread hop for a 64x64 scene


# --- 8: EXIF orientation ----------------------------------------------------------------------
def _with_orientation(upright: Image.Image) -> str:
    """The pixels a phone stores for an upright photo taken sideways, tagged to be shown upright
    (orientation 6: rotate 90 degrees clockwise to display)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, format="PNG", exif=exif)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("size", [64, 512], ids=["inline", "in-a-thread"])
def test_exif_orientation_is_applied(size: int) -> None:
    upright = _asymmetric_scene().resize((size, size // 2))
    tagged = _with_orientation(upright)
    decoded = asyncio.run(images.decode_image_async(tagged, ImageLimits()))
    assert decoded.size == upright.size
    assert np.array_equal(np.asarray(decoded), np.asarray(upright.convert("RGB")))


def _asymmetric_scene() -> Image.Image:
    """White, with a red square at the top left: any rotation moves it (the probe's circle is
    centred, so rotating it changes nothing)."""
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((220, 20, 20), (4, 4, 28, 28))
    return img


def test_the_model_sees_an_exif_rotated_photo_upright(server: LiveServer) -> None:
    upright = _asymmetric_scene()
    sideways = data_uri(upright.transpose(Image.Transpose.ROTATE_90))

    def embedding(image: str) -> list[float]:
        with server.client() as client:
            response = client.post("/inference", json={"image": image, "task": "retrieval"})
        assert response.status_code == 200, response.text
        return list(response.json()["result"]["embedding"])

    assert embedding(_with_orientation(upright)) == embedding(data_uri(upright))
    assert embedding(sideways) != embedding(data_uri(upright))  # untagged, the rotation does change the input
