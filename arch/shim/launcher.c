/*
 * arch-runc native front.
 *
 * A Python interpreter alone starts slower than `runc state` runs, and containerd calls runc
 * for every state/kill/exec/ps of every container. So this front decides, without Python,
 * whether a call can concern ARCH at all. Calls that cannot are exec'd straight into the real
 * runc named by arch.toml's top-level `runc = "..."`:
 *   - every subcommand ARCH never intercepts;
 *   - start/resume/delete/checkpoint when no argument names a container that has ARCH state
 *     (<state_dir>/<namespace>/<id>, written by the Python create of an opted-in container);
 *   - create when the bundle's config.json does not mention ARCH_ENABLE (and has no JSON \u
 *     escape that could hide it) and the container has no stale ARCH state.
 * It answers `start` after a restore and `resume` after a checkpoint itself: both are no-ops.
 * Everything else, and every case this front is not sure about (an unknown global flag, a
 * config or bundle it cannot read simply), is exec'd into the Python arch-runc, which
 * implements the full behaviour and passes through whatever is not ARCH's.
 *
 * Build: cc -O2 -DARCH_PYTHON_SHIM='"/opt/arch/venv/bin/arch-runc"' -o arch-runc launcher.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef ARCH_PYTHON_SHIM
#error "define ARCH_PYTHON_SHIM as the path of the Python arch-runc console script"
#endif

#define DEFAULT_CONFIG "/etc/arch/arch.toml"
#define DEFAULT_STATE_DIR "/run/arch"
#define DEFAULT_RUNC_ROOT "/run/runc"
#define MAX_CONFIG_BYTES 65536
#define MAX_BUNDLE_CONFIG_BYTES (4 << 20)
#define EXIT_RUNC_UNAVAILABLE 127

/* Keep in sync with INTERCEPTED_SUBCOMMANDS in arch/shim/main.py. */
static const char *const intercepted[] = {"create", "start", "checkpoint", "resume", "delete", NULL};
/* runc's global options that take a value; the booleans are listed so unknown ones stand out. */
static const char *const valued_globals[] = {"root", "log", "log-format", "criu", "rootless", NULL};
static const char *const bool_globals[] = {"debug", "systemd-cgroup", "help", "h", "version", "v", NULL};

struct host_config {
	char runc[4096];
	char state_dir[4096];
};

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

/* The name of a flag argument without its dashes, and the length of that name. */
static const char *flag_name(const char *arg, size_t *len)
{
	const char *name = arg + (arg[1] == '-' ? 2 : 1);
	const char *eq = strchr(name, '=');
	*len = eq ? (size_t)(eq - name) : strlen(name);
	return name;
}

/*
 * Index of the subcommand in argv, 0 when there is none (runc --help, --version), or -1 when a
 * global flag is unknown, so that only the full parser decides. *root receives the last
 * --root value (Go's flag package keeps the last one).
 */
