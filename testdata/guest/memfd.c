/* Fileless code: copies a library into a memfd and dlopens it through /proc/self/fd/N.
 * Prints MEMFD-DLOPEN-OK or MEMFD-DLOPEN-FAIL. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int src = open(argv[1], O_RDONLY);
    int fd = memfd_create("x", MFD_CLOEXEC);
    char buf[65536];
    ssize_t n;
    while (src >= 0 && (n = read(src, buf, sizeof buf)) > 0) write(fd, buf, n);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    void *h = dlopen(path, RTLD_NOW);
    printf(h ? "MEMFD-DLOPEN-OK\n" : "MEMFD-DLOPEN-FAIL\n");
    return 0;
}
