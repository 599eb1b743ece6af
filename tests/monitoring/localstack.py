"""The real monitoring components on 127.0.0.1 for tests: Alertmanager, Prometheus, node-exporter,
and a local HTTP receiver that records what Alertmanager delivers.

Configs are derived from the committed ones (monitoring/*.yml) so the tests exercise our files:
:func:`webhook_variant` keeps Alertmanager's routes and inhibit rules identical and turns every
receiver into a webhook to the local receiver (PagerDuty, Slack and email cannot be reached from
here); :func:`prometheus_test_config` points our prometheus.yml at the test's ports with 1 s
intervals; :func:`shortened_rules` sets every ``for:`` to 0 s.

Example::

    with WebhookReceiver() as hook, AlertmanagerProcess(tmp_path, webhook_variant(cfg, hook.url)) as am:
        am.post_alerts([{"labels": {"alertname": "X", "severity": "critical"}}])
        hook.wait_for(lambda n: n["receiver"] == "pagerduty-critical")
"""

from __future__ import annotations

import copy
import json
import shutil
import socketserver
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from tests.integration.servers import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout_s: float,
    process: subprocess.Popen[bytes] | None,
    log: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}: {log.read_text()[-2000:] if log else ''}"
            )
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s}s: {log.read_text()[-2000:] if log else ''}")


def http_json(url: str, data: Any = None, timeout: float = 60) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    return json.loads(text) if text.strip() else None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.URLError:
        return False


# ---- the local receiver ----------------------------------------------------------------------
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 recording every POST: ``{"path", "body" (parsed JSON), ...}``."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                with receiver._cond:
                    receiver.received.append({"path": self.path, "body": body})
                    receiver._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # silence per-request lines
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # the kernel picks the port
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def notifications(self) -> list[dict[str, Any]]:
        """Alertmanager webhook payloads received so far (``receiver``, ``status``, ``alerts``, ...)."""
        with self._cond:
            return [r["body"] for r in self.received if isinstance(r["body"], dict) and "alerts" in r["body"]]

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 60) -> dict[str, Any]:
        """The first notification ``match`` accepts, waiting for it if need be."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for body in (r["body"] for r in self.received):
                    if isinstance(body, dict) and match(body):
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching notification in {timeout_s}s; got {self.received}")
                self._cond.wait(left)


# ---- config derivation ---------------------------------------------------------------------
def webhook_variant(config: dict[str, Any], url: str, group_wait: str | None = "1s") -> dict[str, Any]:
    """Our Alertmanager config with every receiver a webhook to ``url``/<receiver name>.

    Routes, matchers and inhibit rules stay identical. ``group_wait``/``group_interval`` are
    shortened (None keeps them) so a test does not wait the production 10 s.
    """
    variant = copy.deepcopy(config)
    variant["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{url}/{r['name']}", "send_resolved": True}]}
        for r in config["receivers"]
    ]
    if group_wait is not None:
        variant["route"]["group_wait"] = group_wait
        variant["route"]["group_interval"] = group_wait
    return variant


def shortened_rules(rules: dict[str, Any], for_: str = "0s") -> dict[str, Any]:
    """alerts.yml with every ``for:`` duration replaced (the expressions stay as written)."""
    short = copy.deepcopy(rules)
    for group in short["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    return short


def prometheus_test_config(
    rules_file: Path,
    targets: dict[str, list[str]],
    alertmanager: str,
    metrics_token_file: Path | None = None,
) -> dict[str, Any]:
    """Our prometheus.yml at 1 s intervals, each job's targets replaced by ``targets[job]``.

    Jobs not in ``targets`` are dropped, and so is the DNS discovery of app-gpu (no DNS here).
    A job's bearer token is read from ``metrics_token_file`` instead of /run/secrets; without
    one the job sends none (for apps started without MOBILE_MM_METRICS_TOKEN).
    """
    config = load_yaml(MONITORING / "prometheus.yml")
    config["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    config["rule_files"] = [str(rules_file)]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        job.pop("dns_sd_configs", None)
        job.pop("relabel_configs", None)
        if "authorization" in job:
            if metrics_token_file is None:
                del job["authorization"]
            else:
                job["authorization"]["credentials_file"] = str(metrics_token_file)
        for static in job["static_configs"]:
            static["targets"] = targets[job["job_name"]]
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


# ---- processes -----------------------------------------------------------------------------
class _Process:
    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_url(self) -> str:
        return f"{self.url}/-/ready"

    def start(self) -> _Process:
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self.name, lambda: _http_ok(self.ready_url()), 120, self._proc, self.log)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None


class AlertmanagerProcess(_Process):
    """The Debian ``prometheus-alertmanager`` binary with ``config`` (clustering off)."""

    name = "alertmanager"
    binary = "prometheus-alertmanager"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def __enter__(self) -> AlertmanagerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        http_json(f"{self.url}/api/v2/alerts", alerts)

    def alerts(self, *filters: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"filter": list(filters)}, doseq=True)
        return list(http_json(f"{self.url}/api/v2/alerts?{query}"))


class PrometheusProcess(_Process):
    """The Debian ``prometheus`` binary with a full ``config`` (rules, alerting, scrape jobs)."""

    name = "prometheus"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def __enter__(self) -> PrometheusProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        """``/api/v1/<path>``; raises with Prometheus's error text when the query fails."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            body = http_json(url)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path} {params}: HTTP {exc.code}: {exc.read().decode()[:500]}") from exc
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["result"])

    def query_range(self, promql: str, seconds: float, step: str = "1s") -> list[dict[str, Any]]:
        now = time.time()
        return list(
            self.api("query_range", query=promql, start=str(now - seconds), end=str(now), step=step)["result"]
        )

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """alertname -> label sets of the alerts firing now."""
        out: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out


