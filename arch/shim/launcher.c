/*
 * arch-runc native front.
 *
 * A Python interpreter alone starts slower than `runc state` runs, and containerd calls runc
 * for every state/kill/exec/ps of every container. So this front decides, without Python,
 * whether a call is one ARCH may intercept. Everything else is exec'd straight into the real
 * runc named by arch.toml's top-level `runc = "..."`; every case this front is not sure about
 * (an intercepted subcommand, an unknown global flag, a config it cannot read simply) is exec'd
 * into the Python arch-runc, which implements the full behaviour.
 *
 * Build: cc -O2 -DARCH_PYTHON_SHIM='"/opt/arch/venv/bin/arch-runc"' -o arch-runc launcher.c
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef ARCH_PYTHON_SHIM
#error "define ARCH_PYTHON_SHIM as the path of the Python arch-runc console script"
#endif

#define DEFAULT_CONFIG "/etc/arch/arch.toml"
#define MAX_CONFIG_BYTES 65536
#define EXIT_RUNC_UNAVAILABLE 127

/* Keep in sync with INTERCEPTED_SUBCOMMANDS in arch/shim/main.py. */
static const char *const intercepted[] = {"create", "start", "checkpoint", "resume", "delete", NULL};
/* runc's global options that take a value; the booleans are listed so unknown ones stand out. */
static const char *const valued_globals[] = {"root", "log", "log-format", "criu", "rootless", NULL};
static const char *const bool_globals[] = {"debug", "systemd-cgroup", "help", "h", "version", "v", NULL};

static int in_list(const char *const *list, const char *name, size_t len)
{
	for (; *list; list++)
		if (strlen(*list) == len && strncmp(*list, name, len) == 0)
			return 1;
	return 0;
}

static void exec_python(char **argv)
{
	argv[0] = ARCH_PYTHON_SHIM;
	execv(ARCH_PYTHON_SHIM, argv);
	fprintf(stderr, "arch-runc: cannot execute %s: %s\n", ARCH_PYTHON_SHIM, strerror(errno));
	exit(EXIT_RUNC_UNAVAILABLE);
}

/*
 * Index of the subcommand in argv, 0 when there is none (runc --help, --version), or -1 when a
 * global flag is unknown, so that only the full parser decides.
 */
static int find_subcommand(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		if (strcmp(arg, "--") == 0)
			return i + 1 < argc ? i + 1 : 0;
		if (arg[0] != '-' || arg[1] == '\0')
			return i;
		const char *name = arg + (arg[1] == '-' ? 2 : 1);
		const char *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		if (in_list(valued_globals, name, len)) {
			if (!eq)
				i++;
		} else if (!in_list(bool_globals, name, len)) {
			return -1;
		}
	}
	return 0;
}

static const char *skip_blanks(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

/*
 * Parse one line `runc = "PATH"` (or 'PATH') into out. Returns 1 when the line is that key with
 * a plain absolute path, 0 when the line is another key, -1 when it is `runc` in a form this
 * scanner does not handle (escapes, odd quoting): then Python must read the file.
 */
static int parse_runc_line(const char *line, char *out, size_t out_size)
{
	const char *p = skip_blanks(line);
	if (strncmp(p, "runc", 4) != 0)
		return 0;
	p = skip_blanks(p + 4);
	if (*p != '=')
		return 0;
	p = skip_blanks(p + 1);
	char quote = *p;
	if (quote != '"' && quote != '\'')
		return -1;
	const char *start = ++p;
	while (*p && *p != quote && *p != '\\' && *p != '\n')
		p++;
	if (*p != quote || p == start || *start != '/' || (size_t)(p - start) >= out_size)
		return -1;
	size_t len = (size_t)(p - start);
	p = skip_blanks(p + 1);
	if (*p != '\0' && *p != '\n' && *p != '\r' && *p != '#')
		return -1;
	memcpy(out, start, len);
	out[len] = '\0';
	return 1;
}

/* The real runc from the config's top-level table; 0 when Python must decide. */
static int configured_runc(char *out, size_t out_size)
{
	const char *path = getenv("ARCH_CONFIG");
	if (!path || !*path)
		path = DEFAULT_CONFIG;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	static char text[MAX_CONFIG_BYTES + 1];
	ssize_t total = 0, got = 0;
	while (total < MAX_CONFIG_BYTES &&
	       (got = read(fd, text + total, MAX_CONFIG_BYTES - (size_t)total)) > 0)
		total += got;
	close(fd);
	text[total] = '\0';
	if (got < 0 || total >= MAX_CONFIG_BYTES || strstr(text, "\"\"\"") || strstr(text, "'''"))
		return 0;

	int found = 0;
	for (char *line = text; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (*skip_blanks(line) == '[')
			break;
		int result = parse_runc_line(line, out, out_size);
		if (result < 0 || (result > 0 && found))
			return 0;
		found |= result;
		line = next;
	}
	return found;
}

int main(int argc, char **argv)
{
	int sub = find_subcommand(argc, argv);
	if (sub < 0 || (sub > 0 && in_list(intercepted, argv[sub], strlen(argv[sub]))))
		exec_python(argv);

	static char runc[4096];
	if (!configured_runc(runc, sizeof(runc)))
		exec_python(argv);
	argv[0] = runc;
	execv(runc, argv);
	fprintf(stderr, "arch-runc: cannot execute the real runc %s: %s\n", runc, strerror(errno));
	return EXIT_RUNC_UNAVAILABLE;
}
