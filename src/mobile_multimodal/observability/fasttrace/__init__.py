"""The fast tracing path: request-path spans and span export that cost less than the SDK's.

Everything here re-implements a part of the OpenTelemetry SDK on its internals, so it is fenced
off from the rest of ``observability``:

- ``spans.py``: :class:`FastSpan` / :class:`LeafSpan` and the :class:`SpanRecorder` that starts
  them under the configured sampler and hands them to the configured span processor;
- ``stages.py``: the stage context manager that makes a span current without the API's layers;
- ``export_process.py``: :class:`SpanExportProcess`, OTLP encoding in a child process;
- ``otel_internals.py``: the private names all of this relies on, and :func:`self_check`.

``tracing.configure_tracing`` uses it when ``tracing.fast_path`` is true (monitoring/
observability.yml, env ``MOBILE_MM_TRACING_FAST_PATH``) and the self-check passes; otherwise the
request path opens the SDK's own spans through the public API (one warning says why when the
check failed). The export process is a separate switch (``tracing.export_process``): it takes
SDK spans as well. What each costs is measured in ``benchmarks/telemetry/`` (results.md there).

Example::

    from mobile_multimodal.observability.fasttrace import self_check
    self_check()                  # [] on the pinned OpenTelemetry versions
"""

from mobile_multimodal.observability.fasttrace.otel_internals import self_check

__all__ = ["self_check"]
