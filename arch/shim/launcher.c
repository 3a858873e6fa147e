/*
 * arch-runc native front.
 *
 * A Python interpreter alone starts slower than `runc state` runs, and containerd calls runc
 * for every state/kill/exec/ps of every container. So this front decides, without Python,
 * whether a call can concern ARCH at all. Calls that cannot are exec'd straight into the real
 * runc named by arch.toml's `runc = "..."` (only when this front understands the whole file,
 * so that Python, reading the same file, would pick the same runc):
 *   - every subcommand ARCH never intercepts;
 *   - start/resume/delete/checkpoint when no argument names a container that has ARCH state
 *     (<state_dir>/<namespace>/<id>, written by the Python create of an opted-in container);
 *   - create when the bundle's config.json does not mention ARCH_ENABLE (and has no JSON \u
 *     escape that could hide it) and the container has no stale ARCH state;
 *   - kill, unless a Spot notice is active and it names a container with ARCH state.
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
#include <strings.h>
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

/* Keep in sync with INTERCEPTED_SUBCOMMANDS in arch/shim/main.py (kill: see main()). */
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
 * arch.toml's keys, as arch/config.py's KNOWN_KEYS (a unit test compares the two lists). The
 * scanner reads a file only when every line is one it understands fully; anything else (a
 * table, a quoted or dotted key, an escape, a relative or unnormalised path, a value Python
 * would refuse) goes to Python, which then decides with the same file.
 */
enum value_kind {
	PATH_VALUE,
	OPTIONAL_PATH_VALUE,
	LOG_LEVEL_VALUE,
	PATH_LIST_VALUE,
	CRIU_OPTIONS_VALUE,
	SECONDS_VALUE,
	PLATFORM_VALUE,
	UNSIGNED_IMAGES_VALUE,
	COMPRESSION_VALUE,
	BOOLEAN_VALUE
};
struct known_key {
	const char *name;
	enum value_kind kind;
};
enum { RUNC_KEY = 0, STATE_DIR_KEY = 3 }; /* indexes in known_keys */
static const struct known_key known_keys[] = {
	{"runc", PATH_VALUE},		    {"criu", PATH_VALUE},
	{"checkpoint_root", PATH_VALUE},    {"state_dir", PATH_VALUE},
	{"log_file", PATH_VALUE},	    {"log_level", LOG_LEVEL_VALUE},
	{"allowed_roots", PATH_LIST_VALUE}, {"criu_options", CRIU_OPTIONS_VALUE},
	{"metrics_file", OPTIONAL_PATH_VALUE}, /* "" turns metrics off */
	{"image_key_file", OPTIONAL_PATH_VALUE}, /* "" turns signing off */
	{"image_verify_key_files", PATH_LIST_VALUE},
	{"unsigned_images", UNSIGNED_IMAGES_VALUE},
	{"checkpoint_timeout", SECONDS_VALUE}, /* whole seconds here; fractions go to Python */
	{"platform", PLATFORM_VALUE},	    {"restore_wait", SECONDS_VALUE},
	{"restore_timeout", SECONDS_VALUE},
	{"compression", COMPRESSION_VALUE},
	{"failpoints", BOOLEAN_VALUE},
	{NULL, PATH_VALUE},
};
static const char *const log_levels[] = {"debug", "info", "warning", "error", NULL};
static const char *const platforms[] = {"ecs", "batch", "none", NULL}; /* config.PLATFORMS */
/* config.UNSIGNED_IMAGES */
static const char *const unsigned_images_values[] = {"refuse", "allow", NULL};
static const char *const compressions[] = {"zstd", "off", NULL}; /* config.COMPRESSIONS */
/* The CRIU options arch/checkpoint/criu_options.py accepts, in their normalised form. */
static const char *const criu_option_values[] = {
	"--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks",
	"--manage-cgroups-mode=soft", "--manage-cgroups-mode=full", "--manage-cgroups-mode=strict",
	"--manage-cgroups-mode=ignore", "--empty-ns=network", "--empty-ns=cgroup", "--empty-ns=ipc",
	"--empty-ns=mount", "--empty-ns=pid", "--empty-ns=user", "--empty-ns=uts", NULL,
};

/*
 * A quoted TOML string without escapes at *p: its contents go to start/len and *p moves past
 * the closing quote. 0 when it is not one (Python reads anything else).
 */
static int scan_plain_string(const char **p, const char **start, size_t *len)
{
	char quote = **p;
	if (quote != '"' && quote != '\'')
		return 0;
	const char *q = *p + 1;
	while (*q && *q != quote && *q != '\\')
		q++;
	if (*q != quote)
		return 0;
	*start = *p + 1;
	*len = (size_t)(q - *start);
	*p = q + 1;
	return 1;
}

