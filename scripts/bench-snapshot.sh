#!/usr/bin/env bash
# Snapshot throughput of `driftlock baseline snapshot` against b3sum over the same files.
#
#   sudo ./scripts/bench-snapshot.sh [SOURCE_DIR]     (default /usr)
#
# Copies SOURCE_DIR into a private tmpfs (page cache hot, same bytes for both tools), then
# runs each tool RUNS times alternately and prints median seconds and MB/s. b3sum gets
# the list of executable regular files driftlock takes, with as many threads as cores:
# once as a ready list (hashing only, the walk not counted: the strict comparison) and
# once from `find` (walking the tree too, as a snapshot must).
set -euo pipefail
src=${1:-/usr}
runs=${RUNS:-5}
[ "$(id -u)" = 0 ] || { echo "needs root (private tmpfs)" >&2; exit 1; }
command -v b3sum >/dev/null || { echo "install b3sum (apt-get install b3sum)" >&2; exit 1; }
cd "$(dirname "$0")/.."
cargo build --release -q
bin=$PWD/target/release/driftlock
exec unshare -m --propagation private bash -s "$src" "$runs" "$bin" <<'INNER'
set -euo pipefail
src=$1 runs=$2 bin=$3
t=$(mktemp -d /tmp/driftlock-snapbench.XXXXXX)
mount -t tmpfs -o size=8g tmpfs "$t"
cp -a "$src" "$t/root"
find "$t/root" -xdev -type f -perm /111 -print0 > "$t/list"
files=$(tr -cd '\0' < "$t/list" | wc -c)
bytes=$(xargs -0 stat -c %s < "$t/list" | awk '{s+=$1} END {printf "%d", s}')
echo "corpus: $src -> $files executable files, $((bytes / 1000000)) MB, $(nproc) cores"
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: > "$t/dl"; : > "$t/b3"; : > "$t/fb3"
for i in $(seq "$runs"); do
  s=$(date +%s.%N); "$bin" baseline snapshot "$t/root" -o "$t/out.baseline" 2>/dev/null; e=$(date +%s.%N)
  echo "$e - $s" | bc >> "$t/dl"
  s=$(date +%s.%N); xargs -0 b3sum --num-threads "$(nproc)" < "$t/list" > /dev/null; e=$(date +%s.%N)
  echo "$e - $s" | bc >> "$t/b3"
  s=$(date +%s.%N); find "$t/root" -xdev -type f -perm /111 -print0 | xargs -0 b3sum --num-threads "$(nproc)" > /dev/null; e=$(date +%s.%N)
  echo "$e - $s" | bc >> "$t/fb3"
done
dl=$(med < "$t/dl"); b3=$(med < "$t/b3"); fb3=$(med < "$t/fb3")
printf 'driftlock snapshot: median %.3f s  %.0f MB/s\n' "$dl" "$(echo "$bytes / $dl / 1000000" | bc -l)"
printf 'b3sum (same files): median %.3f s  %.0f MB/s\n' "$b3" "$(echo "$bytes / $b3 / 1000000" | bc -l)"
printf 'find | b3sum (walk included, as in a snapshot): median %.3f s  %.0f MB/s\n' "$fb3" "$(echo "$bytes / $fb3 / 1000000" | bc -l)"
printf 'ratio driftlock/b3sum throughput: %.2f against the ready list, %.2f against find | b3sum\n' "$(echo "$b3 / $dl" | bc -l)" "$(echo "$fb3 / $dl" | bc -l)"
umount "$t"; rmdir "$t"
INNER
