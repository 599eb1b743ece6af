"""HMAC-SHA256 signatures of manifests (a model directory's or an export bundle's ``manifest.json``).

A manifest lists every file's sha256, so the checksums catch a changed weights file; they cannot
catch someone who rewrites the weights *and* the manifest together. A signature can: it is an
HMAC-SHA256, under ``MOBILE_MM_MANIFEST_SIGNING_KEY`` (or ``MOBILE_MM_MANIFEST_SIGNING_KEY_FILE``),
of the manifest's canonical JSON (keys sorted, no whitespace) without its ``signature`` field::

    "signature": {"algorithm": "HMAC-SHA256", "key_id": "sha256:1a2b...", "value": "<64 hex>"}

``key_id`` is a short fingerprint of the key (never the key), so an operator can tell "signed with
another key" from "edited after signing". With a key configured, a manifest that is unsigned or
whose signature does not verify is refused (``MODEL_INTEGRITY_FAILED``); without one, signatures
are not checked (there is nothing to check them with) and the checksums alone hold.

It sits at the bottom of the layers (beside ``filehash``) because the model's loader, the
quantizer, the export and the service all sign or verify.

Example::

    signed = sign_manifest(manifest, key="s3cret")
    verify_manifest(signed, key="s3cret")                  # passes
    signed["files"][0]["sha256"] = "0" * 64
    verify_manifest(signed, key="s3cret")                  # raises ManifestSignatureError
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

ALGORITHM: Final = "HMAC-SHA256"
SIGNATURE_FIELD: Final = "signature"


class ManifestSignatureError(ValueError):
    """The manifest's signature is missing or does not verify under the configured key."""

    code = "MODEL_INTEGRITY_FAILED"


class _FromSettings:
    """Marker default: take the key from ``MOBILE_MM_MANIFEST_SIGNING_KEY[_FILE]``."""

    def __repr__(self) -> str:
        return "FROM_SETTINGS"


FROM_SETTINGS: Final = _FromSettings()
SigningKey = str | None | _FromSettings


def configured_key(key: SigningKey = FROM_SETTINGS) -> str | None:
    """``key`` itself, or (for :data:`FROM_SETTINGS`) the one the process's settings hold."""
    if not isinstance(key, _FromSettings):
        return key or None
    from mobile_multimodal.settings import get_settings

    return get_settings().manifest_signing_key or None


def key_id(key: str) -> str:
    """A fingerprint that names the key without revealing it."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """What is signed: the manifest without its signature, as sorted compact JSON."""
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _mac(manifest: dict[str, Any], key: str) -> str:
    return hmac.new(key.encode("utf-8"), canonical_bytes(manifest), hashlib.sha256).hexdigest()


def sign_manifest(manifest: dict[str, Any], key: str) -> dict[str, Any]:
    """A copy of ``manifest`` with its ``signature`` field (an earlier one is replaced)."""
    if not key:
        raise ValueError("an empty signing key signs nothing; set MOBILE_MM_MANIFEST_SIGNING_KEY")
    body = {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    signature = {"algorithm": ALGORITHM, "key_id": key_id(key), "value": _mac(body, key)}
    return {**body, SIGNATURE_FIELD: signature}


def maybe_sign(manifest: dict[str, Any], key: SigningKey = FROM_SETTINGS) -> dict[str, Any]:
    """Signed when a key is configured, else ``manifest`` as it is (an old signature dropped,
    since the content it vouched for may have changed)."""
    resolved = configured_key(key)
    if resolved is None:
        return {k: v for k, v in manifest.items() if k != SIGNATURE_FIELD}
    return sign_manifest(manifest, resolved)


def verify_manifest(manifest: dict[str, Any], key: SigningKey = FROM_SETTINGS, *, where: str = "") -> bool:
    """Raise :class:`ManifestSignatureError` unless the signature verifies under the configured key.

    Returns True when a signature was checked, False when no key is configured (nothing checked)."""
    resolved = configured_key(key)
    if resolved is None:
        return False
    name = f"{where} " if where else ""
    signature = manifest.get(SIGNATURE_FIELD)
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        raise ManifestSignatureError(
            f"the manifest {name}is not signed, and MOBILE_MM_MANIFEST_SIGNING_KEY is set: refusing it "
            "(sign a trusted copy with `mobile-mm manifest sign DIR`)"
        )
    if signature.get("algorithm") != ALGORITHM:
        raise ManifestSignatureError(
            f"the manifest {name}is signed with {signature.get('algorithm')!r}; only {ALGORITHM} is accepted"
        )
    if not hmac.compare_digest(signature["value"], _mac(manifest, resolved)):
        signer = signature.get("key_id")
        why = (
            f"it was signed with another key ({signer}; the configured key is {key_id(resolved)})"
            if signer != key_id(resolved)
            else "its content changed after it was signed"
        )
        raise ManifestSignatureError(f"the manifest {name}has an invalid signature: {why}")
    return True
