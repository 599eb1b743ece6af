"""Signed manifests: HMAC-SHA256 under MOBILE_MM_MANIFEST_SIGNING_KEY (manifest_signing.py).

The point of a signature: the checksums alone cannot catch someone who rewrites the weights and
``manifest.json`` together; with a signing key configured, the loader refuses that directory.
Real model directories (tiny config), real files, the real CLI.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mobile_multimodal.cli import app as cli
from mobile_multimodal.export.bundle import manifest as export_manifest
from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.manifest_signing import (
    ManifestSignatureError,
    key_id,
    sign_manifest,
    verify_manifest,
)
from mobile_multimodal.model import MobileMultiModalLLM, ModelConfig
from mobile_multimodal.model.model_errors import ModelLoadError
from mobile_multimodal.security.manifest_commands import verify_directory
from mobile_multimodal.settings import get_settings

KEY = "test-signing-key-0123456789"


@pytest.fixture
def signing_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MOBILE_MM_MANIFEST_SIGNING_KEY set for this test (the settings re-read)."""
    monkeypatch.setenv("MOBILE_MM_MANIFEST_SIGNING_KEY", KEY)
    get_settings.cache_clear()
    yield KEY
    monkeypatch.delenv("MOBILE_MM_MANIFEST_SIGNING_KEY")
    get_settings.cache_clear()


