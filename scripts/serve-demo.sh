#!/usr/bin/env bash
# Start serving on the embedded default from a fresh clone: fetch MovieLens
# 100K, import it, train two ALS models with different parameters (random
# split, so every user has training data), write the
# 1:1 config, serve on 8082. Ctrl-C stops (the request log is flushed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
demo="${RECSYS_DEMO:-$HOME/recsys-serve-demo}"
port="${RECSYS_PORT:-8082}"
"$repo/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recsys-target}"
echo "== building recsys (release; the first build takes a few minutes)"
cargo build --release --locked --manifest-path "$repo/Cargo.toml"
recsys="$CARGO_TARGET_DIR/release/recsys"
ml="$("$repo/scripts/fetch-movielens.sh")"
rm -rf "$demo" && mkdir -p "$demo" && cd "$demo"
git init -q -b main . && git config user.email demo@recsys.local && git config user.name "recsys demo"
"$recsys" init
git add -A && git commit -qm "recsys init"
"$recsys" import movielens "$ml"
"$recsys" train --dataset dataset_1 --algo als --split random
"$recsys" train --dataset dataset_1 --algo als --split random --factors 64 --seed 7
cp "$repo/config.json" config.json
"$recsys" config check
git add -A && git commit -qm "MovieLens 100K, two models, 1:1 config"
echo "== serving $demo on http://127.0.0.1:$port/ (Ctrl-C stops)"
echo "   curl -i http://127.0.0.1:$port/recommend/42"
echo "   then: (cd $demo && $recsys lineage <X-Request-Id>)"
exec "$recsys" serve --port "$port"
