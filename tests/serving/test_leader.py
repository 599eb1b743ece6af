"""Leadership among ``serve --workers N`` processes: one flock, taken over when released."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobile_multimodal.serving.leader import LOCK_NAME, MULTIPROC_ENV, WorkerLeader


def test_one_process_always_leads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    leader = WorkerLeader.for_this_process()
    assert leader.lock_path is None and leader.is_leader()


def test_only_one_worker_leads_until_it_lets_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    # Two descriptors of one file are as independent for flock() as two processes would be.
    first, second = WorkerLeader.for_this_process(), WorkerLeader.for_this_process()
    assert first.lock_path == tmp_path / LOCK_NAME
    assert first.is_leader() and first.is_leader()  # asking again keeps the lock
    assert not second.is_leader()
    assert (tmp_path / LOCK_NAME).read_text().strip().isdigit()  # the leader's pid
    first.release()  # what the kernel does when the leading worker dies
    assert second.is_leader() and not first.is_leader()
    second.release()
