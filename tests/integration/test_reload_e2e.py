"""End to end on 127.0.0.1: a real ``mobile-mm serve`` with keys required, a real SIGHUP, the real
Prometheus evaluating monitoring/alerts.yml, and every file the service writes searched for the
key it was used with.

- SIGHUP after the settings file changed: ``config_changes_total{source="reload"}`` moves, the
  ConfigurationChange alert fires in Prometheus (the rule as written, ``for`` shortened), and
  ``mobile-mm audit query`` prints the ``config.change`` row.
- A real API key, used every way a client may send it (Authorization, X-API-Key, even a query
  string), never appears in the captured stdout/stderr, the log dir (application log, audit.jsonl)
  or the data dir (the database included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from monitoring.localstack import (
    MONITORING,
    PrometheusProcess,
    load_yaml,
    missing_binaries,
    prometheus_test_config,
    shortened_rules,
)

from .servers import MOBILE_MM, REPO, AppServer, scene_png_b64, wait_for

pytestmark = pytest.mark.integration
JOB = "mobile-multimodal-llm"


@dataclass
class Served:
    app: AppServer
    prom: PrometheusProcess
    key: str
    settings_file: Path
    env: dict[str, str]


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(MOBILE_MM), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _wait(what: str, check: Any, timeout_s: float = 120) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    missing = missing_binaries("prometheus")
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs it)")
    tmp = tmp_path_factory.mktemp("reload-e2e")
    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp / "model")
    settings_file = tmp / "settings.env"
    settings_file.write_text("MOBILE_MM_RATE_LIMIT_FREE_BURST=10\n")
    workdir = tmp / "app"
    workdir.mkdir()
    extra = {
        "MOBILE_MM_AUTH": "required",
        "MOBILE_MM_SETTINGS_FILE": str(settings_file),
        "MOBILE_MM_CANARY_INTERVAL_S": "0",
        "MOBILE_MM_AUTH_SUCCESS_AUDIT_INTERVAL_S": "1",
    }
    app = AppServer(model_dir, workdir, extra)
    key = json.loads(_cli(app.env, "keys", "create", "--user", "leak-test", "--json"))["key"]
    rules = tmp / "alerts.yml"
    rules.write_text(yaml.safe_dump(shortened_rules(load_yaml(MONITORING / "alerts.yml"))))
    with app:
        prom = PrometheusProcess(tmp / "prom", {})
        config = prometheus_test_config(rules, {JOB: [f"127.0.0.1:{app.port}"]}, "127.0.0.1:9")
        prom.config_path.write_text(yaml.safe_dump(config))
        with prom:
            yield Served(app, prom, key, settings_file, app.env)


def test_sighup_applies_a_changed_settings_file_and_fires_configuration_change(served: Served) -> None:
    app, prom = served.app, served.prom
    _wait("Prometheus scraping the app", lambda: prom.query(f'up{{job="{JOB}"}} == 1'))
    reloads = 'config_changes_total{source="reload"}'
    # (no series before the first reload: the rule's second branch fires on a series born at 1)

    served.settings_file.write_text("MOBILE_MM_RATE_LIMIT_FREE_BURST=3\n")
    os.kill(app.pid, signal.SIGHUP)
    with httpx.Client(base_url=app.url, timeout=60) as client:
        _wait(
            "config_changes_total{source=reload} 1", lambda: f"{reloads} 1.0" in client.get("/metrics").text
        )
    firing = _wait("ConfigurationChange firing", lambda: prom.firing().get("ConfigurationChange"))
    assert any(alert.get("source") == "reload" for alert in firing)

    rows = json.loads(
        _cli(served.env, "audit", "query", "--action", "config.change", "--since", "1h", "--json")
    )
    (change,) = [r for r in rows if r["details"]["source"] == "reload"]
    assert change["details"]["changed_fields"] == ["rate_limit_free_burst"]
    assert (change["user_id"], change["result"], change["source_ip"]) == ("system", "success", "local")
    # applied live: the free tier's burst is now 3 (the 4th quick request of a key is refused)
    codes = []
    with httpx.Client(base_url=app.url, timeout=60, headers={"X-API-Key": served.key}) as client:
        for _ in range(6):
            codes.append(client.get("/v1/models").status_code)
    assert codes.count(429) >= 2 and codes[:3] == [200, 200, 200]


def test_a_real_key_never_reaches_stdout_logs_or_data(served: Served) -> None:
    app, key = served.app, served.key
    image = scene_png_b64()
    with httpx.Client(base_url=app.url, timeout=60) as client:
        bearer = {"Authorization": f"Bearer {key}"}
        assert client.post(
            "/inference", json={"image": image, "task": "captioning"}, headers=bearer
        ).status_code in (
            200,
            429,
        )
        client.post("/inference", json={"image": image, "task": "ocr"}, headers={"X-API-Key": key})
        client.get("/v1/models", headers=bearer)
        client.get("/export/nothing", headers=bearer)  # an admin route, refused: audited with its reason
        client.post(f"/inference?api_key={key}", json={"image": image, "task": "captioning"})  # refused: 401
        client.post("/inference", json={"image": image, "task": "vqa", "question": key}, headers=bearer)
        client.get("/metrics", headers=bearer)
    _cli(served.env, "keys", "list")
    _cli(served.env, "audit", "query", "--user", "leak-test")
    app.stop()  # flushes the logs; the module's other test ran first

    searched = [app.stdout_path, *sorted(p for p in app.workdir.rglob("*") if p.is_file())]
    assert any(p.name == "audit.jsonl" for p in searched) and any(
        p.name.startswith("application.log") for p in searched
    )
    assert any(p.suffix == ".db" for p in searched)
    leaked = [str(p) for p in searched if key.encode() in p.read_bytes()]
    assert leaked == []
    audit_lines = [json.loads(line) for line in (app.log_dir / "audit.jsonl").read_text().splitlines()]
    assert any(line["action"] == "auth.success" and line["user_id"] == "leak-test" for line in audit_lines)
