"""Building blocks of the dashboards: data sources, selectors, colours, thresholds, panels.

Used by app_dashboards.py and platform_dashboards.py; build_dashboards.py writes the JSON.
Every panel helper fills in the same defaults, so units, colours and alert thresholds (drawn as
dashed lines) are the same on every dashboard.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 41  # Grafana 12.3's dashboard schema version
PROM = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
GRAFANA = {"type": "grafana", "uid": "-- Grafana --"}

# Selectors shared by every panel: the three template variables.
APP = 'job="mobile-multimodal-llm", environment=~"$environment", instance=~"$instance"'
MODEL = APP + ', model_type=~"$model_type"'
NODE = 'job="node", environment=~"$environment"'
LOGS = '{service="mobile-multimodal-llm"}'

# The same thing has the same colour on every dashboard.
COLOURS = {
    # tasks
    "captioning": "blue",
    "ocr": "purple",
    "vqa": "green",
    "retrieval": "yellow",
    # outcomes
    "success": "green",
    "error": "red",
    "rejected": "orange",
    "timeout": "dark-red",
    # platforms
    "android": "green",
    "ios": "blue",
    # quantization
    "fp32": "blue",
    "int8": "green",
    "int4": "orange",
    "int2": "purple",
    # percentiles
    "p50": "green",
    "p95": "orange",
    "p99": "red",
}


def thresholds(*steps: tuple[float, str], base: str = "green") -> dict[str, Any]:
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}]
        + [{"color": colour, "value": value} for value, colour in steps],
    }


LATENCY = thresholds((0.1, "orange"), (1.0, "red"))  # HighInferenceLatency / Critical
ERROR_RATIO = thresholds((0.1, "orange"), (0.5, "red"))  # HighErrorRate / Critical
CPU = thresholds((70, "orange"), (90, "red"))  # target 70, alert 90
MEMORY = thresholds((80, "orange"), (95, "red"))  # warning 80, critical 95
DISK_USED = thresholds((80, "orange"), (90, "red"))  # LowDiskSpace / DiskUsageCritical
DISK_FREE = thresholds((10, "orange"), (20, "green"), base="red")
QUANT_LOSS = thresholds((0.05, "red"))  # QuantizationAccuracyLoss
LOAD_TIME = thresholds((10, "orange"), (30, "red"))  # target 10 s, alert 30 s
EXPORT_TIME = thresholds((60, "orange"), (300, "red"))  # target 1 min, alert 5 min
BACKUP_AGE = thresholds((26 * 3600, "red"))  # BackupStale
DB_QUERY = thresholds((0.5, "red"))  # SlowDatabaseQueries
NONE = thresholds()


# Histograms whose observations carry a trace_id exemplar (the app records one per sampled
# request). A graph over them asks Prometheus for the exemplars too: Grafana draws them as points
# that open the trace in Jaeger (the Prometheus data source's exemplarTraceIdDestinations).
EXEMPLAR_HISTOGRAMS = ("model_inference_duration_seconds_bucket", "http_request_duration_seconds_bucket")


def target(
    expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False, fmt: str = "time_series"
) -> dict[str, Any]:
    query = {
        "refId": ref,
        "datasource": PROM,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "format": fmt,
        "editorMode": "code",
    }
    if not instant and any(name in expr for name in EXEMPLAR_HISTOGRAMS):
        query["exemplar"] = True
    return query


def log_target(expr: str) -> dict[str, Any]:
    return {"refId": "A", "datasource": LOKI, "expr": expr, "queryType": "range", "editorMode": "code"}


def colour_overrides(names: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": COLOURS[name]}}],
        }
        for name in names
    ]


class Dashboard:
    """Accumulates panels on a 24-column grid, left to right, top to bottom."""

    def __init__(self, uid: str, title: str, description: str, tags: list[str]) -> None:
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels: list[dict[str, Any]] = []
        self._x = self._y = self._row_h = 0

    def _place(self, w: int, h: int) -> dict[str, int]:
        if self._x + w > 24:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        pos = {"x": self._x, "y": self._y, "w": w, "h": h}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        self.panels.append(
            {
                "type": "row",
                "id": len(self.panels) + 1,
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"x": 0, "y": self._y, "w": 24, "h": 1},
            }
        )
        self._y += 1

    def _panel(
        self,
        kind: str,
        title: str,
        description: str,
        w: int,
        h: int,
        targets: list[dict[str, Any]],
        options: dict[str, Any],
        defaults: dict[str, Any],
        overrides: list[dict[str, Any]],
        datasource: dict[str, str] = PROM,
    ) -> None:
        self.panels.append(
            {
                "type": kind,
                "id": len(self.panels) + 1,
                "title": title,
                "description": description,
                "datasource": datasource,
                "gridPos": self._place(w, h),
                "targets": targets,
                "options": options,
                "fieldConfig": {"defaults": defaults, "overrides": overrides},
            }
        )

    def timeseries(
        self,
        title: str,
        description: str,
        targets: list[dict[str, Any]],
        unit: str,
        steps: dict[str, Any] = NONE,
        colours: list[str] | None = None,
        w: int = 12,
        h: int = 8,
        stack: bool = False,
    ) -> None:
        custom = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "axisSoftMin": 0,
            # Alert boundaries as dashed lines (the guide's "alert annotations").
            "thresholdsStyle": {"mode": "dashed" if steps is not NONE else "off"},
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        }
        defaults = {"unit": unit, "color": {"mode": "palette-classic"}, "thresholds": steps, "custom": custom}
        options = {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        self._panel(
            "timeseries",
            title,
            description,
            w,
            h,
            targets,
            options,
            defaults,
            colour_overrides(colours or []),
        )

    def stat(
        self,
        title: str,
        description: str,
        targets: list[dict[str, Any]],
        unit: str,
        steps: dict[str, Any] = NONE,
        mappings: list[dict[str, Any]] | None = None,
        w: int = 4,
        h: int = 4,
    ) -> None:
        defaults = {
            "unit": unit,
            "color": {"mode": "thresholds"},
            "thresholds": steps,
            "mappings": mappings or [],
        }
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "auto",
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
            "wideLayout": True,
        }
        self._panel("stat", title, description, w, h, targets, options, defaults, [])

    def bargauge(
        self,
        title: str,
        description: str,
        targets: list[dict[str, Any]],
        unit: str,
        steps: dict[str, Any],
        w: int = 12,
        h: int = 8,
    ) -> None:
        defaults = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": steps, "min": 0}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "valueMode": "color",
            "namePlacement": "auto",
            "showUnfilled": True,
            "sizing": "auto",
            "minVizWidth": 8,
            "minVizHeight": 16,
            "maxVizHeight": 300,
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom", "calcs": []},
        }
        self._panel("bargauge", title, description, w, h, targets, options, defaults, [])

    def table(
        self,
        title: str,
        description: str,
        targets: list[dict[str, Any]],
        unit: str = "short",
        w: int = 12,
        h: int = 8,
    ) -> None:
        custom = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False}
        defaults = {"unit": unit, "color": {"mode": "thresholds"}, "thresholds": NONE, "custom": custom}
        options = {"showHeader": True, "cellHeight": "sm", "frameIndex": 0}
        self._panel("table", title, description, w, h, targets, options, defaults, [])

    def logs(self, title: str, description: str, expr: str, w: int = 24, h: int = 10) -> None:
        options = {
            "showTime": True,
            "showLabels": False,
            "showCommonLabels": False,
            "wrapLogMessage": True,
            "prettifyLogMessage": False,
            "enableLogDetails": True,
            "dedupStrategy": "none",
            "sortOrder": "Descending",
            "showLogContextToggle": True,
        }
        self._panel("logs", title, description, w, h, [log_target(expr)], options, {}, [], datasource=LOKI)

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": self.tags,
            "editable": True,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "time": {"from": "now-6h", "to": "now"},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "version": 1,
            "weekStart": "",
            "links": [
                {
                    "title": "Mobile Multi-Modal",
                    "type": "dashboards",
                    "tags": ["mobile-multimodal-llm"],
                    "asDropdown": True,
                    "includeVars": True,
                    "keepTime": True,
                    "icon": "external link",
                    "targetBlank": False,
                    "tooltip": "",
                    "url": "",
                }
            ],
            "annotations": {"list": ANNOTATIONS},
            "templating": {"list": VARIABLES},
            "panels": self.panels,
        }


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM,
        "query": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


VARIABLES = [
    variable("environment", "Environment", 'label_values(up{job="mobile-multimodal-llm"}, environment)'),
    variable(
        "model_type",
        "Model type",
        'label_values(model_inference_requests_total{job="mobile-multimodal-llm", '
        'environment=~"$environment"}, model_type)',
    ),
    variable(
        "instance",
        "Instance",
        'label_values(up{job="mobile-multimodal-llm", environment=~"$environment"}, instance)',
    ),
]

ANNOTATIONS = [
    {
        "name": "Annotations & Alerts",
        "builtIn": 1,
        "datasource": GRAFANA,
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "type": "dashboard",
    },
    {
        "name": "Critical and warning alerts firing",
        "datasource": PROM,
        "enable": True,
        "iconColor": "red",
        "target": target(
            'ALERTS{alertstate="firing", service="mobile-multimodal-llm", severity=~"critical|warning"}',
            legend="{{alertname}}",
            ref="Anno",
        ),
    },
    {
        "name": "App restarts",
        "datasource": PROM,
        "enable": True,
        "iconColor": "blue",
        "target": target(
            f"changes(process_start_time_seconds{{{APP}}}[2m]) > 0", legend="{{instance}}", ref="Anno"
        ),
    },
]

NOT_SUCCESS = f'sum(rate(model_inference_requests_total{{{MODEL}, status!="success"}}[5m]))'
ALL_REQUESTS = f"sum(rate(model_inference_requests_total{{{MODEL}}}[5m]))"
ERROR_RATIO_EXPR = f"({NOT_SUCCESS} or vector(0)) / {ALL_REQUESTS}"
UP_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    }
]


def quantile(q: float, metric: str, selector: str, by: str = "", window: str = "$__rate_interval") -> str:
    labels = ", ".join(["le", *filter(None, [by])])
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{window}])))"
