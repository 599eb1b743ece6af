"""A real Prometheus Pushgateway (the Debian ``prometheus-pushgateway`` binary) on 127.0.0.1 for tests.

In memory only (no persistence file), on a free port, stopped when the test ends.

Example::

    with PushgatewayProcess(tmp_path) as gateway:
        push_export_group(gateway.url, group)
        gateway.samples("mobile_exports_total")   # [(labels, value), ...] as a scrape shows them

    @pytest.fixture
    def pushgateway(tmp_path: Path) -> Iterator[PushgatewayProcess]:
        yield from running_pushgateway(tmp_path)
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .localstack import _Process, missing_binaries


class PushgatewayProcess(_Process):
    name = "pushgateway"
    binary = "prometheus-pushgateway"

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--persistence.file=",
            "--log.level=warn",
        ]

    def __enter__(self) -> PushgatewayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample called ``name`` on the Pushgateway's /metrics (what Prometheus scrapes)."""
        out = []
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name:
                    out.append((dict(sample.labels), float(sample.value)))
        return out


def running_pushgateway(tmp_path: Path) -> Iterator[PushgatewayProcess]:
    """For a fixture: ``yield from running_pushgateway(tmp_path)``."""
    missing = missing_binaries(PushgatewayProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs it)")
    with PushgatewayProcess(tmp_path / "pushgateway") as gateway:
        yield gateway
