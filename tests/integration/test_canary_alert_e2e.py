"""A served model that really degrades fires the accuracy alert, end to end, all on 127.0.0.1.

Two real ``mobile-mm serve`` processes: one serves a copy of the release, the other the same
release with its weights re-quantized badly (2-bit round-to-nearest over each whole tensor, no
groups, no calibration: four values per weight matrix) and saved with the release's manifest
claims, as a botched re-export would be. Both run their start-up canary. The real Prometheus
(our alerts.yml, ``for:`` shortened to 0 s) scrapes both; the real Alertmanager (our routing,
receivers turned into webhooks to this test) must deliver ModelCanaryAccuracyDrop for the
degraded instance's tasks to ``slack-warnings``, and never for the release's instance.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mobile_multimodal.model import MobileMultiModalLLM
from monitoring.localstack import (
    MONITORING,
    AlertmanagerProcess,
    PrometheusProcess,
    WebhookReceiver,
    load_yaml,
    missing_binaries,
    prometheus_test_config,
    shortened_rules,
    wait_until,
    webhook_variant,
)

from .servers import AppServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB = "mobile-multimodal-llm"
ALERT = "ModelCanaryAccuracyDrop"


def _requantize_badly(release: Path, dest: Path) -> Path:
    """The release's weights through 2-bit RTN per whole tensor, saved with its manifest claims."""
    model = MobileMultiModalLLM.from_pretrained(release)
    with torch.no_grad():
        for p in model.network.parameters():
            if p.dim() >= 2:
                lo, hi = p.min(), p.max()
                step = (hi - lo) / 3
                p.copy_(torch.round((p - lo) / step).clamp(0, 3) * step + lo)
    return model.save(dest)


@pytest.fixture(scope="module")
def stack(served_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    missing = missing_binaries("prometheus", AlertmanagerProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs them)")
    if "canary" not in MobileMultiModalLLM.from_pretrained(served_model_dir).manifest:
        pytest.skip("the served model has no canary report in its manifest (the bundled one has)")
    tmp = tmp_path_factory.mktemp("canary-e2e")
    release = Path(shutil.copytree(served_model_dir, tmp / "release", ignore=shutil.ignore_patterns("int*")))
    degraded = _requantize_badly(release, tmp / "degraded")
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shortened_rules(load_yaml(MONITORING / "alerts.yml"))))
    env = {"MOBILE_MM_CANARY_INTERVAL_S": "3600"}  # the start-up run is the one under test
    (tmp / "good").mkdir()
    (tmp / "bad").mkdir()
    with (
        WebhookReceiver() as hook,
        AlertmanagerProcess(
            tmp / "am", webhook_variant(load_yaml(MONITORING / "alertmanager.yml"), hook.url)
        ) as am,
        AppServer(release, tmp / "good", env) as good,
        AppServer(degraded, tmp / "bad", env) as bad,
    ):
        prom = PrometheusProcess(tmp / "prom", {})
        targets = {JOB: [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"]}
        prom.config_path.write_text(
            yaml.safe_dump(prometheus_test_config(rules, targets, f"127.0.0.1:{am.port}"))
        )
        with prom:
            yield {"hook": hook, "prom": prom, "good": good, "bad": bad}


def test_a_badly_requantized_model_fires_the_canary_accuracy_alert(stack: dict[str, Any]) -> None:
    hook: WebhookReceiver = stack["hook"]
    good: AppServer = stack["good"]
    bad: AppServer = stack["bad"]
    bad_instance = f"127.0.0.1:{bad.port}"
    note = hook.wait_for(
        lambda n: n["commonLabels"].get("alertname") == ALERT and n["status"] == "firing", timeout_s=240
    )
    assert note["receiver"] == "slack-warnings"
    firing = [a for n in hook.notifications() if n["status"] == "firing" for a in n["alerts"]]
    ours = [a for a in firing if a["labels"]["alertname"] == ALERT]
    assert {a["labels"]["instance"] for a in ours} == {bad_instance}  # never the release's
    assert {a["labels"]["task"] for a in ours} <= {"captioning", "ocr", "vqa", "retrieval"}
    assert ours[0]["annotations"]["runbook_url"] == f"docs/runbooks/{ALERT}.md"

    # Prometheus holds what the canary measured: the release at its baseline, the degraded far below
    prom: PrometheusProcess = stack["prom"]
    good_instance = f"127.0.0.1:{good.port}"
    wait_until(
        "the release's canary scraped",
        lambda: _worst_ratio(prom).get(good_instance) is not None,
        240,
        None,
    )
    ratio = _worst_ratio(prom)
    assert ratio[good_instance] == pytest.approx(1.0, abs=0.02)
    assert ratio[bad_instance] < 0.95
    # ... and each app logged its canary run as a JSON line
    for app in (good, bad):
        runs = [line for line in app.log_lines() if line.get("message") == "canary run"]
        assert (
            runs and runs[0]["operation"] == "canary" and set(runs[0]["scores"]) == set(runs[0]["baseline"])
        )


def _worst_ratio(prom: PrometheusProcess) -> dict[str, float]:
    """instance -> the lowest canary score / baseline over its tasks."""
    result = prom.query("min by (instance) (model_accuracy_score / model_accuracy_baseline_score)")
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}
