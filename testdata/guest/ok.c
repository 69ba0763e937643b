/* A library that is part of the image. */
#include <unistd.h>
__attribute__((constructor)) static void hello(void) {
    static const char msg[] = "OKLIB-RAN\n";
    write(1, msg, sizeof msg - 1);
}
