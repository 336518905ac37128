#!/usr/bin/env bash
# Fetch MovieLens 100K (inside the PyPI wheel recbole==1.2.1, RecBole layout)
# into a cache directory and print that directory. Idempotent. The data's
# licence forbids redistribution: it is never committed.
set -euo pipefail
dest="${RECSYS_DATA:-$HOME/.cache/recsys}/ml-100k"
files=(ml-100k.inter ml-100k.user ml-100k.item)
have=1
for f in "${files[@]}"; do [ -s "$dest/$f" ] || have=0; done
if [ "$have" = 0 ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-movielens: downloading recbole==1.2.1 from PyPI" >&2
  python3 -m pip download -q --no-deps 'recbole==1.2.1' -d "$tmp" >&2
  python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "recbole-1.2.1-*.whl"))[0]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("recbole/dataset_example/ml-100k/") and not name.endswith("/"):
            part = os.path.join(dest, os.path.basename(name) + ".part")
            with open(part, "wb") as f:
                f.write(z.read(name))
            os.replace(part, os.path.join(dest, os.path.basename(name)))
PY
  for f in "${files[@]}"; do
    [ -s "$dest/$f" ] || { echo "fetch-movielens: $f missing from the wheel" >&2; exit 1; }
  done
fi
echo "$dest"
