#!/usr/bin/env bash
# Added container start time: `ctr run --rm IMAGE ID /bin/true` through plain runc and
# through driftlock-runtime, alternating, in a private containerd (own root, state, socket)
# inside a private mount namespace.
#
#   ./scripts/bench-container-start.sh [ROUNDS]        (as root; default 30 rounds)
#
# "cold": the stored baseline is deleted first (the first start of an image: snapshot);
# "warm": the baseline is in the store (every later start of the image).
set -euo pipefail
rounds=${1:-30}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release
images=$(mktemp -d)
trap 'rm -rf "$images"' EXIT
testdata/build-images.sh "$images" >/dev/null
unshare -m --propagation private bash -s "$bin" "$images" "$rounds" <<'INNER'
set -euo pipefail
bin=$1 images=$2 rounds=$3
t=$(mktemp -d /tmp/driftlock-startbench.XXXXXX)
mount -t tmpfs tmpfs "$t"
mkdir -p "$t"/{root,state,dl}
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
"$bin/driftlock" daemon --log-level warn --socket "$t/dl/d.sock" --state-dir "$t/dl/state" >/dev/null &
dpid=$!
DRIFTLOCK_SOCKET=$t/dl/d.sock containerd --config "$t/config.toml" >/dev/null 2>&1 &
cpid=$!
cleanup() { kill "$cpid" "$dpid" 2>/dev/null; wait 2>/dev/null; umount -l "$t"; rmdir "$t"; }
trap cleanup EXIT
while [ ! -S "$t/c.sock" ] || [ ! -S "$t/dl/d.sock" ]; do sleep 0.05; done
ctr="ctr -a $t/c.sock"
$ctr images import --base-name localhost/driftlock/busybox "$images/busybox.tar" >/dev/null </dev/null
img=localhost/driftlock/busybox:latest
# ctr reads stdin: keep it off this script (bash -s reads the script from stdin).
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null </dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
for i in $(seq "$rounds"); do
  ms $ctr run --rm --runc-binary /usr/sbin/runc "$img" "p$i" /bin/true >> "$t/plain"
  rm -f "$t"/dl/state/baselines/*.baseline
  ms $ctr run --rm --runc-binary "$bin/driftlock-runtime" "$img" "c$i" /bin/true >> "$t/cold"
  ms $ctr run --rm --runc-binary "$bin/driftlock-runtime" "$img" "w$i" /bin/true >> "$t/warm"
done
med() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]/1000}'; }
p=$(med "$t/plain"); c=$(med "$t/cold"); w=$(med "$t/warm")
echo "ctr run --rm /bin/true, $rounds rounds, median ms: runc $p, driftlock first start (snapshot) $c, driftlock later start $w"
echo "added: first start $(echo "$c - $p" | bc) ms, later start $(echo "$w - $p" | bc) ms"
INNER
