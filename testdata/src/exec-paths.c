/* exec-paths: every way to execute a file, and a shared-mmap writer, for driftlock's tests.
 *
 *   exec-paths execve PATH            execve(PATH)
 *   exec-paths execveat-rel DIR NAME  execveat(open(DIR), NAME)
 *   exec-paths execveat-abs PATH      execveat(AT_FDCWD, PATH)
 *   exec-paths execveat-empty PATH    execveat(open(PATH), "", AT_EMPTY_PATH)
 *   exec-paths fexecve PATH           fexecve(open(PATH))
 *   exec-paths procfd-deleted PATH    open, unlink, execve("/proc/self/fd/N")
 *   exec-paths loader LOADER PATH     execve(LOADER, [LOADER, PATH])
 *   exec-paths mmap-write PATH        flip 16 bytes in the middle through MAP_SHARED
 *   exec-paths open-loop PATH N       open+read+close PATH N times; prints ns per iteration
 *
 * An exec that fails prints "denied: <strerror>" and exits 126; a successful one becomes
 * the target program (which exits with its own status). The target runs as "true" when it
 * is busybox. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char *env[] = {NULL};

static int failed(const char *what) {
  printf("denied: %s (%s)\n", strerror(errno), what);
  return 126;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: exec-paths MODE ARGS\n"); return 2; }
  const char *mode = argv[1], *path = argv[2];
  char *args[] = {"true", NULL};
  if (!strcmp(mode, "execve")) {
    execve(path, args, env);
    return failed(mode);
  }
  if (!strcmp(mode, "execveat-rel") && argc > 3) {
    int dir = open(path, O_RDONLY | O_DIRECTORY);
    if (dir < 0) return failed("open dir");
    syscall(SYS_execveat, dir, argv[3], args, env, 0);
    return failed(mode);
  }
  if (!strcmp(mode, "execveat-abs")) {
    syscall(SYS_execveat, AT_FDCWD, path, args, env, 0);
    return failed(mode);
  }
  if (!strcmp(mode, "execveat-empty") || !strcmp(mode, "fexecve")) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return failed("open");
    if (!strcmp(mode, "fexecve")) fexecve(fd, args, env);
    else syscall(SYS_execveat, fd, "", args, env, AT_EMPTY_PATH);
    return failed(mode);
  }
  if (!strcmp(mode, "procfd-deleted")) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return failed("open");
    if (unlink(path)) return failed("unlink");
    char name[64];
    snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
    execve(name, args, env);
    return failed(mode);
  }
  if (!strcmp(mode, "loader") && argc > 3) {
    char *largs[] = {argv[2], argv[3], NULL};
    execve(argv[2], largs, env);
    return failed(mode);
  }
  if (!strcmp(mode, "mmap-write")) {
    int fd = open(path, O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) return failed("open");
    unsigned char *m = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return failed("mmap");
    for (off_t i = st.st_size / 2; i < st.st_size / 2 + 16 && i < st.st_size; i++) m[i] ^= 0xff;
    munmap(m, st.st_size);
    close(fd);
    return 0;
  }
  if (!strcmp(mode, "open-loop") && argc > 3) {
    long n = atol(argv[3]);
    char buf[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
      int fd = open(path, O_RDONLY);
      if (fd < 0) return failed("open");
      if (read(fd, buf, sizeof buf) < 0) return failed("read");
      close(fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n;
    printf("open-loop %.0f ns\n", ns);
    return 0;
  }
  fprintf(stderr, "exec-paths: unknown mode %s\n", mode);
  return 2;
}
