"""The child process of a ``POST /export`` job: ``python -m mobile_multimodal.serving.export_worker ID``.

It runs the queued row ``ID`` of ``export_records`` exactly as ``mobile-mm export`` would run an
export (store/recorded_export.py: recorded, pushed, traced, logged), at a lower CPU priority and
with few torch threads so the server's requests go first. SIGTERM (the job's timeout) and the
death of the server that started it both end the export as interrupted: recorded as failed, its
temporary directory removed by the pipeline, nothing half-written left in place.

Exit status: 0 succeeded, 1 failed (the outcome is in the row either way), 2 the row could not
be run at all (unknown id, database unavailable): the parent records that.

Example::

    subprocess.run([sys.executable, "-m", "mobile_multimodal.serving.export_worker", export_id], env=env)
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from mobile_multimodal.errors import ExportError, ExportErrorCode
from mobile_multimodal.observability.process_telemetry import process_telemetry
from mobile_multimodal.settings import Settings, get_settings
from mobile_multimodal.store import Database
from mobile_multimodal.store.database import DatabaseError
from mobile_multimodal.store.export_records import finish_export, get_export
from mobile_multimodal.store.recorded_export import run_recorded_export

_PARENT_POLL_S = 1.0
_ORPHAN_GRACE_S = 20.0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _watch_parent(parent: int, export_id: str, settings: Settings, grace_s: float = _ORPHAN_GRACE_S) -> None:
    """Orphaned (the server died): stop as if told to, so the row says interrupted.

    SIGTERM becomes a KeyboardInterrupt only when the main thread next runs Python; a conversion
    can sit in one native call (a lowering pass, a compiler) for minutes. So if the process is
    still here ``grace_s`` later, this thread records the row itself, removes the pipeline's
    temporary directories and exits: an export without its server must not run on, unwatched.
    """
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    _cut_off(export_id, settings)
    os._exit(1)


def _cut_off(export_id: str, settings: Settings) -> None:
    """Fail the row as interrupted and remove half-written bundles (best effort: we are exiting)."""
    try:
        db = Database(settings.resolved_database_url)
        record = get_export(db, export_id)
        if record is None:
            return
        finish_export(
            db,
            export_id,
            duration_s=None,
            error_code=str(ExportErrorCode.EXPORT_INTERRUPTED),
            error_message="the server that started this export stopped; the export was cut off",
        )
        out = Path(record.out_dir)
        for partial in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(partial, ignore_errors=True)
    except Exception as exc:  # nothing may keep an orphan alive
        print(f"export {export_id}: could not record the interruption: {exc}", file=sys.stderr)


def _limit_resources(settings: Settings) -> None:
    import torch

    os.nice(settings.export_nice)
    torch.set_num_threads(settings.export_threads)


def run(export_id: str, settings: Settings) -> int:
    try:
        db = Database(settings.resolved_database_url)
    except DatabaseError as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 2
    record = get_export(db, export_id)
    if record is None:
        print(f"no export {export_id} in {db.safe_url}", file=sys.stderr)
        return 2
    with process_telemetry(settings, traceparent=os.environ.get("TRACEPARENT")):
        try:
            run_recorded_export(
                db,
                platform=record.platform,
                fmt=record.format,
                quantization=record.quantization,
                model=record.model,
                out=Path(record.out_dir),
                requested_by=record.requested_by,
                export_id=export_id,
                pushgateway_url=settings.pushgateway_url,
                push_timeout_s=settings.pushgateway_timeout_s,
            )
        except (ExportError, KeyboardInterrupt) as exc:
            print(f"export {export_id} failed: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mobile_multimodal.serving.export_worker EXPORT_ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    settings = get_settings()
    threading.Thread(target=_watch_parent, args=(os.getppid(), args[0], settings), daemon=True).start()
    _limit_resources(settings)
    return run(args[0], settings)


if __name__ == "__main__":
    sys.exit(main())
