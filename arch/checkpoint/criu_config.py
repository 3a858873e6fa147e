"""The CRIU configuration file runc hands CRIU, and where it makes CRIU write its log.

runc (1.1-1.3, libcontainer's handleCriuConfigurationFile) passes CRIU a configuration file with
every dump and restore: the one the container's `org.criu.config` annotation names, none when
that annotation is empty, else /etc/criu/runc.conf. CRIU reads it if it exists, and its settings
override runc's RPC settings (criu/cr-service.c, setup_opts_from_req):
- `log-file` (`-o`) renames the log (runc asks for dump.log / restore.log); a name with a `/`
  is a path, relative to the work directory unless absolute;
- `work-dir` (`-W`) moves the work directory, where the log goes;
- `images-dir` (`-D`) moves the images themselves.
The file is parsed here as CRIU parses it (criu/config.c: one option per line, the first word
prefixed with `--`, `#` comments, "quoted" words, getopt_long's `--name=value`, `--name value`
and unambiguous abbreviations), for those three settings only; all other options are CRIU's.

An image records the file's digest (its content decides what CRIU dumped and how a restore must
run); a restore runs only when runc would hand CRIU the same content again.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arch.checkpoint.criu_log import open_regular_file

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

ANNOTATION = "org.criu.config"
RUNC_DEFAULT_CONFIG = "/etc/criu/runc.conf"
DUMP_LOG = "dump.log"  # the log names runc asks CRIU for
RESTORE_LOG = "restore.log"
CONFIG_MAX_BYTES = 1 << 20
# The settings read here, by CRIU's long and short option names.
_LONG_NAMES = {"log-file": "log_file", "work-dir": "work_dir", "images-dir": "images_dir"}
_SHORT_NAMES = {"o": "log_file", "W": "work_dir", "D": "images_dir"}
# CRIU's long options (criu/config.c), for getopt_long's abbreviations: "--log-f" is log-file,
# "--w" is ambiguous (work-dir, weak-sysctls) and means nothing.
_CRIU_LONG_OPTIONS = (
    "tree", "leave-stopped", "leave-running", "restore-detached", "restore-sibling", "daemon",
    "images-dir", "work-dir", "log-file", "join-ns", "root", "ext-unix-sk", "help",
    "tcp-established", "close", "log-pid", "version", "evasive-devices", "pidfile", "veth-pair",
    "action-script", "link-remap", "shell-job", "file-locks", "page-server", "address", "port",
    "prev-images-dir", "ms", "track-mem", "auto-dedup", "libdir", "cpu-cap", "force-irmap",
    "ext-mount-map", "exec-cmd", "manage-cgroups", "cgroup-root", "inherit-fd", "feature",
    "skip-mnt", "enable-fs", "enable-external-sharing", "enable-external-masters",
    "freeze-cgroup", "ghost-limit", "irmap-scan-path", "lsm-profile", "timeout", "external",
    "empty-ns", "lazy-pages", "extra", "experimental", "all", "cgroup-props",
    "cgroup-props-file", "cgroup-dump-controller", "skip-in-flight", "deprecated",
    "display-stats", "weak-sysctls", "status-fd", "tcp-close", "verbosity", "ps-socket",
    "remote", "relative-timestamps", "config", "no-default-config", "lsm-mount-context",
    "network-lock", "mntns-compat-mode", "skip-file-rwx-check", "file-validation", "stream",
    "pre-dump-mode", "tls", "tls-cacert", "tls-cacrl", "tls-cert", "tls-key",
    "tls-no-cn-verify", "cgroup-yard", "allow-uprobes", "unprivileged", "log-to-stderr",
)  # fmt: skip
# Short options taking an argument (CRIU's short_opts "dSsRt:hD:o:v::x::Vr:jJ:lW:L:M:").
_SHORT_WITH_ARGUMENT = frozenset("tDorJWLM")
_SHORT_OPTIONAL_ARGUMENT = frozenset("vx")


class CriuConfigError(ValueError):
    """A CRIU configuration ARCH cannot honour (it would move the images themselves)."""


@dataclass(frozen=True)
class CriuConfig:
    """The configuration file runc hands CRIU for one container, as far as ARCH needs it.

    `path`: the file runc names (None: none); `sha256`: its content's digest (None when there
    is no such file, which CRIU then ignores); the three settings, None when not set.
    """

    path: str | None = None
    sha256: str | None = None
    log_file: str | None = None
    work_dir: str | None = None
    images_dir: str | None = None

    def log_path(self, work_dir: str, requested: str) -> str:
        """Where CRIU writes the log runc requests as `requested` (dump.log/restore.log) when
        runc's work directory is `work_dir`."""
        name = self.log_file or requested
        return os.path.join(self.work_dir or work_dir, name)

    def check_images_stay(self) -> None:
        """CriuConfigError when the file sends the images somewhere else than runc asks."""
        if self.images_dir is not None:
            raise CriuConfigError(
                f"the CRIU configuration {self.path} sets images-dir {self.images_dir!r}: CRIU "
                "would write the process images outside the image ARCH publishes"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "sha256": self.sha256, "log_file": self.log_file,
                "work_dir": self.work_dir}  # fmt: skip


