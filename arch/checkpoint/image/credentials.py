"""Whether an image's threads would hold more than config.json grants the container's process.

CRIU restores each thread's credentials from the image (arch.checkpoint.image.criu_creds), and
runc restore applies none of config.json's: whoever can edit an image could otherwise hand a
process every capability, no seccomp filter and no LSM confinement. Every restore, signed or
not, judges each live thread against what the process config.json describes could hold by its
own means:

- capabilities it can attain: its permitted set; plus its bounding set when it can be root at
  an exec (uid 0, or CAP_SETUID) without no_new_privs (an exec by root regains the bounding
  set). Effective, permitted and ambient must lie within; the bounding set within config's;
  the inheritable set within config's, the attainable ones, and with CAP_SETPCAP the bounding.
- uids (real, effective, saved, filesystem): config's uid, any with CAP_SETUID; gids the same
  with config's gid and CAP_SETGID; supplementary groups within config's gid and
  additionalGids, any with CAP_SETGID.
- securebits: none set, unless CAP_SETPCAP (the process may set them itself).
- no_new_privs: set when config asks for it.
- seccomp: with linux.seccomp, strict or filter mode, and a filter chain that exists in
  seccomp.img and ends (CRIU follows it without a bound).
- LSM: the label config gives (process.apparmorProfile / selinuxLabel), else the one this
  process runs with (runc passes its own on); no AppArmor policy (apparmor_data, apparmor.img).

Privilege the job could have gained from a setuid program or file capabilities of its own image
is not counted: such an image starts fresh. The seccomp filters' programs themselves are not
compared with config.json (that needs runc's compilation of the profile): a signature vouches
for them, or nothing does (see the README's Security section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arch.checkpoint.image.criu_creds import (
    SECCOMP_MODES,
    ThreadCreds,
    read_seccomp_filters,
    read_thread_creds,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping

# linux/capability.h, in order from CAP_CHOWN (0) to CAP_CHECKPOINT_RESTORE (40).
CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITY_NAMES)}
CAP_SETGID, CAP_SETUID, CAP_SETPCAP = (CAPABILITY_NUMBERS[name] for name in
                                       ("CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP"))  # fmt: skip
APPARMOR_IMAGE = "apparmor.img"
# The image files check_image reads.
CREDENTIAL_FILES = re.compile(r"(pstree|seccomp|core-[0-9]+)\.img\Z")
MAX_PROBLEMS = 8  # per image, in the refusal's message


class CredentialsError(Exception):
    """The image's threads would hold more than config.json grants (the message says what)."""


@dataclass(frozen=True)
class Grant:
    """What config.json lets the container's process hold."""

    uid: int
    gid: int
    groups: frozenset[int]
    inheritable: frozenset[int]
    bounding: frozenset[int]
    attainable: frozenset[int]  # capabilities it can hold in its permitted set
    no_new_privs: bool
    seccomp: bool
    lsm_label: str | None

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], own_label: str | None) -> Grant:
        """From a spec as arch.container.oci_spec decodes it; `own_label`: this process's LSM
        label, which runc passes on when config.json names none."""
        process = spec.get("process") or {}
        user = process.get("user") or {}
        sets = process.get("capabilities") or {}
        permitted, bounding = _numbers(sets.get("permitted")), _numbers(sets.get("bounding"))
        uid, gid = int(user.get("uid") or 0), int(user.get("gid") or 0)
        no_new_privs = bool(process.get("noNewPrivileges"))
        can_be_root = uid == 0 or CAP_SETUID in permitted
        attainable = permitted | bounding if can_be_root and not no_new_privs else permitted
        label = process.get("apparmorProfile") or process.get("selinuxLabel") or own_label
        return cls(
            uid=uid,
            gid=gid,
            groups=frozenset([gid, *(int(g) for g in user.get("additionalGids") or ())]),
            inheritable=_numbers(sets.get("inheritable")),
            bounding=bounding,
            attainable=attainable,
            no_new_privs=no_new_privs,
            seccomp=(spec.get("linux") or {}).get("seccomp") is not None,
            lsm_label=label or None,
        )

    def can(self, capability: int) -> bool:
        return capability in self.attainable


def check_image(
    dir_fd: int, spec: Mapping[str, Any], file_names: Collection[str], own_label: str | None
) -> None:
    """CredentialsError unless every live thread of the image in `dir_fd` stays within what
    `spec` grants. CriuImageError (a ValueError) for an image that cannot be decoded."""
    grant = Grant.from_spec(spec, own_label)
    problems = []
    if APPARMOR_IMAGE in file_names:
        problems.append(f"{APPARMOR_IMAGE}: AppArmor policy to load, which config.json cannot "
                        "grant")  # fmt: skip
    threads = read_thread_creds(dir_fd)
    filters = read_seccomp_filters(dir_fd) if grant.seccomp else []
    for thread in threads:
        where = f"pid {thread.pid}" + (f" thread {thread.tid}" if thread.tid != thread.pid else "")
        problems += [f"{where}: {problem}" for problem in thread_excess(thread, grant, filters)]
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        raise CredentialsError(
            "the image's processes would hold more than config.json grants: "
            + "; ".join(shown) + (f" (and {more} more)" if more else "")
        )


