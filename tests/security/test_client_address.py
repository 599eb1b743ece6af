"""The audited client address (security/client_address.py): a valid IP, or a marker."""

from __future__ import annotations

import pytest

from mobile_multimodal.security import client_ip


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (("203.0.113.9", 1), "203.0.113.9"),
        (("::ffff:10.0.0.7", 1), "10.0.0.7"),
        (("2001:DB8::1", 1), "2001:db8::1"),
        (("<script>alert(1)</script>", 0), "invalid"),
        (("10.0.0.1, 10.0.0.2", 0), "invalid"),
        (("testclient", 0), "invalid"),
        (None, "unknown"),
    ],
)
def test_the_source_ip_is_an_ip_or_a_marker(client: tuple[str, int] | None, expected: str) -> None:
    assert client_ip({"client": client}) == expected
