/* A dropped library: its constructor is the payload. */
#include <unistd.h>
__attribute__((constructor)) static void payload(void) {
    static const char msg[] = "EVIL-RAN\n";
    write(1, msg, sizeof msg - 1);
}
int evil_symbol(void) { return 42; }
