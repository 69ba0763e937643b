/* Runs a command with socket(2) limited to some address families, as systemd's
 * RestrictAddressFamilies= does (a seccomp filter; other families fail with
 * EAFNOSUPPORT), and with no_new_privs set (NoNewPrivileges=yes).
 *
 *   restrict-af FAMILY[,FAMILY...] -- COMMAND [ARGS...]
 *
 * FAMILY: AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int family(const char *name) {
    if (!strcmp(name, "AF_UNIX")) return AF_UNIX;
    if (!strcmp(name, "AF_INET")) return AF_INET;
    if (!strcmp(name, "AF_INET6")) return AF_INET6;
    if (!strcmp(name, "AF_NETLINK")) return AF_NETLINK;
    if (!strcmp(name, "AF_PACKET")) return AF_PACKET;
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 4 || strcmp(argv[2], "--")) {
        fprintf(stderr, "usage: restrict-af FAMILY[,FAMILY...] -- COMMAND [ARGS...]\n");
        return 2;
    }
    int fams[16], n = 0;
    char list[256];
    snprintf(list, sizeof list, "%s", argv[1]);
    for (char *t = strtok(list, ", "); t && n < 16; t = strtok(NULL, ", ")) {
        int f = family(t);
        if (f < 0) {
            fprintf(stderr, "restrict-af: unknown family %s\n", t);
            return 2;
        }
        fams[n++] = f;
    }
    struct sock_filter prog[64];
    int i = 0;
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    prog[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    prog[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 1, 0);
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    for (int k = 0; k < n; k++) {
        /* Equal: skip to the allow at the end (n - k - 1 more tests, then the errno). */
        prog[i++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, fams[k], (unsigned char)(n - k), 0);
    }
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT);
    prog[i++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog fprog = {.len = (unsigned short)i, .filter = prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog) != 0) {
        perror("restrict-af: seccomp");
        return 1;
    }
    execvp(argv[3], argv + 3);
    perror("restrict-af: exec");
    return 127;
}
