/* An "image program" for the guest tests: prints PROG-RAN; `prog dlopen PATH` also
 * dlopens PATH; `prog mprotect PATH` maps PATH read-only and then asks for PROT_EXEC. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    printf("PROG-RAN\n");
    fflush(stdout);
    if (argc == 3 && !strcmp(argv[1], "dlopen")) {
        void *h = dlopen(argv[2], RTLD_NOW);
        printf(h ? "DLOPEN-OK\n" : "DLOPEN-FAIL %s\n", h ? "" : dlerror());
    } else if (argc == 3 && !strcmp(argv[1], "mprotect")) {
        int fd = open(argv[2], O_RDONLY);
        void *p = fd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            printf("MPROTECT-NOMAP\n");
            return 1;
        }
        printf(mprotect(p, 4096, PROT_READ | PROT_EXEC) == 0 ? "MPROTECT-OK\n" : "MPROTECT-FAIL\n");
    } else if (argc == 3 && !strcmp(argv[1], "mmapwrite")) {
        /* Changes the file's last byte through a shared writable mapping. */
        int fd = open(argv[2], O_RDWR);
        off_t size = fd < 0 ? 0 : lseek(fd, 0, SEEK_END);
        char *p = size <= 0 ? MAP_FAILED : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            printf("MMAPWRITE-FAIL\n");
            return 1;
        }
        close(fd);
        p[size - 1] ^= 1;
        munmap(p, size);
        printf("MMAPWRITE-OK\n");
    } else if (argc == 3 && !strcmp(argv[1], "mmap")) {
        int fd = open(argv[2], O_RDONLY);
        void *p = fd < 0 ? MAP_FAILED : mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        printf(p == MAP_FAILED ? "MMAP-FAIL\n" : "MMAP-OK\n");
    }
    return 0;
}
