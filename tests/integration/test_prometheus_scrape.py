"""A real Prometheus scrapes the real app under traffic; PromQL returns exactly what was sent.

Everything on 127.0.0.1: ``mobile-mm serve`` in a subprocess with a metrics bearer token, and
the Debian ``prometheus`` binary scraping it every second (OpenMetrics, exemplar storage on).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from mobile_multimodal.model import MobileMultiModalLLM
from mobile_multimodal.observability.model_metrics import primaries

from . import prometheus_server
from .prometheus_server import PrometheusServer
from .servers import AppServer, scene_png_b64

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "scrape-token-for-tests"
SENT = {"captioning": 7, "ocr": 5}
BAD = 3


@pytest.fixture(scope="module", autouse=True)
def _needs_prometheus() -> None:
    reason = prometheus_server.available()
    if reason is not None:
        pytest.fail(reason)  # a missing system dependency is a broken setup, not a skip


def test_prometheus_scrapes_true_values(
    served_model_dir: Path, served_model: MobileMultiModalLLM, tmp_path: Path
) -> None:
    app = AppServer(served_model_dir, tmp_path / "app", {"MOBILE_MM_METRICS_TOKEN": TOKEN})
    (tmp_path / "app").mkdir()
    (tmp_path / "prom").mkdir()
    with app:
        target = f"127.0.0.1:{app.port}"
        jobs: list[dict[str, Any]] = [
            {
                "job_name": "app",
                "authorization": {"credentials": TOKEN},
                "static_configs": [{"targets": [target]}],
            },
            {"job_name": "app-no-token", "static_configs": [{"targets": [target]}]},
            {
                "job_name": "app-alias",
                "metrics_path": "/model/metrics",
                "authorization": {"credentials": TOKEN},
                "static_configs": [{"targets": [target]}],
            },
        ]
        with (
            PrometheusServer(tmp_path / "prom", jobs) as prom,
            httpx.Client(base_url=app.url, timeout=60) as client,
        ):
            prom.wait_for('up{job="app"}', lambda v: v == 1)
            trace_ids: set[str] = set()
            for number, (task, i) in enumerate((t, i) for t, n in SENT.items() for i in range(n)):
                response = client.post("/inference", json={"image": scene_png_b64(seed=i), "task": task})
                assert response.status_code == 200, response.text
                trace_ids.add(response.json()["trace_id"])
                if number == 0:
                    # Let a scrape see the histogram before the rest arrive: rate() needs an increase
                    # between two scrapes, and a series starts at its first scraped value, not at 0.
                    prom.wait_for('sum(model_inference_duration_seconds_count{job="app"})', lambda v: v == 1)
            for _ in range(BAD):
                response = client.post("/inference", json={"image": "not base64 at all!", "task": "ocr"})
                assert 400 <= response.status_code < 500
            total = sum(SENT.values())
            # Wait until a scrape after the last request has landed, then check every number.
            prom.wait_for(
                'sum(http_requests_total{job="app",endpoint="/inference"})', lambda v: v == total + BAD
            )

            assert prom.scalar('up{job="app"}') == 1
            assert prom.scalar('up{job="app-alias"}') == 1
            assert prom.scalar('up{job="app-no-token"}') == 0  # the token is enforced
            by_status = prom.by_label(
                'sum by (status) (http_requests_total{job="app",endpoint="/inference"})', "status"
            )
            assert by_status.pop("200") == total
            assert sum(by_status.values()) == BAD and all(s.startswith("4") for s in by_status)

            success = prom.by_label(
                'sum by (task) (model_inference_requests_total{job="app",status="success"})', "task"
            )
            assert success == {task: float(n) for task, n in SENT.items()}
            latency = prom.by_label(
                'sum by (task) (model_inference_duration_seconds_count{job="app"})', "task"
            )
            assert latency == {task: float(n) for task, n in SENT.items()}
            usage = prom.scalar('sum(model_usage_by_task_total{job="app"})')
            assert usage == total
            per_user = prom.scalar(
                'sum(api_requests_per_user_total{job="app",user_id="anonymous",endpoint="/inference"})'
            )
            assert per_user == total + BAD

            # the guide's latency alert expression, in its valid form, evaluates to a real number
            buckets = 'model_inference_duration_seconds_bucket{job="app"}'
            p95 = prom.scalar(f"histogram_quantile(0.95, sum by (le) (rate({buckets}[1m])))")
            assert p95 is not None and 0 < p95 < 5

            # model gauges are measured from the loaded model and read from its eval report
            memory = prom.by_label('model_memory_usage_bytes{job="app"}', "component")
            # the weights of each component, and the decoder's largest KV cache (the warm-up's batch)
            assert memory.pop("kv_cache_peak") > 0
            assert memory == {k: float(v) for k, v in served_model.component_memory_bytes().items()}
            # accuracy: the start-up canary's score for its tasks, the eval report's for the others
            prom.wait_for(
                'model_canary_runs_total{job="app", status="success"}', lambda v: (v or 0) >= 1, 120
            )
            accuracy = prom.by_label('model_accuracy_score{job="app"}', "task")
            expected = primaries(served_model.manifest.get("eval"))
            expected.update(primaries(served_model.manifest.get("canary")))
            assert accuracy == pytest.approx(expected)
            assert (prom.scalar('model_load_duration_seconds{job="app"}') or 0) > 0

            # resource gauges feeding the resource alerts
            for name in (
                "process_memory_usage_bytes",
                "process_cpu_usage_percent",
                "system_memory_usage_percent",
                "system_cpu_usage_percent",
            ):
                assert prom.scalar(f'{name}{{job="app"}}') is not None, name
            for name in ("disk_free_percent", "disk_usage_percent"):
                (series,) = prom.query(f'{name}{{job="app"}}')
                assert 0 < float(series["value"][1]) < 100, name

            # exemplars link the latency histogram to the traces of the requests we sent
            deadline = time.monotonic() + 60  # scraped every second: only a failure gets near this
            linked: set[str] = set()
            while time.monotonic() < deadline and not linked:
                for series in prom.exemplars('model_inference_duration_seconds_bucket{job="app"}'):
                    linked |= {e["labels"].get("trace_id", "") for e in series["exemplars"]}
                time.sleep(0.5)
            assert linked and linked <= trace_ids
