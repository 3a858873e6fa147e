"""The credentials CRIU will give each restored thread, read from the image's core-<tid>.img.

CRIU's restorer (still root) sets every thread's uids, gids, groups, capability sets,
securebits, no_new_privs, seccomp filters and LSM label from the image, whatever config.json
says; runc restore re-applies none of them. These fields are read here so that a restore can
judge them first (arch.checkpoint.image.credentials). Field numbers from CRIU's images/*.proto
(4.2.1):

- core-<tid>.img: CoreEntry {3: tc TaskCoreEntry, 5: thread_core ThreadCoreEntry}
  - TaskCoreEntry {1: task_state, 11: old_seccomp_mode, 12: old_seccomp_filter}; CRIU moves the
    old (per-task) seccomp fields over the thread's when present (cr-restore.c)
  - ThreadCoreEntry {10: creds CredsEntry, 11: seccomp_mode, 12: seccomp_filter}
- CredsEntry {1 uid, 2 gid, 3 euid, 4 egid, 5 suid, 6 sgid, 7 fsuid, 8 fsgid,
  9 cap_inh, 10 cap_prm, 11 cap_eff, 12 cap_bnd (32-bit words, low first), 13 secbits,
  14 groups, 15 lsm_profile, 16 lsm_sockcreate, 17 apparmor_data, 18 no_new_privs, 19 cap_amb}
- seccomp.img: SeccompEntry {1: seccomp_filters SeccompFilter {1: filter, 2: prev, 3: flags}}

A thread without creds in its core is refused, not guessed at: CRIU would then leave it with
its own (root) credentials, or read a creds-<pid>.img of the old format.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Union

from arch.checkpoint.image.criu_images import (
    CORE_MAGIC,
    PSTREE_FILE,
    PSTREE_MAGIC,
    CriuImageError,
    decode_entries,
    decode_fields,
    packed_ints,
)

SECCOMP_MAGIC = 0x64413049
SECCOMP_FILE = "seccomp.img"
MAX_CREDS_IMAGE_BYTES = 16 * 1024 * 1024
MAX_THREADS = 1 << 20
# TaskCoreEntry.task_state of tasks that never run again: CRIU gives them no credentials.
TASK_DEAD, TASK_ZOMBIE = 2, 6
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# A runtime alias: `int | bytes` here would fail on Python 3.9 (AL2023's), which ARCH supports.
Fields = dict[int, list[Union[int, bytes]]]


class ThreadCreds(NamedTuple):
    """One thread's credentials as CRIU would restore them (container-side ids)."""

    pid: int  # the thread's process (its thread group leader)
    tid: int
    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    groups: frozenset[int]
    inheritable: frozenset[int]  # capability numbers
    permitted: frozenset[int]
    effective: frozenset[int]
    bounding: frozenset[int]
    ambient: frozenset[int]
    securebits: int
    no_new_privs: bool
    seccomp_mode: int
    seccomp_filter: int | None  # index into seccomp.img's filters (mode filter)
    lsm_profile: str | None
    lsm_sockcreate: str | None
    apparmor_data: bool  # AppArmor policy CRIU would load


def read_thread_creds(dir_fd: int) -> list[ThreadCreds]:
    """Every running thread of the image's process tree, with its credentials.

    CriuImageError when an image file is malformed or a live thread lacks its credentials.
    """
    threads: list[ThreadCreds] = []
    for entry in decode_entries(_read(dir_fd, PSTREE_FILE), PSTREE_MAGIC, PSTREE_FILE):
        fields = decode_fields(entry)
        pid = _single_int(fields, 1, PSTREE_FILE)
        tids = packed_ints(fields.get(5, [])) or [pid]
        for tid in tids:
            if len(threads) >= MAX_THREADS:
                raise CriuImageError(f"{PSTREE_FILE}: more than {MAX_THREADS} threads")
            creds = _thread_creds(dir_fd, pid, tid)
            if creds is not None:
                threads.append(creds)
    if not threads:
        raise CriuImageError(f"{PSTREE_FILE}: no process to restore")
    return threads


def read_seccomp_filters(dir_fd: int) -> list[tuple[bytes, int | None]]:
    """seccomp.img's filters: (BPF program, index of the previous filter or None)."""
    try:
        data = _read(dir_fd, SECCOMP_FILE)
    except FileNotFoundError:
        return []
    entries = decode_entries(data, SECCOMP_MAGIC, SECCOMP_FILE)
    if len(entries) > 1:
        raise CriuImageError(f"{SECCOMP_FILE}: more than one entry")
    filters = []
    for raw in decode_fields(entries[0]).get(1, []) if entries else []:
        filter_fields = decode_fields(_message(raw, SECCOMP_FILE))
        program = _optional_bytes(filter_fields, 1, SECCOMP_FILE) or b""
        filters.append((program, _optional_int(filter_fields, 2, SECCOMP_FILE)))
    return filters


