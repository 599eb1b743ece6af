"""Sign and verify the manifest of an existing directory: a model, a quantized variant or an export bundle.

``mobile-mm quantize`` and ``mobile-mm export`` sign what they write when
``MOBILE_MM_MANIFEST_SIGNING_KEY`` is set; models written before the key existed (the bundled one
among them) are signed with ``mobile-mm manifest sign DIR``. Signing vouches for the files, so it
first re-hashes every file the manifest lists and refuses when one differs: a tampered directory
is never blessed. Re-signing with another key (a key rotation) is allowed on the same condition.

Example::

    signed = sign_directory(Path("runs/default"), key="s3cret")      # -> ManifestReport
    report = verify_directory(Path("runs/default"), key="s3cret")
    report.ok, report.problems
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobile_multimodal.manifest_signing import (
    SIGNATURE_FIELD,
    ManifestSignatureError,
    key_id,
    sign_manifest,
    verify_manifest,
)
from mobile_multimodal.model.checkpoint import MANIFEST, verify_files
from mobile_multimodal.model.model_errors import ModelLoadError


class ManifestError(ValueError):
    """The directory has no readable manifest, or its files differ from it."""


@dataclass
class ManifestReport:
    directory: str
    ok: bool
    signed: bool  # the manifest carries a signature (now)
    key_id: str | None
    files: int
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        head = f"{self.directory}: {'ok' if self.ok else 'FAILED'} ({self.files} files"
        head += f", signed by {self.key_id})" if self.signed else ", unsigned)"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def resolve_directory(path: str, quantization: str = "fp32") -> Path:
    """A directory, or "default" (the bundled model; ``quantization`` picks a bundled variant)."""
    if path == "default" or quantization != "fp32":
        from mobile_multimodal.model.llm import resolve_model_dir  # torch: only when it is needed

        try:
            return resolve_model_dir(path, quantization)
        except ModelLoadError as exc:
            raise ManifestError(str(exc)) from exc
    if not Path(path).is_dir():
        raise ManifestError(f"{path} is not a directory")
    return Path(path)


def read_manifest_file(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"no {MANIFEST} in {directory}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or not manifest["files"]:
        raise ManifestError(f"{path} lists no files: there is nothing to vouch for")
    return manifest


def _file_problems(directory: Path, manifest: dict[str, Any]) -> list[str]:
    try:
        bad = verify_files(directory, manifest)
    except (KeyError, TypeError) as exc:
        return [f"the manifest's files section is malformed: {exc}"]
    return [f"{name}: size or sha256 differs from the manifest" for name in bad]


def verify_directory(directory: Path, key: str | None) -> ManifestReport:
    """Checksums of every listed file, and the signature when ``key`` is given."""
    manifest = read_manifest_file(directory)
    problems = _file_problems(directory, manifest)
    signature = manifest.get(SIGNATURE_FIELD)
    if key:
        try:
            verify_manifest(manifest, key)
        except ManifestSignatureError as exc:
            problems.append(str(exc))
    return ManifestReport(
        directory=str(directory),
        ok=not problems,
        signed=isinstance(signature, dict),
        key_id=signature.get("key_id") if isinstance(signature, dict) else None,
        files=len(manifest["files"]),
        problems=problems,
    )


def sign_directory(directory: Path, key: str) -> ManifestReport:
    """Sign ``directory/manifest.json`` in place (atomically), after checking every file against it."""
    if not key:
        raise ManifestError("no signing key: set MOBILE_MM_MANIFEST_SIGNING_KEY (or its _FILE form)")
    manifest = read_manifest_file(directory)
    problems = _file_problems(directory, manifest)
    if problems:
        raise ManifestError(
            f"refusing to sign {directory}: its files do not match the manifest ("
            + "; ".join(problems)
            + "). Restore them from a trusted copy first."
        )
    signed = sign_manifest(manifest, key)
    path = directory / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.signing")
    tmp.write_text(json.dumps(signed, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # a reader sees the old manifest or the new one, never half of one
    return ManifestReport(str(directory), True, True, key_id(key), len(manifest["files"]))


def sign_command(path: str, quantization: str) -> str:
    """``mobile-mm manifest sign``: the key from the settings; raises ManifestError."""
    from mobile_multimodal.settings import get_settings

    key = get_settings().manifest_signing_key
    if not key:
        raise ManifestError("no signing key: set MOBILE_MM_MANIFEST_SIGNING_KEY (or its _FILE form)")
    return sign_directory(resolve_directory(path, quantization), key).text()


def verify_command(path: str, quantization: str, as_json: bool) -> tuple[str, bool]:
    """``mobile-mm manifest verify``: checksums, and the signature when a key is configured."""
    from mobile_multimodal.settings import get_settings

    report = verify_directory(resolve_directory(path, quantization), get_settings().manifest_signing_key)
    return (json.dumps(report.to_dict(), indent=2) if as_json else report.text()), report.ok
