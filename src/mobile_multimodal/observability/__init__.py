"""Observability inside the app: metrics, JSON logs, OpenTelemetry traces, resources, profiling.

One :class:`Observability` per app (see ``service.py``); the serving code opens the guide's
trace stages with :func:`mobile_multimodal.observability.tracing.stage` and logs through
:func:`mobile_multimodal.observability.logging.get_logger`. Every metric lives in ``metrics.py``.

``Observability`` is imported lazily, so ``from mobile_multimodal.observability import metrics``
(training, export) does not pull in FastAPI and the OpenTelemetry SDK.

Example::

    from mobile_multimodal.observability import Observability
    obs = Observability(settings)
    obs.install(app)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mobile_multimodal.observability.service import Observability

__all__ = ["Observability"]


def __getattr__(name: str) -> Any:
    if name == "Observability":
        from mobile_multimodal.observability.service import Observability

        return Observability
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
