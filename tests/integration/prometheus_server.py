"""A real Prometheus server (the Debian package's binary) on 127.0.0.1, started and stopped by a test.

Scrapes every second, stores exemplars (``--enable-feature=exemplar-storage``) and answers
PromQL over its HTTP API.

Example::

    jobs = [{"job_name": "app", "static_configs": [{"targets": ["127.0.0.1:8080"]}]}]
    with PrometheusServer(tmp_path, jobs) as prom:
        prom.wait_for('up{job="app"}', lambda v: v == 1)
        prom.scalar('sum(http_requests_total{endpoint="/inference"})')
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .servers import free_port, stop_process, wait_http

BINARY = "prometheus"


def available() -> str | None:
    """Why Prometheus cannot run here, or None when it can."""
    if shutil.which(BINARY) is None:
        return "the prometheus binary is not installed (scripts/install_system_deps.sh installs it)"
    return None


class PrometheusServer:
    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusServer:
        log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [
                BINARY,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_http(f"{self.url}/-/ready", timeout_s=120, process=self._proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"prometheus did not start: {self.log_path.read_text()[-2000:]}") from exc
        return self

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP API -----------------------------------------------------------------------
    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=60) as response:  # a busy machine may be slow
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus API {path} failed: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant-vector result: [{"metric": {...}, "value": [ts, "str"]}, ...]."""
        data = self.api("query", query=promql)
        if data["resultType"] != "vector":
            raise ValueError(f"{promql!r} is a {data['resultType']}, not a vector")
        return list(data["result"])

    def scalar(self, promql: str) -> float | None:
        """The single value of a one-element vector, None when the vector is empty."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise ValueError(f"{promql!r} returned {len(result)} series")
        return float(result[0]["value"][1])

    def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def wait_for(
        self, promql: str, done: Callable[[float | None], bool], timeout_s: float = 60.0
    ) -> float | None:
        """Poll a one-series query until ``done(value)``; raise with the last value otherwise."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(promql)
            if done(value):
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{promql!r} never satisfied the condition in {timeout_s}s; last value {value}")

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def exemplars(self, promql: str, since_s: float = 600) -> list[dict[str, Any]]:
        now = time.time()
        return list(self.api("query_exemplars", query=promql, start=str(now - since_s), end=str(now + 5)))
