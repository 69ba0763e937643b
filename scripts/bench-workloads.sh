#!/usr/bin/env bash
# What users feel (issue 17): exec-heavy real workloads in a container's rootfs (an overlay
# of the realism suite's Debian image, with /proc, /dev and a tmpfs /tmp), wall time under
# no listener, the floor (benches/floor.c marking the container's filesystems), driftlock
# and fapolicyd (permissive, Debian's configuration watching overlay too), alternating:
#   ./scripts/bench-workloads.sh [ROUNDS]        (as root; default 5)
# - enforce mode: Python's own regression tests that spawn subprocesses (from
#   libpython3.11-testsuite), image programs only;
# - audit mode (the rollout phase): GNU hello's ./configure && make && make check, which
#   creates and runs programs (enforce mode denies them by design).
# Each workload runs in a fresh overlay per run, in a private mount namespace; the image is
# built once and cached (/var/cache/driftlock-realism, as the realism suite keys it).
# Prints a markdown section on stdout. DRIFTLOCK_BENCH_WORKLOADS=python|hello runs one;
# DRIFTLOCK_BENCH_SIDES="driftlock" runs those sides (and none, the reference); DRIFTLOCK_BENCH_KEEP=DIR keeps
# the daemon's status after each driftlock run there.
set -euo pipefail
rounds=${1:-5}
[ "$(id -u)" = 0 ] || { echo "bench-workloads: run as root" >&2; exit 1; }
cd "$(dirname "$0")/.."
[ -n "${DRIFTLOCK_BENCH_NO_BUILD:-}" ] || cargo build --release -q
command -v b3sum >/dev/null && command -v jq >/dev/null || { apt-get install -y -q b3sum jq >/dev/null; }
key=$(b3sum --no-names testdata/build-debian-image.sh | cut -c1-12)
image=/var/cache/driftlock-realism/debian-$key.tar
if [ ! -f "$image" ]; then
  mkdir -p /var/cache/driftlock-realism
  echo "bench-workloads: building the Debian image (a few minutes, once) ..." >&2
  bash testdata/build-debian-image.sh "$image" >&2
fi
exec unshare -m --propagation private bash -s "$PWD" "$image" "$rounds" "${DRIFTLOCK_BENCH_WORKLOADS:-python hello}" <<'INNER'
set -euo pipefail
repo=$1 image=$2 rounds=$3 workloads=$4
bin=$repo/target/release/driftlock
. "$repo/scripts/bench-lib.sh"
bench_scratch work
cc -O2 -o "$t/floor" "$repo/benches/floor.c"
mkdir -p "$t/layout" "$t/state"
tar -C "$t/layout" -xf "$image"
umoci raw unpack --image "$t/layout:latest" "$t/image" >/dev/null 2>&1 ||
  umoci unpack --image "$t/layout:latest" "$t/bundle" >/dev/null
[ -d "$t/image" ] || mv "$t/bundle/rootfs" "$t/image"
rm -rf "$t/layout" "$t/bundle"
"$bin" daemon --log-level error --socket "$t/d.sock" --state-dir "$t/state" >"$t/daemon.log" 2>&1 </dev/null &
pids+=($!)
while [ ! -S "$t/d.sock" ]; do sleep 0.05; done

root=$t/c/root
up() { # a fresh container rootfs
  mkdir -p "$t/c"/{upper,work,root}
  mount -t overlay overlay -o "lowerdir=$t/image,upperdir=$t/c/upper,workdir=$t/c/work" "$root"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
}
down() {
  umount -R -l "$root" 2>/dev/null || true
  rm -rf "$t/c"
}
fapolicyd_start() { # in a mount namespace of its own, which the workload enters
  local etc=$t/fapo/etc run=$t/fapo/run lib=$t/fapo/lib
  mkdir -p "$etc/rules.d" "$etc/trust.d" "$run/fapolicyd" "$lib"
  cat > "$etc/fapolicyd.conf" <<EOT
permissive = 1
nice_val = 14
q_size = 640
uid = root
gid = root
do_stat_report = 1
detailed_report = 1
db_max_size = 50
subj_cache_size = 1549
obj_cache_size = 8191
watch_fs = ext2,ext3,ext4,tmpfs,xfs,vfat,iso9660,btrfs,overlay
trust = file
integrity = none
syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust
rpm_sha256_only = 0
allow_filesystem_mark = 0
EOT
  for f in rules.d/90-deny-execute.rules compiled.rules fapolicyd.rules; do
    echo "deny_audit perm=execute all : all" > "$etc/$f"
  done
  : > "$etc/fapolicyd.trust"
  unshare --mount --propagation private sh -c "mount --bind '$etc' /etc/fapolicyd && mount --bind '$run' /run && mount --bind '$lib' /var/lib/fapolicyd && exec fapolicyd --permissive --debug-deny" >/dev/null 2>"$t/fapo.log" &
  fpid=$!; pids+=("$fpid")
  local i
  for i in $(seq 600); do [ -p "$run/fapolicyd/fapolicyd.fifo" ] && break; sleep 0.05; done
  [ -p "$run/fapolicyd/fapolicyd.fifo" ] || { echo "bench-workloads: fapolicyd did not start" >&2; cat "$t/fapo.log" >&2; exit 1; }
  sleep 0.5
}
fapolicyd_stop() { kill "$fpid"; wait "$fpid" 2>/dev/null || true; rm -rf "$t/fapo"; }

