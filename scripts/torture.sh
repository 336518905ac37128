#!/usr/bin/env bash
# Crash torture at scale: SIGKILL recsys's writing commands (add, push,
# checkout, gc, ingest, serve) at random moments, N times, checking after
# every kill that nothing was lost (see tests/it/torture.rs).
#
#   scripts/torture.sh [KILLS] [SEED]     default 1000 kills, a random seed
#
# Prints the kills survived per command; a failure names its seed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recsys-target}"
export RECSYS_TORTURE_KILLS="${1:-1000}"
if [ -n "${2:-}" ]; then export RECSYS_TORTURE_SEED="$2"; fi
exec cargo test --locked --test it torture:: -- --nocapture --test-threads 1
