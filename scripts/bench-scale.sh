#!/usr/bin/env bash
# Scale and storm (issue 17), as root, in a private mount namespace:
#   ./scripts/bench-scale.sh [UNITS] [STORM_UNITS] [STORM_SECONDS] [ROUNDS]
#                                               (defaults 1000 50 10 5)
# - UNITS armed units: overlays sharing one image (a static program and busybox), each
#   with a tmpfs on /tmp and on /dev/shm (three marks per unit): arm time per unit (the
#   first snapshots the image, the rest load the stored baseline) and in total, and the
#   daemon's RSS;
# - warm exec cost with 1 unit armed and with all UNITS, alternating ROUNDS times: the
#   median fork+exec+wait and the event thread's CPU per exec over 2,000 execs each;
# - an exec storm: one exec loop per unit across STORM_UNITS units, all at once for
#   STORM_SECONDS (both cores saturated), under no listener, the floor (benches/floor.c
#   marking the same filesystems) and driftlock, alternating ROUNDS times: execs answered
#   per second and the p99 exec latency during the storm.
# Prints a markdown section on stdout.
set -euo pipefail
units=${1:-1000} storm_units=${2:-50} storm_secs=${3:-10} rounds=${4:-5}
[ "$(id -u)" = 0 ] || { echo "bench-scale: run as root" >&2; exit 1; }
cd "$(dirname "$0")/.."
[ -n "${DRIFTLOCK_BENCH_NO_BUILD:-}" ] || cargo build --release -q
exec unshare -m --propagation private bash -s "$PWD" "$units" "$storm_units" "$storm_secs" "$rounds" <<'INNER'
set -euo pipefail
repo=$1 units=$2 storm_units=$3 storm_secs=$4 rounds=$5
bin=$repo/target/release/driftlock
. "$repo/scripts/bench-lib.sh"
bench_scratch scale
cc -O2 -o "$t/execloop" "$repo/benches/execloop.c"
cc -O2 -o "$t/floor" "$repo/benches/floor.c"
mkdir -p "$t/image/bin" "$t/image/tmp" "$t/image/dev/shm" "$t/state"
cc -static -O2 -o "$t/image/bin/st" -x c - <<<'int main(void){return 0;}'
bb=$(command -v busybox || true)
[ -n "$bb" ] && cp "$bb" "$t/image/bin/busybox"
mount_unit() {
  local u=$t/u$1
  mkdir -p "$u"/{upper,work,root}
  mount -t overlay overlay -o "lowerdir=$t/image,upperdir=$u/upper,workdir=$u/work" "$u/root"
  mount -t tmpfs tmpfs "$u/root/tmp"
  mount -t tmpfs tmpfs "$u/root/dev/shm"
}
# First a node of 31 containers: the later arm's cost where the mount table is small.
small=$(( units < 31 ? units : 31 ))
for i in $(seq "$small"); do mount_unit "$i"; done
"$bin" daemon --log-level error --socket "$t/d.sock" --state-dir "$t/state" >/dev/null </dev/null &
d=$!; pids+=("$d")
while [ ! -S "$t/d.sock" ]; do sleep 0.05; done
engine=""
for task in /proc/$d/task/*; do [ "$(cat "$task/comm")" = driftlock-engin ] && engine=$task; done
[ -n "$engine" ] || { echo "bench-scale: no engine thread" >&2; exit 1; }
arm_unit() {
  "$bin" arm --socket "$t/d.sock" --id "u$1" --rootfs "$t/u$1/root" \
    --mount "$t/u$1/root/tmp" --mount "$t/u$1/root/dev/shm" --json </dev/null \
    | sed -n 's/.*"arm_ms": \([0-9.]*\).*/\1/p'
}
disarm_unit() { "$bin" disarm --socket "$t/d.sock" --id "u$1" >/dev/null </dev/null; }
med() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.1f", a[int((NR+1)/2)]; else printf "n/a"}'; }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p); if (i<1) i=1; if (NR) printf "%.0f", a[i]; else printf "n/a"}'; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$d/status; }
cpu_ns() { awk '{print $1}' "$engine/schedstat"; }

# Warm cost: 2,000 execs of unit 1's program; the median latency and the engine thread's
# CPU per exec.
warm() {
  local c0 c1
  c0=$(cpu_ns)
  "$t/execloop" "$t/u1/root/bin/st" 2000 "$t/lat"
  c1=$(cpu_ns)
  echo "$(med < "$t/lat") $(echo "($c1 - $c0) / 2000 / 1000" | bc -l)"
}

