#!/usr/bin/env bash
# The embedded default, end to end, on a fresh machine: build recsys, make a
# demo project (git + local store + SQLite lineage, no services), and walk
# MovieLens 100K through init, add, push, checkout, audit and lineage.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
demo="${RECSYS_DEMO:-$HOME/recsys-demo}"

"$repo/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/recsys-target}"
echo "== building recsys (release)"
cargo build --release --locked --manifest-path "$repo/Cargo.toml"
recsys="$CARGO_TARGET_DIR/release/recsys"
ml="$("$repo/scripts/fetch-movielens.sh")"

step() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

rm -rf "$demo" "$demo-remote"
mkdir -p "$demo/data"
cd "$demo"
git init -q -b main .
git config user.email demo@recsys.local
git config user.name "recsys demo"

step "create the project: store/, lineage.db, .gitignore entries"
run "$recsys" init
git add -A && git commit -qm "recsys init"
cp -r "$ml" data/ml-100k

step "version the dataset: bytes into the store, a pointer file for git"
run "$recsys" add data/ml-100k --kind dataset
run cat data/ml-100k.recsys
git add -A && git commit -qm "dataset_1: MovieLens 100K"

step "share it: push to a local-directory remote"
run "$recsys" remote add origin "$demo-remote" --default
run "$recsys" push
run "$recsys" status

step "lose the work-tree copy, get it back from the store"
rm -rf data/ml-100k
run "$recsys" status
run "$recsys" checkout
run "$recsys" status --exit-code

step "prove integrity and provenance"
run "$recsys" audit
run "$recsys" ls
run "$recsys" lineage dataset_1

printf '\nDemo project: %s (remote: %s-remote)\n' "$demo" "$demo"
