#!/usr/bin/env bash
# S3 remote benchmark (issue 14 targets), everything against one local
# s3s-fs server on a loopback port, side by side in one run:
#
#   1. push of 20,000 files of 1-8 KiB: recsys push vs dvc push (dvc-s3)
#   2. pull of the same into an empty clone: recsys pull vs dvc pull
#   3. a no-op push of the 20,000 already-pushed files (target < 1 s)
#   4. push of a 1 GiB file vs a single-stream boto3 put_object of the
#      same bytes through the same server (target within 1.3x)
#
#   bench/s3.sh
#   BENCH_FILES=2000 BENCH_BIG_MIB=128 bench/s3.sh   # a quick smoke run
#
# Environment:
#   RECSYS_BIN        recsys binary (default: `cargo build --release` here)
#   CARGO_TARGET_DIR  target dir (default ~/.cache/recsys-target); s3s-fs
#                     is taken from its tools/bin (scripts/setup.sh)
#   BENCH_DIR         work dir (default /work/.bench-s3, removed after)
#   BENCH_DVC=0       skip the DVC columns
#   BENCH_FILES, BENCH_BIG_MIB  sizes (default 20000 files, 1024 MiB)
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/recsys-target}
W=${BENCH_DIR:-/work/.bench-s3}
NFILES=${BENCH_FILES:-20000}
BIG_MIB=${BENCH_BIG_MIB:-1024}
KEY=bench-key
SECRET=bench-secret-0123456789
note() { printf '== %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

if [[ -n ${RECSYS_BIN:-} ]]; then
  BIN=$RECSYS_BIN
else
  note "building recsys (release)"
  (cd "$repo" && cargo build --release) >&2
  BIN=$CARGO_TARGET_DIR/release/recsys
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
S3S=$CARGO_TARGET_DIR/tools/bin/s3s-fs
[[ -x $S3S ]] || { echo "s3s-fs not found at $S3S: run ./scripts/setup.sh" >&2; exit 2; }

DVC=""
if [[ ${BENCH_DVC:-1} != 0 ]]; then
  venv=$CARGO_TARGET_DIR/tools/dvc-venv
  if [[ ! -x $venv/bin/dvc ]]; then
    note "installing dvc-s3 into $venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install -q dvc-s3 >&2
  fi
  DVC=$venv/bin/dvc
fi

rm -rf "$W"
mkdir -p "$W/s3/recs" "$W/s3/dvc"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$S3S" --host 127.0.0.1 --port "$port" --access-key $KEY --secret-key $SECRET "$W/s3" >"$W/s3s.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
EP=http://127.0.0.1:$port

note "making $NFILES files of 1-8 KiB"
python3 - "$W/data" "$NFILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
random.seed(14)
for i in range(n):
    d = os.path.join(root, "files", f"{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(os.urandom(random.randint(1024, 8192)))
EOF

git_q() { local c=$1; shift; git -c user.name=b -c user.email=b@b "$c" -q "$@"; }
creds() { printf '{"remotes": {"origin": {"access_key_id": "%s", "secret_access_key": "%s"}}}\n' $KEY $SECRET >"$1/.recsys/config.local.json"; }

# ---- recsys, many small files
P=$W/rs
mkdir -p "$P" && cp -r "$W/data/files" "$P/files"
(cd "$P" && git_q init && "$BIN" -q init && "$BIN" -q add files &&
  "$BIN" -q remote add origin s3://recs/proj --endpoint "$EP" --default && git add -A && git_q commit -m files)
creds "$P"
note "recsys push ($NFILES files)"
t=$(now); (cd "$P" && "$BIN" -q push); rs_push=$(since "$t")
note "recsys no-op push"
t=$(now); (cd "$P" && "$BIN" -q push); rs_noop=$(since "$t")
git_q clone "$P" "$W/rs-clone"
creds "$W/rs-clone"
note "recsys pull into an empty clone"
t=$(now); (cd "$W/rs-clone" && "$BIN" -q pull); rs_pull=$(since "$t")
# s3s-fs answers each GET in ~25 ms (HEAD in ~2 ms): downloads are
# latency-bound, so more in flight helps.
rm -rf "$W/rs-clone64"
git_q clone "$P" "$W/rs-clone64"
creds "$W/rs-clone64"
note "recsys pull --jobs 64"
t=$(now); (cd "$W/rs-clone64" && "$BIN" -q pull --jobs 64); rs_pull64=$(since "$t")
cmp <(cd "$P/files" && find . -type f -exec sha1sum {} + | sort) \
    <(cd "$W/rs-clone/files" && find . -type f -exec sha1sum {} + | sort) >/dev/null ||
  { echo "recsys pull: files differ" >&2; exit 1; }

# ---- dvc, same files, same server
if [[ -n $DVC ]]; then
  Q=$W/dvc
  mkdir -p "$Q" && cp -r "$W/data/files" "$Q/files"
  (cd "$Q" && "$DVC" init -q --no-scm && "$DVC" add -q files &&
    "$DVC" remote add -q -d s3 s3://dvc/proj &&
    "$DVC" remote modify -q s3 endpointurl "$EP" &&
    "$DVC" remote modify -q s3 access_key_id $KEY &&
    "$DVC" remote modify -q s3 secret_access_key $SECRET)
  note "dvc push ($NFILES files)"
  t=$(now); (cd "$Q" && "$DVC" push -q); dvc_push=$(since "$t")
  rm -rf "$Q/.dvc/cache" "$Q/files"
  note "dvc pull"
  # s3s-fs answers a HEAD of a key prefix that is a directory on its disk
  # (dvc pull asks for `files/md5`) with a 500: then there is no figure.
  t=$(now)
  if (cd "$Q" && "$DVC" pull -q) >"$W/dvc-pull.log" 2>&1; then
    dvc_pull=$(since "$t")
  else
    dvc_pull=failed
    note "dvc pull failed: $(tail -1 "$W/dvc-pull.log")"
  fi
fi

# ---- one big file
note "a $BIG_MIB MiB file"
B=$W/big
mkdir -p "$B"
head -c $((BIG_MIB << 20)) /dev/urandom >"$B/big.bin"
(cd "$B" && git_q init && "$BIN" -q init && "$BIN" -q add big.bin &&
  "$BIN" -q remote add origin s3://recs/big --endpoint "$EP" --default)
creds "$B"
sync
t=$(now); (cd "$B" && "$BIN" -q push); rs_big=$(since "$t")
t=$(now)
python3 - "$EP" "$B/big.bin" $KEY $SECRET <<'EOF'
import sys, boto3
from botocore.config import Config
ep, path, key, secret = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
with open(path, "rb") as f:
    s3.put_object(Bucket="recs", Key="boto3/big.bin", Body=f)
EOF
boto_big=$(since "$t")

echo
echo "S3 remote benchmark: s3s-fs on 127.0.0.1, $(nproc) cores, $(date -u +%FT%TZ)"
printf '%-44s %10s %10s %8s\n' "what" "recsys s" "baseline s" "ratio"
if [[ -n $DVC ]]; then
  printf '%-44s %10s %10s %7sx  (target >= 5x)\n' "push $NFILES files of 1-8 KiB vs dvc push" "$rs_push" "$dvc_push" "$(ratio "$dvc_push" "$rs_push")"
  if [[ $dvc_pull == failed ]]; then
    printf '%-44s %10s %10s %8s  (dvc pull failed on this server)\n' "pull $NFILES files vs dvc pull" "$rs_pull" "failed" "-"
  else
    printf '%-44s %10s %10s %7sx  (target >= 5x)\n' "pull $NFILES files vs dvc pull" "$rs_pull" "$dvc_pull" "$(ratio "$dvc_pull" "$rs_pull")"
  fi
else
  printf '%-44s %10s\n' "push $NFILES files" "$rs_push" "pull $NFILES files" "$rs_pull"
fi
printf '%-44s %10s\n' "pull $NFILES files, --jobs 64" "$rs_pull64"
printf '%-44s %10s %10s %8s  (target < 1 s)\n' "no-op push of the $NFILES files" "$rs_noop" "-" "-"
printf '%-44s %10s %10s %7sx  (target <= 1.3x)\n' "push $BIG_MIB MiB vs boto3 single put_object" "$rs_big" "$boto_big" "$(ratio "$rs_big" "$boto_big")"