@pytest.fixture
def no_signing_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MOBILE_MM_MANIFEST_SIGNING_KEY", raising=False)
    monkeypatch.delenv("MOBILE_MM_MANIFEST_SIGNING_KEY_FILE", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _save(directory: Path) -> Path:
    return MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(directory)


def _manifest(directory: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((directory / "manifest.json").read_text())
    return data


def _rewrite_weights_and_manifest(directory: Path) -> None:
    """The attack checksums cannot see: new weights, and a manifest whose sha256 matches them."""
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1.0
    save_file(state, str(weights))
    manifest = _manifest(directory)
    files = manifest["files"]
    assert isinstance(files, list)
    for entry in files:
        if entry["path"] == "model.safetensors":
            entry["bytes"] = weights.stat().st_size
            entry["sha256"] = sha256_file(weights)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_a_signature_covers_every_field_and_names_its_key() -> None:
    manifest = {"files": [{"path": "a", "bytes": 1, "sha256": "0" * 64}], "config": {"dim": 48}}
    signed = sign_manifest(manifest, KEY)
    assert signed["signature"]["algorithm"] == "HMAC-SHA256"
    assert signed["signature"]["key_id"] == key_id(KEY) and KEY not in json.dumps(signed)
    assert verify_manifest(signed, KEY) is True
    # key order and re-serialisation do not matter: the signed form is canonical JSON
    assert verify_manifest(json.loads(json.dumps(dict(reversed(list(signed.items()))))), KEY)

    edited = json.loads(json.dumps(signed))
    edited["config"]["dim"] = 64
    with pytest.raises(ManifestSignatureError, match="content changed after it was signed"):
        verify_manifest(edited, KEY)
    with pytest.raises(ManifestSignatureError, match="signed with another key"):
        verify_manifest(signed, "another key")
    with pytest.raises(ManifestSignatureError, match="not signed"):
        verify_manifest(manifest, KEY)
    assert verify_manifest(manifest, None) is False  # no key: nothing to verify with


def test_weights_and_manifest_rewritten_together_are_refused_with_a_key(
    tmp_path: Path, signing_key: str
) -> None:
    directory = _save(tmp_path / "model")  # signed on write: the key is configured
    assert _manifest(directory)["signature"]["key_id"] == key_id(signing_key)  # type: ignore[index]
    MobileMultiModalLLM.from_pretrained(directory)  # the untouched, signed model loads

    _rewrite_weights_and_manifest(directory)
    # the checksums agree with the files, so only the signature can tell
    assert verify_directory(directory, None).ok
    with pytest.raises(ModelLoadError, match="invalid signature: its content changed") as refused:
        MobileMultiModalLLM.from_pretrained(directory)
    assert refused.value.code == "MODEL_INTEGRITY_FAILED"
    # without a key the same directory loads: that is what the checksums alone can catch
    MobileMultiModalLLM.from_pretrained(directory, signing_key=None)


def test_an_unsigned_manifest_is_refused_once_a_key_is_configured(tmp_path: Path) -> None:
    directory = MobileMultiModalLLM.from_config(ModelConfig.tiny(), seed=0).save(tmp_path / "m")
    unsigned = _manifest(directory)
    unsigned.pop("signature", None)
    (directory / "manifest.json").write_text(json.dumps(unsigned))
    with pytest.raises(ModelLoadError, match="is not signed") as refused:
        MobileMultiModalLLM.from_pretrained(directory, signing_key=KEY)
    assert refused.value.code == "MODEL_INTEGRITY_FAILED"
    with pytest.raises(ModelLoadError, match="signed with another key"):
        (directory / "manifest.json").write_text(json.dumps(sign_manifest(unsigned, "old key")))
        MobileMultiModalLLM.from_pretrained(directory, signing_key=KEY)


def test_manifest_sign_and_verify_commands(tmp_path: Path, no_signing_key: None) -> None:
    directory = _save(tmp_path / "model")
    assert "signature" not in _manifest(directory)
    runner = CliRunner()
    env = {"MOBILE_MM_MANIFEST_SIGNING_KEY": KEY}

    no_key = runner.invoke(cli, ["manifest", "sign", str(directory)])
    assert no_key.exit_code == 1 and "no signing key" in no_key.output

    get_settings.cache_clear()
    signed = runner.invoke(cli, ["manifest", "sign", str(directory)], env=env)
    get_settings.cache_clear()
    assert signed.exit_code == 0, signed.output
    assert f"signed by {key_id(KEY)}" in signed.output
    MobileMultiModalLLM.from_pretrained(directory, signing_key=KEY)

    verified = runner.invoke(cli, ["manifest", "verify", str(directory), "--json"], env=env)
    get_settings.cache_clear()
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.output)
    assert report["ok"] and report["signed"] and report["key_id"] == key_id(KEY) and report["files"] == 1

    _rewrite_weights_and_manifest(directory)  # (drops nothing: the old signature stays, now wrong)
    bad = runner.invoke(cli, ["manifest", "verify", str(directory)], env=env)
    get_settings.cache_clear()
    assert bad.exit_code == 1 and "FAILED" in bad.output and "invalid signature" in bad.output

    # signing vouches for the files: a directory whose files differ from its manifest is refused
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    refused = runner.invoke(cli, ["manifest", "sign", str(directory)], env=env)
    get_settings.cache_clear()
    assert refused.exit_code == 1 and "refusing to sign" in refused.output


def test_export_manifests_are_signed_when_a_key_is_set(tmp_path: Path, signing_key: str) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"graph bytes")
    written = export_manifest(
        bundle,
        [bundle / "model.onnx"],
        platform="android",
        fmt="onnx",
        quantization="int8",
        duration_s=1.0,
        validation={"executed": True, "runtime": "onnxruntime", "max_abs_diff": 0.0, "tasks": {}},
    )
    assert verify_manifest(written, signing_key)
    (bundle / "manifest.json").write_text(json.dumps(written))
    assert verify_directory(bundle, signing_key).ok

    written["quantization"] = "fp32"  # a relabelled bundle
    (bundle / "manifest.json").write_text(json.dumps(written))
    report = verify_directory(bundle, signing_key)
    assert not report.ok and "invalid signature" in report.problems[0]


def test_the_key_can_come_from_a_secret_file(tmp_path: Path) -> None:
    from mobile_multimodal.settings import Settings

    secret = tmp_path / "signing_key"
    secret.write_text(KEY + "\n")
    settings = Settings(manifest_signing_key_file=secret)
    assert settings.manifest_signing_key == KEY
    assert KEY not in repr(settings)
    secret.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        Settings(manifest_signing_key_file=secret)