rss0=$(rss_mb)
first=$(arm_unit 1)
"$t/execloop" "$t/u1/root/bin/st" 50 "$t/lat"   # fill the cache
sleep 0.1
# Arms among 30 containers (units 2 to 31 with only their mounts on the node), 3 times.
: > "$t/arm_small"
for r in 1 2 3; do
  for i in $(seq 2 "$small"); do arm_unit "$i" >> "$t/arm_small"; done
  for i in $(seq 2 "$small"); do disarm_unit "$i"; done
done
table_small=$(wc -l < /proc/self/mountinfo)
for i in $(seq $((small + 1)) "$units"); do mount_unit "$i"; done
table_all=$(wc -l < /proc/self/mountinfo)
# Rounds alternate 1 unit and all UNITS: per round, the warm cost with unit 1 alone, then
# units 2 to UNITS armed (timed) and each unit's program run once (a cache entry each), the
# warm cost again, and units 2 to UNITS disarmed.
: > "$t/arm_ms"; : > "$t/warm"
for r in $(seq "$rounds"); do
  read -r l1 c1 <<<"$(warm)"
  s=$(date +%s%N)
  for i in $(seq 2 "$units"); do echo "$i $(arm_unit "$i")" >> "$t/arm_ms"; done
  e=$(date +%s%N)
  echo "$(( (e - s) / 1000000 ))" >> "$t/arm_total"
  for i in $(seq 2 "$units"); do "$t/u$i/root/bin/st"; done
  rss1=$(rss_mb)
  read -r ln cn <<<"$(warm)"
  echo "$l1 $c1 $ln $cn" >> "$t/warm"
  for i in $(seq 2 "$units"); do disarm_unit "$i"; done
done
col() { awk -v f="$1" '{print $f}' "$t/warm" | med; }
w1_lat=$(col 1); w1_cpu=$(col 2); wn_lat=$(col 3); wn_cpu=$(col 4)
cpu_ratio=$(awk '{print $4 / $2}' "$t/warm" | med)
lat_ratio=$(awk '{print $3 / $1}' "$t/warm" | med)
med2() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%.2f", a[int((NR+1)/2)]; else printf "n/a"}'; }
arm_med=$(awk '{print $2}' "$t/arm_ms" | med)
arm_p99=$(awk '{print $2}' "$t/arm_ms" | pct 0.99)
# The arm among 30 containers (units 2 to 31, only their mounts on the node) against the
# arm of the last 30 units with every unit's mounts on the node, medians.
arm_30=$(med2 < "$t/arm_small")
arm_last=$(awk -v n="$units" '$1 > n - 30 {print $2}' "$t/arm_ms" | med2)
arm_ratio=$(echo "$arm_last / $arm_30" | bc -l)
total_s=$(echo "$(med < "$t/arm_total") / 1000" | bc -l)
for i in $(seq 2 "$units"); do arm_unit "$i" > /dev/null; done
idle0=$(awk '{print $14+$15}' /proc/$d/stat); sleep 10; idle1=$(awk '{print $14+$15}' /proc/$d/stat)
idle_ticks=$((idle1 - idle0))

# A denial flood in unit 1: 2,000 execs of new files whose sizes no image executable has
# (denied without being read), its record budget spent by the first 200: the event
# thread's CPU per denial, against a warm hit's in the same minute.
for i in $(seq 0 1999); do head -c $((64 + i)) /dev/zero > "$t/u1/root/tmp/deny-$i"; done
chmod +x "$t"/u1/root/tmp/deny-*
sleep 0.1
read -r hit_lat hit_cpu <<<"$(warm)"
c0=$(cpu_ns)
EXECLOOP_DENIED=1 "$t/execloop" "$t/u1/root/tmp/deny-%d" 2000 "$t/lat"
c1=$(cpu_ns)
flood_cpu=$(echo "($c1 - $c0) / 2000 / 1000" | bc -l)
flood_ratio=$(echo "$flood_cpu / $hit_cpu" | bc -l)
rm -f "$t"/u1/root/tmp/deny-*

