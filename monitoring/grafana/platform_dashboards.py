"""The Infrastructure Monitoring dashboard (Mobile Export Monitoring: export_dashboard.py)."""

from __future__ import annotations

from panels import (
    APP,
    BACKUP_AGE,
    CPU,
    DB_QUERY,
    DISK_USED,
    LATENCY,
    MEMORY,
    NODE,
    UP_MAPPINGS,
    Dashboard,
    quantile,
    target,
    thresholds,
)


def infrastructure() -> Dashboard:
    d = Dashboard(
        "mobile-mm-infra",
        "Infrastructure Monitoring",
        "Server resources, database and backups, network, container health, the monitoring stack.",
        ["mobile-multimodal-llm", "infrastructure"],
    )
    d.row("Servers (node-exporter)")
    d.timeseries(
        "Host CPU busy",
        "100% minus idle, per host (target below 70%, alert at 90%).",
        [
            target(
                f'100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{{{NODE}, mode="idle"}}'
                "[$__rate_interval])))",
                "{{instance}}",
            )
        ],
        "percent",
        CPU,
        w=8,
    )
    d.timeseries(
        "Host memory used",
        "MemTotal minus MemAvailable (alerts at 80% and 95%).",
        [
            target(
                f"100 * (1 - node_memory_MemAvailable_bytes{{{NODE}}}"
                f" / node_memory_MemTotal_bytes{{{NODE}}})",
                "{{instance}}",
            )
        ],
        "percent",
        MEMORY,
        w=8,
    )
    fs = f'{NODE}, fstype!~"tmpfs|ramfs|squashfs|nsfs"'
    d.timeseries(
        "Filesystem used",
        "Per mount point (warning at 80%, critical at 90%).",
        [
            target(
                f"100 * (1 - node_filesystem_avail_bytes{{{fs}}} / node_filesystem_size_bytes{{{fs}}})",
                "{{instance}} {{mountpoint}}",
            )
        ],
        "percent",
        DISK_USED,
        w=8,
    )
    d.row("Network")
    d.timeseries(
        "Network traffic",
        "Bytes per second received and sent, all interfaces but loopback.",
        [
            target(
                f'sum by (instance) (rate(node_network_receive_bytes_total{{{NODE}, device!="lo"}}'
                "[$__rate_interval]))",
                "received {{instance}}",
            ),
            target(
                f'sum by (instance) (rate(node_network_transmit_bytes_total{{{NODE}, device!="lo"}}'
                "[$__rate_interval]))",
                "sent {{instance}}",
                "B",
            ),
        ],
        "Bps",
    )
    d.timeseries(
        "HTTP latency p95 by route",
        "Wall time in the app per route template.",
        [target(quantile(0.95, "http_request_duration_seconds", APP, "endpoint"), "{{endpoint}}")],
        "s",
        LATENCY,
    )
    d.row("Container health")
    d.stat(
        "Targets up",
        "Every scrape target of this environment.",
        [target('up{environment=~"$environment"}', "{{job}} {{instance}}")],
        "none",
        thresholds((1, "green"), base="red"),
        UP_MAPPINGS,
        w=8,
        h=6,
    )
    d.stat(
        "App restarts (24h)",
        "Process start-time changes in the last 24 hours.",
        [target(f"changes(process_start_time_seconds{{{APP}}}[24h])", "{{instance}}")],
        "short",
        thresholds((1, "orange")),
        w=4,
        h=6,
    )
    d.timeseries(
        "App resident memory",
        "Resident set size of the app process.",
        [target(f"process_resident_memory_bytes{{{APP}}}", "{{instance}}")],
        "bytes",
        w=6,
        h=6,
    )
    d.timeseries(
        "App CPU",
        "CPU of the app process, percent of one core.",
        [target(f"100 * rate(process_cpu_seconds_total{{{APP}}}[$__rate_interval])", "{{instance}}")],
        "percent",
        w=6,
        h=6,
    )
    d.row("Database and backups")
    d.stat(
        "Since last successful backup",
        "Alert (BackupStale) after 26 hours.",
        [target(f"time() - backup_last_success_timestamp_seconds{{{APP}}}", "{{instance}}")],
        "s",
        BACKUP_AGE,
        w=6,
        h=6,
    )
    d.timeseries(
        "Backup failures",
        "Failed database backups per hour.",
        [target(f"increase(backup_failures_total{{{APP}}}[1h])", "{{instance}}")],
        "short",
        w=9,
        h=6,
    )
    d.timeseries(
        "Open file descriptors",
        "Database connections, log files and sockets of the app.",
        [target(f"process_open_fds{{{APP}}}", "{{instance}}")],
        "short",
        w=9,
        h=6,
    )
    d.timeseries(
        "Database query duration p95",
        "95th percentile of SQL statement time by operation. Alert (SlowDatabaseQueries) above 0.5 s.",
        [target(quantile(0.95, "db_query_duration_seconds", APP, "operation"), "{{operation}}")],
        "s",
        DB_QUERY,
        w=12,
        h=6,
    )
    d.timeseries(
        "Database connections",
        "Connections the app holds open: in use (checked out of the pool) and idle.",
        [target(f"sum by (state) (db_pool_connections{{{APP}}})", "{{state}}")],
        "short",
        w=12,
        h=6,
    )
    d.row("Monitoring stack")
    d.timeseries(
        "Scrape duration",
        "How long each scrape takes (timeout 10 s).",
        [target('scrape_duration_seconds{environment=~"$environment"}', "{{job}} {{instance}}")],
        "s",
        w=8,
    )
    d.timeseries(
        "Rule evaluation failures",
        "Prometheus rule groups that failed to evaluate.",
        [
            target(
                "sum by (rule_group) (rate(prometheus_rule_evaluation_failures_total[$__rate_interval]))",
                "{{rule_group}}",
            )
        ],
        "short",
        w=8,
    )
    d.timeseries(
        "Notifications failed",
        "Alertmanager notifications that failed, by integration.",
        [
            target(
                "sum by (integration) (rate(alertmanager_notifications_failed_total[$__rate_interval]))",
                "{{integration}}",
            )
        ],
        "short",
        w=8,
    )
    return d
