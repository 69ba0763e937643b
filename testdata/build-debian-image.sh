#!/usr/bin/env bash
# Builds the realism suite's Debian image offline from Debian's packages (issue 12):
# debootstrap minbase bookworm (usrmerge, glibc) plus bash, coreutils, python3, perl, curl,
# Python's own regression tests (libpython3.11-testsuite), build-essential, and the source
# of GNU hello (fetched from the mirror's deb-src while the image is built, unpacked in
# /src/hello), so that `./configure && make && make check` runs inside a container with no
# network. Output: an OCI image layout tar (tag "latest").
#
#   testdata/build-debian-image.sh OUT.tar [MIRROR]
#
# MIRROR defaults to the first Debian mirror in the machine's apt sources. Needs root,
# debootstrap and umoci. Takes a few minutes; callers cache the result by this script's
# content (tests/integration/realism.rs keeps it under /var/cache/driftlock-realism).
set -euo pipefail
out=${1:?usage: build-debian-image.sh OUT.tar [MIRROR]}
machine_mirror() {
  # deb822 sources first (URIs: ...), then one-line sources (deb URL suite ...).
  local m
  m=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
    grep -v -- '-security' | grep -m1 debian || true)
  [ -n "$m" ] || m=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '{print $2}' | grep -v -- '-security' | grep -m1 debian || true)
  echo "${m:-http://deb.debian.org/debian}"
}
mirror=${2:-$(machine_mirror)}
for t in debootstrap umoci chroot; do
  command -v "$t" >/dev/null || { echo "build-debian-image.sh: needs $t" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/driftlock-debian.XXXXXX)
cleanup() {
  umount "$work/root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
pkgs=bash,coreutils,findutils,python3,perl,curl,ca-certificates,libpython3.11-testsuite,build-essential,dpkg-dev,xz-utils
echo "debootstrap bookworm from $mirror ..." >&2
debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }
# GNU hello's source, from the same mirror's deb-src, unpacked by dpkg-source.
echo "deb-src $mirror bookworm main" > "$root/etc/apt/sources.list.d/src.list"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$root/proc"
mkdir -p "$root/src"
chroot "$root" sh -c 'apt-get update -q >/dev/null && cd /src && apt-get source -q hello >/dev/null 2>&1 && mv /src/hello-*/ /src/hello' || {
  echo "build-debian-image.sh: apt-get source hello failed" >&2; exit 1; }
umount "$root/proc"
rm -f "$root/etc/apt/sources.list.d/src.list" /src/hello_*
rm -f "$root"/src/hello_* "$root"/src/*.dsc
chmod -R a+rwX "$root/src"
rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/lib/apt/lists/*
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$layout:latest" "$work/bundle" >/dev/null
umoci config --image "$layout:latest" --config.cmd /bin/bash --config.workingdir / \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
umoci gc --layout "$layout"
mkdir -p "$(dirname "$out")"
tar -C "$layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
echo "built $out ($(du -h "$out" | cut -f1))" >&2
