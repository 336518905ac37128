#!/usr/bin/env bash
# Artifact-store benchmark: prints the issue-2 "Performance" figures, each
# against a baseline measured in the same run (cp / cp -r followed by sync,
# and DVC 3.x side by side). Every figure is the minimum of BENCH_RUNS runs,
# each after a `sync`; the page cache is left warm.
#
#   bench/store.sh                      # full size: 1 GiB file, 20,000 files
#   BENCH_SCALE=small bench/store.sh    # 64 MiB, 2,000 files: a quick smoke run
#
# Environment:
#   RECSYS_BIN    recsys binary to use (default: `cargo build --release` here)
#   CARGO_TARGET_DIR  target dir for that build (default /root/.cache/recsys-target)
#   BENCH_RUNS    runs per figure, minimum reported (default 5)
#   BENCH_SCALE   full (default) or small
#   BENCH_DIR     work dir, on the filesystem under test (default /work/.bench)
#   BENCH_KEEP=1  keep the work dir (and reuse its data on the next run)
#   BENCH_CACHE   where the DVC venv lives (default ~/.cache/recsys-bench)
#   BENCH_DVC=0   skip the DVC columns
#   BENCH_STRICT=1  exit 1 if any target is missed
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
RUNS=${BENCH_RUNS:-5}
SCALE=${BENCH_SCALE:-full}
W=${BENCH_DIR:-/work/.bench}
CACHE=${BENCH_CACHE:-$HOME/.cache/recsys-bench}
case $SCALE in
  full) BIG_SIZE=1G; BIG_LABEL="1 GiB file"; NFILES=20000 ;;
  small) BIG_SIZE=64M; BIG_LABEL="64 MiB file"; NFILES=2000 ;;
  *) echo "BENCH_SCALE must be full or small, not '$SCALE'" >&2; exit 2 ;;
esac
DIR_LABEL="$NFILES-file dir"

note() { printf '== %s\n' "$*" >&2; }

# ---------------------------------------------------------------- setup
if [[ -n ${RECSYS_BIN:-} ]]; then
  BIN=$RECSYS_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/root/.cache/recsys-target}
  note "building recsys (release) in $repo, target dir $CARGO_TARGET_DIR"
  (cd "$repo" && cargo build --release) >&2
  BIN=$CARGO_TARGET_DIR/release/recsys
fi
[[ -x $BIN ]] || { echo "recsys binary not found: $BIN" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

DVC=""
if [[ ${BENCH_DVC:-1} != 0 ]]; then
  venv=$CACHE/dvc-venv
  if [[ ! -x $venv/bin/dvc ]]; then
    note "installing DVC 3.x into $venv"
    mkdir -p "$CACHE"
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'dvc>=3,<4'; } >&2; then
      rm -rf "$venv"
    fi
  fi
  if [[ -x $venv/bin/dvc ]]; then
    DVC=$venv/bin/dvc
  else
    note "NOTE: could not install DVC 3.x; the DVC columns are skipped"
  fi
fi
export DVC_NO_ANALYTICS=1

# Hermetic git: no user/system config, fixed identity.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
unset RECSYS_NOW

# ---------------------------------------------------------------- work dir
MARK=.recsys-bench-workdir
if [[ -e $W && ! -e $W/$MARK ]] && [[ -n $(ls -A "$W" 2>/dev/null) ]]; then
  echo "BENCH_DIR $W exists and is not a benchmark work dir; refusing to use it" >&2
  exit 2
fi
mkdir -p "$W"
touch "$W/$MARK"
W=$(cd "$W" && pwd)
cleanup() {
  if [[ ${BENCH_KEEP:-0} != 1 && -e $W/$MARK ]]; then
    chmod -R u+w "$W" 2>/dev/null || true
    rm -rf "$W"
  fi
}
trap cleanup EXIT
LOG=$W/bench.log
: >"$LOG"

# Removing trees during the run would distort what follows: ext4 skips
# inodes freed in the last minute when it allocates new ones, so creating
# 20,000 files right after an `rm -rf` of 20,000 spends most of its time in
# that scan (perf: find_get_block_common, recently_deleted), for cp and
# recsys alike and by amounts that vary 7x from run to run. So setups move
# old trees aside (a rename frees nothing) and the trash is emptied between
# the two phases and at the end, untimed.
TRASH=$W/trash
mkdir -p "$TRASH"
discard() { # path... : move aside (directories) or remove (files)
  local x
  for x in "$@"; do
    if [[ -d $x && ! -L $x ]]; then
      mv "$x" "$(mktemp -u "$TRASH/t.XXXXXXXX")"
    else
      rm -f "$x"
    fi
  done
}
empty_trash() {
  chmod -R u+w "$TRASH" 2>/dev/null || true
  rm -rf "$TRASH" && mkdir -p "$TRASH"
}