/* An absolute path that os.path.normpath leaves as it is: no //, . or .. component, no / at the end. */
static int is_normal_absolute(const char *path, size_t len)
{
	if (len == 0 || path[0] != '/')
		return 0;
	if (len == 1)
		return 1;
	if (path[len - 1] == '/')
		return 0;
	for (size_t i = 0; i < len;) {
		size_t next = i + 1;
		while (next < len && path[next] != '/')
			next++;
		size_t part = next - i - 1; /* the component after path[i] == '/' */
		if (part == 0 || (part == 1 && path[i + 1] == '.') ||
		    (part == 2 && path[i + 1] == '.' && path[i + 2] == '.'))
			return 0;
		i = next;
	}
	return 1;
}

static int in_list_nocase(const char *const *list, const char *name, size_t len)
{
	for (; *list; list++)
		if (strlen(*list) == len && strncasecmp(*list, name, len) == 0)
			return 1;
	return 0;
}

/* A one-line array of plain strings, each accepted by `ok`; *p moves past the `]`. */
static int scan_string_list(const char **p, int (*ok)(const char *, size_t))
{
	const char *q = skip_blanks(*p + 1);
	while (*q != ']') {
		const char *start;
		size_t len;
		if (!scan_plain_string(&q, &start, &len) || !ok(start, len))
			return 0;
		q = skip_blanks(q);
		if (*q == ',')
			q = skip_blanks(q + 1);
		else if (*q != ']')
			return 0;
	}
	*p = q + 1;
	return 1;
}

static int is_criu_option(const char *value, size_t len)
{
	return in_list(criu_option_values, value, len);
}

/*
 * One `key = value` line of a known key, fully understood: 1 (with a path value copied to
 * out when the key is runc or state_dir), 0 when Python must read the file.
 */
static int scan_key_line(const char *line, struct host_config *config, unsigned *seen)
{
	const char *p = line;
	while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
	       *p == '_' || *p == '-')
		p++;
	size_t key_len = (size_t)(p - line);
	int index = -1;
	for (int i = 0; known_keys[i].name; i++)
		if (strlen(known_keys[i].name) == key_len && strncmp(known_keys[i].name, line, key_len) == 0)
			index = i;
	p = skip_blanks(p);
	if (index < 0 || *p != '=' || (*seen & (1u << index)))
		return 0;
	*seen |= 1u << index;
	p = skip_blanks(p + 1);
	const char *start;
	size_t len;
	switch (known_keys[index].kind) {
	case PATH_VALUE: {
		if (!scan_plain_string(&p, &start, &len) || !is_normal_absolute(start, len))
			return 0;
		char *out = index == RUNC_KEY ? config->runc : index == STATE_DIR_KEY ? config->state_dir : NULL;
		if (out) {
			if (len >= sizeof(config->runc))
				return 0;
			memcpy(out, start, len);
			out[len] = '\0';
		}
		break;
	}
	case OPTIONAL_PATH_VALUE:
		if (!scan_plain_string(&p, &start, &len) || (len > 0 && !is_normal_absolute(start, len)))
			return 0;
		break;
	case SECONDS_VALUE: {
		const char *digits = p;
		while (*p >= '0' && *p <= '9')
			p++;
		/* TOML forbids leading zeros (`0600` is malformed there): Python decides those. */
		if (p == digits || p - digits > 9 || (*digits == '0' && p - digits > 1))
			return 0;
		break;
	}
	case BOOLEAN_VALUE:
		if (strncmp(p, "true", 4) == 0)
			p += 4;
		else if (strncmp(p, "false", 5) == 0)
			p += 5;
		else
			return 0;
		break;
	case LOG_LEVEL_VALUE:
		if (!scan_plain_string(&p, &start, &len) || !in_list_nocase(log_levels, start, len))
			return 0;
		break;
	case PLATFORM_VALUE:
		if (!scan_plain_string(&p, &start, &len) || !in_list(platforms, start, len))
			return 0;
		break;
	case UNSIGNED_IMAGES_VALUE:
		if (!scan_plain_string(&p, &start, &len) || !in_list(unsigned_images_values, start, len))
			return 0;
		break;
	case COMPRESSION_VALUE:
		if (!scan_plain_string(&p, &start, &len) || !in_list(compressions, start, len))
			return 0;
		break;
	case PATH_LIST_VALUE:
		if (*p != '[' || !scan_string_list(&p, is_normal_absolute))
			return 0;
		break;
	case CRIU_OPTIONS_VALUE:
		if (*p != '[' || !scan_string_list(&p, is_criu_option))
			return 0;
		break;
	}
	p = skip_blanks(p);
	return *p == '\0' || *p == '#';
}

/* Read a whole small file into a NUL-terminated buffer; NULL when absent, unreadable or big. */
static char *read_small_file(const char *path, size_t max_bytes, size_t *size)
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
	*size = total;
	return text;
}

