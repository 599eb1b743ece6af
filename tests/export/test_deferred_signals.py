"""deferred_interrupts(): signals during graph capture wait for the block's end (real signals)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from mobile_multimodal.export.deferred_signals import deferred_interrupts


class Stop(Exception):
    pass


@pytest.fixture
def sigterm_raises_stop() -> Iterator[list[int]]:
    """SIGTERM raises Stop (as the CLI's handler raises KeyboardInterrupt); records each call."""
    calls: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    yield calls
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_inside_the_block_acts_when_the_block_ends(sigterm_raises_stop: list[int]) -> None:
    finished = []
    with pytest.raises(Stop), deferred_interrupts():
        signal.raise_signal(signal.SIGTERM)
        finished.append("rest of the block")  # not cut short by the signal
    assert finished == ["rest of the block"]
    assert sigterm_raises_stop == [signal.SIGTERM]
    # the handler from before is back
    with pytest.raises(Stop):
        signal.raise_signal(signal.SIGTERM)


def test_a_second_signal_stops_at_once(sigterm_raises_stop: list[int]) -> None:
    reached = []
    with pytest.raises(Stop), deferred_interrupts():
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
        reached.append("after the second signal")
    assert reached == []
    assert sigterm_raises_stop == [signal.SIGTERM]


def test_ctrl_c_becomes_keyboard_interrupt_after_the_block() -> None:
    # Python's own Ctrl-C handler, as in a terminal (a job started in the background with `&`
    # inherits SIGINT ignored, and Python then installs none)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    finished = []
    try:
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            finished.append("done")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished == ["done"]


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    finished = []
    try:
        with deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            finished.append("done")
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert finished == ["done"]


def test_without_a_signal_nothing_changes(sigterm_raises_stop: list[int]) -> None:
    before = signal.getsignal(signal.SIGINT)
    with deferred_interrupts():
        pass
    assert signal.getsignal(signal.SIGINT) is before
    assert sigterm_raises_stop == []


def test_outside_the_main_thread_the_guard_does_nothing() -> None:
    seen: list[object] = []

    def run() -> None:
        with deferred_interrupts():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]


def test_the_default_action_still_ends_the_process() -> None:
    """With no Python handler for SIGTERM, a deferred SIGTERM still terminates the process."""
    code = (
        "import os, signal\n"
        "from mobile_multimodal.export.deferred_signals import deferred_interrupts\n"
        "signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
        "with deferred_interrupts():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('block finished', flush=True)\n"
        "print('after the block', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGTERM
    assert result.stdout.splitlines() == ["block finished"]
