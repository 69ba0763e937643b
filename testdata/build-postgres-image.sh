#!/usr/bin/env bash
# Builds the demo's PostgreSQL image offline from Debian's packages: debootstrap minbase +
# postgresql + wget, a cluster whose superuser password is "postgres" (the weak password
# DreamBus guesses), listening on 127.0.0.1:55432. Output: an OCI image layout tar.
#
#   testdata/build-postgres-image.sh OUT.tar [MIRROR]
#
# Needs root, debootstrap and umoci. Takes about two minutes; callers cache the result.
set -euo pipefail
out=${1:?usage: build-postgres-image.sh OUT.tar [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
work=$(mktemp -d /var/tmp/driftlock-pg.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
debootstrap --variant=minbase --include=postgresql,wget bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$root"/usr/share/{doc,man,info,locale} "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
pgbin=$(ls -d "$root"/usr/lib/postgresql/*/bin | head -n 1)
pgbin=${pgbin#"$root"}
echo postgres > "$root/tmp/pw"
chroot "$root" install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
chroot "$root" su postgres -s /bin/sh -c \
  "$pgbin/initdb -D /var/lib/postgresql/data -U postgres --pwfile=/tmp/pw --auth-local=trust --auth-host=md5" >/dev/null
rm -f "$root/tmp/pw"
cat >> "$root/var/lib/postgresql/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = 55432
unix_socket_directories = '/tmp'
CONF
layout=$work/layout
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$layout:latest" "$work/bundle" >/dev/null
umoci config --image "$layout:latest" --config.user postgres \
  --config.cmd "$pgbin/postgres" --config.cmd -D --config.cmd /var/lib/postgresql/data \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin
umoci gc --layout "$layout"
mkdir -p "$(dirname "$out")"
tar -C "$layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
echo "built $out ($(du -h "$out" | cut -f1))"
