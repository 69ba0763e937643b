/* Fileless execution: copies a program into a memfd and runs it with fexecve. Prints
 * MEMFD-EXEC-FAIL <errno> when memfd_create or the exec is refused (the program's own
 * output otherwise); exit 3 when memfd_create is refused, 4 when the exec is. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int src = open(argv[1], O_RDONLY);
    int fd = memfd_create("payload", 0);
    if (src < 0 || fd < 0) {
        printf("MEMFD-EXEC-FAIL memfd_create: %s\n", strerror(errno));
        return 3;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
        if (write(fd, buf, n) != n) return 2;
    char *args[] = {argv[1], NULL};
    char *env[] = {NULL};
    fexecve(fd, args, env);
    printf("MEMFD-EXEC-FAIL exec: %s\n", strerror(errno));
    return 4;
}
