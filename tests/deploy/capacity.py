"""docs/deploy.md's capacity section comes from the committed serving benchmark: the rendering
lives beside the benchmark (benchmarks/serving/capacity.py), which rewrites the section when it
writes new results; the tests read the same functions.

Example::

    rows = capacity_rows()
    print(render_table(rows))
"""

from __future__ import annotations

from benchmarks.serving.capacity import (
    P95_TARGET_MS,
    CapacityRow,
    capacity_rows,
    render_section,
    render_table,
    request_rate_threshold,
    results,
    served_arm,
)

__all__ = [
    "P95_TARGET_MS",
    "CapacityRow",
    "capacity_rows",
    "render_section",
    "render_table",
    "request_rate_threshold",
    "results",
    "served_arm",
]