def _thread_creds(dir_fd: int, pid: int, tid: int) -> ThreadCreds | None:
    name = f"core-{tid}.img"
    entries = decode_entries(_read(dir_fd, name), CORE_MAGIC, name)
    if len(entries) != 1:
        raise CriuImageError(f"{name}: {len(entries)} entries, not one")
    core = decode_fields(entries[0])
    task_core = _optional_message(core, 3, name)
    if task_core is not None and _optional_int(task_core, 1, name) in (TASK_DEAD, TASK_ZOMBIE):
        return None
    thread_core = _optional_message(core, 5, name)
    if thread_core is None:
        raise CriuImageError(f"{name}: no thread_core (CRIU would restore it with root's creds)")
    creds = _optional_message(thread_core, 10, name)
    if creds is None:
        raise CriuImageError(f"{name}: no creds in thread_core (old image format, not restored)")
    seccomp_mode = _optional_int(thread_core, 11, name) or 0
    seccomp_filter = _optional_int(thread_core, 12, name)
    if task_core is not None and _optional_int(task_core, 11, name) is not None:
        seccomp_mode = _optional_int(task_core, 11, name) or 0
    if task_core is not None and _optional_int(task_core, 12, name) is not None:
        seccomp_filter = _optional_int(task_core, 12, name)
    return ThreadCreds(
        pid=pid,
        tid=tid,
        uids=_id_quad(creds, (1, 3, 5, 7), name),
        gids=_id_quad(creds, (2, 4, 6, 8), name),
        groups=frozenset(packed_ints(creds.get(14, []))),
        inheritable=_capability_set(creds, 9),
        permitted=_capability_set(creds, 10),
        effective=_capability_set(creds, 11),
        bounding=_capability_set(creds, 12),
        ambient=_capability_set(creds, 19),
        securebits=_single_int(creds, 13, name),
        no_new_privs=bool(_optional_int(creds, 18, name)),
        seccomp_mode=seccomp_mode,
        seccomp_filter=seccomp_filter,
        lsm_profile=_optional_text(creds, 15, name),
        lsm_sockcreate=_optional_text(creds, 16, name),
        apparmor_data=_optional_bytes(creds, 17, name) is not None,
    )


def _read(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, _OPEN_FILE, dir_fd=dir_fd)
    try:
        data = os.read(fd, MAX_CREDS_IMAGE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CREDS_IMAGE_BYTES:
        raise CriuImageError(f"{name} is larger than {MAX_CREDS_IMAGE_BYTES} bytes")
    return data


def _capability_set(creds: Fields, number: int) -> frozenset[int]:
    words = packed_ints(creds.get(number, []))
    return frozenset(
        index * 32 + bit
        for index, word in enumerate(words)
        for bit in range(32)
        if word >> bit & 1
    )


def _id_quad(creds: Fields, numbers: tuple[int, int, int, int], name: str) -> tuple[
    int, int, int, int
]:
    real, effective, saved, filesystem = (_single_int(creds, n, name) for n in numbers)
    return real, effective, saved, filesystem


def _single_int(fields: Fields, number: int, name: str) -> int:
    value = _optional_int(fields, number, name)
    if value is None:
        raise CriuImageError(f"{name}: required field {number} is missing")
    return value


def _optional_int(fields: Fields, number: int, name: str) -> int | None:
    """The field's value as protobuf reads it (the last occurrence wins)."""
    values = fields.get(number)
    if not values:
        return None
    if not isinstance(values[-1], int):
        raise CriuImageError(f"{name}: field {number} is not an integer")
    return values[-1]


def _optional_bytes(fields: Fields, number: int, name: str) -> bytes | None:
    values = fields.get(number)
    if not values:
        return None
    if not isinstance(values[-1], bytes):
        raise CriuImageError(f"{name}: field {number} is not length-delimited")
    return values[-1]


def _optional_text(fields: Fields, number: int, name: str) -> str | None:
    value = _optional_bytes(fields, number, name)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CriuImageError(f"{name}: field {number} is not UTF-8") from error


def _optional_message(fields: Fields, number: int, name: str) -> Fields | None:
    """An embedded message; protobuf merges repeated occurrences, and so does this."""
    values = fields.get(number)
    if not values:
        return None
    merged: Fields = {}
    for value in values:
        for key, items in decode_fields(_message(value, name)).items():
            merged.setdefault(key, []).extend(items)
    return merged


def _message(value: int | bytes, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise CriuImageError(f"{name}: a message field is not length-delimited")
    return value

