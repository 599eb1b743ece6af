#!/usr/bin/env bash
# Debian packages the project needs: fonts for the OCR corpus, and the real monitoring
# components the integration tests start (Prometheus, promtool, Alertmanager, amtool, Pushgateway).
# Idempotent: installs only what is missing. Needs root (or passwordless sudo).
set -euo pipefail

packages=(
  fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35
  fonts-lato fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans fonts-roboto-unhinted
  fonts-noto-mono wamerican
  # data v3's extra training fonts (text_images.EXTRA_TRAIN_FONTS)
  fonts-cantarell fonts-league-spartan fonts-linuxlibertine fonts-comfortaa fonts-firacode
  fonts-hack fonts-inconsolata fonts-jetbrains-mono fonts-oxygen fonts-quicksand
  prometheus prometheus-alertmanager
  prometheus-pushgateway  # tests push CLI exports' metrics to a real one (observability/pushgateway.py)
  prometheus-node-exporter docker-compose  # tests/monitoring, tests/integration: real node-exporter; compose file validation
  wrk  # HTTP load generator for benchmarks/serving
  redis-server  # tests/deploy: the shared rate-limit store of the multi-instance test
  postgresql  # tests/store start a throwaway cluster (initdb/pg_ctl); pg_dump/psql for backups
)

# npm runs the Grafana dashboard validator (monitoring/grafana/validate). Only when no npm is on
# the PATH at all: a NodeSource nodejs already bundles npm and conflicts with Debian's.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: missing Debian packages (${missing[*]}) and not root; install them first." >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
# Debian may start these services on install: stop them, tests start their own on 127.0.0.1.
DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for svc in prometheus prometheus-alertmanager prometheus-pushgateway prometheus-node-exporter postgresql redis-server; do
  (command -v systemctl >/dev/null && $SUDO systemctl stop "$svc" 2>/dev/null) || true
  (command -v service >/dev/null && $SUDO service "$svc" stop >/dev/null 2>&1) || true
done
