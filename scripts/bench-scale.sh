#!/usr/bin/env bash
# The data path at volume scale: backup, unchanged re-run and restore of deterministic trees of
# many files, `berth agent` beside restic, with wall time, peak RSS (wait4 rusage), files/s and
# repository size; and the peak RSS of backup and restore of large unique data.
#
#   scripts/bench-scale.sh [--files "100000 1000000"] [--unique-gib "5 20"] [--store s3|file]
#                          [--skip-restic] [--no-verify] [--data DIR] [--small-restore N]
#   BERTH=/path/to/berth runs that binary instead of building this checkout.
#
# Trees (seeded, identical on every run): file sizes log-normal with a median of 4 KiB
# (sigma 1.0, below 1 MiB), 0.3 % of the files 1-2 MiB and 3 files of 100-160 MiB per million
# files (~10.5 GiB at 1M files), directories 1-12 levels deep with 10-1000 entries each
# (log-uniform). Content is half random, half hex text (compressible, unique).
# --unique-gib N: 4 files of N/4 GiB of unique, compressible data (every 4 KiB block differs),
# backed up, the source deleted, restored, compared with the regenerated stream.
# --small-restore N: restore of an N-file tree beside restic and `tar x` + sync (item 3), and
# its initial backup beside `tar | zstd -1 -T2` (item 4), at berth's default zstd level (3) and at 1.
# --store s3 uses a Garage S3 server on loopback as scripts/bench-backup.sh does (GARAGE=path);
# --store file a file:// repository (memory figures do not depend on it).
# Disk: source + one repository + one restore at a time (~30 GB at 1M files); DIR defaults to
# /work/bench-data; the generated trees stay in DIR/trees for the next run (delete them after).
set -euo pipefail

FILES="100000 1000000"
UNIQUE=""
STORE=s3
RESTIC=1
VERIFY=1
SMALL=""
D=/work/bench-data
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES=$2; shift 2 ;;
    --unique-gib) UNIQUE=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --skip-restic) RESTIC=0; shift ;;
    --no-verify) VERIFY=0; shift ;;
    --data) D=$2; shift 2 ;;
    --small-restore) SMALL=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# BERTH=path runs that binary (e.g. a baseline build) instead of building this checkout.
