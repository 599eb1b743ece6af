"""Issue 16, item 6: ``mobile-mm serve`` takes each setting from its flag, else its MOBILE_MM_*
variable, else the default (none of serve's settings lives in monitoring/observability.yml).

A deployment configured only by environment (containers, Kubernetes) gets what it asked for: the
last test serves the bundled model through a real ``mobile-mm serve`` given no flag at all.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
import typer.main
from tests.integration.servers import REPO, free_port, scene_png_b64

from mobile_multimodal.cli import app
from mobile_multimodal.serving.server import resolve_serve_settings
from mobile_multimodal.settings import Settings, get_settings

from .serve_process import MOBILE_MM, ServeProcess

# flag -> (a value given in the environment, another given as the flag)
CASES: dict[str, tuple[str, str]] = {
    "host": ("127.0.0.2", "127.0.0.3"),
    "port": ("18181", "18282"),
    "model": ("/models/from-env", "/models/from-flag"),
    "quantization": ("int2", "int4"),
    "workers": ("3", "2"),
    "device": ("cpu", "cuda"),
    "runtime": ("onnxruntime", "pytorch"),
    "bundle": ("/bundles/from-env", "/bundles/from-flag"),
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MOBILE_MM_* from the outer environment; whatever the tests set is undone after each."""
    for name in list(os.environ):
        if name.startswith("MOBILE_MM_"):
            monkeypatch.delenv(name)
    for flag in CASES:
        monkeypatch.delenv(f"MOBILE_MM_{flag.upper()}", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _as_text(settings: Settings, flag: str) -> str:
    return str(getattr(settings, flag))


def test_every_serve_flag_is_covered_and_defaults_to_unset() -> None:
    """A flag with a default of its own would override the environment: each must default to None."""
    command = typer.main.get_command(app)
    serve = command.commands["serve"]  # type: ignore[attr-defined]
    options = {param.name: param.default for param in serve.params}
    assert set(options) == set(CASES), "a serve flag without a precedence test (or a stale case)"
    assert all(default is None for default in options.values()), options


@pytest.mark.parametrize("flag", sorted(CASES))
def test_environment_only_is_applied(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env_value, _ = CASES[flag]
    monkeypatch.setenv(f"MOBILE_MM_{flag.upper()}", env_value)
    assert _as_text(resolve_serve_settings(**{f: None for f in CASES}), flag) == env_value


@pytest.mark.parametrize("flag", sorted(CASES))
def test_flag_wins_over_environment(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env_value, flag_value = CASES[flag]
    monkeypatch.setenv(f"MOBILE_MM_{flag.upper()}", env_value)
    given = {f: None for f in CASES} | {flag: int(flag_value) if flag in ("port", "workers") else flag_value}
    settings = resolve_serve_settings(**given)
    assert _as_text(settings, flag) == flag_value
    # and --workers N processes, which read the environment, see the flag's value too
    assert os.environ[f"MOBILE_MM_{flag.upper()}"] == flag_value


@pytest.mark.parametrize("flag", sorted(CASES))
def test_neither_gives_the_default(flag: str) -> None:
    settings = resolve_serve_settings(**{f: None for f in CASES})
    default = Settings.model_fields[flag].default
    assert getattr(settings, flag) == default
    assert f"MOBILE_MM_{flag.upper()}" not in os.environ


def _serve_exit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``mobile-mm serve`` with settings that fail validation: it stops before loading anything."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MOBILE_MM_")} | env
    return subprocess.run(
        [str(MOBILE_MM), "serve", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


# the validated settings: an invalid value, in the environment or as the flag, names itself
INVALID = {"port": "70000", "quantization": "int3", "workers": "65", "device": "tpu", "runtime": "tensorrt"}


@pytest.mark.parametrize("flag", sorted(INVALID))
def test_the_real_command_reads_the_environment_and_the_flag_over_it(flag: str) -> None:
    bad, (good, _) = INVALID[flag], CASES[flag]
    # environment only: serve validates the environment's value (it reached the settings)
    from_env = _serve_exit([], {f"MOBILE_MM_{flag.upper()}": bad})
    assert from_env.returncode != 0
    assert "invalid serve options" in from_env.stderr and flag in from_env.stderr, from_env.stderr
    # a good environment value and a bad flag: the flag is what serve validates
    from_flag = _serve_exit([f"--{flag}", bad], {f"MOBILE_MM_{flag.upper()}": good})
    assert from_flag.returncode != 0
    assert flag in from_flag.stderr, from_flag.stderr


@pytest.mark.slow
def test_a_deployment_configured_only_by_environment_gets_what_it_asked_for(tmp_path: Path) -> None:
    """The issue's reproduction: ``MOBILE_MM_QUANTIZATION=int2 mobile-mm serve`` served fp32."""
    port = free_port()
    env = {
        "MOBILE_MM_HOST": "127.0.0.1",
        "MOBILE_MM_PORT": str(port),
        "MOBILE_MM_MODEL": "default",
        "MOBILE_MM_QUANTIZATION": "int2",
        "MOBILE_MM_DEVICE": "cpu",
    }
    with ServeProcess(tmp_path, env=env) as server:
        assert "--port" not in server.args and "--host" not in server.args  # no flag at all
        assert server.url.endswith(f":{port}")
        answer = httpx.post(
            server.url + "/inference", json={"image": scene_png_b64(), "task": "captioning"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"]["quantization"] == "int2"
        metrics = httpx.get(server.url + "/metrics", timeout=60).text
        assert 'quantization="int2"' in metrics
