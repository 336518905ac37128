#!/usr/bin/env bash
# Install what building and testing recsys needs on a fresh Debian 12 machine
# (idempotent, quiet when everything is present). Needs root for apt-get.
set -euo pipefail

need=()
for pkg in git build-essential pkg-config python3 python3-pip unzip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

command -v cargo >/dev/null || {
  echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
}
