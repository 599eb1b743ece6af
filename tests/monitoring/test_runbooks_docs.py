"""Every item of the operator docs (tests/monitoring/doc_items.py) is checked, or listed with why not.

Offline here: each shell command is sorted to a check (a ``mobile-mm`` command line must parse
with the real CLI, required arguments included; promtool/amtool file checks run; make targets,
compose services, profiles, files and containers must exist; environment variables must be read
by the code). Commands that need the live stack (curl, promtool query, greps of the app's log)
are run by tests/integration/test_runbooks_live.py. A command of a kind no check knows fails
the test; a command that cannot run here is listed in ``NOT_RUN_HERE`` with the reason.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest
import yaml
from typer._click import ClickException  # Typer vendors click; its CLI raises these
from typer.core import TyperGroup
from typer.main import get_command

from mobile_multimodal.cli import app
from mobile_multimodal.observability import metrics

from . import doc_items
from .doc_items import REPO, DocItem
from .test_alert_rules import exposed_names
from .test_dashboards import _process_collector_names

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SETTINGS_SRC = (REPO / "src" / "mobile_multimodal" / "settings.py").read_text()

# Commands (by their first words) that this environment cannot run, and why. Their arguments
# are still checked where a check exists (compose services, CLI parsing, greps).
NOT_RUN_HERE: dict[str, str] = {
    "docker-compose": "no Docker daemon in the test environment; services/profiles/files are checked",
    "docker": "no Docker daemon in the test environment; container names are checked",
    "nvidia-smi": "no GPU on the test machine",
    "pip install": "installs packages from the network",
    "make": "runs the whole build; the target's existence in the Makefile is checked",
    "chmod": "changes a secret file's mode; the path is checked",
    "python3 -c": "writes monitoring/secrets/metrics_token (a secret); not run by tests",
}
# Live-stack commands: run by tests/integration/test_runbooks_live.py.
LIVE = ("curl", "promtool query")

# Words that look like metric names but are not metrics, and why.
NOT_METRICS = {
    "get_model_info": "a Python method (README's API example)",
    "uptime_seconds": "a field of the /health JSON body",
    "domain_score": "a field of an /inference result (the out-of-domain check's confidence)",
    "alertmanager_notifications_failed_total": "Alertmanager's own metric, scraped from it",
}
# Documented environment variables not in settings.py, and where they are read instead.
ENV_ELSEWHERE = {
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "read by the OpenTelemetry SDK",
    "OTEL_BSP_MAX_QUEUE_SIZE": "read by the OpenTelemetry SDK",
    "OTEL_BSP_SCHEDULE_DELAY": "read by the OpenTelemetry SDK",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "read by the OpenTelemetry SDK",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "read by the OpenTelemetry SDK",
}


def _strip_prefix(command: str) -> str:
    command = re.sub(r"^docker-compose (--profile \S+ )?exec \S+ ", "", command)
    return re.sub(r"^\.venv/bin/", "", command)


def _alternatives(words: list[str]) -> list[list[str]]:
    """``db backup|verify`` -> both command lines."""
    lines: list[list[str]] = [[]]
    for word in words:
        options = word.split("|") if "|" in word and not word.startswith(("'", '"')) else [word]
        lines = [[*line, o] for line in lines for o in options]
    return lines


def _parse_cli(words: list[str]) -> None:
    """Parse ``mobile-mm`` arguments with the real CLI; raises on a missing required argument,
    an unknown option or command."""
    command: Any = get_command(app)
    context: Any = None
    args = list(words)
    while isinstance(command, TyperGroup):
        context = command.make_context(command.name or "mobile-mm", list(args), parent=context)
        rest = [*getattr(context, "_protected_args", []), *context.args]
        if not rest:  # a group that runs by itself (`mobile-mm export --platform ...`)
            return
        name, sub, args = command.resolve_command(
            context, [*getattr(context, "_protected_args", []), *context.args]
        )
        assert sub is not None, words
        command = sub
    command.make_context(name, args, parent=context)


def check_mobile_mm(command: str) -> None:
    words = shlex.split(_strip_prefix(command))
    assert words[0] == "mobile-mm", command
    for line in _alternatives(words[1:]):
        try:
            _parse_cli(line)
        except ClickException as exc:
            raise AssertionError(f"`{command}` does not parse: {exc.format_message()}") from exc


def check_compose(command: str) -> None:
    services = COMPOSE["services"]
    profiles = {p for s in services.values() for p in s.get("profiles", [])}
    containers = {s.get("container_name") for s in services.values()}
    words = doc_items.pipeline(command)[0]
    if words[0] == "docker":
        if words[1] in ("stats", "stop"):
            for name in [w for w in words[2:] if not w.startswith("-") and not w.isdigit()]:
                assert name in containers, f"{command}: no container {name}"
        return
    i = 1
    verb = None
    while i < len(words):
        word = words[i]
        if word == "--profile":
            assert words[i + 1] in profiles, f"{command}: no profile {words[i + 1]}"
            i += 2
        elif word == "-f" and verb is None:
            assert (REPO / words[i + 1]).is_file(), f"{command}: no file {words[i + 1]}"
            i += 2
        elif verb is None:
            verb = word
            i += 1
        elif word.startswith("-"):
            i += 1 + (word == "-t")
        else:
            if verb in ("up", "exec", "logs", "restart"):
                assert word in services, f"{command}: no service {word}"
            if verb == "exec":
                break  # the rest is the command run inside
            i += 1


def _kind(command: str) -> str:
    text = _strip_prefix(re.sub(r"^[A-Z_]+=\S+ ", "", command))
    first = text.split()[0]
    if first == "mobile-mm":
        return "mobile-mm"
    if text.startswith(LIVE) or re.match(r"docker-compose (--profile \S+ )?exec \S+ grep ", command):
        return "live"
    if re.match(r"docker-compose logs .*\| grep ", command):
        return "live"
    if first in ("docker-compose", "docker") or command.startswith(("docker-compose", "docker ")):
        return "compose"  # e.g. `docker-compose exec app-prod ls /app/profiles/cpu/`
    if first in ("promtool", "amtool"):
        return "tool"
    if first == "make":
        return "make"
    if first == "export":
        return "export"
    if first in (".venv/bin/python", "python") or text.startswith(("python -c", ".venv/bin/python")):
        return "python"
    for head in NOT_RUN_HERE:
        if text.startswith(head):
            return "not-run"
    return "unknown"


COMMANDS = doc_items.shell_commands()


@pytest.mark.parametrize("item", COMMANDS, ids=[f"{c.doc}:{c.text[:60]}" for c in COMMANDS])
def test_every_command_is_checked(item: DocItem) -> None:
    command, kind = item.text, _kind(item.text)
    assert kind != "unknown", f"{item.doc}: no check knows `{command}`; add one or list it in NOT_RUN_HERE"
    if command.startswith(("docker", "BIND_ADDRESS")):
        check_compose(re.sub(r"^[A-Z_]+=\S+ ", "", command))
    if kind == "mobile-mm":
        check_mobile_mm(command)
    elif kind == "tool":
        _check_tool(command)
    elif kind == "make":
        targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
        words = [w for w in command.split()[1:] if not w.startswith("-") and "=" not in w]
        assert set(words) <= targets, f"{command}: no Makefile target {set(words) - targets}"
    elif kind == "export":
        for name in re.findall(r"\b([A-Z_]+)=", command):
            _check_env(name)
    elif kind == "python":
        _check_python(command)


def _check_tool(command: str) -> None:
    words = shlex.split(command)
    files = [w for w in words if "/" in w and not w.startswith("--")]
    files += [w.split("=", 1)[1] for w in words if w.startswith("--config.file=")]
    if not files:  # the tool named in prose ("`promtool check rules`"): it exists and has that verb
        args = [w for w in words if not w.startswith("--")] + ["--help"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return
    result = subprocess.run(words, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


def _check_python(command: str) -> None:
    words = shlex.split(command.split(">")[0])
    if "-c" in words:
        code = words[words.index("-c") + 1]
        compile(code, "<doc>", "exec")  # the snippet is Python; the README quick start runs it
        for module in re.findall(r"from ([\w.]+) import", code):
            assert (REPO / "src" / (module.replace(".", "/") + ".py")).is_file(), module
    elif "-m" in words:  # a module run as a command: it exists and its --help runs
        module = words[words.index("-m") + 1]
        assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
    else:
        script = next(w for w in words[1:] if w.endswith(".py"))
        assert (REPO / script).is_file(), f"{command}: no {script}"


def _check_env(name: str) -> None:
    if name in ENV_ELSEWHERE:
        return
    field = name.removeprefix("MOBILE_MM_").lower()
    assert name in SETTINGS_SRC or re.search(rf"\b{field}\s*:", SETTINGS_SRC), (
        f"{name} is not read by settings.py"
    )


@pytest.mark.parametrize("name", sorted({e.text for e in doc_items.env_vars()}))
def test_documented_environment_variables_are_read(name: str) -> None:
    _check_env(name)


def test_documented_metric_names_exist() -> None:
    known = exposed_names() | _process_collector_names()
    unknown = {
        (m.doc, m.text)
        for m in doc_items.metric_names()
        if m.text not in known
        and re.sub(r"_(bucket|count|sum)$", "", m.text) not in known
        and f"{m.text}_bucket" not in known  # a histogram named by its base name
        and m.text not in NOT_METRICS
        and m.text != "up"
    }
    assert not unknown, unknown


# Label values the code emits, by metric and label (the code's own tables, not copies).
def _emitted_values() -> dict[tuple[str, str], set[str]]:
    from mobile_multimodal.security.audit import EventType
    from mobile_multimodal.security.security_context import _REASONS

    reasons = set(_REASONS.values()) | {"missing_metrics_token", "invalid_metrics_token"}
    assert reasons == set(metrics.AUTH_FAILURE_REASONS)
    assert {e.value for e in EventType} == set(metrics.SECURITY_EVENT_TYPES)
    return {
        ("auth_failures_total", "reason"): reasons,
        ("security_events_total", "event_type"): {e.value for e in EventType},
    }


def test_documented_closed_label_values_are_emitted() -> None:
    emitted = _emitted_values()
    for doc, metric, label, value in doc_items.label_values():
        if (metric, label) in emitted:
            assert value in emitted[(metric, label)], f"{doc}: {metric}{{{label}={value!r}}} is never written"


def test_extraction_finds_the_known_items() -> None:
    """The extractor is not vacuous: it finds what the runbooks are known to contain."""
    greps = {(g.doc, g.args[-1]) for g in doc_items.grep_uses()}
    assert ("docs/runbooks/ModelTampering.md", "audit model.integrity_check") in greps
    assert any(
        q.text.startswith("sum by (reason) (increase(auth_failures_total") for q in doc_items.promql_queries()
    )
    assert len(COMMANDS) > 100 and len(doc_items.logql_queries()) >= 3
    assert all(g.source != "unknown" for g in doc_items.grep_uses()), doc_items.grep_uses()


def test_runbook_index_summaries_are_whole_sentences() -> None:
    """docs/runbooks/README.md once cut summaries at the first '.' ("differs from `manifest.")."""
    rows = re.findall(
        r"^\| \[(\w+)\]\(\w+\.md\) \|[^|]*\|[^|]*\| (.*) \|$",
        (REPO / "docs/runbooks/README.md").read_text(),
        re.M,
    )
    assert len(rows) >= 30
    for alert, summary in rows:
        assert summary.count("`") % 2 == 0, f"{alert}: unbalanced code span in {summary!r}"
        assert summary.endswith((".", ")")), f"{alert}: {summary!r} is cut off"
        assert not re.search(r"\b\d+\.$", summary), f"{alert}: {summary!r} ends inside a number"
