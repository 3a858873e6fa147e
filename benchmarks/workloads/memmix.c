/*
 * Benchmark workload: read the file argv[1] into anonymous memory, create argv[2] to say so,
 * then sleep until killed. benchmarks/spot_window.py writes the file as a realistic mix of what a
 * job's memory holds (see MIX there): every page is present and written, so CRIU dumps all of
 * it. Build static (the container rootfs has no libc): gcc -O2 -static -o memmix memmix.c
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memmix FILE READY\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY);
    struct stat info;
    if (fd < 0 || fstat(fd, &info) != 0) {
        perror("memmix: open");
        return 1;
    }
    char *memory = malloc((size_t)info.st_size);
    if (memory == NULL) {
        perror("memmix: malloc");
        return 1;
    }
    size_t filled = 0;
    while (filled < (size_t)info.st_size) {
        ssize_t count = read(fd, memory + filled, (size_t)info.st_size - filled);
        if (count <= 0) {
            perror("memmix: read");
            return 1;
        }
        filled += (size_t)count;
    }
    close(fd);
    int ready = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (ready >= 0)
        close(ready);
    for (;;)
        pause();
}
