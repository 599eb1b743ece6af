"""Saving and loading a model directory: model.safetensors + manifest.json.

The manifest carries the architecture config, the tokenizer, the data version, the sha256 of
every file, the eval report and the quantization section (mode, bits, group size, per-layer
precision). Nothing is inferred from file names. With ``MOBILE_MM_MANIFEST_SIGNING_KEY`` set the
manifest is also HMAC-signed on write and its signature checked on load (``manifest_signing``),
so weights and manifest rewritten together are refused too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mobile_multimodal.filehash import sha256_file
from mobile_multimodal.manifest_signing import (
    FROM_SETTINGS,
    ManifestSignatureError,
    SigningKey,
    maybe_sign,
    verify_manifest,
)
from mobile_multimodal.model.model_errors import ModelLoadError

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def file_entry(directory: Path, name: str) -> dict[str, Any]:
    p = directory / name
    return {"path": name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def write_manifest(
    directory: Path, manifest: dict[str, Any], signing_key: SigningKey = FROM_SETTINGS
) -> dict[str, Any]:
    """Write ``manifest.json``, HMAC-signed when a signing key is configured; returns what was written."""
    manifest = maybe_sign(manifest, signing_key)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def save_state(
    directory: Path,
    state: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    extra_files: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write weights, then a manifest listing them with their hashes. Returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage (the tied embedding): save contiguous copies
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(directory / WEIGHTS))
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "files": [file_entry(directory, WEIGHTS), *(file_entry(directory, n) for n in extra_files)],
    }
    return write_manifest(directory, manifest)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.exists():
        raise ModelLoadError(f"no {MANIFEST} in {directory}", code="MODEL_NOT_FOUND")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}", code="MODEL_MANIFEST_INVALID") from e
    for key in ("config", "tokenizer", "files"):
        if key not in manifest:
            raise ModelLoadError(f"{path} lacks the {key!r} section", code="MODEL_MANIFEST_INVALID")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Names of files whose size or sha256 differ from the manifest (missing files included)."""
    bad = []
    for entry in manifest["files"]:
        p = directory / entry["path"]
        if not p.exists() or p.stat().st_size != entry["bytes"] or sha256_file(p) != entry["sha256"]:
            bad.append(entry["path"])
    return bad


def check_files(
    directory: Path, manifest: dict[str, Any], signing_key: SigningKey = FROM_SETTINGS, what: str = "model"
) -> None:
    """Raise MODEL_INTEGRITY_FAILED unless the manifest's signature verifies (when a signing key
    is configured) and every file matches the manifest; ``what`` names the files in the error
    (a model's, an export bundle's)."""
    try:
        verify_manifest(manifest, signing_key, where=f"in {directory}")
    except ManifestSignatureError as e:
        raise ModelLoadError(str(e), code="MODEL_INTEGRITY_FAILED") from e
    bad = verify_files(directory, manifest)
    if bad:
        raise ModelLoadError(
            f"{what} files differ from their manifest checksums: {', '.join(bad)} (tampered or corrupt)",
            code="MODEL_INTEGRITY_FAILED",
        )


def load_state(directory: Path, manifest: dict[str, Any], verify: bool = True) -> dict[str, torch.Tensor]:
    if verify:
        check_files(directory, manifest)
    try:
        return load_file(str(directory / WEIGHTS))
    except Exception as e:  # safetensors raises several types for a corrupt file
        raise ModelLoadError(f"cannot read {directory / WEIGHTS}: {e}", code="MODEL_WEIGHTS_INVALID") from e