# The storm. Each side runs one exec loop per unit (its static program) for the same time.
storm_round() { # side
  local i
  rm -f "$t"/storm-*
  for i in $(seq "$storm_units"); do
    "$t/execloop" "$t/u$i/root/bin/st" -t "$storm_secs" "$t/storm-$i" &
  done
  wait $(jobs -p | grep -v "^$d\$" | grep -v "^${floor_pid:-x}\$") 2>/dev/null || true
  local n
  n=$(cat "$t"/storm-* | wc -l)
  echo "$1 $(echo "$n / $storm_secs" | bc -l) $(cat "$t"/storm-* | pct 0.99) $(cat "$t"/storm-* | med)" >> "$t/storm"
}
for i in $(seq "$units" -1 $((storm_units + 1))); do disarm_unit "$i"; done
floor_pid=""
for r in $(seq "$rounds"); do
  storm_round driftlock
  for i in $(seq "$storm_units"); do disarm_unit "$i"; done
  storm_round none
  roots=(); for i in $(seq "$storm_units"); do roots+=("$t/u$i/root"); done
  "$t/floor" "${roots[@]}" > "$t/floor.out" & floor_pid=$!; pids+=("$floor_pid")
  while ! grep -q ready "$t/floor.out" 2>/dev/null; do sleep 0.02; done
  storm_round floor
  kill "$floor_pid"; wait "$floor_pid" 2>/dev/null || true; floor_pid=""
  for i in $(seq "$storm_units"); do arm_unit "$i" >/dev/null; done
done
side() { awk -v s="$1" -v f="$2" '$1 == s {print $f}' "$t/storm" | med; }
d_rate=$(side driftlock 2); f_rate=$(side floor 2); n_rate=$(side none 2)

echo "## Scale: $units units, and an exec storm"
echo
echo "\`./scripts/bench-scale.sh $units $storm_units $storm_secs $rounds\`: $units overlays of one image (a static program and busybox), each with a tmpfs on \`/tmp\` and \`/dev/shm\` (three filesystem marks per unit, $((3 * units)) in all), in a private mount namespace."
echo
echo "| figure | value |"
echo "|---|---|"
echo "| arm of the first unit (snapshot of the image) | $(printf %.1f "$first") ms |"
echo "| arm of each later unit (stored baseline): median, p99 | $arm_med ms, $arm_p99 ms |"
echo "| arm of units 2 to 31 on a node of 31 units ($table_small mounts), of the last 30 of $units units ($table_all mounts): medians, and the ratio | $arm_30 ms, $arm_last ms ($(printf %.2f "$arm_ratio")x) |"
echo "| arm of units 2 to $units in total (median over rounds) | $(printf %.1f "$total_s") s |"
echo "| daemon RSS: no unit, $units units with a cache entry each | $rss0 MB, $rss1 MB |"
echo "| warm exec with 1 unit armed: median µs, event thread CPU µs per exec | $w1_lat, $(printf %.1f "$w1_cpu") |"
echo "| warm exec with $units units armed: median µs, event thread CPU µs per exec | $wn_lat, $(printf %.1f "$wn_cpu") |"
echo "| warm cost, $units units against 1 (median of per-round ratios): CPU per exec; latency | $(printf %.2f "$cpu_ratio")x; $(printf %.2f "$lat_ratio")x |"
echo "| daemon CPU while idle with $units units armed | $idle_ticks ticks in 10 s ($(getconf CLK_TCK) per second) |"
echo "| a denial flood (2,000 new files of sizes no image executable has; the first 200 recorded, then 50 a second): event thread CPU µs per denial, against a warm hit's | $(printf %.1f "$flood_cpu"), $(printf %.1f "$hit_cpu") ($(printf %.2f "$flood_ratio")x) |"
echo
echo "The storm: $storm_units exec loops at once (one per unit) for $storm_secs s, $rounds rounds alternating between the sides; medians over rounds."
echo
echo "| side | execs answered per second | p99 exec µs | median exec µs |"
echo "|---|---|---|---|"
for s in none floor driftlock; do
  echo "| $s | $(side $s 2 | xargs printf %.0f) | $(side $s 3) | $(side $s 4) |"
done
echo
echo "Storm throughput, driftlock against the floor: $(echo "$d_rate / $f_rate" | bc -l | xargs printf %.2f)x (the floor against none: $(echo "$f_rate / $n_rate" | bc -l | xargs printf %.2f)x)."
if [ -n "${DRIFTLOCK_BENCH_RESULTS:-}" ]; then
  {
    echo "scale_units=$units"
    echo "scale_cpu_ratio=$cpu_ratio"
    echo "scale_lat_ratio=$lat_ratio"
    echo "scale_arm_ms=$arm_med"
    echo "scale_arm30_ms=$arm_30"
    echo "scale_arm_last_ms=$arm_last"
    echo "scale_arm_ratio=$arm_ratio"
    echo "scale_rss_mb=$rss1"
    echo "storm_ratio=$(echo "$d_rate / $f_rate" | bc -l)"
    echo "flood_ratio=$flood_ratio"
    echo "storm_p99_driftlock=$(side driftlock 3)"
    echo "storm_p99_floor=$(side floor 3)"
  } >> "$DRIFTLOCK_BENCH_RESULTS"
fi
INNER
