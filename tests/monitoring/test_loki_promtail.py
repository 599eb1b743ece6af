"""Loki and Promtail configs: they parse, ship the app's log file with service="mobile-multimodal-llm",
and their JSON pipeline fits the lines the app really writes, so the guide's LogQL runs as written.

Loki and Promtail are in no registry here, so they are not started: the pipeline is checked
against lines produced by the app's own JSON formatter, and the LogQL is parsed with Grafana's
LogQL grammar (@grafana/lezer-logql).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from mobile_multimodal.observability.logging import JsonFormatter

from .conftest import parse_expressions
from .localstack import MONITORING, REPO

LOKI = yaml.safe_load((MONITORING / "loki" / "loki-config.yml").read_text())
PROMTAIL = yaml.safe_load((MONITORING / "promtail" / "promtail-config.yml").read_text())
GUIDE_QUERIES = [
    '{service="mobile-multimodal-llm"} |= "ERROR"',
    '{service="mobile-multimodal-llm"} | json | duration_ms > 100',
    '{service="mobile-multimodal-llm"} | json | operation="mobile_export"',
]


def _job() -> dict[str, Any]:
    (job,) = PROMTAIL["scrape_configs"]
    return dict(job)


def test_loki_config() -> None:
    assert LOKI["server"]["http_listen_port"] == 3100
    assert LOKI["auth_enabled"] is False
    assert LOKI["schema_config"]["configs"][0]["store"] == "tsdb"
    assert LOKI["limits_config"]["retention_period"] == "720h"


def test_promtail_ships_to_loki_with_the_service_label() -> None:
    assert PROMTAIL["clients"][0]["url"] == "http://loki:3100/loki/api/v1/push"
    (static,) = _job()["static_configs"]
    assert static["labels"]["service"] == "mobile-multimodal-llm"


def test_promtail_reads_the_file_the_app_writes() -> None:
    observability = yaml.safe_load((MONITORING / "observability.yml").read_text())
    file_name = observability["logging"]["file"]["name"]
    pattern = _job()["static_configs"][0]["labels"]["__path__"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = [v.split(":")[1] for v in compose["services"]["promtail"]["volumes"] if v.startswith("app-")]
    assert mounts, "promtail mounts no app log volume"
    for mount in mounts:
        assert re.fullmatch(pattern.replace("*", ".*"), f"{mount}/{file_name}"), (pattern, mount)
    app_logs = [v for v in compose["x-app"]["environment"].items() if v[0] == "MOBILE_MM_LOG_DIR"]
    assert app_logs == [("MOBILE_MM_LOG_DIR", "/app/logs")]


def _app_line(message: str, level: int, **extra: Any) -> dict[str, Any]:
    record = logging.makeLogRecord(
        {
            "name": "mobile_multimodal.test",
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "msg": message,
            **extra,
        }
    )
    return dict(json.loads(JsonFormatter().format(record)))


def test_pipeline_fits_the_apps_json_lines() -> None:
    stages = _job()["pipeline_stages"]
    json_stage = next(s["json"] for s in stages if "json" in s)
    line = _app_line("inference done", logging.ERROR, duration_ms=123.4, operation="inference", task="ocr")
    for source in json_stage["expressions"].values():
        assert source in line, f"json stage extracts {source!r}, absent from the app's lines"
    labels = next(s["labels"] for s in stages if "labels" in s)
    assert set(labels) == {"level"}  # bounded values only
    assert line["level"] == "ERROR"
    timestamp_stage = next(s["timestamp"] for s in stages if "timestamp" in s)
    assert timestamp_stage["format"] == "RFC3339Nano"
    parsed = dt.datetime.fromisoformat(line[timestamp_stage["source"]].replace("Z", "+00:00"))
    assert parsed.tzinfo is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line["timestamp"])


def test_guide_queries_match_the_apps_lines() -> None:
    """What each guide query filters on is in the app's lines, with the type the filter needs."""
    error = _app_line("model failed to load", logging.ERROR)
    assert '"ERROR"' in json.dumps(error)  # |= "ERROR" is a substring match on the raw line
    slow = _app_line("request done", logging.INFO, duration_ms=250.5)
    assert isinstance(slow["duration_ms"], float) and slow["duration_ms"] > 100  # numeric for `> 100`
    export = _app_line("export done", logging.INFO, operation="mobile_export")
    assert export["operation"] == "mobile_export"
    assert export["service"] == "mobile-multimodal-llm"


def test_guide_queries_parse(grafana_validator: Path) -> None:
    for parsed in parse_expressions(grafana_validator, "--logql", GUIDE_QUERIES):
        assert parsed["error"] is None, parsed


def test_logql_parser_rejects_bad_queries(grafana_validator: Path) -> None:
    (parsed,) = parse_expressions(grafana_validator, "--logql", ['{service="mobile-multimodal-llm" | json'])
    assert parsed["error"] is not None


def test_grafana_links_logs_and_traces() -> None:
    sources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/datasources.yml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    derived = by_uid["loki"]["jsonData"]["derivedFields"][0]
    line = json.dumps(_app_line("x", logging.INFO, trace_id="4bf92f3577b34da6a3ce929d0e0e4736"))
    match = re.search(derived["matcherRegex"].replace("\\s", r"\s"), line)
    assert match and match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert by_uid["jaeger"]["jsonData"]["tracesToLogsV2"]["datasourceUid"] == "loki"
