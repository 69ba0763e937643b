/* The honest floor (issue 17): the least any fanotify exec enforcer does. A process of its
 * own, single-threaded, no allocation: it marks one filesystem for FAN_OPEN_EXEC_PERM,
 * blocks in read() on the group, and answers each event with one write() (allow) and a
 * close() of the event's fd, which the kernel opened for it.
 *
 *   floor DIR...   prints "ready" once every DIR's filesystem is marked; runs until killed.
 * Built by benches/exec_latency.rs with cc. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/fanotify.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    int g = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC, O_RDONLY | O_CLOEXEC);
    if (g < 0) {
        perror("floor");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_OPEN_EXEC_PERM, AT_FDCWD,
                          argv[i]) != 0) {
            perror(argv[i]);
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    static char buf[64 * 1024] __attribute__((aligned(8)));
    for (;;) {
        ssize_t n = read(g, buf, sizeof buf);
        if (n <= 0)
            continue;
        for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n);
             m = FAN_EVENT_NEXT(m, n)) {
            if (m->fd < 0)
                continue;
            struct fanotify_response r = {.fd = m->fd, .response = FAN_ALLOW};
            (void)write(g, &r, sizeof r);
            close(m->fd);
        }
    }
}
