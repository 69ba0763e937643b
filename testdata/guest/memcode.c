/* Code that never touches a file as a program: each technique puts its own bytes
 * (`mov eax, 42; ret`) into executable memory and calls them. Prints "<T>-RAN" when the
 * bytes ran, "<T>-REFUSED <step> <errno>" when the kernel refused a step, "<T>-ERROR ..."
 * when the test itself could not be set up.
 *
 *   memcode cow-mprotect LIB    map LIB private read-write, write, mprotect read-exec
 *   memcode rwx-map LIB         map LIB private read-write-exec at once, write
 *   memcode exec-then-write LIB map LIB read-exec, mprotect read-write, write, back to exec
 *   memcode proc-mem LIB        map LIB read-exec, write through /proc/self/mem
 *   memcode ddexec              overwrite this program's own code through /proc/self/mem
 *   memcode memfd-map           a memfd written, mapped read-exec
 *   memcode anon-rwx            anonymous read-write-exec memory
 *   memcode anon-mprotect       anonymous read-write memory made read-exec
 *   memcode double-map          .NET's shape: one memfd mapped read-write and read-exec
 *   memcode ptrace-poke         attach to a child with ptrace, PTRACE_POKETEXT the bytes
 *                               over its code, let it run them
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

static const unsigned char CODE[] = {0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3};
static const char *T = "?";

static int refused(const char *step) {
    printf("%s-REFUSED %s %s\n", T, step, strerror(errno));
    return 1;
}

static int call(void *p) {
    int (*f)(void) = (int (*)(void))p;
    __builtin___clear_cache((char *)p, (char *)p + sizeof(CODE));
    int v = f();
    printf(v == 42 ? "%s-RAN\n" : "%s-ERROR returned %d\n", T, v);
    return v == 42 ? 0 : 2;
}

__attribute__((noinline)) int victim(void) { return 7; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: memcode TECHNIQUE [LIB]\n");
        return 2;
    }
    T = argv[1];
    const char *lib = argc > 2 ? argv[2] : NULL;
    int fd = -1;
    if (lib && (fd = open(lib, O_RDONLY)) < 0) {
        printf("%s-ERROR open %s %s\n", T, lib, strerror(errno));
        return 2;
    }
    long pg = sysconf(_SC_PAGESIZE);
    if (!strcmp(T, "cow-mprotect")) {
        char *p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) return refused("mmap");
        memcpy(p, CODE, sizeof(CODE));
        if (mprotect(p, pg, PROT_READ | PROT_EXEC)) return refused("mprotect");
        return call(p);
    }
    if (!strcmp(T, "rwx-map")) {
        char *p = mmap(NULL, pg, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) return refused("mmap");
        memcpy(p, CODE, sizeof(CODE));
        return call(p);
    }
    if (!strcmp(T, "exec-then-write")) {
        char *p = mmap(NULL, pg, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) return refused("mmap");
        if (mprotect(p, pg, PROT_READ | PROT_WRITE)) return refused("mprotect-write");
        memcpy(p, CODE, sizeof(CODE));
        if (mprotect(p, pg, PROT_READ | PROT_EXEC)) return refused("mprotect-exec");
        return call(p);
    }
    if (!strcmp(T, "proc-mem")) {
        char *p = mmap(NULL, pg, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) return refused("mmap");
        int m = open("/proc/self/mem", O_RDWR);
        if (m < 0) return refused("open");
        if (pwrite(m, CODE, sizeof(CODE), (off_t)(unsigned long)p) != (ssize_t)sizeof(CODE))
            return refused("pwrite");
        return call(p);
    }
    if (!strcmp(T, "ddexec")) {
        int m = open("/proc/self/mem", O_RDWR);
        if (m < 0) return refused("open");
        void *target = (void *)victim;
        if (pwrite(m, CODE, sizeof(CODE), (off_t)(unsigned long)target) != (ssize_t)sizeof(CODE))
            return refused("pwrite");
        int v = victim();
        printf(v == 42 ? "%s-RAN\n" : "%s-ERROR returned %d\n", T, v);
        return v == 42 ? 0 : 2;
    }
    if (!strcmp(T, "memfd-map") || !strcmp(T, "double-map")) {
        int m = memfd_create(!strcmp(T, "double-map") ? "doublemapper" : "code", 0);
        if (m < 0) return refused("memfd_create");
        if (ftruncate(m, pg)) return refused("ftruncate");
        if (!strcmp(T, "memfd-map")) {
            if (pwrite(m, CODE, sizeof(CODE), 0) != (ssize_t)sizeof(CODE)) return refused("write");
            char *x = mmap(NULL, pg, PROT_READ | PROT_EXEC, MAP_PRIVATE, m, 0);
            if (x == MAP_FAILED) return refused("mmap");
            return call(x);
        }
        char *w = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
        if (w == MAP_FAILED) return refused("mmap-rw");
        char *x = mmap(NULL, pg, PROT_READ | PROT_EXEC, MAP_SHARED, m, 0);
        if (x == MAP_FAILED) return refused("mmap-rx");
        memcpy(w, CODE, sizeof(CODE));
        return call(x);
    }
    if (!strcmp(T, "anon-rwx")) {
        char *p = mmap(NULL, pg, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return refused("mmap");
        memcpy(p, CODE, sizeof(CODE));
        return call(p);
    }
    if (!strcmp(T, "anon-mprotect")) {
        char *p = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return refused("mmap");
        memcpy(p, CODE, sizeof(CODE));
        if (mprotect(p, pg, PROT_READ | PROT_EXEC)) return refused("mprotect");
        return call(p);
    }
    if (!strcmp(T, "ptrace-poke")) {
        int p[2];
        if (pipe(p)) return refused("pipe");
        pid_t child = fork();
        if (child == 0) {
            raise(SIGSTOP);
            int v = victim();
            if (write(p[1], &v, sizeof v) != sizeof v) _exit(1);
            _exit(0);
        }
        int st;
        waitpid(child, &st, WUNTRACED);
        if (ptrace(PTRACE_ATTACH, child, 0, 0) < 0) {
            kill(child, SIGKILL);
            return refused("attach");
        }
        waitpid(child, &st, 0);
        long word = ptrace(PTRACE_PEEKTEXT, child, (void *)victim, 0);
        memcpy(&word, CODE, sizeof(CODE));
        if (ptrace(PTRACE_POKETEXT, child, (void *)victim, (void *)word) < 0) {
            kill(child, SIGKILL);
            return refused("poketext");
        }
        ptrace(PTRACE_DETACH, child, 0, 0);
        kill(child, SIGCONT);
        int v = 0;
        if (read(p[0], &v, sizeof v) != sizeof v) v = -1;
        waitpid(child, &st, 0);
        printf(v == 42 ? "%s-RAN\n" : "%s-ERROR returned %d\n", T, v);
        return v == 42 ? 0 : 2;
    }
    printf("%s-ERROR unknown technique\n", T);
    return 2;
}
