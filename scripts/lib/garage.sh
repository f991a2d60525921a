# Shared by the bench scripts: a single-node Garage S3 server on free loopback ports.
#   . scripts/lib/garage.sh; garage_start DIR   (then: garage_bucket NAME, garage_bytes NAME)
# The caller kills "$GARAGE_PID" on exit. Exports AWS_* and BERTH_S3_* for the bench key.
GARAGE=${GARAGE:-$(command -v garage || echo /work/bench-data/garage/bin/garage)}
[ -x "$GARAGE" ] || { echo "garage not found: cargo install garage@2.5.0 --locked (or set GARAGE)" >&2; exit 1; }

G() { "$GARAGE" -c "$GARAGE_DIR/garage.toml" "$@"; }

garage_start() {
  GARAGE_DIR=$1
  local free_port='import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  GARAGE_S3_PORT=$(python3 -c "$free_port")
  local rpc adm; rpc=$(python3 -c "$free_port"); adm=$(python3 -c "$free_port")
  mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
  cat > "$GARAGE_DIR/garage.toml" <<TOML
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "lmdb"
replication_factor = 1
# Both clients upload encrypted, incompressible data. Garage's default (zstd level 1) would
# compress every block on PUT and decompress it on every GET, on the same two cores as the
# clients: server work that neither tool asked for.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(openssl rand -hex 32 2>/dev/null || python3 -c 'import secrets; print(secrets.token_hex(32))')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$GARAGE_S3_PORT"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$adm"
TOML
  chmod 600 "$GARAGE_DIR/garage.toml"
  "$GARAGE" -c "$GARAGE_DIR/garage.toml" server > "$GARAGE_DIR/garage.log" 2>&1 &
  GARAGE_PID=$!
  for _ in $(seq 100); do G status >/dev/null 2>&1 && break; sleep 0.2; done
  local node keyout
  node=$(G status 2>/dev/null | awk '/^[0-9a-f]{16}/ {print $1; exit}')
  G layout assign -z dc1 -c 100G "$node" >/dev/null
  G layout apply --version 1 >/dev/null
  keyout=$(G key create bench)
  export AWS_ACCESS_KEY_ID; AWS_ACCESS_KEY_ID=$(echo "$keyout" | awk '/Key ID:/ {print $3}')
  export AWS_SECRET_ACCESS_KEY; AWS_SECRET_ACCESS_KEY=$(echo "$keyout" | awk '/Secret key:/ {print $3}')
  export AWS_REGION=us-east-1 BERTH_S3_ENDPOINT=http://127.0.0.1:$GARAGE_S3_PORT BERTH_S3_INSECURE_HTTP=true
}

# garage_bucket NAME: a bucket the bench key owns.
garage_bucket() {
  G bucket create "$1" >/dev/null
  G bucket allow --read --write --owner "$1" --key bench >/dev/null
}

# garage_bytes NAME: "Size: 664.6 MB (633.8 MiB)" -> bytes
garage_bytes() {
  G bucket info "$1" | python3 -c '
import re, sys
m = re.search(r"^Size:.*\(([0-9.]+) (B|KiB|MiB|GiB|TiB)\)", sys.stdin.read(), re.M)
u = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
print(int(float(m.group(1)) * u[m.group(2)]) if m else 0)'
}
