"""Build the four Grafana dashboards of the operator's guide into dashboards/*.json.

    python monitoring/grafana/build_dashboards.py           # write the JSON files
    python monitoring/grafana/build_dashboards.py --check   # exit 1 if a file differs

The JSON files are what Grafana provisions and what is committed; this script and its modules
(panels.py, app_dashboards.py, platform_dashboards.py, export_dashboard.py) are their source,
so units, colours, thresholds and template variables stay the same on every panel. Queries use
only metric names the app exposes (src/mobile_multimodal/observability/metrics.py) or the
standard exporters (node-exporter, Prometheus, Alertmanager, the Python process collector).
Thresholds are the alert thresholds of monitoring/alerts.yml, drawn as dashed lines on graphs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app_dashboards import model_performance, overview
from export_dashboard import mobile_export
from platform_dashboards import infrastructure

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

DASHBOARDS = {
    "mobile-multimodal-overview.json": overview,
    "model-performance.json": model_performance,
    "infrastructure-monitoring.json": infrastructure,
    "mobile-export-monitoring.json": mobile_export,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build().to_json(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args()
    stale = []
    for name, text in render().items():
        path = OUT_DIR / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT_DIR.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