class NodeExporterProcess(_Process):
    """The Debian ``prometheus-node-exporter`` binary: real host metrics for the node job."""

    name = "node-exporter"
    binary = "prometheus-node-exporter"

    def command(self) -> list[str]:
        return [self.binary, f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]

    def ready_url(self) -> str:
        return f"{self.url}/metrics"

    def __enter__(self) -> NodeExporterProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def missing_binaries(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


class SMTPReceiver:
    """A minimal SMTP server on 127.0.0.1 (no TLS, no AUTH) keeping each message's raw text.

    Enough of RFC 5321 for Alertmanager's email notifier: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 localhost ESMTP test")
                while line := self.rfile.readline():
                    verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 localhost")
                    elif verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        body = []
                        while (data := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                            body.append(data.decode(errors="replace"))
                        with receiver._cond:
                            receiver.messages.append("".join(body))
                            receiver._cond.notify_all()
                        self.reply("250 OK queued")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:  # MAIL, RCPT, RSET, NOOP
                        self.reply("250 OK")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> SMTPReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait_for_message(self, timeout_s: float = 60) -> str:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self.messages), timeout_s):
                raise TimeoutError(f"no email in {timeout_s}s")
            return self.messages[0]


def local_integrations_variant(
    config: dict[str, Any], workdir: Path, http_url: str, smtp_address: str, group_wait: str = "1s"
) -> dict[str, Any]:
    """Our config with its real PagerDuty, Slack and email integrations aimed at local receivers.

    Only addresses and secret-file paths change: PagerDuty's API URL (``url``) becomes
    ``http_url``/pagerduty, the Slack webhook file holds ``http_url``/slack, the SMTP relay is
    ``smtp_address`` (plain text: the local server has no TLS), the webhook goes to ``http_url``/webhook.
    Templates, routes and inhibit rules are ours, unchanged.
    """
    variant = copy.deepcopy(config)
    secrets = workdir / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "pagerduty_routing_key").write_text("test-routing-key")
    (secrets / "slack_webhook_url").write_text(f"{http_url}/slack")
    (secrets / "smtp_password").write_text("test-password")
    glob = variant["global"]
    glob["smtp_smarthost"] = smtp_address
    glob["smtp_require_tls"] = False
    glob["smtp_auth_password_file"] = str(secrets / "smtp_password")
    glob["slack_api_url_file"] = str(secrets / "slack_webhook_url")
    for receiver in variant["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd["routing_key_file"] = str(secrets / "pagerduty_routing_key")
            pd["url"] = f"{http_url}/pagerduty"
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{http_url}/webhook"
    variant["route"]["group_wait"] = group_wait
    variant["route"]["group_interval"] = group_wait
    return variant