static int find_subcommand(int argc, char **argv, const char **root)
{
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		if (strcmp(arg, "--") == 0)
			return i + 1 < argc ? i + 1 : 0;
		if (arg[0] != '-' || arg[1] == '\0')
			return i;
		size_t len;
		const char *name = flag_name(arg, &len);
		if (in_list(valued_globals, name, len)) {
			const char *value = name[len] == '=' ? name + len + 1 : argv[i + 1];
			if (name[len] != '=')
				i++;
			if (len == 4 && strncmp(name, "root", 4) == 0 && value)
				*root = value;
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
 * Parse one line `KEY = "PATH"` (or 'PATH') into out. Returns 1 when the line is that key with
 * a plain absolute path, 0 when the line is another key, -1 when it is KEY in a form this
 * scanner does not handle (escapes, odd quoting): then Python must read the file.
 */
static int parse_path_line(const char *line, const char *key, char *out, size_t out_size)
{
	size_t key_len = strlen(key);
	const char *p = skip_blanks(line);
	if (strncmp(p, key, key_len) != 0)
		return 0;
	p = skip_blanks(p + key_len);
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

/* Read a whole small file into a NUL-terminated buffer; NULL when absent, unreadable or big. */
static char *read_small_file(const char *path, size_t max_bytes)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	char *text = malloc(max_bytes + 1);
	size_t total = 0;
	ssize_t got = 0;
	while (text && total < max_bytes && (got = read(fd, text + total, max_bytes - total)) > 0)
		total += (size_t)got;
	close(fd);
	if (!text || got < 0 || total >= max_bytes) {
		free(text);
		return NULL;
	}
	text[total] = '\0';
	return text;
}

/*
 * The real runc and the state directory from the config's top-level table; 0 when Python must
 * decide (no config, no `runc` key, a form this scanner does not read).
 */
static int read_host_config(struct host_config *config)
{
	const char *path = getenv("ARCH_CONFIG");
	char *text = read_small_file(path && *path ? path : DEFAULT_CONFIG, MAX_CONFIG_BYTES);
	if (!text)
		return 0;
	int found_runc = 0, found_state_dir = 0, usable = !strstr(text, "\"\"\"") && !strstr(text, "'''");
	for (char *line = text; usable && line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (*skip_blanks(line) == '[')
			break;
		int runc = parse_path_line(line, "runc", config->runc, sizeof(config->runc));
		int state_dir = parse_path_line(line, "state_dir", config->state_dir,
						sizeof(config->state_dir));
		if (runc < 0 || state_dir < 0 || (runc && found_runc) || (state_dir && found_state_dir))
			usable = 0;
		found_runc |= runc > 0;
		found_state_dir |= state_dir > 0;
		line = next;
	}
	free(text);
	if (!found_state_dir)
		strcpy(config->state_dir, DEFAULT_STATE_DIR);
	return usable && found_runc;
}

/* The containerd namespace: the last component of runc's --root ("runc" for the default). */
static int namespace_of(const char *root, char *out, size_t out_size)
{
	size_t end = strlen(root);
	while (end > 0 && root[end - 1] == '/')
		end--;
	size_t start = end;
	while (start > 0 && root[start - 1] != '/')
		start--;
	if (end == start || end - start >= out_size)
		return 0;
	memcpy(out, root + start, end - start);
	out[end - start] = '\0';
	return 1;
}

/*
 * Whether any argument after the subcommand names a container with ARCH state. The container
 * id is one of them; flag values that happen to match only cost a trip through Python.
 */
static int names_arch_container(const struct host_config *config, const char *ns, int argc,
				char **argv, int sub)
{
	char path[8192];
	struct stat info;
	for (int i = sub + 1; i < argc; i++) {
		const char *arg = argv[i];
		if (arg[0] == '-' || strchr(arg, '/') || strcmp(arg, ".") == 0 || strcmp(arg, "..") == 0)
			continue;
		int len = snprintf(path, sizeof(path), "%s/%s/%s", config->state_dir, ns, arg);
		if (len < 0 || (size_t)len >= sizeof(path) || lstat(path, &info) == 0)
			return 1;
	}
	return 0;
}

/* The bundle directory of a create: the last --bundle/-b value, else the working directory. */
static const char *bundle_of(int argc, char **argv, int sub)
{
	const char *bundle = ".";
	for (int i = sub + 1; i < argc; i++) {
		const char *arg = argv[i];
		if (arg[0] != '-' || arg[1] == '\0' || strcmp(arg, "--") == 0)
			continue;
		size_t len;
		const char *name = flag_name(arg, &len);
		int is_bundle = (len == 6 && strncmp(name, "bundle", 6) == 0) ||
				(len == 1 && name[0] == 'b');
		if (is_bundle && name[len] == '=')
			bundle = name + len + 1;
		else if (is_bundle && i + 1 < argc)
			bundle = argv[++i];
	}
	return bundle;
}

/* Whether the bundle's config.json may opt the container in (or cannot be read here). */
static int may_opt_in(const char *bundle)
{
	char path[8192];
	int len = snprintf(path, sizeof(path), "%s/config.json", bundle);
	if (len < 0 || (size_t)len >= sizeof(path))
		return 1;
	char *text = read_small_file(path, MAX_BUNDLE_CONFIG_BYTES);
	if (!text)
		return 1;
	int maybe = strstr(text, "ARCH_ENABLE") != NULL || strstr(text, "\\u") != NULL;
	free(text);
	return maybe;
}

/*
 * `start` after a restore and `resume` after a checkpoint are no-ops: ARCH already did their
 * work and left a one-shot flag. Taking it is an unlink, atomic like the Python side's.
 */
static int took_skip_flag(const struct host_config *config, const char *ns, int argc,
			  char **argv, int sub)
{
	const char *flag = strcmp(argv[sub], "start") == 0	? "skip_start"
			   : strcmp(argv[sub], "resume") == 0 ? "skip_resume"
							      : NULL;
	const char *id = sub + 2 == argc ? argv[sub + 1] : NULL;
	if (!flag || !id || id[0] == '-' || strchr(id, '/') || strcmp(id, ".") == 0 ||
	    strcmp(id, "..") == 0)
		return 0;
	char path[8192];
	int len = snprintf(path, sizeof(path), "%s/%s/%s/%s", config->state_dir, ns, id, flag);
	return len > 0 && (size_t)len < sizeof(path) && unlink(path) == 0;
}

static int concerns_arch(const struct host_config *config, const char *root, int argc,
			 char **argv, int sub)
{
	char ns[256];
	if (!namespace_of(root, ns, sizeof(ns)))
		return 1;
	if (took_skip_flag(config, ns, argc, argv, sub))
		exit(0);
	if (names_arch_container(config, ns, argc, argv, sub))
		return 1;
	return strcmp(argv[sub], "create") == 0 && may_opt_in(bundle_of(argc, argv, sub));
}

int main(int argc, char **argv)
{
	const char *root = DEFAULT_RUNC_ROOT;
	int sub = find_subcommand(argc, argv, &root);
	static struct host_config config;
	if (sub < 0 || !read_host_config(&config))
		exec_python(argv);
	if (sub > 0 && in_list(intercepted, argv[sub], strlen(argv[sub])) &&
	    concerns_arch(&config, root, argc, argv, sub))
		exec_python(argv);
	argv[0] = config.runc;
	execv(config.runc, argv);
	fprintf(stderr, "arch-runc: cannot execute the real runc %s: %s\n", config.runc,
		strerror(errno));
	return EXIT_RUNC_UNAVAILABLE;
}
