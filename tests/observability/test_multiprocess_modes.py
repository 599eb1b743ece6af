"""Every gauge says how ``--workers N`` combines it (PROMETHEUS_MULTIPROC_DIR).

prometheus_client's default mode, ``all``, exports one series per worker with a ``pid`` label:
dashboards and alerts would then see N values for one pod, and dead workers' series forever.
Counters and histograms need no mode (their samples add up; tests/serving/test_server_process.py
checks the sum over real workers).
"""

from __future__ import annotations

from prometheus_client import Gauge

from mobile_multimodal.observability import metrics

# How N workers' values combine into the pod's: sum of the live ones (amounts each worker holds),
# max/min (one shared fact every worker may report, e.g. a timestamp or the model's size), or the
# newest live report (a verdict that changes over time).
SENSIBLE = {"livesum", "max", "min", "livemostrecent", "mostrecent"}
# Amounts each worker holds separately: the pod's value is their sum.
PER_WORKER_AMOUNTS = {"inference_queue_depth", "process_cpu_usage_percent", "process_memory_usage_bytes"}


def _gauges() -> dict[str, Gauge]:
    return {g._name: g for g in vars(metrics).values() if isinstance(g, Gauge)}


def test_every_gauge_has_a_multiprocess_mode_without_a_pid_label() -> None:
    gauges = _gauges()
    assert len(gauges) >= 20
    wrong = {name: g._multiprocess_mode for name, g in gauges.items() if g._multiprocess_mode not in SENSIBLE}
    assert not wrong, wrong


def test_amounts_held_per_worker_are_summed() -> None:
    gauges = _gauges()
    assert {name: gauges[name]._multiprocess_mode for name in PER_WORKER_AMOUNTS} == dict.fromkeys(
        PER_WORKER_AMOUNTS, "livesum"
    )
