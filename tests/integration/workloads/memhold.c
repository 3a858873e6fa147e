/*
 * memhold: the memory-and-open-file workload of ARCH's checkpoint/restore integration tests.
 *
 *   memhold SEED MIB PATH INTERVAL_MS
 *
 * Fills MIB MiB of anonymous memory with a pattern derived from SEED, opens PATH once (append)
 * and then, every INTERVAL_MS milliseconds (and at once on SIGUSR1), re-verifies the whole
 * region and appends one line through that same descriptor:
 *
 *   tick <counter> verified <bytes> seed <seed> pid <pid> fd <fd> same_file <0|1>
 *
 * same_file is 1 when the held descriptor is still the file found at PATH (same device and
 * inode): after a restore, the descriptor must refer to the restored file, not a ghost.
 * The first line is "start seed <seed> bytes <bytes>": a restarted workload writes a second one.
 * A verification failure writes "corrupt offset <n>" and exits 3; the counter lives only in
 * this process's memory, so a restored process continues it and a fresh one starts at 1.
 * The file PATH.exit, when it appears, holds an exit code: the program exits with it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t verify_now;

static void on_usr1(int signo) {
    (void)signo;
    verify_now = 1;
}

/* splitmix64: a word of the pattern from the seed and the word's index. */
static uint64_t pattern_word(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill(uint64_t *words, size_t count, uint64_t seed) {
    for (size_t i = 0; i < count; i++) words[i] = pattern_word(seed, i);
}

/* The index of the first word that differs from the pattern, or count when all match. */
static size_t first_mismatch(const uint64_t *words, size_t count, uint64_t seed) {
    for (size_t i = 0; i < count; i++)
        if (words[i] != pattern_word(seed, i)) return i;
    return count;
}

static void write_line(int fd, const char *line) {
    size_t length = strlen(line);
    while (length > 0) {
        ssize_t written = write(fd, line, length);
        if (written < 0) {
            if (errno == EINTR) continue;
            _exit(4);
        }
        line += written;
        length -= (size_t)written;
    }
}

static int same_file(int fd, const char *path) {
    struct stat held, named;
    if (fstat(fd, &held) != 0 || stat(path, &named) != 0) return 0;
    return held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

/* -1 while PATH.exit does not exist, else the exit code it holds. */
static int requested_exit(const char *exit_path) {
    FILE *request = fopen(exit_path, "r");
    int code = 0;
    if (request == NULL) return -1;
    if (fscanf(request, "%d", &code) != 1) code = 0;
    fclose(request);
    return code;
}

static void sleep_ms(long milliseconds) {
    struct timespec delay = {milliseconds / 1000, (milliseconds % 1000) * 1000000L};
    while (nanosleep(&delay, &delay) != 0 && errno == EINTR && !verify_now) {
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SEED MIB PATH INTERVAL_MS\n", argv[0]);
        return 2;
    }
    uint64_t seed = strtoull(argv[1], NULL, 0);
    size_t bytes = (size_t)strtoul(argv[2], NULL, 0) << 20;
    const char *path = argv[3];
    long interval_ms = strtol(argv[4], NULL, 0);
    size_t count = bytes / sizeof(uint64_t);
    char exit_path[4096];
    char line[512];
    snprintf(exit_path, sizeof exit_path, "%s.exit", path);

    uint64_t *words = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (words == MAP_FAILED) return 5;
    fill(words, count, seed);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return 6;
    signal(SIGUSR1, on_usr1);
    snprintf(line, sizeof line, "start seed %llu bytes %zu\n", (unsigned long long)seed, bytes);
    write_line(fd, line);

    for (unsigned long long counter = 1;; counter++) {
        verify_now = 0;
        size_t bad = first_mismatch(words, count, seed);
        if (bad != count) {
            snprintf(line, sizeof line, "corrupt offset %zu\n", bad * sizeof(uint64_t));
            write_line(fd, line);
            return 3;
        }
        snprintf(line, sizeof line, "tick %llu verified %zu seed %llu pid %d fd %d same_file %d\n",
                 counter, bytes, (unsigned long long)seed, (int)getpid(), fd,
                 same_file(fd, path));
        write_line(fd, line);
        int code = requested_exit(exit_path);
        if (code >= 0) return code;
        sleep_ms(interval_ms);
    }
}