/* Printable ASCII, tabs and line ends only (CR only before LF): the text the scanner reads. */
static int is_simple_text(const char *text, size_t size)
{
	for (size_t i = 0; i < size; i++) {
		unsigned char c = (unsigned char)text[i];
		if (c == '\r' && i + 1 < size && text[i + 1] == '\n')
			continue;
		if (c != '\t' && c != '\n' && (c < 0x20 || c > 0x7e))
			return 0;
	}
	return 1;
}

/*
 * The real runc and the state directory from the config; 0 when Python must decide (no
 * config, no `runc` key, anything this scanner does not understand fully).
 */
static int read_host_config(struct host_config *config)
{
	const char *path = getenv("ARCH_CONFIG");
	size_t size = 0;
	char *text = read_small_file(path && *path ? path : DEFAULT_CONFIG, MAX_CONFIG_BYTES, &size);
	if (!text)
		return 0;
	unsigned seen = 0;
	int usable = is_simple_text(text, size);
	for (char *line = text; usable && line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		size_t len = strlen(line);
		if (len && line[len - 1] == '\r')
			line[len - 1] = '\0';
		const char *p = skip_blanks(line);
		if (*p != '\0' && *p != '#')
			usable = scan_key_line(p, config, &seen);
		line = next;
	}
	free(text);
	if (!(seen & (1u << STATE_DIR_KEY)))
		strcpy(config->state_dir, DEFAULT_STATE_DIR);
	return usable && (seen & (1u << RUNC_KEY));
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
	size_t size = 0;
	char *text = read_small_file(path, MAX_BUNDLE_CONFIG_BYTES, &size);
	if (!text)
		return 1;
	int maybe = memmem(text, size, "ARCH_ENABLE", 11) != NULL || memmem(text, size, "\\u", 2) != NULL;
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

/*
 * While a Spot interruption notice is active (spot-watch's marker exists), the stop of an ARCH
 * container becomes a checkpoint: `kill` of a container with ARCH state goes to Python. Without
 * a notice this costs kill one stat(). Keep NOTICE_MARKER in sync with arch/spot/notice.py.
 */
#define NOTICE_MARKER ".spot-notice"
static int kill_may_checkpoint(const struct host_config *config, const char *root, int argc,
			       char **argv, int sub)
{
	char path[8192];
	struct stat info;
	int len = snprintf(path, sizeof(path), "%s/%s", config->state_dir, NOTICE_MARKER);
	if (len < 0 || (size_t)len >= sizeof(path) || lstat(path, &info) != 0)
		return 0;
	char ns[256];
	return !namespace_of(root, ns, sizeof(ns)) || names_arch_container(config, ns, argc, argv, sub);
}

/*
 * A stop signal to a container with ARCH state leaves the flag `stop_signalled` there (its mtime
 * says when): an exit 0 that follows a stop in the seconds before spot-watch's marker appears
 * is not a finish, and delete keeps the image (arch/spot/platform.py, STOP_SIGNALLED). One
 * open() for kill of any container; it fails at once (ENOENT) for one without ARCH state.
 * Keep the signal list in sync with STOP_SIGNALS in the Python kill handler.
 */
static const char *const stop_signals[] = {"TERM", "KILL", "INT", "QUIT", "15", "9", "2", "3", NULL};
static void note_stop_signal(const struct host_config *config, const char *root, int argc,
			     char **argv, int sub)
{
	const char *positionals[2] = {NULL, "TERM"};
	int count = 0;
	for (int i = sub + 1; i < argc && count < 2; i++)
		if (argv[i][0] != '-' || argv[i][1] == '\0')
			positionals[count++] = argv[i];
	const char *id = positionals[0], *signal = positionals[1];
	if (strncasecmp(signal, "SIG", 3) == 0)
		signal += 3;
	char upper[16];
	size_t len = strlen(signal);
	if (len >= sizeof(upper))
		return;
	for (size_t i = 0; i <= len; i++)
		upper[i] = (char)((signal[i] >= 'a' && signal[i] <= 'z') ? signal[i] - 32 : signal[i]);
	char ns[256], path[8192];
	if (!id || strchr(id, '/') || strcmp(id, ".") == 0 || strcmp(id, "..") == 0 ||
	    !in_list(stop_signals, upper, len) || !namespace_of(root, ns, sizeof(ns)))
		return;
	int n = snprintf(path, sizeof(path), "%s/%s/%s/stop_signalled", config->state_dir, ns, id);
	if (n < 0 || (size_t)n >= sizeof(path))
		return;
	int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd >= 0) {
		futimens(fd, NULL);
		close(fd);
	}
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
	if (sub > 0 && strcmp(argv[sub], "kill") == 0) {
		note_stop_signal(&config, root, argc, argv, sub);
		if (kill_may_checkpoint(&config, root, argc, argv, sub))
			exec_python(argv);
	}
	argv[0] = config.runc;
	execv(config.runc, argv);
	fprintf(stderr, "arch-runc: cannot execute the real runc %s: %s\n", config.runc,
		strerror(errno));
	return EXIT_RUNC_UNAVAILABLE;
}
