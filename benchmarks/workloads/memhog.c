/*
 * Benchmark workload: allocate and touch MIB mebibytes (argv[1]), then sleep forever.
 *
 * Every page gets a distinct, non-zero pattern, so the kernel cannot share it with the zero
 * page and CRIU has to dump and restore all of it. Build static (the container rootfs has no
 * libc): gcc -O2 -static -o memhog memhog.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 256;
    if (mib <= 0) {
        fprintf(stderr, "memhog: bad size %s\n", argv[1]);
        return 2;
    }
    size_t size = (size_t)mib << 20;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t *region = malloc(size);
    if (region == NULL) {
        perror("memhog: malloc");
        return 1;
    }
    size_t words = size / sizeof(uint64_t);
    for (size_t index = 0; index < words; index++) {
        region[index] = (index * sizeof(uint64_t) / (size_t)page) ^ 0x5a5a5a5a5a5a5a5aULL;
    }
    struct timespec second = {1, 0};
    for (;;) {
        nanosleep(&second, NULL);
    }
}