if [ -z "${BERTH:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin berth -q)
  BERTH=$CARGO_TARGET_DIR/release/berth
fi
AGENT=("$BERTH" agent)
[ "$RESTIC" = 0 ] || command -v restic >/dev/null || { echo "restic not found: apt-get install -y restic" >&2; exit 1; }
mkdir -p "$D"
W=$(mktemp -d "$D/scale.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for m in "$W"/t-*; do if mountpoint -q "$m"; then umount "$m"; fi; done
  rm -rf "$W"
}
trap cleanup EXIT
export BERTH_REPOSITORY_KEY=bench-key BERTH_PROGRESS=none BERTH_LOG=warn RESTIC_PASSWORD=bench-key

# ---------------------------------------------------------------- helpers
# measure KEY CMD...: runs CMD, records "seconds maxrss_kib cpu_seconds" in $W/KEY.m
measure() {
  local k=$1; shift
  python3 - "$W/$k.m" "$@" > "$W/$k.out" 2> "$W/$k.err" <<'PY' || { cat "$W/$k.err" >&2; exit 1; }
import os, subprocess, sys, time
t = time.monotonic()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
dt = time.monotonic() - t
code = os.waitstatus_to_exitcode(status)
if code != 0:
    sys.exit(f"{sys.argv[2:]} exited with {code}")
open(sys.argv[1], "w").write(f"{dt:.2f} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime:.2f}\n")
PY
}
secs() { cut -d' ' -f1 "$W/$1.m"; }
cpu() { cut -d' ' -f3 "$W/$1.m"; }
# CPU seconds the S3 server has used so far (0 for file://): it shares the cores with the tools.
server_cpu() {
  if [ -n "${GARAGE_PID:-}" ]; then awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$GARAGE_PID/stat"; else echo 0; fi
}
# measure_s3 KEY CMD...: measure, and the S3 server's CPU seconds meanwhile in $W/KEY.s
measure_s3() {
  local k=$1 before; before=$(server_cpu)
  measure "$@"
  python3 -c "print(f'{$(server_cpu) - $before:.2f}')" > "$W/$k.s"
}
rss() { awk '{printf "%.0f", $2/1024}' "$W/$1.m"; }
per_s() { python3 -c "print(f'{$1/$(secs "$2"):.0f}')"; }
gib() { python3 -c "print(f'{$1/2**30:.2f}')"; }
load() { cut -d' ' -f1 /proc/loadavg; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

gen_tree() {
  python3 - "$1" "$2" <<'PY'
import binascii, math, os, random, sys
root, want = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20261204 + want)
def content(n):
    h = n // 2
    return rnd.randbytes(h) + binascii.hexlify(rnd.randbytes((n - h + 1) // 2))[: n - h]
def size():
    if rnd.random() < 0.003:
        return rnd.randint(1 << 20, 2 << 20)
    return min(int(rnd.lognormvariate(math.log(4096), 1.0)), (1 << 20) - 1)
left = [want]
big = max(1, 3 * want // 1_000_000)
def mk(path, depth):
    os.mkdir(path)
    n = int(math.exp(rnd.uniform(math.log(10), math.log(1000))))
    subs = 0 if depth >= 12 else rnd.choice([0, 0, 1, 2, 3, 5])
    subs = min(subs, n)
    for i in range(n - subs):
        if left[0] <= 0:
            break
        with open(os.path.join(path, f"f{i:04d}.dat"), "wb") as f:
            f.write(content(size()))
        left[0] -= 1
    for i in range(subs):
        if left[0] <= 0:
            break
        mk(os.path.join(path, f"d{i}"), depth + 1)
os.mkdir(root)
t = 0
while left[0] > 0:
    mk(os.path.join(root, f"top{t}"), 1); t += 1
os.makedirs(os.path.join(root, "big"))
for i in range(big):
    with open(os.path.join(root, "big", f"large{i}.img"), "wb") as f:
        for _ in range(rnd.randint(100, 160)):
            f.write(content(1 << 20))
PY
}

# ---------------------------------------------------------------- repositories
bucket_bytes() { du -sb "$W/repo-$1" | cut -f1; }
if [ "$STORE" = s3 ]; then
  . "$ROOT/scripts/lib/garage.sh"
  garage_start "$W/garage"
  PIDS+=("$GARAGE_PID")
  S3P=$GARAGE_S3_PORT
  N_BUCKET=0
  # new_repos: a fresh bucket pair for berth and restic.
  new_repos() {
    N_BUCKET=$((N_BUCKET + 1))
    garage_bucket "berth$N_BUCKET"; garage_bucket "restic$N_BUCKET"
    export BERTH_REPOSITORY=s3://berth$N_BUCKET/repo RESTIC_REPOSITORY=s3:http://127.0.0.1:$S3P/restic$N_BUCKET
  }
  drop_repo() { :; }
  bucket_bytes() { garage_bytes "$1$N_BUCKET"; }
  drop_bucket() { G bucket delete --yes "$1$N_BUCKET" >/dev/null 2>&1 || true; }
else
  new_repos() {
    rm -rf "$W/repo-berth" "$W/repo-restic"
    export BERTH_REPOSITORY=file://$W/repo-berth RESTIC_REPOSITORY=$W/repo-restic
  }
  drop_bucket() { rm -rf "$W/repo-$1"; }
fi

ROWS=()
row() { ROWS+=("$(printf '| %9s | %-6s | %7ss %6sMi | %7ss %6sMi | %7ss %6sMi | %7s | %7s | %6s GiB | %s |' "$@")"); }

# ---------------------------------------------------------------- trees of many files
for N in $FILES; do
  df -h "$D" | tail -1 >&2
  # Trees are kept in $D/trees between runs (deterministic; the 1M tree takes ~10 minutes).
  SRC=$D/trees/src-$N
  if [ ! -e "$SRC.complete" ]; then
    rm -rf "$SRC"; mkdir -p "$D/trees"
    echo "generating $N files in $SRC" >&2
    gen_tree "$SRC" "$N"
    touch "$SRC.complete"
  fi
  BYTES=$(du -sb "$SRC" | cut -f1)
  COUNT=$(find "$SRC" -type f | wc -l)
  echo "$COUNT files, $(gib "$BYTES") GiB" >&2
  new_repos
  "${AGENT[@]}" init > /dev/null
  L1=$(load); drop_caches
  measure b_backup "${AGENT[@]}" backup-dir "$SRC"
  measure b_rerun "${AGENT[@]}" backup-dir "$SRC"
  drop_caches
  measure b_restore "${AGENT[@]}" restore latest --target "$W/restore"
  sync
  if [ "$VERIFY" = 1 ]; then diff -r "$SRC" "$W/restore" > /dev/null || { echo "berth restore differs from the source" >&2; exit 1; }; fi
  rm -rf "$W/restore"
  SIZE=$(bucket_bytes berth); drop_bucket berth
  row "$COUNT" berth "$(secs b_backup)" "$(rss b_backup)" "$(secs b_rerun)" "$(rss b_rerun)" "$(secs b_restore)" "$(rss b_restore)" \
    "$(per_s "$COUNT" b_backup)" "$(per_s "$COUNT" b_restore)" "$(gib "$SIZE")" "$L1"
  if [ "$RESTIC" = 1 ]; then
    restic init -q > /dev/null
    L2=$(load); drop_caches
    measure r_backup restic backup -q "$SRC"
    measure r_rerun restic backup -q "$SRC"
    drop_caches
    measure r_restore restic restore latest -q --target "$W/restore"
    sync
    if [ "$VERIFY" = 1 ]; then diff -r "$SRC" "$W/restore/$SRC" > /dev/null || { echo "restic restore differs from the source" >&2; exit 1; }; fi
    rm -rf "$W/restore"
    SIZE=$(bucket_bytes restic); drop_bucket restic
    row "$COUNT" restic "$(secs r_backup)" "$(rss r_backup)" "$(secs r_rerun)" "$(rss r_rerun)" "$(secs r_restore)" "$(rss r_restore)" \
      "$(per_s "$COUNT" r_backup)" "$(per_s "$COUNT" r_restore)" "$(gib "$SIZE")" "$L2"
  fi
done

# ---------------------------------------------------------------- small-file restore (item 3)
SMALL_ROWS=()
if [ -n "$SMALL" ]; then
  SRC=$W/small
  gen_tree "$SRC" "$SMALL"
  rm -rf "$SRC/big"   # small files only
  COUNT=$(find "$SRC" -type f | wc -l); BYTES=$(du -sb "$SRC" | cut -f1)
  new_repos
  "${AGENT[@]}" init > /dev/null
  "${AGENT[@]}" backup-dir "$SRC" > /dev/null
  [ "$RESTIC" = 0 ] || { restic init -q > /dev/null; restic backup -q "$SRC" > /dev/null; }
  tar -C "$SRC" -cf "$W/small.tar" .
  # Each restore writes into a freshly made ext4 file system (a loop device, when this runs as
  # root): ext4's inode allocator slows down by several times after the many deletes of
  # earlier runs, which would measure the file system's history rather than the tools.
  FRESH=loop
  fresh_fs() {
    mkdir -p "$1"
    if [ "$FRESH" = loop ]; then
      truncate -s 4G "$1.img" && mkfs.ext4 -q -F "$1.img" && mount -o loop "$1.img" "$1" 2>/dev/null \
        || { FRESH=dir; rm -f "$1.img"; echo "no loop mount: restores go to $W (file system history included)" >&2; }
    fi
  }
  drop_fs() { if mountpoint -q "$1"; then umount "$1"; fi; rm -rf "$1" "$1.img"; }
  for i in 1 2 3; do
    cat "$W/small.tar" > /dev/null   # in page cache
    fresh_fs "$W/t-tar"; measure "tar$i" sh -c "tar -C $W/t-tar -xf $W/small.tar && sync"; drop_fs "$W/t-tar"
    fresh_fs "$W/t-berth"
    measure_s3 "br$i" sh -c "${AGENT[*]} restore latest --target $W/t-berth/r > /dev/null && sync"
    if [ "$VERIFY" = 1 ] && [ "$i" = 1 ]; then
      diff -r "$SRC" "$W/t-berth/r" > /dev/null || { echo "berth restore differs" >&2; exit 1; }
    fi
    drop_fs "$W/t-berth"
    if [ "$RESTIC" = 1 ]; then
      fresh_fs "$W/t-restic"; measure_s3 "rr$i" sh -c "restic restore latest -q --target $W/t-restic/r && sync"; drop_fs "$W/t-restic"
    fi
  done
  # Initial backup against tar | zstd -1 -T2 (item 4), page cache warm for both, fresh
  # repository each time.
  # Read the tree just before each run, through a pipe: GNU tar writing straight to /dev/null
  # skips reading the files, and a kernel that pages out what was not used for a while (DAMON
  # reclaim on this machine's VM) would leave either side reading part of it from disk.
  warm() { tar -C "$SRC" -cf - . | cat > /dev/null; }
  for i in 1 2 3; do
    warm; measure "tz$i" sh -c "tar -C $SRC -cf - . | zstd -q -1 -T2 > /dev/null"
    new_repos; "${AGENT[@]}" init > /dev/null
    warm; measure "bi$i" "${AGENT[@]}" backup-dir "$SRC"
    # The same at zstd level 1, like for like with `zstd -1` (the default level is 3).
    new_repos; "${AGENT[@]}" init > /dev/null
    warm; measure "bl$i" "${AGENT[@]}" backup-dir --compression-level 1 "$SRC"
  done
  med() { for i in 1 2 3; do secs "$1$i"; done | sort -n | sed -n 2p; }
  med_cpu() { for i in 1 2 3; do cpu "$1$i"; done | sort -n | sed -n 2p; }
  med_s3() { for i in 1 2 3; do cat "$W/$1$i.s"; done | sort -n | sed -n 2p; }
  SMALL_ROWS+=("small-file tree: $COUNT files, $(gib "$BYTES") GiB; median of 3, load $(load)")
  SMALL_ROWS+=("  restore (+ sync, each into a fresh $([ "$FRESH" = loop ] && echo "ext4 loop file system" || echo "directory of $W")): tar x from page cache $(med tar)s, berth $(med br)s, restic $([ "$RESTIC" = 0 ] && echo - || med rr)s")
  SMALL_ROWS+=("  restore CPU seconds (user + sys): tar $(med_cpu tar), berth $(med_cpu br) + S3 server $(med_s3 br), restic $([ "$RESTIC" = 0 ] && echo - || echo "$(med_cpu rr) + S3 server $(med_s3 rr)")")
  ratio() { python3 -c "print(f'{$(med "$1")/$(med tz):.2f}')"; }
  SMALL_ROWS+=("  initial backup (warm cache): tar | zstd -1 -T2 $(med tz)s, berth $(med bi)s = $(ratio bi)x, berth --compression-level 1 $(med bl)s = $(ratio bl)x")
  rm -rf "$W"/t-* "$W/small.tar" "$SRC"
fi

# ---------------------------------------------------------------- large unique data (memory)
gen_unique() {  # gen_unique DIR GIB [verify]: 4 files of GIB/4 GiB; each 4 KiB block unique
  python3 - "$@" <<'PY'
import os, sys
root, gib = sys.argv[1], float(sys.argv[2]); verify = len(sys.argv) > 3
per = int(gib * 2**30 / 4) // (1 << 20)   # MiB per file
filler = bytes(range(256)) * 16
os.makedirs(root, exist_ok=True)
for f in range(4):
    path = os.path.join(root, f"unique{f}.bin")
    h = open(path, "rb" if verify else "wb")
    for m in range(per):
        block = b"".join((f * 2**40 + m * 256 + k).to_bytes(8, "little") + filler[8:4096] for k in range(256))
        if verify:
            if h.read(len(block)) != block:
                sys.exit(f"{path}: MiB {m} differs")
        else:
            h.write(block)
    if verify and h.read(1):
        sys.exit(f"{path}: longer than generated")
    h.close()
PY
}
for G_ in $UNIQUE; do
  df -h "$D" | tail -1 >&2
  SRC=$W/unique-$G_
  gen_unique "$SRC" "$G_"
  new_repos
  "${AGENT[@]}" init > /dev/null
  L1=$(load); drop_caches
  measure u_backup "${AGENT[@]}" backup-dir "$SRC"
  rm -rf "$SRC"
  measure u_restore "${AGENT[@]}" restore latest --target "$SRC"
  [ "$VERIFY" = 0 ] || gen_unique "$SRC" "$G_" verify
  rm -rf "$SRC"
  SIZE=$(bucket_bytes berth); drop_bucket berth
  row "${G_}GiB" berth "$(secs u_backup)" "$(rss u_backup)" - - "$(secs u_restore)" "$(rss u_restore)" - - "$(gib "$SIZE")" "$L1"
done

echo
echo "## bench-scale: $("$BERTH" --version 2>/dev/null || echo berth) ($BERTH) vs restic $(restic version 2>/dev/null | awk '{print $2}'), store $STORE, $(nproc) cores"
echo "| files     | tool   | backup (peak RSS)  | re-run (peak RSS)  | restore (peak RSS) | files/s backup | files/s restore | repository | load |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
[ ${#SMALL_ROWS[@]} = 0 ] || printf '%s\n' "${SMALL_ROWS[@]}"
