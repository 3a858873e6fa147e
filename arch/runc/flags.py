"""runc's command-line flags: one table per subcommand plus the global table.

runc (1.1 to 1.3) is built on urfave/cli v1 over Go's `flag` package. The tables
were taken from `runc <sub> --help` of runc 1.1.5 (Debian 12), plus:
  - flags that urfave/cli hides from --help (``hidden_since``), still accepted;
  - flags added by later runc releases (``since="1.2"`` etc.), read from the
    runc 1.2/1.3 sources.
tests/unit/test_parser.py compares every table with the --help of a real runc 1.1.5 and 1.3.6
(the newer-stack lane's, see tests/newer-stack/install.sh).
A flag that a given runc does not know only makes runc fail with a usage error;
knowing it here never changes how a command that runc accepts is understood.

Imported on every `arch-runc` call: plain tuples and dicts, no imports.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


class FlagSpec:
    """One runc flag: canonical long name, aliases, and whether it takes a value."""

    __slots__ = ("aliases", "hidden_since", "name", "repeatable", "since", "takes_value")

    name: str
    aliases: tuple[str, ...]
    takes_value: bool
    repeatable: bool
    since: str | None
    hidden_since: str | None

    def __init__(
        self,
        name: str,
        takes_value: bool,
        aliases: tuple[str, ...] = (),
        *,
        repeatable: bool = False,
        since: str | None = None,
        hidden_since: str | None = None,
    ) -> None:
        self.name = name
        self.aliases = aliases
        self.takes_value = takes_value
        self.repeatable = repeatable  # urfave StringSlice/Int64Slice: every use adds a value
        self.since = since  # runc release that added it; None = present in 1.1
        self.hidden_since = hidden_since  # from this release on, accepted but not in --help

    def __repr__(self) -> str:
        kind = "value" if self.takes_value else "bool"
        return f"FlagSpec({self.name!r}, {kind}, aliases={self.aliases!r})"


class CommandSpec:
    """One runc subcommand and how urfave/cli parses its arguments."""

    __slots__ = ("aliases", "flags", "lookup", "name", "reorders_args", "takes_container_id")

    name: str
    aliases: tuple[str, ...]
    flags: tuple[FlagSpec, ...]
    lookup: Mapping[str, FlagSpec]
    takes_container_id: bool
    reorders_args: bool

    def __init__(
        self,
        name: str,
        flags: tuple[FlagSpec, ...],
        *,
        aliases: tuple[str, ...] = (),
        takes_container_id: bool = True,
        reorders_args: bool = True,
    ) -> None:
        self.name = name
        self.aliases = aliases
        self.flags = (*flags, _HELP)
        self.lookup = lookup_table(self.flags)
        self.takes_container_id = takes_container_id
        # urfave/cli v1 moves known flags found after positionals to the front
        # ("reorderArgs") unless the command sets SkipArgReorder (exec, ps).
        self.reorders_args = reorders_args


def lookup_table(flags: tuple[FlagSpec, ...]) -> dict[str, FlagSpec]:
    """Map every spelling of every flag (name and aliases, without dashes) to its spec."""
    table: dict[str, FlagSpec] = {}
    for flag in flags:
        table[flag.name] = flag
        for alias in flag.aliases:
            table[alias] = flag
    return table


_V = True  # the flag takes a value
_B = False  # boolean flag

# urfave/cli v1 adds `--help, -h` to the app and to every command.
_HELP = FlagSpec("help", _B, ("h",))

GLOBAL_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("debug", _B),
    FlagSpec("log", _V),
    FlagSpec("log-format", _V),
    FlagSpec("root", _V),
    FlagSpec("criu", _V, hidden_since="1.2"),  # ignored with a warning since 1.2
    FlagSpec("systemd-cgroup", _B),
    FlagSpec("rootless", _V),  # a string flag: 'true', 'false' or 'auto'
    _HELP,
    FlagSpec("version", _B, ("v",)),
)
GLOBAL_LOOKUP: dict[str, FlagSpec] = lookup_table(GLOBAL_FLAGS)

_CHECKPOINT = CommandSpec(
    "checkpoint",
    (
        FlagSpec("image-path", _V),
        FlagSpec("work-path", _V),
        FlagSpec("parent-path", _V),
        FlagSpec("leave-running", _B),
        FlagSpec("tcp-established", _B),
        FlagSpec("tcp-skip-in-flight", _B, since="1.3"),
        FlagSpec("link-remap", _B, since="1.3"),
        FlagSpec("ext-unix-sk", _B),
        FlagSpec("shell-job", _B),
        FlagSpec("lazy-pages", _B),
        FlagSpec("status-fd", _V),
        FlagSpec("page-server", _V),
        FlagSpec("file-locks", _B),
        FlagSpec("pre-dump", _B),
        FlagSpec("manage-cgroups-mode", _V),  # 1.2 adds the value 'ignore'
        FlagSpec("empty-ns", _V, repeatable=True),
        FlagSpec("auto-dedup", _B),
    ),
)

_CREATE = CommandSpec(
    "create",
    (
        FlagSpec("bundle", _V, ("b",)),
        FlagSpec("console-socket", _V),
        FlagSpec("pidfd-socket", _V, since="1.2"),
        FlagSpec("pid-file", _V),
        FlagSpec("no-pivot", _B),
        FlagSpec("no-new-keyring", _B),
        FlagSpec("preserve-fds", _V),
    ),
)

_DELETE = CommandSpec("delete", (FlagSpec("force", _B, ("f",)),))

_EVENTS = CommandSpec(
    "events",
    (
        FlagSpec("interval", _V),
        FlagSpec("stats", _B),
    ),
)

_EXEC = CommandSpec(
    "exec",
    (
        FlagSpec("console-socket", _V),
        FlagSpec("pidfd-socket", _V, since="1.2"),
        FlagSpec("cwd", _V),
        FlagSpec("env", _V, ("e",), repeatable=True),
        FlagSpec("tty", _B, ("t",)),
        FlagSpec("user", _V, ("u",)),
        FlagSpec("additional-gids", _V, ("g",), repeatable=True),
        FlagSpec("process", _V, ("p",)),
        FlagSpec("detach", _B, ("d",)),
        FlagSpec("pid-file", _V),
        FlagSpec("process-label", _V),
        FlagSpec("apparmor", _V),
        FlagSpec("no-new-privs", _B),
        FlagSpec("cap", _V, ("c",), repeatable=True),
        FlagSpec("preserve-fds", _V),
        FlagSpec("cgroup", _V, repeatable=True),
        FlagSpec("ignore-paused", _B),
    ),
    reorders_args=False,  # `runc exec ID cmd -args` keeps the command's own flags
)

# --all: deprecated (and hidden from --help) since 1.2; still accepted.
_KILL = CommandSpec("kill", (FlagSpec("all", _B, ("a",), hidden_since="1.2"),))

_LIST = CommandSpec(
    "list",
    (
        FlagSpec("format", _V, ("f",)),
        FlagSpec("quiet", _B, ("q",)),
    ),
    takes_container_id=False,
)

_PAUSE = CommandSpec("pause", ())

_PS = CommandSpec(
    "ps",
    (FlagSpec("format", _V, ("f",)),),
    reorders_args=False,  # `runc ps ID -ef` passes -ef to ps(1)
)

_RESTORE = CommandSpec(
    "restore",
    (
        FlagSpec("console-socket", _V),
        FlagSpec("image-path", _V),
        FlagSpec("work-path", _V),
        FlagSpec("tcp-established", _B),
        FlagSpec("ext-unix-sk", _B),
        FlagSpec("shell-job", _B),
        FlagSpec("file-locks", _B),
        FlagSpec("manage-cgroups-mode", _V),
        FlagSpec("bundle", _V, ("b",)),
        FlagSpec("detach", _B, ("d",)),
        FlagSpec("pid-file", _V),
        FlagSpec("no-subreaper", _B),
        FlagSpec("no-pivot", _B),
        FlagSpec("empty-ns", _V, repeatable=True),
        FlagSpec("auto-dedup", _B),
        FlagSpec("lazy-pages", _B),
        FlagSpec("lsm-profile", _V),
        FlagSpec("lsm-mount-context", _V),
    ),
)

_RESUME = CommandSpec("resume", ())

_RUN = CommandSpec(
    "run",
    (
        FlagSpec("bundle", _V, ("b",)),
        FlagSpec("console-socket", _V),
        FlagSpec("pidfd-socket", _V, since="1.2"),
        FlagSpec("detach", _B, ("d",)),
        FlagSpec("keep", _B),
        FlagSpec("pid-file", _V),
        FlagSpec("no-subreaper", _B),
        FlagSpec("no-pivot", _B),
        FlagSpec("no-new-keyring", _B),
        FlagSpec("preserve-fds", _V),
    ),
)

_SPEC = CommandSpec(
    "spec",
    (
        FlagSpec("bundle", _V, ("b",)),
        FlagSpec("rootless", _B),
    ),
    takes_container_id=False,
)

_START = CommandSpec("start", ())

_STATE = CommandSpec("state", ())

_UPDATE = CommandSpec(
    "update",
    (
        FlagSpec("resources", _V, ("r",)),
        FlagSpec("blkio-weight", _V),
        FlagSpec("cpu-period", _V),
        FlagSpec("cpu-quota", _V),
        FlagSpec("cpu-burst", _V, since="1.2"),
        FlagSpec("cpu-share", _V),
        FlagSpec("cpu-rt-period", _V),
        FlagSpec("cpu-rt-runtime", _V),
        FlagSpec("cpuset-cpus", _V),
        FlagSpec("cpuset-mems", _V),
        # obsolete, ignored with a warning; already hidden in 1.1
        FlagSpec("kernel-memory", _V, hidden_since="1.1"),
        FlagSpec("kernel-memory-tcp", _V, hidden_since="1.1"),
        FlagSpec("memory", _V),
        FlagSpec("cpu-idle", _V, since="1.2"),
        FlagSpec("memory-reservation", _V),
        FlagSpec("memory-swap", _V),
        FlagSpec("pids-limit", _V),
        FlagSpec("l3-cache-schema", _V),
        FlagSpec("mem-bw-schema", _V),
    ),
)

_FEATURES = CommandSpec("features", (), takes_container_id=False)

# urfave/cli's own `help, h` command: its arguments are command names.
_HELP_COMMAND = CommandSpec("help", (), aliases=("h",), takes_container_id=False)

COMMANDS: tuple[CommandSpec, ...] = (
    _CHECKPOINT,
    _CREATE,
    _DELETE,
    _EVENTS,
    _EXEC,
    _KILL,
    _LIST,
    _PAUSE,
    _PS,
    _RESTORE,
    _RESUME,
    _RUN,
    _SPEC,
    _START,
    _STATE,
    _UPDATE,
    _FEATURES,
    _HELP_COMMAND,
)


def _command_lookup(commands: tuple[CommandSpec, ...]) -> dict[str, CommandSpec]:
    table: dict[str, CommandSpec] = {}
    for command in commands:
        table[command.name] = command
        for alias in command.aliases:
            table[alias] = command
    return table


COMMAND_LOOKUP: dict[str, CommandSpec] = _command_lookup(COMMANDS)
