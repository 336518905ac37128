#!/usr/bin/env bash
# Fetch MovieLens 100K (RecBole layout) for tests, benchmarks and the demo.
#
# The data ships inside the PyPI wheel recbole==1.2.1 under
# recbole/dataset_example/ml-100k/. Its licence forbids redistribution, so
# it is downloaded at set-up time and never committed.
#
# Usage: scripts/fetch-movielens.sh            prints the data directory
#        export RECSYS_ML100K="$(scripts/fetch-movielens.sh)"
# Destination: ${RECSYS_DATA:-$HOME/.cache/recsys}/ml-100k (skipped when the
# three files are already there).
set -euo pipefail

dest="${RECSYS_DATA:-$HOME/.cache/recsys}/ml-100k"
files=(ml-100k.inter ml-100k.user ml-100k.item)

complete() {
    local f
    for f in "${files[@]}"; do
        [ -s "$dest/$f" ] || return 1
    done
}

if complete; then
    echo "$dest"
    exit 0
fi

for tool in unzip; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
if command -v pip >/dev/null; then
    pip=(pip)
elif command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
    pip=(python3 -m pip)
else
    echo "error: pip (or python3 -m pip) is required to download the recbole wheel" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${pip[@]}" download --quiet --no-deps --disable-pip-version-check \
    "recbole==1.2.1" -d "$tmp" >&2
wheel="$(ls "$tmp"/recbole-1.2.1-*.whl 2>/dev/null | head -n 1)"
[ -n "$wheel" ] || { echo "error: pip did not download the recbole 1.2.1 wheel" >&2; exit 1; }
unzip -q -o "$wheel" 'recbole/dataset_example/ml-100k/*' -d "$tmp/x"
mkdir -p "$dest.partial"
cp "$tmp"/x/recbole/dataset_example/ml-100k/* "$dest.partial/"
rm -rf "$dest"
mv "$dest.partial" "$dest"

complete || { echo "error: $dest lacks one of ${files[*]}" >&2; exit 1; }
echo "$dest"
