#!/usr/bin/env bash
# Added container start time: `ctr run --rm IMAGE ID /bin/true` through plain runc and
# through driftlock-runtime, alternating, in a private containerd (own root, state, socket)
# inside a private mount namespace.
#
#   ./scripts/bench-container-start.sh [ROUNDS]        (as root; default 30 rounds)
#
# "cold": the stored baseline is deleted first (the first start of an image: snapshot);
# "warm": the baseline is in the store (every later start of the image).
# Prints a markdown section with a breakdown of the added time (needs hyperfine, jq and
# strace); with DRIFTLOCK_BENCH_RESULTS=FILE also key=value lines there.
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
"$bin/driftlock" daemon --log-level info --socket "$t/dl/d.sock" --state-dir "$t/dl/state" >/dev/null 2>"$t/daemon.log" &
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
# A first start stores the image's baseline for the later ones.
$ctr run --rm --runc-binary "$bin/driftlock-runtime" "$img" "w0" /bin/true >/dev/null </dev/null
for i in $(seq "$rounds"); do
  # Each round starts at another of the three (see the rounds without a wrapper below).
  sides=(plain cold warm)
  for k in 0 1 2; do
    case ${sides[$(( (i + k) % 3 ))]} in
      plain) ms $ctr run --rm --runc-binary /usr/sbin/runc "$img" "p$i" /bin/true >> "$t/plain" ;;
      cold)
        rm -f "$t"/dl/state/baselines/*.baseline
        ms $ctr run --rm --runc-binary "$bin/driftlock-runtime" "$img" "c$i" /bin/true >> "$t/cold"
        ;;
      warm) ms $ctr run --rm --runc-binary "$bin/driftlock-runtime" "$img" "w$i" /bin/true >> "$t/warm" ;;
    esac
  done
done
# The path without a wrapper (containerd's CRI with a base runtime spec): `ctr run --config`
# with containerd's default spec as it is (runc alone) and through `driftlock base-spec`
# (hooks, plain runc), each on a fresh overlay of the unpacked image, as CRI's snapshot is.
mkdir -p "$t/layout" "$t/img" "$t/ov"
tar -C "$t/layout" -xf "$images/busybox.tar"
umoci unpack --image "$t/layout:latest" "$t/img" >/dev/null
$ctr oci spec </dev/null > "$t/default.json"
"$bin/driftlock" base-spec --from "$t/default.json" --socket "$t/dl/d.sock" --hook-binary "$bin/driftlock" > "$t/hooked.json"
# The same spec with a createRuntime hook that does nothing: what runc's running of a hook
# process costs by itself, the least any hook-based arm pays.
jq '.hooks.createRuntime[0].path = "/usr/bin/true" | .hooks.createRuntime[0].args = ["true"]' "$t/hooked.json" > "$t/noop.json"
spec_for() { # SPEC NAME: the spec with a fresh overlay rootfs and /bin/true, at $t/ov/NAME.json
  mkdir -p "$t/ov/$2"/{u,w,r}
  mount -t overlay overlay -o "lowerdir=$t/img/rootfs,upperdir=$t/ov/$2/u,workdir=$t/ov/$2/w" "$t/ov/$2/r"
  jq --arg r "$t/ov/$2/r" --arg c "/default/$2" '.root = {path: $r, readonly: false} | .process.args = ["/bin/true"] | .process.terminal = false | .process.env = ["PATH=/bin"] | .linux.cgroupsPath = $c' "$1" > "$t/ov/$2.json"
}
for i in $(seq "$rounds"); do
  spec_for "$t/default.json" "sp$i"; spec_for "$t/hooked.json" "sb$i"; spec_for "$t/noop.json" "sn$i"
  # Each round starts at another of the three, so that a cost of going first (or last)
  # falls on each alike.
  sides=(plain base noop)
  for k in 0 1 2; do
    case ${sides[$(( (i + k) % 3 ))]} in
      plain) ms $ctr run --rm --config "$t/ov/sp$i.json" "sp$i" >> "$t/spec_plain" ;;
      base) ms $ctr run --rm --config "$t/ov/sb$i.json" "sb$i" >> "$t/spec_base" ;;
      noop) ms $ctr run --rm --config "$t/ov/sn$i.json" "sn$i" >> "$t/spec_noop" ;;
    esac
  done
  umount "$t/ov/sp$i/r" "$t/ov/sb$i/r" "$t/ov/sn$i/r"; rm -rf "$t/ov/sp$i" "$t/ov/sb$i" "$t/ov/sn$i"
done
based=$(grep -c 'arm of "sb[0-9]*" took' "$t/daemon.log" || true)
med() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]/1000}'; }
p=$(med "$t/plain"); c=$(med "$t/cold"); w=$(med "$t/warm")
sp=$(med "$t/spec_plain"); sb=$(med "$t/spec_base")
# Added time: the median of each round's difference (the start against the plain start
# of the same round), so that the VM's drift between rounds cancels out.
paired() { paste "$1" "$2" | awk '{print $1 - $2}' > "$t/pair"; med "$t/pair"; }
base_added=$(paired "$t/spec_base" "$t/spec_plain")
noop_added=$(paired "$t/spec_noop" "$t/spec_plain")
# Where the later start's milliseconds go.
# - The daemon's own arm, by phase (its log line per arm of a later start).
phase() { grep -E "arm of \"w[1-9][0-9]*\" took" "$t/daemon.log" | sed -n "s/.*$1 \([0-9.]*\).*/\1/p" | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int((NR+1)/2)]; else printf "n/a"}'; }
arm_total=$(phase took); mounts=$(phase "mounts"); base=$(phase "baseline"); memfd=$(phase "memfd_noexec"); marks=$(phase "marks"); rec=$(phase "record")
# - The runtime's invocations of runc during one `ctr run --rm`, each through the wrapper
#   (counted once under strace, which follows containerd's children).
strace -f -qq -e trace=execve -e signal=none -o "$t/strace" -p "$cpid" & spid=$!
sleep 0.5
$ctr run --rm --runc-binary "$bin/driftlock-runtime" "$img" "s1" /bin/true >/dev/null </dev/null
sleep 0.3; kill "$spid"; wait "$spid" 2>/dev/null || true
wrapped=$(grep -c "execve(\"$bin/driftlock-runtime\"" "$t/strace" || true)
hooks=$(grep -c "execve(\"[^\"]*driftlock\", \[[^]]*\"hook\"" "$t/strace" || true)
# - Process start costs, measured alone: the wrapper in front of runc, and a hook process
#   (the driftlock binary doing nothing).
hf() { hyperfine -N -w 5 -r 40 --export-json "$t/hf.json" "$@" >/dev/null 2>&1; jq -r '.results[].median * 1000' "$t/hf.json"; }
read -r runc_v wrap_v < <(hf "/usr/sbin/runc --version" "$bin/driftlock-runtime --version" | paste -sd' ')
hook_start=$(hf "$bin/driftlock --version")
wrap_each=$(echo "$wrap_v - $runc_v" | bc -l)
added=$(paired "$t/warm" "$t/plain")
explained=$(echo "$wrapped * $wrap_each + $hooks * $hook_start + $arm_total" | bc -l)
rest=$(echo "$added - $explained" | bc -l)
f() { printf %.1f "$1"; }
echo "## Container start"
echo
echo "\`./scripts/bench-container-start.sh $rounds\`: \`ctr run --rm\` of busybox's \`/bin/true\` through plain runc and through \`driftlock-runtime\` (the hooks arm the container; where the kernel has pidfds the daemon disarms it when its init exits, else a poststop hook does), alternating, $rounds rounds, medians; *added* is the median of each round's difference from that round's plain start, in a private containerd."
echo
echo "| start | ms | added ms |"
echo "|---|---|---|"
echo "| runc alone | $(f "$p") | |"
echo "| driftlock, the image's first start (snapshot) | $(f "$c") | $(f "$(paired "$t/cold" "$t/plain")") |"
echo "| driftlock, a later start (stored baseline) | $(f "$w") | $(f "$added") |"
echo "| runc alone, containerd's default spec (\`ctr run --config\`, a fresh overlay of the image) | $(f "$sp") | |"
echo "| driftlock without the wrapper: the same spec through \`driftlock base-spec\` (hooks, plain runc; $based of $rounds starts armed) | $(f "$sb") | $(f "$base_added") |"
echo
echo "Where a later start's added milliseconds go:"
echo
echo "| part | ms |"
echo "|---|---|"
echo "| the wrapper in front of runc: $wrapped invocations per \`ctr run --rm\` × $(f "$wrap_each") ms each (\`driftlock-runtime --version\` against \`runc --version\`, hyperfine medians) | $(f "$(echo "$wrapped * $wrap_each" | bc -l)") |"
echo "| the hook processes: $hooks (createRuntime arms$([ "$hooks" -gt 1 ] && echo ', poststop disarms'; true)) × $(f "$hook_start") ms to start one (\`driftlock --version\`) | $(f "$(echo "$hooks * $hook_start" | bc -l)") |"
echo "| the daemon's arm (its log, median): reading the mount tables $mounts, baseline from the store $base, \`vm.memfd_noexec\` helper $memfd, marks $marks, unit record $rec | $arm_total |"
echo "| the rest: the hooks' own work (OCI state, bundle config, the socket round trips), the disarm, runc's running of hooks, noise | $(f "$rest") |"
base_rest=$(echo "$base_added - $noop_added - ($hooks - 1) * $hook_start - $arm_total" | bc -l)
echo
echo "Without the wrapper (the base runtime spec) its share is gone: $(f "$base_added") ms = runc running a hook process at all $(f "$noop_added") (the same spec with \`/usr/bin/true\` as its createRuntime hook, paired against the plain spec: a fork and exec from runc, the state on its stdin, the wait) + the daemon's arm $arm_total + the rest (the \`driftlock\` binary's start beyond \`true\`'s, the hook's own work and socket round trip, the disarm, noise) $(f "$base_rest")."
if [ -n "${DRIFTLOCK_BENCH_RESULTS:-}" ]; then
  {
    echo "start_added_ms=$added"
    echo "start_first_added_ms=$(paired "$t/cold" "$t/plain")"
    echo "start_runc_ms=$p"
    echo "start_wrapper_ms=$(echo "$wrapped * $wrap_each" | bc -l)"
    echo "start_hooks_ms=$(echo "$hooks * $hook_start" | bc -l)"
    echo "start_arm_ms=$arm_total"
    echo "start_memfd_ms=$memfd"
    echo "start_base_spec_added_ms=$base_added"
    echo "start_base_spec_armed=$based/$rounds"
    echo "start_noop_hook_ms=$noop_added"
  } >> "$DRIFTLOCK_BENCH_RESULTS"
fi
INNER
