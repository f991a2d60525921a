#!/usr/bin/env bash
# Benchmark of the backup data path: `berth-agent` (= `berth agent`) against restic (Debian
# package) on the same Garage S3 server on loopback, in the same run.
#
#   scripts/bench-backup.sh [--size-mib N] [--pgbench-scale N] [--runs N] [--skip-pg] [--skip-dir] [--keep]
#
# Every step runs --runs times (default 3) on independent repositories and the median is
# reported: on a small shared machine single timings vary by ±30 %.
#
# Needs: garage 2.5.0 (`cargo install garage@2.5.0 --locked`; GARAGE=/path overrides),
# restic, python3, postgresql-15 (for the pg_dump part). Builds berth-agent in release mode.
# Prints a table of wall-clock times, rates, uploaded bytes and repository sizes.
set -euo pipefail

SIZE_MIB=1024
PG_SCALE=50
SKIP_PG=0
SKIP_DIR=0
KEEP=0
RUNS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --pgbench-scale) PG_SCALE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --skip-pg) SKIP_PG=1; shift ;;
    --skip-dir) SKIP_DIR=1; shift ;;
    --keep) KEEP=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v restic >/dev/null || { echo "restic not found: apt-get install -y restic" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release --bin berth -q)
AGENT=("$CARGO_TARGET_DIR/release/berth" agent)

W=$(mktemp -d /tmp/berth-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ "$KEEP" = 0 ]; then rm -rf "$W"; else echo "kept $W"; fi
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2-$1:.2f}')"; }

# ---------------------------------------------------------------- Garage (single node)
. "$ROOT/scripts/lib/garage.sh"
garage_start "$W/garage"
PIDS+=("$GARAGE_PID")
S3P=$GARAGE_S3_PORT
BUCKETS=()
for i in $(seq "$RUNS"); do BUCKETS+=("berth$i" "restic$i"); done
for b in "${BUCKETS[@]}" berthpg; do garage_bucket "$b"; done
export BERTH_REPOSITORY_KEY=bench-key BERTH_PROGRESS=none BERTH_LOG=warn
export RESTIC_PASSWORD=bench-key
# Run i uses bucket berth<i> / restic<i>.
use_run() { export BERTH_REPOSITORY=s3://berth$1/repo RESTIC_REPOSITORY=s3:http://127.0.0.1:$S3P/restic$1; }
for i in $(seq "$RUNS"); do
  use_run "$i"
  "${AGENT[@]}" init >/dev/null
  restic init --repository-version 2 -q >/dev/null
done

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

declare -A T
# run KEY CMD...: times CMD (after dropping the page cache) and appends the time to T[KEY].
run() {
  local k=$1; shift; drop_caches; local s; s=$(now)
  "$@" > "$W/$k.out" 2>"$W/$k.err" || { cat "$W/$k.err" >&2; exit 1; }
  T[$k]="${T[$k]:-} $(elapsed "$s" "$(now)")"
}
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" ${T[$1]}; }
spread() { python3 -c "import sys; v=sorted(map(float, sys.argv[1:])); print(f'{v[0]:.2f}-{v[-1]:.2f}')" ${T[$1]}; }
mib() { python3 -c "print(f'{$1/1048576:.1f}')"; }
rate() { python3 -c "print(f'{$DATA_BYTES/1048576/$1:.0f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

if [ "$SKIP_DIR" = 0 ]; then
# ---------------------------------------------------------------- seeded mixed dataset
python3 - "$W/data" "$SIZE_MIB" <<'PY'
import os, random, sys
root, size_mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20261121)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rnd.randint(2, 12))) for _ in range(5000)]
def text(n):
    out = bytearray()
    while len(out) < n:
        line = b" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 14)))
        out += b"    " * rnd.randint(0, 3) + line + b";\n"
    return bytes(out[:n])
budget = size_mib * 1024 * 1024
# 15 %: 20 000-ish small source-like files in a deep tree.
small, i = budget * 15 // 100, 0
while small > 0:
    d = os.path.join(root, "src", f"pkg{i % 97}", f"mod{i % 13}")
    os.makedirs(d, exist_ok=True)
    n = rnd.randint(500, 15000)
    open(os.path.join(d, f"file{i}.rs"), "wb").write(text(n)); small -= n; i += 1
