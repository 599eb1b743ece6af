"""``mobile-mm serve``: run the app under uvicorn, one process or ``--workers N``.

Graceful shutdown: on SIGTERM (or Ctrl-C) uvicorn stops accepting connections, ``/ready``
turns 503 at once (so a load balancer stops routing here), in-flight requests finish (at most
``MOBILE_MM_SHUTDOWN_GRACE_S``), then the lifespan drains the batcher and flushes telemetry, and
the process exits 0 (uvicorn alone would re-raise the SIGTERM and end "killed by SIGTERM").
New connections are refused from the signal on: the listening socket closes first.

With ``--workers N`` uvicorn forks N processes of the app factory. Prometheus metrics then run in
multiprocess mode: every worker writes its samples under ``PROMETHEUS_MULTIPROC_DIR`` (default
``<data_dir>/prometheus-multiproc``, emptied at start) and ``/metrics`` on any worker answers
the sum over all of them. Torch threads are shared out: each worker gets cores // N.

What a client can make the server hold is bounded here: header size and count, header and body
read deadlines (http_limits.py, uvicorn's protocol with limits), open connections
(``MOBILE_MM_MAX_CONNECTIONS``) and keep-alive. ``X-Forwarded-For`` is believed only from
``MOBILE_MM_TRUSTED_PROXIES`` (none by default; uvicorn's own default trusts 127.0.0.1, which
would let anything on the host, or a proxy that passes the header on, choose the address the
audit trail and the anomaly rules see).

Example::

    run_server(host="127.0.0.1", port=8080, model="default", quantization="int2", workers=2)
    run_server()  # everything from MOBILE_MM_* (or the defaults)
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mobile_multimodal.settings import Settings, get_settings

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# uvicorn imports the protocol class itself (in each worker); a string keeps this module light.
HTTP_PROTOCOL = "mobile_multimodal.serving.http_limits:GuardedHttpToolsProtocol"


def resolve_serve_settings(**flags: str | int | None) -> Settings:
    """The settings ``mobile-mm serve`` runs with: flag > environment > default.

    ``flags`` are the command line's (``host``, ``port``, ``model``, ``quantization``,
    ``workers``, ``device``, ``runtime``, ``bundle``); None means not given, so the
    ``MOBILE_MM_*`` variable or the default decides. Given flags go into the environment because
    ``--workers N`` processes read their settings there. (None of these settings lives in
    ``monitoring/observability.yml``.)
    """
    for name, value in flags.items():
        if value is not None:
            os.environ[f"MOBILE_MM_{name.upper()}"] = str(value)
    get_settings.cache_clear()
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"error: invalid serve options: {problems}") from exc


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """An empty directory for the workers' metric files, exported as PROMETHEUS_MULTIPROC_DIR.

    Must happen before any worker imports prometheus_client (it reads the variable at import).
    Metric files left by a previous run would be summed into this one's counters, so they are
    removed (only those: the directory may be one the operator chose).
    """
    path = Path(os.environ.get(_MULTIPROC_ENV) or settings.data_dir / "prometheus-multiproc")
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[_MULTIPROC_ENV] = str(path)
    return path


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of ``mobile-mm serve`` (also for tests that run the app in-process)."""
    return {
        "host": settings.host,
        "port": settings.port,
        # Our middleware writes the access line with the guide's fields; uvicorn's would duplicate it.
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
        "lifespan": "on",
        # An import path, not the class: --workers N processes import it and read the limits
        # from the same environment.
        "http": HTTP_PROTOCOL,
        "h11_max_incomplete_event_size": settings.max_header_bytes,  # were h11 chosen instead
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": settings.trusted_proxies or None,
    }


def run_server(
    host: str | None = None,
    port: int | None = None,
    model: str | None = None,
    quantization: str | None = None,
    workers: int | None = None,
    device: str | None = None,
    runtime: str | None = None,
    bundle: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; returns after a graceful shutdown. An argument left None is
    taken from the environment, else the default (:func:`resolve_serve_settings`)."""
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    settings = resolve_serve_settings(
        host=host,
        port=port,
        model=model,
        quantization=quantization,
        workers=workers,
        device=device,
        runtime=runtime,
        bundle=bundle,
    )
    if settings.workers > 1:
        prepare_multiprocess_dir(settings)
        uvicorn.run(
            # the app factory; its default loader follows MOBILE_MM_RUNTIME (runtime_loader.py)
            "mobile_multimodal.serving.app:create_app_from_env",
            factory=True,
            workers=settings.workers,
            **uvicorn_options(settings),
        )
        return

    from mobile_multimodal.serving.app import create_app

    app = create_app(settings)  # its loader follows MOBILE_MM_RUNTIME: pytorch or onnxruntime

    received: list[int] = []  # the signals that stopped the server, in order

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Readiness drops the moment the signal arrives, before the drain starts.
            app.state.shutting_down = True
            received.append(sig)
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            """uvicorn's, less re-raising SIGTERM once the drain is done: a stop that drained
            cleanly exits 0, as ``--workers N``'s supervisor does (Ctrl-C still ends as SIGINT)."""
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)
            for number in reversed(received):
                if number != signal.SIGTERM:
                    signal.raise_signal(number)

    _Server(uvicorn.Config(app, **uvicorn_options(settings))).run()
