#!/usr/bin/env bash
# The drift attack, stopped: a throwaway "container" (overlay rootfs + tmpfs /tmp) in a
# private mount namespace, armed by the driftlock daemon, then an attacker drops a payload
# into /tmp and runs it.
#
#   sudo ./scripts/demo.sh
#
# Nothing outside the private mount namespace is marked; the daemon is stopped at the end.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (fanotify needs CAP_SYS_ADMIN)" >&2; exit 1; }
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "demo.sh: install Rust first (https://rustup.rs)" >&2; exit 1; }
command -v jq >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq; } >/dev/null
cargo build --release -q
bin=$PWD/target/release/driftlock
exec unshare -m --propagation private bash -s "$bin" <<'INNER'
set -uo pipefail
bin=$1
t=$(mktemp -d /tmp/driftlock-demo.XXXXXX)
mount -t tmpfs tmpfs "$t"
mkdir -p "$t"/{lower/bin,upper,work,rootfs,state}
for p in /usr/bin/sh /usr/bin/cat /usr/bin/ls /usr/bin/cp /usr/bin/chmod; do cp "$p" "$t/lower/bin/"; done
mount -t overlay overlay -o "lowerdir=$t/lower,upperdir=$t/upper,workdir=$t/work" "$t/rootfs"
mkdir -p "$t/rootfs/tmp" && mount -t tmpfs tmpfs "$t/rootfs/tmp"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() { kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; umount -l "$t" 2>/dev/null; rmdir "$t" 2>/dev/null; }

say "start the daemon (enforce mode by default)"
"$bin" daemon --log-level warn --socket "$t/d.sock" --state-dir "$t/state" --audit-log "$t/audit.jsonl" >/dev/null &
daemon=$!
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$t/d.sock" ] && break; sleep 0.05; done
say "arm the container: baseline of its image, marks on its rootfs and /tmp"
"$bin" arm --socket "$t/d.sock" --id web-1 --rootfs "$t/rootfs" --mount "$t/rootfs/tmp"

say "image programs keep working"
"$t/rootfs/bin/ls" "$t/rootfs/bin" | tr '\n' ' '; echo

say "the attacker drops a payload into /tmp, chmod +x, runs it"
cp /usr/bin/id "$t/rootfs/tmp/kdevtmpfsi"
"$t/rootfs/bin/chmod" +x "$t/rootfs/tmp/kdevtmpfsi"
"$t/rootfs/bin/sh" -c "$t/rootfs/tmp/kdevtmpfsi"; echo "exit status $?"

say "a copy of an image program under another name is the same program: allowed"
cp "$t/rootfs/bin/ls" "$t/rootfs/tmp/renamed-ls" && "$t/rootfs/tmp/renamed-ls" -d /; echo "exit status $?"

say "the audit record (left the container at once)"
sleep 0.3; jq -c 'select(.kind == null)' "$t/audit.jsonl" | tail -n 1 | jq '{time, unit, image_key, mode, verdict, reason, path, pid, comm, cmdline, chain: [.chain[] | "\(.pid) \(.comm)"], blake3, sha256, size}' 

say "the same container in audit mode: the payload runs, the record says would-deny"
"$bin" disarm --socket "$t/d.sock" --id web-1 >/dev/null
"$bin" arm --socket "$t/d.sock" --id web-1 --rootfs "$t/rootfs" --mount "$t/rootfs/tmp" --mode audit >/dev/null
"$t/rootfs/tmp/kdevtmpfsi" >/dev/null; echo "exit status $?"
sleep 0.3; jq -c 'select(.kind == null)' "$t/audit.jsonl" | tail -n 1 | jq -c '{verdict, reason, path, sha256}' 

say "status"
"$bin" status --socket "$t/d.sock"
INNER
