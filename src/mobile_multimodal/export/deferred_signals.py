"""Hold Ctrl-C and SIGTERM back while a graph is traced or converted, then act on them.

Python runs a signal handler between two bytecodes of the main thread, wherever that is. During
an export that is usually inside graph capture: the TorchScript tracer calling our modules back
from C++ (``torch.onnx.export``), torch.export's Dynamo frame hooks (ExecuTorch, Core ML), a
converter's lowering passes. A KeyboardInterrupt raised there can leave native state half-built,
and the process then dies of SIGSEGV instead of cleaning up (seen in CI: a SIGTERM while the ONNX
graphs were being written ended the export with -11 instead of EXPORT_INTERRUPTED).

``deferred_interrupts()`` records SIGINT/SIGTERM while its block runs and replays the first one
through the handler that was installed before (so Ctrl-C still becomes KeyboardInterrupt and the
CLI's SIGTERM handler still runs) as soon as the block ends. A second signal during the block means
"stop now" and goes straight to that handler, as it would without the guard. Outside the main
thread (an export called from a worker thread) signals cannot be handled there anyway, so the
guard does nothing.

Example::

    with deferred_interrupts():
        writer.write(model, graphs, quantization, tmp)   # a SIGTERM here takes effect after it
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

Handler = Callable[[int, FrameType | None], Any] | int | None


@contextmanager
def deferred_interrupts(signals: tuple[int, ...] = DEFERRED_SIGNALS) -> Iterator[None]:
    """Run the block with ``signals`` deferred to its end (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Handler] = {s: signal.getsignal(s) for s in signals}
    pending: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if pending:  # asked twice: stop now, as without the guard
            _deliver(signum, previous[signum], frame)
            return
        pending.append(signum)
        print(
            f"\n{signal.Signals(signum).name}: stopping after the current export step "
            "(send it again to stop at once)",
            file=sys.stderr,
        )

    for s in signals:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        _deliver(pending[0], previous[pending[0]], None)


def _deliver(signum: int, handler: Handler, frame: FrameType | None) -> None:
    """Act on ``signum`` as ``handler`` (the one installed before the guard) would."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        # the default action (termination) -- with the guard's handlers gone, re-sending does it
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN (or a handler installed outside Python): the signal was meant to be ignored
