from __future__ import annotations

import pytest

from mobile_multimodal.observability.error_window import ErrorRateWindow
from mobile_multimodal.observability.request_context import (
    ERROR_TYPES,
    annotate_request,
    begin_request,
    current_request,
    end_request,
    error_type_for_status,
)

from .conftest import sample


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_is_errors_per_second_over_the_window_and_decays_to_zero() -> None:
    clock = Clock()
    window = ErrorRateWindow(window_s=60, clock=clock)
    labels = {"endpoint": "/window-test", "error_type": "timeout"}
    for _ in range(6):
        window.record("/window-test", "timeout")
    assert sample("error_rate_by_endpoint", labels) == pytest.approx(6 / 60)
    clock.now += 30
    for _ in range(3):
        window.record("/window-test", "timeout")
    assert sample("error_rate_by_endpoint", labels) == pytest.approx(9 / 60)
    clock.now += 31  # the first six are older than 60 s now
    window.refresh()
    assert sample("error_rate_by_endpoint", labels) == pytest.approx(3 / 60)
    clock.now += 60
    window.refresh()
    assert sample("error_rate_by_endpoint", labels) == 0.0


def test_memory_is_bounded_by_seconds_not_by_errors() -> None:
    window = ErrorRateWindow(window_s=60, clock=Clock())
    for _ in range(10_000):
        window.record("/window-bound", "overload")
    assert window.rates()[("/window-bound", "overload")] == pytest.approx(10_000 / 60)
    assert len(window._buckets[("/window-bound", "overload")]) == 1


def test_status_codes_map_to_bounded_error_types() -> None:
    for status in (400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504, 418):
        assert error_type_for_status(status) in ERROR_TYPES
    assert error_type_for_status(503) == "overload"
    assert error_type_for_status(504) == "timeout"


def test_annotations_reach_the_active_request_only() -> None:
    annotate_request(task="ocr")  # outside a request: a no-op, not an error
    info, token = begin_request("multimodal")
    try:
        annotate_request(task="vqa", batch_size=8, queue_wait_ms=3.5)
        assert current_request() is info
        assert (info.task, info.batch_size, info.extra) == ("vqa", 8, {"queue_wait_ms": 3.5})
        with pytest.raises(ValueError, match="error_type"):
            annotate_request(error_type="kaboom")  # would create an unbounded label value
    finally:
        end_request(token)
    assert current_request() is None
