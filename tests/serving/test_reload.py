"""The configuration reload (serving/reload.py) and the model reload it triggers, on a served app.

A real model directory (tiny config, HMAC-signed), the real loader, a real uvicorn server. The
reload is what SIGHUP runs; here it is called on the server's own event loop with the settings
a re-read would give (the signal itself is sent to a real ``mobile-mm serve`` in
tests/integration/test_reload_e2e.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from safetensors.torch import load_file, save_file
from tests.integration.servers import wait_for
from tests.security.audit_fields import assert_guide_fields, file_lines, rows

from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig, checkpoint
from mobile_multimodal.serving.engine import default_loader
from mobile_multimodal.serving.probe import ProbeCase
from mobile_multimodal.serving.reload import ReloadOutcome
from mobile_multimodal.settings import Settings

from .conftest import LiveServer, data_uri, metric_value, served_caption

KEY = "reload-test-signing-key"


def _save_signed(directory: Path, seed: int) -> Path:
    model = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=seed)
    model.network.eval()
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.network.state_dict().items() if not k.endswith(".tok.weight")}
    manifest = {
        "name": "mobile-multimodal-llm",
        "version": f"0.0.{seed}",
        "config": model.config.to_dict(),
        "tokenizer": model.tokenizer.to_dict(),
        "quantization": {"mode": "fp32", "bits": 32},
    }
    checkpoint.save_state(directory, state, manifest)
    checkpoint.write_manifest(directory, checkpoint.read_manifest(directory), signing_key=KEY)
    return directory


def _reload(server: LiveServer, settings: Settings) -> ReloadOutcome:
    """What SIGHUP runs, on the server's loop, with ``settings`` as the re-read settings."""
    reloader = server.app.state.reloader
    reloader.settings_loader = lambda: settings
    loop = server.app.state.duties.loop
    outcome: ReloadOutcome = asyncio.run_coroutine_threadsafe(reloader.reload(), loop).result(timeout=300)
    return outcome


def _wait_for(what: str, check: Callable[[], Any], timeout_s: float = 120.0) -> Any:
    return wait_for(what, check, timeout_s, interval_s=0.05)


