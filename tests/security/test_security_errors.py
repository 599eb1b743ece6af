"""Security refusals (security/security_errors.py) carry codes of the service's one ErrorCode list."""

from __future__ import annotations

import pytest

from mobile_multimodal.errors import STATUS, ErrorCode
from mobile_multimodal.security import SECURITY_CODES, SecurityError, keys_unchecked
from mobile_multimodal.store import DATABASE_RETRY_AFTER_S


def test_security_codes_are_service_codes_with_their_statuses() -> None:
    assert {STATUS[c] for c in SECURITY_CODES} == {401, 403, 413, 429, 503}
    refusal = SecurityError(ErrorCode.REVOKED_API_KEY, "API key k_1 was revoked")
    assert refusal.status_code == 401 and refusal.headers == {"WWW-Authenticate": "Bearer"}
    assert refusal.detail == {"code": "REVOKED_API_KEY", "message": "API key k_1 was revoked"}
    limited = SecurityError(ErrorCode.RATE_LIMITED, "slow down", headers={"Retry-After": "3"})
    assert limited.status_code == 429 and limited.headers == {"Retry-After": "3"}


def test_a_code_that_is_not_the_security_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="not a security error code"):
        SecurityError(ErrorCode.INTERNAL_ERROR, "boom")


def test_keys_that_cannot_be_checked_are_a_503_to_retry() -> None:
    refusal = keys_unchecked()
    assert refusal.status_code == 503 and refusal.code is ErrorCode.DATABASE_UNAVAILABLE
    assert refusal.headers == {"Retry-After": str(DATABASE_RETRY_AFTER_S)}  # no WWW-Authenticate
    assert isinstance(refusal.detail, dict) and "see /health" in refusal.detail["message"]
