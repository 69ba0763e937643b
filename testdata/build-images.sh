#!/usr/bin/env bash
# Builds small OCI images offline (no registry) for the end-to-end tests and the demo.
#
#   testdata/build-images.sh OUTDIR
#
# OUTDIR/busybox.tar  busybox-static with applet links (sh, wget, chmod, ...)
# OUTDIR/glibc.tar    busybox plus the glibc dynamic loader, libc, a dynamically
#                     linked program (/usr/bin/hello-dyn) and /usr/bin/memfd-exec, a
#                     static program that copies a file into a memfd and fexecve()s it
#                     (fileless execution; argv[1] is the file, default /bin/busybox)
#
# OUTDIR/musl.tar     busybox plus the musl loader and a musl-linked program
#                     (/usr/bin/hello-musl); only when musl-gcc (musl-tools) is installed
# OUTDIR/payload      a static program that is in no image: the "miner" of the tests
#
# Every image also holds the static test helper /usr/bin/exec-paths (testdata/src), the
# payload without exec bits (/usr/share/dormant: chmod +x drift) and the image script
# /usr/local/bin/uses-tmp-interp (#!/tmp/interp: a script whose interpreter is not in the
# image).
#
# Each tar is an OCI image layout whose index names the tag "latest"; import it with
#   ctr images import --base-name localhost/driftlock/busybox OUTDIR/busybox.tar
# Needs: umoci, busybox-static, gcc (Debian packages).
set -euo pipefail
out=${1:?usage: build-images.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
busybox=$(command -v busybox)
file "$busybox" 2>/dev/null | grep -q "statically linked" || [ -x /bin/busybox ] || {
  echo "build-images.sh: needs busybox-static" >&2; exit 1; }

src=$(cd "$(dirname "$0")/src" && pwd)
cc -static -O2 -o "$work/exec-paths" "$src/exec-paths.c"
printf '#include <stdio.h>\nint main(void){puts("kdevtmpfsi: payload ran");return 0;}\n' > "$work/payload.c"
cc -static -O2 -o "$work/payload" "$work/payload.c"

populate_busybox() {
  local root=$1
  mkdir -p "$root"/{bin,sbin,usr/bin,tmp,etc,root,proc,sys,dev,run}
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  mkdir -p "$root/usr/bin" "$root/usr/share" "$root/usr/local/bin"
  cp "$work/exec-paths" "$root/usr/bin/exec-paths"
  install -m 0644 "$work/payload" "$root/usr/share/dormant"
  printf '#!/tmp/interp\necho interpreted\n' > "$root/usr/local/bin/uses-tmp-interp"
  chmod 0755 "$root/usr/local/bin/uses-tmp-interp"
  echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
  echo "root:x:0:" > "$root/etc/group"
}

build() {
  local name=$1 fill=$2
  local layout=$work/$name-layout bundle=$work/$name-bundle
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$bundle" >/dev/null
  "$fill" "$bundle/rootfs"
  umoci repack --image "$layout:latest" "$bundle" >/dev/null
  umoci config --image "$layout:latest" --config.cmd /bin/sh --config.workingdir / \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$out/$name.tar" .
  echo "built $out/$name.tar"
}

fill_glibc() {
  local root=$1
  populate_busybox "$root"
  printf '#include <stdio.h>\nint main(void){puts("hello from a dynamically linked program");return 0;}\n' > "$work/hello.c"
  cc -O2 -o "$root/usr/bin/hello-dyn" "$work/hello.c"
  cat > "$work/memfd-exec.c" <<'C'
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  const char *src = argc > 1 ? argv[1] : "/bin/busybox";
  int in = open(src, O_RDONLY);
  if (in < 0) { printf("open %s: %s\n", src, strerror(errno)); return 2; }
  int fd = memfd_create("fileless", 0);
  if (fd < 0) { printf("memfd_create: %s\n", strerror(errno)); return 3; }
  char buf[65536];
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(fd, buf, n) != n) { printf("write: %s\n", strerror(errno)); return 2; }
  char *args[] = {"true", NULL}, *env[] = {NULL};
  fexecve(fd, args, env);
  printf("fexecve: %s\n", strerror(errno));
  return 4;
}
C
  cc -static -O2 -o "$root/usr/bin/memfd-exec" "$work/memfd-exec.c"
  local interp
  interp=$(readelf -l "$root/usr/bin/hello-dyn" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
  for lib in "$interp" $(ldd "$root/usr/bin/hello-dyn" | awk '/=>/ {print $3}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

fill_musl() {
  local root=$1
  populate_busybox "$root"
  printf '#include <stdio.h>\nint main(void){puts("hello from musl");return 0;}\n' > "$work/hello-musl.c"
  musl-gcc -O2 -o "$root/usr/bin/hello-musl" "$work/hello-musl.c"
  local interp target
  interp=$(readelf -l "$root/usr/bin/hello-musl" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
  target=$(readlink -f "$interp")
  mkdir -p "$root$(dirname "$interp")" "$root$(dirname "$target")"
  cp "$target" "$root$target"
  [ "$interp" = "$target" ] || ln -sf "$target" "$root$interp"
}

build busybox populate_busybox
build glibc fill_glibc
if command -v musl-gcc >/dev/null; then build musl fill_musl; fi
cp "$work/payload" "$out/payload"
cp "$work/exec-paths" "$out/exec-paths"
echo "built $out/payload"
