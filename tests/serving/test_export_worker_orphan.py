"""An export worker whose server is gone ends, even when SIGTERM cannot reach its Python code.

The worker (serving/export_worker.py) turns SIGTERM into an interrupted export; but a conversion
can spend minutes in one native call, where the signal handler never runs. Here the worker's
parent exits and the worker's main thread ignores SIGTERM (what a long native call looks like to
the handler): the parent watch must still record the row as interrupted, remove the half-written
bundle directory and end the process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from tests.integration.servers import process_gone

from mobile_multimodal.store import Database
from mobile_multimodal.store.export_records import add_export, get_export

_WORKER = textwrap.dedent(
    """
    import signal, sys, threading, time
    from pathlib import Path
    from mobile_multimodal.serving import export_worker
    from mobile_multimodal.settings import Settings

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the main thread is "in a native call"
    url, data_dir, export_id, parent = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    settings = Settings(database_url=url, data_dir=Path(data_dir))
    threading.Thread(target=export_worker._watch_parent, args=(parent, export_id, settings, 1.0)).start()
    print("ready", flush=True)
    time.sleep(600)
    """
)

# The parent starts the worker, waits until its watch runs, prints its pid and exits at once.
_PARENT = textwrap.dedent(
    """
    import os, subprocess, sys
    worker = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1], *sys.argv[2:5], str(os.getpid())],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    print(worker.pid, flush=True)
    os._exit(0)
    """
)


def test_an_orphaned_worker_stuck_in_native_code_records_the_interruption_and_exits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db = Database(url)
    exports = tmp_path / "exports"
    exports.mkdir()
    record = add_export(
        db,
        platform="android",
        fmt="onnx",
        quantization="int2",
        requested_by="api:ops/k1",
        model="default",
        out_dir=str(exports / "job1"),
        status="running",
    )
    partial = exports / ".job1.tmp-x1"
    (partial / "graphs").mkdir(parents=True)
    (partial / "graphs" / "decoder.onnx").write_bytes(b"half")

    done = subprocess.run(
        [sys.executable, "-c", _PARENT, _WORKER, url, str(tmp_path), record.id],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    worker_pid = int(done.stdout.strip())

    assert process_gone(worker_pid, timeout_s=300), "the orphaned export worker is still running"
    try:
        after = get_export(db, record.id)
        assert after is not None
        assert after.status == "failed"
        assert after.error_code == "EXPORT_INTERRUPTED"
        assert "cut off" in (after.error_message or "")
        assert not partial.exists()
    finally:
        if psutil.pid_exists(worker_pid):
            psutil.Process(worker_pid).kill()
