#!/usr/bin/env bash
# Install what building and testing recsys needs on a fresh Debian 12 machine
# (idempotent, quiet when everything is present). Needs root for apt-get.
#
#   build:    git, a C toolchain, pkg-config (rdkafka builds librdkafka)
#   data:     python3 + pip + venv + unzip (MovieLens 100K comes from a PyPI
#             wheel; mlflow for the registry tests goes into a venv)
#   services: postgresql (monitoring sink, shared lineage index; started by
#             scripts/postgres.sh, never by systemd)
set -euo pipefail

need=()
for pkg in git build-essential pkg-config python3 python3-pip python3-venv unzip postgresql postgresql-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The package's maintainer scripts try to start the cluster through
  # systemd/invoke-rc.d; there is none here, and postgres.sh starts it.
  apt-get update -qq
  RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Monitoring tests (tests/it/monitor.rs) run the real tools: Prometheus and
# promtool, Alertmanager and amtool (installed with apt, not unpacked: it
# loads its default template from /usr/share), headless Chromium for the
# dashboard page, psql for the panel queries. None is started as a service.
monitoring=()
for pkg in prometheus prometheus-alertmanager chromium postgresql-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || monitoring+=("$pkg")
done
if ((${#monitoring[@]})); then
  echo "setup: installing ${monitoring[*]} (monitoring tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${monitoring[@]}" >/dev/null
  # Debian starts the daemons it installs where it can; the tests start
  # their own on loopback ports.
  for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
      systemctl stop "$svc" || true
    fi
  done
fi

command -v cargo >/dev/null || {
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
}

# S3 remote tests (tests/it/s3.rs) run two independent S3 servers on
# loopback ports: s3s-fs (crates.io, built once into the target directory's
# tools/) and moto_server (PyPI moto[server], in a venv there unless one is
# on PATH already). Skipped when present.
tools="${CARGO_TARGET_DIR:-$HOME/.cache/recsys-target}/tools"
if [ ! -x "$tools/bin/s3s-fs" ]; then
  echo "setup: building s3s-fs 0.14.1 into $tools (S3 tests)" >&2
  CARGO_TARGET_DIR="$tools/build" cargo install -q s3s-fs --version 0.14.1 \
    --features binary --locked --root "$tools"
  rm -rf "$tools/build"
fi
if [ ! -x "$tools/bin/moto_server" ]; then
  if command -v moto_server >/dev/null 2>&1; then
    mkdir -p "$tools/bin"
    ln -sf "$(command -v moto_server)" "$tools/bin/moto_server"
  else
    echo "setup: installing moto[server] into $tools/moto-venv (S3 tests)" >&2
    python3 -m venv "$tools/moto-venv"
    "$tools/moto-venv/bin/pip" install -q 'moto[server]==5.2.1'
    mkdir -p "$tools/bin"
    ln -sf "$tools/moto-venv/bin/moto_server" "$tools/bin/moto_server"
  fi
fi

# MLflow (tests/it/mlflow.rs starts a real `mlflow server` with a SQLite
# backend for `recsys registry sync --mlflow`): a venv in the persistent
# cache, outside the clone; the tests find it at the same path.
MLFLOW_VENV="${RECSYS_MLFLOW_VENV:-$HOME/.cache/recsys-tools/mlflow-venv}"
MLFLOW_VERSION=3.18.0
if ! "$MLFLOW_VENV/bin/mlflow" --version 2>/dev/null | grep -q "$MLFLOW_VERSION"; then
  echo "setup: installing mlflow $MLFLOW_VERSION into $MLFLOW_VENV" >&2
  mkdir -p "$(dirname "$MLFLOW_VENV")"
  python3 -m venv "$MLFLOW_VENV"
  "$MLFLOW_VENV/bin/pip" install -q "mlflow==$MLFLOW_VERSION"
fi