# Keep only the data (if it matches this scale) from an earlier BENCH_KEEP run.
for x in "$W"/*; do
  [[ $x == "$W/data-$SCALE" || $x == "$LOG" || $x == "$TRASH" ]] && continue
  chmod -R u+w "$x" 2>/dev/null || true
  rm -rf "$x"
done
D=$W/data-$SCALE
if [[ ! -e $D/.complete || ! -f $D/big || ! -d $D/dir ]]; then
  rm -rf "$D"
  mkdir -p "$D"
  note "generating data in $D: $BIG_LABEL, $DIR_LABEL of 1-8 KiB"
  head -c "$BIG_SIZE" /dev/urandom >"$D/big"
  python3 - "$D/dir" "$NFILES" <<'EOF'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20000)
os.makedirs(d)
for i in range(n):
    with open(os.path.join(d, "f%05d.bin" % i), "wb") as f:
        f.write(os.urandom(rng.randint(1024, 8192)))
EOF
  touch "$D/.complete"
fi
# Make the data durable and cached before anything is timed.
cat "$D/big" >/dev/null
find "$D/dir" -type f -exec cat {} + >/dev/null
sync

# ---------------------------------------------------------------- timing
# measure SETUP RUN: run SETUP (untimed), sync, time RUN; BEST = min in µs.
BEST=0
measure() {
  local setup=$1 run=$2 i t0 t1 d best=""
  for ((i = 0; i < RUNS; i++)); do
    $setup >>"$LOG" 2>&1 || fail "$setup"
    sync
    t0=${EPOCHREALTIME/./}
    $run >>"$LOG" 2>&1 || fail "$run"
    t1=${EPOCHREALTIME/./}
    d=$((t1 - t0))
    if [[ -z $best || $d -lt $best ]]; then best=$d; fi
  done
  BEST=$best
}
fail() {
  echo "benchmark step failed: $1 (log: $LOG)" >&2
  tail -n 20 "$LOG" >&2
  trap - EXIT
  exit 1
}
nothing() { :; }
rs() { "$BIN" -q "$@"; }
dvc() { "$DVC" -q "$@"; }

# Results: figure|recsys µs|baseline label|baseline µs|kind|target
ROWS=()
row() { ROWS+=("$1|$2|$3|$4|$5|$6"); }

# A fresh recsys project at $1 (in a fresh git repo).
new_rs() { discard "$1" && mkdir -p "$1" && git -C "$1" init -q && "$BIN" -q -C "$1" init; }
# A fresh DVC project at $1, hermetic: no SCM, no analytics, own state dir.
new_dvc() {
  discard "$1" && mkdir -p "$1" && (cd "$1" && "$DVC" init -q --no-scm &&
    "$DVC" config core.analytics false && "$DVC" config core.check_update false &&
    "$DVC" config core.site_cache_dir "$1/.dvc/site")
}
# Move the data item $1 (big|dir) back from project $2 into $D, if it is there.
reclaim() {
  if [[ -e $2/$1 ]]; then
    discard "${D:?}/$1" && chmod -R u+w "$2/$1" && mv "$2/$1" "$D/$1"
  fi
}

CP=$W/cp-dst
clear_cp() { discard "$CP"; }
cp_big_sync() { cp "$D/big" "$CP" && sync; }
cp_dir_sync() { cp -r "$D/dir" "$CP" && sync; }
cp_dir() { cp -r "$D/dir" "$CP"; }

# ---------------------------------------------------------------- figures
bench_item() { # $1 = big|dir
  local it=$1 label P=$W/rs-$1 Q=$W/dvc-$1 R=$W/remote-$1 t_add t_cp
  if [[ $it == big ]]; then label=$BIG_LABEL; else label=$DIR_LABEL; fi

  # 1/2. add, against cp(+ -r) + sync and against dvc add.
  note "add $label: cp baseline"
  if [[ $it == big ]]; then measure clear_cp cp_big_sync; else measure clear_cp cp_dir_sync; fi
  t_cp=$BEST
  clear_cp
  if [[ -n $DVC ]]; then
    note "add $label: dvc add"
    setup_dvc_add() { reclaim "$it" "$Q" && new_dvc "$Q" && mv "$D/$it" "$Q/$it"; }
    run_dvc_add() { (cd "$Q" && dvc add "$it"); }
    measure setup_dvc_add run_dvc_add
    local t_dvc_add=$BEST
    note "status $label: dvc status"
    run_dvc_status() { (cd "$Q" && dvc status); }
    run_dvc_status >>"$LOG" 2>&1 || fail run_dvc_status
    measure nothing run_dvc_status
    local t_dvc_status=$BEST
    reclaim "$it" "$Q"
    discard "$Q"
  fi
  note "add $label: recsys add"
  setup_rs_add() { reclaim "$it" "$P" && new_rs "$P" && mv "$D/$it" "$P/$it"; }
  run_rs_add() { (cd "$P" && rs add "$it"); }
  measure setup_rs_add run_rs_add
  t_add=$BEST
  if [[ $it == big ]]; then
    row "1. add $label" "$t_add" "cp + sync" "$t_cp" le 2.0
    [[ -n $DVC ]] && row "1. add $label" "$t_add" "dvc add" "$t_dvc_add" faster 5 ||
      row "1. add $label" "$t_add" "dvc add" "" faster 5
  else
    row "2. add $label" "$t_add" "cp -r + sync" "$t_cp" le 1.5
    [[ -n $DVC ]] && row "2. add $label" "$t_add" "dvc add" "$t_dvc_add" faster 3 ||
      row "2. add $label" "$t_add" "dvc add" "" faster 3
  fi

  # 3. status, nothing changed (the project of the last add run). One untimed
  # run first, as a user's first status after add would have been.
  note "status $label: recsys status"
  run_rs_status() { (cd "$P" && rs status); }
  run_rs_status >>"$LOG" 2>&1 || fail run_rs_status
  measure nothing run_rs_status
  local lim=30
  [[ $it == dir ]] && lim=150
  row "3. status $label" "$BEST" "dvc status" "${t_dvc_status:-}" lt "$lim"

  # 4. checkout after deleting the work-tree copy. The work-tree copy is the
  # master data: keep it (a hard link for the file, a move for the dir).
  if [[ $it == big ]]; then
    note "checkout $label: recsys checkout --link hardlink"
    rm -f "$D/big"
    ln "$P/big" "$D/big"
    del_big() { rm -f "$P/big"; }
    run_co_big() { (cd "$P" && rs checkout --link hardlink big); }
    measure del_big run_co_big
    row "4. checkout --link hardlink $label" "$BEST" "" "" lt 30
  else
    note "checkout $label: cp -r baseline, recsys checkout (default link)"
    reclaim dir "$P"
    measure clear_cp cp_dir
    t_cp=$BEST
    clear_cp
    del_dir() { discard "$P/dir"; }
    run_co_dir() { (cd "$P" && rs checkout dir); }
    measure del_dir run_co_dir
    row "4. checkout (default: copy) $label" "$BEST" "cp -r" "$t_cp" le 1.3
  fi

  # 5. push to a fresh local-directory remote; then a push with nothing to do.
  note "push $label: cp baseline, recsys push"
  if [[ $it == big ]]; then measure clear_cp cp_big_sync; else measure clear_cp cp_dir_sync; fi
  t_cp=$BEST
  clear_cp
  (cd "$P" && rs remote add origin "$R" --default) >>"$LOG" 2>&1 || fail "remote add"
  fresh_remote() { discard "$R" && mkdir -p "$R"; }
  run_push() { (cd "$P" && rs push); }
  measure fresh_remote run_push
  if [[ $it == big ]]; then
    row "5. push $label" "$BEST" "cp + sync" "$t_cp" le 1.5
  else
    row "5. push $label" "$BEST" "cp -r + sync" "$t_cp" le 1.5
  fi
  measure nothing run_push
  row "5. push, nothing to do ($label)" "$BEST" "" "" lt 100

  # 6. (1 GiB file) add --link hardlink, against DVC with cache.type
  # hardlink: neither copies the bytes. A durable copy is bounded by the
  # disk (about cp + sync), so this is the way to be many times faster than
  # `dvc add`; the row is compared with DVC doing the same, to be fair.
  if [[ $it == big ]]; then
    discard "$P" "$R"
    # Dropping the previous run's store (or DVC cache) drops the object's
    # second name, so the file is back to one link and writable.
    unlink_store() { # dir
      if [[ -d $1 ]]; then chmod -R u+w "$1" && rm -rf "$1"; fi
    }
    if [[ -n $DVC ]]; then
      note "add --link hardlink $label: dvc add with cache.type hardlink"
      setup_dvc_hl() {
        unlink_store "$Q/.dvc/cache" && reclaim "$it" "$Q" && new_dvc "$Q" &&
          (cd "$Q" && "$DVC" config cache.type hardlink) && mv "$D/$it" "$Q/$it"
      }
      measure setup_dvc_hl run_dvc_add
      local t_dvc_hl=$BEST
      unlink_store "$Q/.dvc/cache" && reclaim "$it" "$Q"
      discard "$Q"
    fi
    note "add --link hardlink $label: recsys add --link hardlink"
    setup_rs_hl() { unlink_store "$P/store" && reclaim "$it" "$P" && new_rs "$P" && mv "$D/$it" "$P/$it"; }
    run_rs_hl() { (cd "$P" && rs add --link hardlink "$it"); }
    measure setup_rs_hl run_rs_hl
    row "6. add --link hardlink $label" "$BEST" "dvc add, cache.type hardlink" "${t_dvc_hl:-}" faster 5
    unlink_store "$P/store" && reclaim "$it" "$P"
  fi

  # Put the master data back where it started and drop the project.
  if [[ $it == dir && ! -e $D/dir ]]; then reclaim dir "$P"; fi
  discard "$P" "$R"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
bench_item big
empty_trash
bench_item dir
empty_trash
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
ms() { awk -v u="$1" 'BEGIN { printf "%.1f ms", u / 1000 }'; }
fs=$(df -T "$W" | awk 'NR == 2 { print $2 " (" $1 ")" }')
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo
echo "recsys store benchmark ($SCALE: $BIG_LABEL, $DIR_LABEL of 1-8 KiB; min of $RUNS runs, each after sync, warm page cache)"
echo "machine: nproc $(nproc), ${cpu:-unknown cpu}, $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), $W on ${fs}"
echo "load average: $load_start at start, $load_end at end"
echo "recsys: $("$BIN" --version 2>/dev/null || echo "$BIN")"
if [[ -n $DVC ]]; then echo "dvc: $("$DVC" --version 2>/dev/null)"; else echo "dvc: not available (DVC columns skipped)"; fi
echo
miss=0
table="figure|recsys|baseline|baseline time|ratio|target|result"
while IFS= read -r r; do
  IFS='|' read -r fig t blabel bt kind tgt <<<"$r"
  ratio="-" target="" res=""
  case $kind in
    le)
      ratio=$(awk -v a="$t" -v b="$bt" 'BEGIN { printf "%.2fx", a / b }')
      target="<= ${tgt}x"
      res=$(awk -v a="$t" -v b="$bt" -v x="$tgt" 'BEGIN { print (a / b <= x) ? "PASS" : "MISS" }') ;;
    faster)
      target=">= ${tgt}x faster"
      if [[ -z $bt ]]; then res="skipped"; else
        ratio=$(awk -v a="$t" -v b="$bt" 'BEGIN { printf "%.1fx faster", b / a }')
        res=$(awk -v a="$t" -v b="$bt" -v x="$tgt" 'BEGIN { print (b / a >= x) ? "PASS" : "MISS" }')
      fi ;;
    lt)
      target="< $tgt ms"
      if [[ -n $bt ]]; then
        ratio=$(awk -v a="$t" -v b="$bt" 'BEGIN { printf "%.1fx faster", b / a }')
      fi
      res=$(awk -v a="$t" -v x="$tgt" 'BEGIN { print (a / 1000 < x) ? "PASS" : "MISS" }') ;;
  esac
  [[ $res == MISS ]] && miss=$((miss + 1))
  if [[ -n $bt ]]; then btx=$(ms "$bt"); elif [[ -n $blabel ]]; then btx="skipped"; else btx="-"; fi
  table+=$'\n'"$fig|$(ms "$t")|${blabel:--}|$btx|$ratio|$target|$res"
done < <(printf '%s\n' "${ROWS[@]}" | sort -s -t. -k1,1n)
column -t -s '|' <<<"$table"
echo
[[ $SCALE == small ]] && echo "(small scale: the targets are stated for the full size; treat these as a smoke run)"
echo "$miss target(s) missed"
if [[ ${BENCH_STRICT:-0} == 1 && $miss -gt 0 ]]; then exit 1; fi