python_work='cd /tmp && python3 -m test -W -i test_args_string -i test_call_string test_subprocess >/tmp/w.log 2>&1 || { tail -40 /tmp/w.log; exit 1; }'
hello_work='set -e; cp -a /src/hello /tmp/hello; cd /tmp/hello; ./configure --quiet >/tmp/w.log 2>&1; make -j2 >>/tmp/w.log 2>&1; make -j2 check >>/tmp/w.log 2>&1 || { tail -40 /tmp/w.log; exit 1; }; ./hello | grep -q "Hello, world!"'
has_fapolicyd=$(command -v fapolicyd >/dev/null && echo yes || echo no)
sides="none floor driftlock"
[ "$has_fapolicyd" = yes ] && sides="$sides fapolicyd"
sides=${DRIFTLOCK_BENCH_SIDES:-$sides}
# Every overhead is against no listener: that side always runs.
case " $sides " in *" none "*) ;; *) sides="none $sides" ;; esac
n_sides=$(wc -w <<<"$sides")

run_side() { # workload mode side -> seconds
  local w=$1 mode=$2 side=$3 work s e rc=0
  [ "$w" = python ] && work=$python_work || work=$hello_work
  up
  local enter=()
  case $side in
    floor) "$t/floor" "$root" "$root/tmp" > "$t/floor.out" & fl=$!; pids+=("$fl")
           while ! grep -q ready "$t/floor.out" 2>/dev/null; do sleep 0.02; done ;;
    driftlock) "$bin" arm --socket "$t/d.sock" --id "w" --rootfs "$root" --mount "$root/tmp" --mode "$mode" >/dev/null </dev/null ;;
    fapolicyd) fapolicyd_start; enter=(nsenter --mount="/proc/$fpid/ns/mnt") ;;
  esac
  s=$(date +%s%N)
  "${enter[@]}" chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp /bin/bash -c "$work" >"$t/out" 2>&1 </dev/null || rc=$?
  e=$(date +%s%N)
  case $side in
    floor) kill "$fl"; wait "$fl" 2>/dev/null || true ;;
    driftlock)
      "$bin" status --socket "$t/d.sock" --json > "$t/status.json" </dev/null
      [ -z "${DRIFTLOCK_BENCH_KEEP:-}" ] || cp "$t/status.json" "$DRIFTLOCK_BENCH_KEEP/status-$w-$(date +%s).json"
      "$bin" disarm --socket "$t/d.sock" --id w >/dev/null </dev/null ;;
    fapolicyd) fapolicyd_stop ;;
  esac
  down
  if [ "$rc" != 0 ]; then
    echo "bench-workloads: $w under $side ($mode) failed (status $rc):" >&2; cat "$t/out" >&2; exit 1
  fi
  echo "($e - $s) / 1000000000" | bc -l
}
med() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int((NR+1)/2)]; else printf "n/a"}'; }

echo "## What users feel: real workloads in a container"
echo
echo "\`./scripts/bench-workloads.sh $rounds\`: each workload in a fresh overlay of the realism suite's Debian image (bookworm, built from Debian's packages) with \`/proc\`, \`/dev\` and a tmpfs \`/tmp\`, entered with chroot; $rounds rounds, the sides alternating (each round starts at another side); wall time in seconds, medians. *floor*: \`benches/floor.c\` marking the rootfs and \`/tmp\`; *driftlock*: that rootfs and \`/tmp\` armed; *fapolicyd*: $( [ "$has_fapolicyd" = yes ] && echo "Debian's fapolicyd $(dpkg-query -W -f '${Version}' fapolicyd 2>/dev/null), permissive, watching overlay too (Debian's \`watch_fs\` leaves it out, so it would see no container file at all), in a mount namespace of its own that the workload enters" || echo "not installed, not measured")."
echo
echo "| workload | driftlock mode | $(tr ' ' '\n' <<<"$sides" | sed 's/$/ s/' | paste -sd'|' | sed 's/|/ | /g') | driftlock overhead | floor overhead | fapolicyd overhead |"
echo "|---|---|$(for s in $sides; do printf -- '---|'; done)---|---|---|"
for w in $workloads; do
  [ "$w" = python ] && mode=enforce || mode=audit
  for s in $sides; do : > "$t/times-$s"; done
  for r in $(seq "$rounds"); do
    i=0
    for s in $sides; do order[$(( (i + n_sides - (r - 1) % n_sides) % n_sides ))]=$s; i=$((i + 1)); done
    for s in "${order[@]}"; do
      run_side "$w" "$mode" "$s" >> "$t/times-$s"
      if [ "$s" = driftlock ] && [ "$mode" = enforce ]; then
        # The unit's own counter, read by name: a status without it fails the run.
        denied=$(jq -e '.units[] | select(.id == "w") | .counters.denied' "$t/status.json") ||
          { echo "bench-workloads: no counters for the armed unit in the daemon's status" >&2; exit 1; }
        [ "$denied" = 0 ] || { echo "bench-workloads: driftlock denied $denied image execs in $w" >&2; exit 1; }
      fi
    done
  done
  none=$(med < "$t/times-none")
  row="| $([ "$w" = python ] && echo "Python test_subprocess" || echo "GNU hello configure, make, make check") | $mode"
  for s in $sides; do row+=" | $(med < "$t/times-$s")"; done
  pctof() { [ -s "$t/times-$1" ] && echo "$(echo "($(med < "$t/times-$1") / $none - 1) * 100" | bc -l | xargs printf %+.1f)%" || echo "n/a"; }
  row+=" | $(pctof driftlock) | $(pctof floor) | $(pctof fapolicyd) |"
  echo "$row"
done
echo
echo "Overheads are the side's median against no listener's, in percent; a difference of a percent or two is within this VM's noise."
INNER