def thread_excess(
    thread: ThreadCreds, grant: Grant, filters: list[tuple[bytes, int | None]]
) -> list[str]:
    """What `thread` holds beyond `grant`, one sentence each."""
    return [
        *_id_excess("uids", thread.uids, {grant.uid}, grant.can(CAP_SETUID)),
        *_id_excess("gids", thread.gids, {grant.gid}, grant.can(CAP_SETGID)),
        *_id_excess("groups", sorted(thread.groups), grant.groups, grant.can(CAP_SETGID)),
        *_capability_excess(thread, grant),
        *_securebits_excess(thread, grant),
        *_seccomp_excess(thread, grant, filters),
        *_lsm_excess(thread, grant),
    ]


def _id_excess(what: str, ids: Iterable[int], allowed: Collection[int], any_id: bool) -> list[str]:
    beyond = sorted({i for i in ids if i not in allowed})
    if not beyond or any_id:
        return []
    granted = ", ".join(map(str, sorted(allowed)))
    return [f"{what} {', '.join(map(str, beyond))} (config.json: {granted})"]


def _capability_excess(thread: ThreadCreds, grant: Grant) -> list[str]:
    inheritable = grant.inheritable | grant.attainable
    if grant.can(CAP_SETPCAP):
        inheritable |= grant.bounding
    limits = (
        ("effective", thread.effective, grant.attainable),
        ("permitted", thread.permitted, grant.attainable),
        ("ambient", thread.ambient, grant.attainable),
        ("bounding", thread.bounding, grant.bounding),
        ("inheritable", thread.inheritable, inheritable),
    )
    return [
        f"{name} capabilities {' '.join(_names(held - allowed))} beyond config.json's"
        for name, held, allowed in limits
        if held - allowed
    ]


def _securebits_excess(thread: ThreadCreds, grant: Grant) -> list[str]:
    problems = []
    if thread.securebits and not grant.can(CAP_SETPCAP):
        problems.append(f"securebits {thread.securebits:#x} without CAP_SETPCAP")
    if grant.no_new_privs and not thread.no_new_privs:
        problems.append("no_new_privs is off, config.json sets noNewPrivileges")
    return problems


def _seccomp_excess(
    thread: ThreadCreds, grant: Grant, filters: list[tuple[bytes, int | None]]
) -> list[str]:
    if not grant.seccomp:
        return []
    mode = SECCOMP_MODES.get(thread.seccomp_mode)
    if mode is None:
        return [f"unknown seccomp mode {thread.seccomp_mode}"]
    if mode == "disabled":
        return ["no seccomp filter, config.json sets linux.seccomp"]
    if mode == "filter":
        problem = _chain_problem(thread.seccomp_filter, filters)
        if problem:
            return [f"seccomp filter {problem}"]
    return []


def _chain_problem(index: int | None, filters: list[tuple[bytes, int | None]]) -> str | None:
    """Why the filter chain from `index` is not one CRIU can install, or None."""
    seen: set[int] = set()
    while index is not None:
        if index >= len(filters):
            return f"index {index} is not in seccomp.img ({len(filters)} filters)"
        if index in seen:
            return f"chain loops at index {index}"
        program, previous = filters[index]
        if not program or len(program) % 8:
            return f"{index} is not a whole BPF program"
        seen.add(index)
        index = previous
    return None if seen else "missing (mode filter without a filter)"


def _lsm_excess(thread: ThreadCreds, grant: Grant) -> list[str]:
    problems = []
    if thread.apparmor_data:
        problems.append("AppArmor policy data to load")
    if thread.lsm_profile != grant.lsm_label:
        problems.append(f"LSM label {thread.lsm_profile!r} (config.json: {grant.lsm_label!r})")
    if thread.lsm_sockcreate not in (None, "", grant.lsm_label):
        problems.append(f"LSM socket label {thread.lsm_sockcreate!r}")
    return problems


def own_lsm_label(attr_path: str = "/proc/self/attr/current") -> str | None:
    """This process's LSM label as CRIU records one: AppArmor's without its mode suffix,
    None when unconfined or without an LSM."""
    try:
        with open(attr_path, "rb") as attr:
            text = attr.read(4096).decode("utf-8", "replace").strip("\0\n ")
    except OSError:  # EINVAL: no LSM provides the attribute
        return None
    label = text.split(" ", 1)[0] if text.endswith(")") else text
    return None if label in ("", "unconfined") else label


def _numbers(names: Iterable[str] | None) -> frozenset[int]:
    """Capability numbers of config.json names; unknown names grant nothing (runc ignores
    capabilities this kernel lacks)."""
    return frozenset(CAPABILITY_NUMBERS[n] for n in names or () if n in CAPABILITY_NUMBERS)


def _names(numbers: Iterable[int]) -> list[str]:
    return [
        CAPABILITY_NAMES[n] if n < len(CAPABILITY_NAMES) else f"capability {n}"
        for n in sorted(numbers)
    ]
