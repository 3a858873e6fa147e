/*
 * The process inside `archctl selftest`'s container (arch/appliance/selftest.py), built static so that
 * it is the whole image: no shell, no libraries. archctl compiles it with the host's C compiler
 * (`cc -static`); the appliance role installs that compiler and the static C library.
 *
 *   arch-selftest-payload run
 *       The workload. Changes the filesystem in every way an image must carry: creates
 *       /selftest and /selftest/note (holding the token), modifies /etc/hostname, deletes
 *       /etc/group, renames /selftest/to-rename to /selftest/renamed; appends "boot" to
 *       /selftest/boots. Then counts forever: the token (drawn once, at this start) and the
 *       counter live only in this process's memory, and every 0.2 s "<token> <counter>\n" is
 *       written to /selftest/state.new and renamed over /selftest/state. A restore that fell
 *       back to a fresh start shows up as a new token and a second boot.
 *
 *   arch-selftest-payload report PATH...
 *       One line per PATH, tab-separated: "PATH\tfile\t<content in hex>", "PATH\tmissing" (no
 *       such file) or "PATH\terror\t<reason>". Used through `ctr task exec`: exact contents,
 *       no shell needed.
 *
 * Exit status: 0; 1 when the workload cannot change a file or the report cannot be written;
 * 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TOKEN_BYTES 16
#define STATE_INTERVAL_NS 200000000L

static int fail(const char *what, const char *path)
{
	fprintf(stderr, "arch-selftest-payload: %s %s: %s\n", what, path, strerror(errno));
	return 1;
}

static int write_all(int fd, const char *data, size_t length)
{
	while (length > 0) {
		ssize_t written = write(fd, data, length);
		if (written < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		data += written;
		length -= (size_t)written;
	}
	return 0;
}

/* Write `text` to `path` (created 0644), truncating it, or appending with O_APPEND. */
static int put_file(const char *path, const char *text, int append)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
	if (fd < 0)
		return fail("cannot open", path);
	if (write_all(fd, text, strlen(text)) < 0) {
		close(fd);
		return fail("cannot write", path);
	}
	if (close(fd) < 0)
		return fail("cannot close", path);
	return 0;
}

static int draw_token(char *token, size_t size)
{
	unsigned char random_bytes[TOKEN_BYTES];
	size_t have = 0;
	while (have < sizeof(random_bytes)) {
		ssize_t got = getrandom(random_bytes + have, sizeof(random_bytes) - have, 0);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			return fail("cannot draw", "a random token");
		}
		have += (size_t)got;
	}
	for (size_t i = 0; i < sizeof(random_bytes) && 2 * i + 2 < size; i++)
		snprintf(token + 2 * i, 3, "%02x", random_bytes[i]);
	return 0;
}

static void sleep_interval(void)
{
	struct timespec left = {0, STATE_INTERVAL_NS};
	while (nanosleep(&left, &left) < 0 && errno == EINTR)
		;
}

static int run_workload(void)
{
	char token[2 * TOKEN_BYTES + 1] = "";
	char line[2 * TOKEN_BYTES + 32];
	unsigned long long counter = 0;

	if (mkdir("/selftest", 0755) < 0 && errno != EEXIST)
		return fail("cannot create", "/selftest");
	if (put_file("/selftest/boots", "boot\n", 1) || draw_token(token, sizeof(token)))
		return 1;
	snprintf(line, sizeof(line), "%s\n", token);
	if (put_file("/selftest/note", line, 0)
	    || put_file("/etc/hostname", "changed by archctl selftest\n", 0))
		return 1;
	if (unlink("/etc/group") < 0)
		return fail("cannot delete", "/etc/group");
	if (put_file("/selftest/to-rename", "renamed\n", 0))
		return 1;
	if (rename("/selftest/to-rename", "/selftest/renamed") < 0)
		return fail("cannot rename", "/selftest/to-rename");
	for (;;) {
		counter++;
		snprintf(line, sizeof(line), "%s %llu\n", token, counter);
		if (put_file("/selftest/state.new", line, 0))
			return 1;
		if (rename("/selftest/state.new", "/selftest/state") < 0)
			return fail("cannot rename", "/selftest/state.new");
		sleep_interval();
	}
}

/* "PATH\tfile\t<hex>\n", "PATH\tmissing\n" or "PATH\terror\t<reason>\n" on stdout. */
static void report_file(const char *path)
{
	unsigned char buffer[4096];
	ssize_t got;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			printf("%s\tmissing\n", path);
		else
			printf("%s\terror\t%s\n", path, strerror(errno));
		return;
	}
	struct stat info;
	if (fstat(fd, &info) < 0) {
		printf("%s\terror\t%s\n", path, strerror(errno));
		close(fd);
		return;
	}
	if (!S_ISREG(info.st_mode)) {
		printf("%s\terror\tnot a regular file\n", path);
		close(fd);
		return;
	}
	printf("%s\tfile\t", path);
	while ((got = read(fd, buffer, sizeof(buffer))) != 0) {
		if (got < 0) {
			if (errno == EINTR)
				continue;
			/* The hex so far is incomplete: end the line with a marker the reader refuses. */
			printf("\terror\t%s", strerror(errno));
			break;
		}
		for (ssize_t i = 0; i < got; i++)
			printf("%02x", buffer[i]);
	}
	printf("\n");
	close(fd);
}

static int report(int count, char **paths)
{
	for (int i = 0; i < count; i++)
		report_file(paths[i]);
	if (fflush(stdout) == EOF || ferror(stdout))
		return fail("cannot write", "the report");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "run") == 0)
		return run_workload();
	if (argc >= 2 && strcmp(argv[1], "report") == 0)
		return report(argc - 2, argv + 2);
	fprintf(stderr, "usage: arch-selftest-payload run | report PATH...\n");
	return 2;
}
