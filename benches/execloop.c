/* Exec loop for the scale and storm benchmarks (issue 17): fork + execve + wait of one
 * program, again and again, each exec's latency in µs written to OUT, one per line.
 *
 *   execloop PROG COUNT OUT       COUNT execs
 *   execloop PROG -t SECONDS OUT  for SECONDS
 * A PROG holding "%d" names another file for each exec (the exec's number); with
 * EXECLOOP_DENIED=1 every exec is expected to fail (a denial), not to succeed.
 * Built by scripts/bench-scale.sh with cc. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    const char *prog = argv[1];
    long count = -1;
    double until = 0;
    const char *outp;
    if (strcmp(argv[2], "-t") == 0) {
        if (argc != 5)
            return 2;
        until = now_us() + atof(argv[3]) * 1e6;
        outp = argv[4];
    } else {
        count = atol(argv[2]);
        outp = argv[3];
    }
    FILE *out = fopen(outp, "w");
    if (!out) {
        perror("execloop");
        return 1;
    }
    int per_exec = strstr(prog, "%d") != NULL;
    int denied = getenv("EXECLOOP_DENIED") != NULL;
    char name[4096];
    for (long i = 0; count < 0 ? now_us() < until : i < count; i++) {
        if (per_exec)
            snprintf(name, sizeof name, prog, (int)i);
        else
            snprintf(name, sizeof name, "%s", prog);
        char *args[] = {name, NULL};
        double a = now_us();
        pid_t p = fork();
        if (p == 0) {
            execv(name, args);
            _exit(127);
        }
        int st;
        if (p < 0 || waitpid(p, &st, 0) < 0)
            return 1;
        fprintf(out, "%.0f\n", now_us() - a);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok == denied) {
            fprintf(stderr, "execloop: %s %s (status %d)\n", name, denied ? "ran" : "failed", st);
            return 1;
        }
    }
    return fclose(out) != 0;
}