def test_a_reload_applies_live_settings_swaps_a_new_signed_model_and_refuses_a_tampered_one(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    model_dir = _save_signed(tmp_path / "model", seed=0)
    exporter = InMemorySpanExporter()
    server = live_server(
        loader=default_loader,
        model=str(model_dir),
        manifest_signing_key=KEY,
        integrity_check_interval_s=0.2,
        app_kwargs={"span_exporter": exporter},
    )
    settings: Settings = server.app.state.settings
    level = logging.getLogger().level
    try:
        _exercise(server, model_dir, exporter, settings)
    finally:
        logging.getLogger().setLevel(level)  # the reload set DEBUG in this (shared) process


def _exercise(
    server: LiveServer, model_dir: Path, exporter: InMemorySpanExporter, settings: Settings
) -> None:
    database = server.app.state.database
    log_dir = settings.resolved_log_dir
    with server.client() as client:
        _wait_for(
            "the first integrity check",
            lambda: metric_value(client.get("/metrics").text, "model_integrity_ok") == 1,
        )
        (load,) = rows(database, "model.load")
        assert_guide_fields(load, file_lines(log_dir, "model.load")[0])
        assert load.details["signature_verified"] is True and load.details["version"] == "0.0.0"
        before = client.get("/metrics").text
        assert served_caption(client)  # the seed-0 model answers before the swap

        # 1. settings: a live one (rate limit, log level), one that needs a restart (port)
        changed = settings.model_copy(
            update={
                "rate_limit_free_burst": 3,
                "log_level": "DEBUG",
                "port": 9999,
                "request_timeout_s": 21.0,
                "integrity_check_interval_s": 0.3,
            }
        )
        outcome = _reload(server, changed)
        assert outcome.ok and outcome.config_changed and outcome.model == "unchanged"
        assert set(outcome.applied) == {
            "rate_limit_free_burst",
            "log_level",
            "observability.logging.level",
            "request_timeout_s",
            "integrity_check_interval_s",
        }
        assert server.app.state.engine.settings.request_timeout_s == 21.0
        assert outcome.restart_required == ["port"]
        assert server.app.state.security.limiter.limits["free"].burst == 3
        assert logging.getLogger().level == logging.DEBUG
        assert server.app.state.settings.port == settings.port  # still bound where it was
        after = client.get("/metrics").text
        assert metric_value(after, "config_changes_total", source="reload") == (
            metric_value(before, "config_changes_total", source="reload") + 1
        )
        (change,) = [r for r in rows(database, "config.change") if r.details["source"] == "reload"]
        assert {"rate_limit_free_burst", "log_level", "port"} <= set(change.details["changed_fields"])
        assert_guide_fields(
            change,
            next(x for x in file_lines(log_dir, "config.change") if x["details"]["source"] == "reload"),
        )
        assert _reload(server, changed).config_changed is False  # the same again: no change

        # 2. a new, validly signed model written in place: unhealthy until the reload loads it
        _save_signed(model_dir, seed=1)
        _wait_for(
            "the integrity check to see the new files", lambda: client.get("/health").status_code == 503
        )
        expected = MobileMultiModalLLM.from_pretrained(model_dir, signing_key=KEY).generate_captions(
            [ProbeCase.default().image]
        )[0]
        answers: list[int] = []
        stop = threading.Event()

        def traffic() -> None:  # requests all through the reload: none may fail
            with server.client() as c:
                while not stop.is_set():
                    answers.append(
                        c.post("/inference", json={"image": data_uri(), "task": "captioning"}).status_code
                    )

        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            outcome = _reload(server, changed)
            _wait_for("requests after the swap", lambda: len(answers) > 3)
        finally:
            stop.set()
            thread.join(120)
        assert outcome.model == "reloaded" and outcome.ok
        assert answers and set(answers) == {200}
        assert served_caption(client) == expected
        assert server.app.state.engine.describe()["version"] == "0.0.1"
        _wait_for("/health healthy on the new files", lambda: client.get("/health").status_code == 200)
        (reload,) = rows(database, "model.reload")
        assert_guide_fields(reload, file_lines(log_dir, "model.reload")[0])
        assert (
            reload.details["previous"]["version"] == "0.0.0" and reload.details["now"]["version"] == "0.0.1"
        )
        (reload_span,) = _wait_for(  # spans are exported in batches, a moment after they end
            "the reload's model_load span",
            lambda: [
                s
                for s in exporter.get_finished_spans()
                if s.name == "model_load" and s.attributes and s.attributes.get("model.reload") is True
            ],
        )
        _wait_for(
            "its warm_up child",
            lambda: any(
                s.name == "warm_up" and s.parent and s.parent.span_id == reload_span.context.span_id
                for s in exporter.get_finished_spans()
            ),
        )
        children = sorted(
            (
                s
                for s in exporter.get_finished_spans()
                if s.parent and s.parent.span_id == reload_span.context.span_id
            ),
            key=lambda s: s.start_time or 0,
        )
        assert [s.name for s in children] == ["read", "verify", "build", "warm_up"]
        reloaded = client.get("/metrics").text
        # this server's model_type only: the registry is per process, and an earlier test in it
        # may have loaded another model under another model_type (the full suite did)
        model_type = server.app.state.engine.settings.model_type
        seconds = metric_value(
            reloaded, "model_load_duration_seconds", model_type=model_type, quantization="fp32"
        )
        assert reload_span.end_time is not None and reload_span.start_time is not None
        assert seconds >= (reload_span.end_time - reload_span.start_time) / 1e9 * 0.5
        assert seconds == pytest.approx(reload.details["load_seconds"], abs=1e-3)

        # 3. weights and manifest rewritten together (checksums agree, the signature cannot)
        weights = model_dir / "model.safetensors"
        state = load_file(str(weights))
        name = next(iter(state))
        state[name] = state[name] * -1.0
        save_file(state, str(weights))
        manifest = json.loads((model_dir / "manifest.json").read_text())
        manifest["files"][0].update(bytes=weights.stat().st_size, sha256=sha256_file(weights))
        (model_dir / "manifest.json").write_text(json.dumps(manifest))
        failures = metric_value(client.get("/metrics").text, "model_load_failures_total")
        outcome = _reload(server, changed)
        assert outcome.model == "failed" and not outcome.ok
        refused = [r for r in rows(database, "model.reload") if r.result == "failure"]
        assert len(refused) == 1 and refused[0].details["code"] == "MODEL_INTEGRITY_FAILED"
        assert "invalid signature" in refused[0].details["error"]
        assert_guide_fields(
            refused[0], next(x for x in file_lines(log_dir, "model.reload") if x["result"] == "failure")
        )
        assert metric_value(client.get("/metrics").text, "model_load_failures_total") >= failures + 1
        # the verified model in memory keeps serving; /model/health reports the files as /health does
        assert client.get("/ready").status_code == 200 and served_caption(client) == expected
        _wait_for("/health unhealthy", lambda: client.get("/health").status_code == 503)
        model_health = client.get("/model/health")
        assert model_health.status_code == 503
        body = model_health.json()
        assert body["integrity"]["status"] == "unhealthy" and body["integrity"]["signature_verified"] is True
        assert body["error"]["code"] == "MODEL_INTEGRITY_FAILED" and body["probe"]["correct"] in (True, False)


def test_an_invalid_configuration_is_refused_and_audited(live_server: Callable[..., LiveServer]) -> None:
    server = live_server()
    reloader = server.app.state.reloader

    def invalid() -> Settings:
        return Settings(max_batch_size=0)  # a validation error, as a bad settings file gives

    reloader.settings_loader = invalid
    outcome = asyncio.run_coroutine_threadsafe(reloader.reload(), server.app.state.duties.loop).result(
        timeout=60
    )
    assert not outcome.ok and "max_batch_size" in (outcome.error or "")
    (row,) = rows(server.app.state.database, "config.reload")
    assert row.result == "failure" and "max_batch_size" in row.details["error"]
    assert_guide_fields(row)
    assert server.app.state.settings.max_batch_size == 8  # nothing changed
    with server.client() as client:
        assert (
            client.get("/model/health").json()["integrity"]["status"] == "unchecked"
        )  # tiny model: no files


def test_with_a_signing_key_an_unsigned_model_does_not_load_at_start(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    model_dir = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "unsigned")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.pop("signature", None)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    server = live_server(loader=default_loader, model=str(model_dir), manifest_signing_key=KEY, ready=False)
    engine = server.app.state.engine
    _wait_for("the load to fail", lambda: engine.state == "failed")
    assert engine.error is not None and engine.error.code == "MODEL_INTEGRITY_FAILED"
    assert "is not signed" in engine.error.message
    with server.client() as client:
        assert client.get("/ready").status_code == 503
        health = client.get("/health")
        assert health.status_code == 503 and "MODEL_INTEGRITY_FAILED" in health.text
        failures = metric_value(
            client.get("/metrics").text, "model_load_failures_total", reason="MODEL_INTEGRITY_FAILED"
        )
        assert failures >= 1
    (load,) = _wait_for("the audited failure", lambda: rows(server.app.state.database, "model.load"))
    assert (load.result, load.details["code"]) == ("failure", "MODEL_INTEGRITY_FAILED")
    assert_guide_fields(load)

    # the operator signs the (trusted) model and reloads: the service comes up without a restart
    checkpoint.write_manifest(model_dir, manifest, signing_key=KEY)
    outcome = _reload(server, server.app.state.settings)
    assert outcome.model == "reloaded" and outcome.ok
    assert engine.state == "ready" and engine.error is None
    with server.client() as client:
        assert client.get("/ready").status_code == 200
        assert served_caption(client)
    (reload,) = rows(server.app.state.database, "model.reload")
    assert reload.result == "success" and reload.details["changed_fields"] == ["failed start"]


def test_a_reload_rereads_observability_yml_and_applies_its_live_values(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    config = tmp_path / "observability.yml"
    original = (Path(__file__).resolve().parents[2] / "monitoring" / "observability.yml").read_text()
    config.write_text(original)
    server = live_server(observability_config=config)
    assert server.app.state.observability.config.logging.slow_request_ms == 100
    before = rows(server.app.state.database, "config.change")

    config.write_text(original.replace("slow_request_ms: 100 ", "slow_request_ms: 250 "))
    outcome = _reload(server, server.app.state.settings)  # the settings the same; only the file changed
    assert outcome.ok and outcome.config_changed
    assert outcome.applied == ["observability.logging.slow_request_ms"] and outcome.restart_required == []
    assert server.app.state.observability.config.logging.slow_request_ms == 250
    (change,) = rows(server.app.state.database, "config.change")[len(before) :]
    assert change.details["source"] == "reload"
    assert change.details["changed_fields"] == ["observability.logging.slow_request_ms"]
    assert_guide_fields(change)
    with server.client() as client:
        assert metric_value(client.get("/metrics").text, "config_changes_total", source="reload") >= 1
