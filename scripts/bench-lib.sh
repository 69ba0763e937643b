# Sourced by the benchmark scripts inside their private mount namespace:
#   . "$repo/scripts/bench-lib.sh"; bench_scratch NAME
# sets $t to a fresh tmpfs (/tmp/driftlock-bench-NAME.XXXXXX) and $pids to the list of
# processes to stop, and on exit kills those (by PID), unmounts everything under $t and
# removes it.
bench_scratch() {
  t=$(mktemp -d "/tmp/driftlock-bench-$1.XXXXXX")
  mount -t tmpfs -o mode=0755 tmpfs "$t"
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount -R -l "$t" 2>/dev/null || true
  rmdir "$t" 2>/dev/null || true
}
