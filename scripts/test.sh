#!/usr/bin/env bash
# Run every test of recsys on a fresh machine: installs what it needs,
# fetches the MovieLens 100K data, then format check, clippy and all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/postgres.sh
RECSYS_ML100K="$(./scripts/fetch-movielens.sh)"
export RECSYS_ML100K
# A persistent target directory outside the clone: CI rebuilds incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recsys-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --lib --bins --tests
