"""The four Grafana dashboards: built from their source, valid against Grafana's own schema, and
querying only metrics the app or a standard exporter exposes.

Grafana is in no registry here, so the schema check type-checks each dashboard against the
TypeScript definitions Grafana publishes (@grafana/schema) with the TypeScript compiler; see
monitoring/grafana/validate/validate.mjs. Live query execution is in
tests/integration/test_alerting_e2e.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest

from .conftest import parse_expressions
from .localstack import MONITORING, NodeExporterProcess, missing_binaries
from .test_alert_rules import exposed_names

DASHBOARDS = MONITORING / "grafana" / "dashboards"
GUIDE_TITLES = {
    "Mobile Multi-Modal Overview",
    "Model Performance",
    "Infrastructure Monitoring",
    "Mobile Export Monitoring",
}
# Series of Prometheus and Alertmanager themselves that the dashboards use (both are started for
# real in tests/integration/test_alerting_e2e.py, which runs every dashboard query).
MONITORING_SELF = {
    "up",
    "scrape_duration_seconds",
    "ALERTS",
    "prometheus_rule_evaluation_failures_total",
    "alertmanager_notifications_failed_total",
}


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_queries(datasource: str = "prometheus") -> list[str]:
    """Every query expression of every dashboard (panels and annotations) for one data source type."""
    exprs = []
    for dashboard in _dashboards().values():
        for panel in _panels(dashboard):
            exprs += [t["expr"] for t in panel["targets"] if t["datasource"]["type"] == datasource]
        exprs += [
            a["target"]["expr"]
            for a in dashboard["annotations"]["list"]
            if a.get("target") and a["datasource"]["type"] == datasource
        ]
    return exprs


def test_dashboards_are_built_from_source() -> None:
    script = MONITORING / "grafana" / "build_dashboards.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_guides_four_dashboards() -> None:
    dashboards = _dashboards()
    assert {d["title"] for d in dashboards.values()} == GUIDE_TITLES
    for name, d in dashboards.items():
        variables = {v["name"] for v in d["templating"]["list"]}
        assert variables == {"environment", "model_type", "instance"}, name
        annotation_names = [a["name"] for a in d["annotations"]["list"]]
        assert "Critical and warning alerts firing" in annotation_names, name
        assert len({p["id"] for p in d["panels"]}) == len(d["panels"]), f"{name}: duplicate panel ids"
        for panel in _panels(d):
            assert panel["title"] and panel["description"], f"{name}: panel {panel['id']} untitled"


def test_units_and_colours_are_consistent() -> None:
    """The same metric always has the same unit; the same task/platform/quantization the same colour."""
    units: dict[str, set[str]] = {}
    colours: dict[str, set[str]] = {}
    for d in _dashboards().values():
        for panel in _panels(d):
            unit = panel["fieldConfig"]["defaults"].get("unit")
            expr = panel["targets"][0]["expr"]
            if unit is not None and "histogram_quantile" in expr and "duration_seconds" in expr:
                units.setdefault("latency", set()).add(unit)
            for override in panel["fieldConfig"]["overrides"]:
                name = override["matcher"]["options"]
                for prop in override["properties"]:
                    if prop["id"] == "color":
                        colours.setdefault(name, set()).add(prop["value"]["fixedColor"])
    assert units["latency"] == {"s"}
    assert colours, "no fixed colours"
    assert all(len(c) == 1 for c in colours.values()), colours


def test_guide_loki_queries_are_on_dashboards() -> None:
    loki = set(dashboard_queries("loki"))
    assert '{service="mobile-multimodal-llm"} |= "ERROR"' in loki
    assert '{service="mobile-multimodal-llm"} | json | duration_ms > 100' in loki
    assert '{service="mobile-multimodal-llm"} | json | operation="mobile_export"' in loki


@pytest.mark.slow
def test_schema_validation_passes(grafana_validator: Path) -> None:
    result = subprocess.run(
        ["node", "validate.mjs", str(DASHBOARDS)],
        cwd=grafana_validator,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dashboards"] == 4
    assert summary["panels"] == sum(len(_panels(d)) for d in _dashboards().values())


# A broken copy of a dashboard and a word the validator's complaint about it must contain.
MUTATIONS: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda d: d.update(refreshEvery="30s"), "refreshEvery"),  # not a dashboard field
    (lambda d: d.pop("schemaVersion"), "schemaVersion"),  # required
    (lambda d: _panels(d)[0]["options"]["legend"].update(displayMode="sideways"), "sideways"),  # bad enum
    (lambda d: _panels(d)[0]["fieldConfig"]["defaults"]["custom"].update(lineWidth="thick"), "lineWidth"),
    (lambda d: _panels(d)[0]["targets"][0].update(legend="x"), "legend"),  # not in PrometheusDataQuery
    (lambda d: _panels(d)[0]["targets"][0].update(expr="sum(rate(x[5m])"), "does not parse"),
    (lambda d: d["panels"].append({**_panels(d)[0], "id": 999, "type": "worldmap"}), "worldmap"),
]


@pytest.mark.slow
def test_schema_validation_catches_errors(grafana_validator: Path, tmp_path: Path) -> None:
    original = _dashboards()["model-performance.json"]
    for number, (change, _) in enumerate(MUTATIONS):
        broken = copy.deepcopy(original)
        change(broken)
        (tmp_path / f"broken-{number}.json").write_text(json.dumps(broken))
    result = subprocess.run(
        ["node", "validate.mjs", str(tmp_path)],
        cwd=grafana_validator,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 1
    for number, (_, message) in enumerate(MUTATIONS):
        complaints = [line for line in result.stderr.splitlines() if line.startswith(f"broken-{number}.json")]
        assert any(message in line for line in complaints), (message, complaints)


def _node_exporter_names(tmp_path: Path) -> set[str]:
    import urllib.request

    with NodeExporterProcess(tmp_path / "node") as node, urllib.request.urlopen(f"{node.url}/metrics") as r:
        text = r.read().decode()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def _process_collector_names() -> set[str]:
    text = generate_latest(REGISTRY).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("process_")}


def test_queries_use_only_known_metrics(grafana_validator: Path, tmp_path: Path) -> None:
    missing = missing_binaries(NodeExporterProcess.binary)
    if missing:
        pytest.fail(f"{missing} not installed (scripts/install_system_deps.sh installs it)")
    known = exposed_names() | _process_collector_names() | _node_exporter_names(tmp_path) | MONITORING_SELF
    variables = [v["query"] for d in _dashboards().values() for v in d["templating"]["list"]]
    exprs = dashboard_queries() + [q.removeprefix("label_values(").rsplit(",", 1)[0] for q in variables]
    for parsed in parse_expressions(grafana_validator, "--promql", exprs):
        assert parsed["error"] is None, parsed
        assert parsed["metrics"], f"no metric in {parsed['expr']}"
        unknown = set(parsed["metrics"]) - known
        assert not unknown, f"unknown metric(s) {sorted(unknown)} in {parsed['expr']}"


def test_provisioning_matches_dashboards() -> None:
    sources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/datasources.yml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    assert {"prometheus", "loki", "jaeger"} <= set(by_uid)
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["loki"]["url"] == "http://loki:3100"
    assert by_uid["jaeger"]["url"] == "http://jaeger:16686"
    used = {t["datasource"]["uid"] for d in _dashboards().values() for p in _panels(d) for t in p["targets"]}
    assert used <= set(by_uid)
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_latency_graphs_show_the_trace_exemplars() -> None:
    """The app attaches a trace_id exemplar to its latency histograms; every graph over them asks
    for the exemplars (Grafana links them to Jaeger), and nothing else does."""
    with_exemplars = []
    for dashboard in _dashboards().values():
        for panel in _panels(dashboard):
            for query in panel.get("targets", []):
                over_exemplars = any(
                    name in query.get("expr", "")
                    for name in (
                        "model_inference_duration_seconds_bucket",
                        "http_request_duration_seconds_bucket",
                    )
                )
                assert query.get("exemplar", False) == (over_exemplars and not query.get("instant")), query
                if query.get("exemplar"):
                    with_exemplars.append(query["expr"])
    assert any("model_inference_duration_seconds_bucket" in e for e in with_exemplars)
    datasources = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text()
    )
    prometheus = next(d for d in datasources["datasources"] if d["type"] == "prometheus")
    assert prometheus["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "jaeger"}
    ]