def config_file_for(spec: Mapping[str, Any]) -> str | None:
    """The configuration file runc names to CRIU for a container with this config.json."""
    annotations = spec.get("annotations")
    if not isinstance(annotations, dict) or ANNOTATION not in annotations:
        return RUNC_DEFAULT_CONFIG
    value = annotations[ANNOTATION]
    return value if isinstance(value, str) and value else None


def for_container(spec: Mapping[str, Any]) -> CriuConfig:
    """The CRIU configuration of a container (OSError when its file cannot be read)."""
    return read_config(config_file_for(spec))


def read_config(path: str | None) -> CriuConfig:
    """Read CRIU's configuration file `path` as CRIU does; a missing file is no configuration
    (CRIU ignores it too). OSError when it exists but cannot be read."""
    if path is None:
        return CriuConfig()
    try:
        with open(open_regular_file(path), "rb") as config_file:
            data = config_file.read(CONFIG_MAX_BYTES + 1)
    except FileNotFoundError:
        return CriuConfig(path)
    if len(data) > CONFIG_MAX_BYTES:
        raise OSError(f"{path}: larger than {CONFIG_MAX_BYTES} bytes")
    settings = settings_of(data.decode("utf-8", "replace"))
    return CriuConfig(path, hashlib.sha256(data).hexdigest(), **settings)


def settings_of(text: str) -> dict[str, str]:
    """log_file / work_dir / images_dir as CRIU would read them from a configuration text (the
    last occurrence wins, as with getopt)."""
    settings: dict[str, str] = {}
    words = [word for line in text.splitlines() for word in _line_words(line)]
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word.startswith("--") and len(word) > 2:
            name, has_value, value = word[2:].partition("=")
            key = _long_key(name)
            if key is not None:
                if not has_value and index < len(words):
                    value, index = words[index], index + 1
                settings[key] = value
        elif word.startswith("-") and len(word) > 1:
            index = _short_options(word[1:], words, index, settings)
    return settings


def _short_options(cluster: str, words: list[str], index: int, settings: dict[str, str]) -> int:
    """Read one `-xyz` cluster as getopt does; returns the index of the next word."""
    for position, letter in enumerate(cluster):
        if letter in _SHORT_OPTIONAL_ARGUMENT:
            return index  # takes the rest of the cluster, if any
        if letter in _SHORT_WITH_ARGUMENT:
            value = cluster[position + 1 :]
            if not value and index < len(words):
                value, index = words[index], index + 1
            if letter in _SHORT_NAMES:
                settings[_SHORT_NAMES[letter]] = value
            return index
    return index


def _long_key(name: str) -> str | None:
    """The setting a long option name (or getopt_long abbreviation) stands for."""
    if name in _LONG_NAMES:
        return _LONG_NAMES[name]
    candidates = [option for option in _CRIU_LONG_OPTIONS if option.startswith(name)]
    if len(candidates) == 1 and candidates[0] in _LONG_NAMES:
        return _LONG_NAMES[candidates[0]]
    return None


def _line_words(line: str) -> Iterator[str]:
    """One line's words as criu/config.c's parse_statement splits them: whitespace-separated,
    `#` starts a comment, "..." is one word (with \\" inside), the first word gets `--`."""
    offset, first = 0, True
    while True:
        while offset < len(line) and line[offset] in " \t\r\f\v":
            offset += 1
        if offset >= len(line) or line[offset] == "#":
            return
        if line[offset] == '"' and '"' in line[offset + 1 :]:
            word, offset = _quoted(line, offset)
        else:
            end = offset
            while end < len(line) and line[end] not in " \t\n":
                end += 1
            word, offset = line[offset:end], end
        yield f"--{word}" if first else word
        first = False


def _quoted(line: str, offset: int) -> tuple[str, int]:
    """A "quoted" word starting at `offset`; (its text, the offset after it)."""
    parts: list[str] = []
    position = offset + 1
    while True:
        end = line.find('"', position)
        if end < 0:
            return "".join(parts) + line[position:], len(line)
        if end > position and line[end - 1] == "\\":
            parts.append(line[position : end - 1] + '"')
            position = end + 1
            continue
        parts.append(line[position:end])
        return "".join(parts), end + 1
