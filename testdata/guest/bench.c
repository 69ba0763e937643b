/* Costs the mapping gate adds, measured in the guest (TCG: emulated, so compare the two
 * runs, not the absolute figures): dlopen+dlclose of a library, an executable mmap of a
 * file, and fork+exec of a dynamic program. Prints "BENCH name ns-per-op" on stderr. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    const char *lib = argv[1], *prog = argv[2];
    int n = 500;
    int devnull = open("/dev/null", O_WRONLY);
    int out = dup(1);
    dup2(devnull, 1); /* the library's constructor prints */
    double t = now();
    for (int i = 0; i < n; i++) {
        void *h = dlopen(lib, RTLD_NOW);
        if (!h) { fprintf(stderr, "BENCH dlopen failed\n"); return 1; }
        dlclose(h);
    }
    fprintf(stderr, "BENCH dlopen-dlclose %.0f\n", (now() - t) / n);
    dup2(out, 1);
    int fd = open(prog, O_RDONLY);
    n = 5000;
    t = now();
    for (int i = 0; i < n; i++) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) { fprintf(stderr, "BENCH mmap failed\n"); return 1; }
        munmap(p, 4096);
    }
    fprintf(stderr, "BENCH mmap-exec %.0f\n", (now() - t) / n);
    /* The W^X rules' hook: a mapping of the program's text made read-only and executable
     * again (adds PROT_EXEC to a mapping never written: allowed). */
    char *text = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
    if (text == MAP_FAILED) { fprintf(stderr, "BENCH mmap failed\n"); return 1; }
    t = now();
    for (int i = 0; i < n; i++) {
        if (mprotect(text, 4096, PROT_READ) || mprotect(text, 4096, PROT_READ | PROT_EXEC)) {
            fprintf(stderr, "BENCH mprotect failed\n");
            return 1;
        }
    }
    fprintf(stderr, "BENCH mprotect-pair %.0f\n", (now() - t) / n);
    /* Anonymous memory, read-write (what every malloc arena does): the mmap_file hook. */
    t = now();
    for (int i = 0; i < n; i++) {
        void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { fprintf(stderr, "BENCH mmap failed\n"); return 1; }
        munmap(p, 4096);
    }
    fprintf(stderr, "BENCH mmap-anon-rw %.0f\n", (now() - t) / n);
    n = 100;
    t = now();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            dup2(devnull, 1);
            execl(prog, prog, (char *)NULL);
            _exit(127);
        }
        waitpid(pid, NULL, 0);
    }
    fprintf(stderr, "BENCH exec-dynamic %.0f\n", (now() - t) / n);
    return 0;
}
