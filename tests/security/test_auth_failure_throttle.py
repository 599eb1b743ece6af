"""The failed-authentication audit throttle (security/auth_failure_throttle.py) on its own clock;
through a real app, a bad-key flood is tested in test_hardening_auth.py."""

from __future__ import annotations

from mobile_multimodal.security import FailureAuditThrottle


def test_a_window_closes_into_one_summary() -> None:
    now = [0.0]
    throttle = FailureAuditThrottle(limit=2, window_s=60, clock=lambda: now[0])
    admitted = [throttle.admit("192.0.2.1", "invalid", "POST /inference")[0] for _ in range(5)]
    assert admitted == [True, True, False, False, False]
    assert throttle.closed_windows() == []  # still open
    now[0] = 61.0
    admit, closed = throttle.admit("192.0.2.1", "missing", "POST /inference")
    assert admit is True  # a new window
    assert closed is not None and closed.count == 3 and closed.reasons == {"invalid": 3}
    now[0] = 200.0
    assert throttle.closed_windows() == []  # the new window suppressed nothing


def test_the_throttle_stays_bounded_under_many_sources() -> None:
    throttle = FailureAuditThrottle(limit=1, window_s=60, max_sources=4, clock=lambda: 0.0)
    admitted = [throttle.admit(f"2001:db8::{i:x}", "invalid", "r")[0] for i in range(100)]
    # four sources tracked, the other 96 share one entry with one audited failure
    assert sum(admitted) == 5
    summaries = throttle.closed_windows(final=True)
    assert sum(s.count for s in summaries) == 95