# 35 %: medium binary-ish files (half random, half compressible).
med, i = budget * 35 // 100, 0
os.makedirs(os.path.join(root, "assets"), exist_ok=True)
while med > 0:
    n = rnd.randint(256 << 10, 4 << 20)
    open(os.path.join(root, "assets", f"blob{i}.bin"), "wb").write(rnd.randbytes(n // 2) + text(n - n // 2)); med -= n; i += 1
# 50 %: a few large files (database-file-like: repetitive pages with random parts).
large = budget * 50 // 100
os.makedirs(os.path.join(root, "volumes"), exist_ok=True)
for k in range(4):
    with open(os.path.join(root, "volumes", f"disk{k}.img"), "wb") as f:
        left = large // 4
        while left > 0:
            page = (rnd.randbytes(2048) + text(6144)) if rnd.random() < 0.7 else bytes(8192)
            f.write(page); left -= len(page)
PY
DATA_BYTES=$(du -sb "$W/data" | cut -f1)
FILES=$(find "$W/data" -type f | wc -l)
sync

change_one_percent() {
  python3 - "$W/data" <<'PY'
import os, random, sys
root = sys.argv[1]; rnd = random.Random(7)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
total = sum(os.path.getsize(f) for f in files); target = total // 100; done = 0
for f in rnd.sample(files, len(files) // 100):   # rewrite 1 % of the files entirely
    n = os.path.getsize(f); open(f, "wb").write(rnd.randbytes(n)); done += n
big = [f for f in files if os.path.getsize(f) > 64 << 20]
while done < target:                              # and scattered 64 KiB regions in large files
    f = rnd.choice(big); n = os.path.getsize(f)
    with open(f, "r+b") as h:
        h.seek(rnd.randrange(0, n - 65536)); h.write(rnd.randbytes(65536)); done += 65536
print(done)
PY
}


echo "dataset: $((DATA_BYTES / 1048576)) MiB in $FILES files ($W/data); $RUNS runs per step" >&2
for i in $(seq "$RUNS"); do
  use_run "$i"
  run berth_initial "${AGENT[@]}" --json backup-dir "$W/data"
  run restic_initial restic backup -q "$W/data"
done
SIZE_B1=$(garage_bytes berth1); SIZE_R1=$(garage_bytes restic1)
CHANGED=$(change_one_percent)
for i in $(seq "$RUNS"); do
  use_run "$i"
  run berth_incr "${AGENT[@]}" --json backup-dir "$W/data"
  cp "$W/berth_incr.out" "$W/berth_incr$i.out"
  run restic_incr restic backup -q "$W/data"
done
for i in $(seq "$RUNS"); do
  use_run "$i"
  # Fresh target directories, deleted only at the end: ext4 allocates inodes slowly right
  # after many deletions, which would slow whichever restore comes next.
  run berth_restore "${AGENT[@]}" restore latest --target "$W/r-berth$i"
  run restic_restore restic restore latest -q --target "$W/r-restic$i"
  # Verify both restores against the source.
  diff -r "$W/data" "$W/r-berth$i" > /dev/null || { echo "berth restore differs from the source" >&2; exit 1; }
  diff -r "$W/data" "$W/r-restic$i/$W/data" > /dev/null || { echo "restic restore differs from the source" >&2; exit 1; }
done
rm -rf "$W"/r-berth* "$W"/r-restic*
SIZE_B=$(garage_bytes berth1); SIZE_R=$(garage_bytes restic1)
UP_B=$(python3 -c "import json;print(json.load(open('$W/berth_incr1.out'))['snapshot']['summary']['bytesUploaded'])")

row() { printf '%-22s %9ss %9ss %8sx   %s / %s\n' "$1" "$(median "$2")" "$(median "$3")" "$(ratio "$(median "$3")" "$(median "$2")")" "$(spread "$2")" "$(spread "$3")"; }
echo
echo "## berth agent vs restic $(restic version | awk '{print $2}') on Garage 2.5.0 (loopback), $(nproc) cores"
echo "dataset $(mib "$DATA_BYTES") MiB, $FILES files; change: $(mib "$CHANGED") MiB (1 %); median of $RUNS runs (range berth / restic)"
printf '%-22s %10s %10s %9s   %s\n' step berth restic speedup range
row "initial backup" berth_initial restic_initial
row "backup after 1% change" berth_incr restic_incr
row "restore" berth_restore restic_restore
printf '%-22s %8sMi %8sMi %8sx\n' "repository size" "$(mib "$SIZE_B")" "$(mib "$SIZE_R")" "$(ratio "$SIZE_B" "$SIZE_R")"
echo "initial rate: berth $(rate "$(median berth_initial)") MiB/s, restic $(rate "$(median restic_initial)") MiB/s; berth incremental upload $(mib "$UP_B") MiB; size after initial: berth $(mib "$SIZE_B1") MiB, restic $(mib "$SIZE_R1") MiB"

fi

[ "$SKIP_PG" = 1 ] && exit 0

# ---------------------------------------------------------------- pgbench dump
PGBIN=/usr/lib/postgresql/15/bin
[ -x $PGBIN/postgres ] || { echo "postgresql-15 missing: apt-get install -y postgresql-15" >&2; exit 1; }
PGD=$W/pg; mkdir -p "$PGD/data" "$PGD/sock"; chmod 755 "$W" "$PGD"
AS_PG=()
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$PGD"; AS_PG=(runuser -u postgres --); fi
"${AS_PG[@]}" $PGBIN/initdb -D "$PGD/data" -U postgres --auth=trust -E UTF8 --locale=C > /dev/null
PGPORT=$(free_port)
"${AS_PG[@]}" $PGBIN/postgres -D "$PGD/data" -p "$PGPORT" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$PGD/sock" -c fsync=off -c synchronous_commit=off > "$PGD/log" 2>&1 &
PIDS+=($!)
export PGHOST=127.0.0.1 PGPORT PGUSER=postgres
for _ in $(seq 100); do $PGBIN/pg_isready -q && break; sleep 0.2; done
$PGBIN/createdb bench
$PGBIN/pgbench -i -s "$PG_SCALE" -q bench > /dev/null 2>&1
$PGBIN/psql -XAtq -d bench -c "VACUUM ANALYZE" > /dev/null
for i in $(seq "$RUNS"); do
  run pgdump_plain $PGBIN/pg_dump -f /dev/null bench
  run pgdump_z0 $PGBIN/pg_dump -Fc -Z0 --no-sync -f /dev/null bench
  run pgdump_default $PGBIN/pg_dump -Fc --no-sync -f /dev/null bench
  export BERTH_REPOSITORY=s3://berthpg/first$i
  "${AGENT[@]}" init >/dev/null
  run berth_pg1 "${AGENT[@]}" --json backup-postgres --database bench --no-globals
  cp "$W/berth_pg1.out" "$W/berth_pg1-$i.out"
done
export BERTH_REPOSITORY=s3://berthpg/first1
uploaded() { python3 -c "import json;print(json.load(open('$1'))['snapshot']['summary']['bytesUploaded'])"; }
# < 5 % of the rows, as an application changes them: 4 % of pgbench_accounts (a contiguous
# range of ids: recent accounts) plus 20 000 new pgbench_history rows.
ROWS=$((PG_SCALE * 100000 * 4 / 100))
$PGBIN/psql -XAtq -d bench -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $ROWS" > /dev/null
$PGBIN/psql -XAtq -d bench -c "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1 + g % 10, 1, g, g % 1000, now() FROM generate_series(1, 20000) g" > /dev/null
run berth_pg2 "${AGENT[@]}" --json backup-postgres --database bench --no-globals
# For contrast, scattered changes: 4 000 pgbench transactions (random accounts, tellers,
# branches; 0.1 % of the rows) touch nearly every chunk of a logical dump.
$PGBIN/pgbench -n -t 2000 -c 2 bench > /dev/null 2>&1
run berth_pg3 "${AGENT[@]}" --json backup-postgres --database bench --no-globals
P1=$(uploaded "$W/berth_pg1-1.out"); P2=$(uploaded "$W/berth_pg2.out"); P3=$(uploaded "$W/berth_pg3.out")
DUMP=$(python3 -c "import json;print(json.load(open('$W/berth_pg1-1.out'))['snapshot']['summary']['bytesTotal'])")
echo
echo "## pgbench scale $PG_SCALE (dump $(mib "$DUMP") MiB, custom format -Z0); median of $RUNS runs"
echo "bare pg_dump (plain SQL) > /dev/null: $(median pgdump_plain)s ($(spread pgdump_plain)); pg_dump -Fc -Z0: $(median pgdump_z0)s ($(spread pgdump_z0)); pg_dump -Fc (default compression): $(median pgdump_default)s ($(spread pgdump_default))"
echo "berth backup-postgres: $(median berth_pg1)s ($(spread berth_pg1)) = $(ratio "$(median berth_pg1)" "$(median pgdump_plain)")x of bare pg_dump, $(ratio "$(median berth_pg1)" "$(median pgdump_z0)")x of pg_dump -Fc -Z0 (the stream it reads), $(ratio "$(median berth_pg1)" "$(median pgdump_default)")x of pg_dump -Fc; uploaded $(mib "$P1") MiB"
echo "after updating $ROWS contiguous rows and inserting 20000: $(median berth_pg2)s, uploaded $(mib "$P2") MiB = $(python3 -c "print(f'{100*$P2/$P1:.1f}')") % of the first"
echo "after 4000 pgbench transactions on top (scattered): $(median berth_pg3)s, uploaded $(mib "$P3") MiB = $(python3 -c "print(f'{100*$P3/$P1:.1f}')") % of the first"
