/* The DreamBus-style payload: a static program that is in no image. Prints PAYLOAD-RAN. */
#include <stdio.h>

int main(void) {
    printf("PAYLOAD-RAN\n");
    return 0;
}
