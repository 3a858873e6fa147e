"""Just enough of CRIU's image format to show an image's process tree (`archctl inspect`).

CRIU ships `crit` to decode its images, but the CRIU ARCH builds from source (4.2.1, see the
role) installs only the `criu` binary: crit needs CRIU's Python package and generated protobuf
modules. The few fields inspect shows are read here instead, from the wire format that
CRIU's images use (criu/protobuf/*.proto, images/*.proto):

    image  := u32 IMG_COMMON_MAGIC, u32 <image magic>, entry*
    entry  := u32 little-endian length, <length bytes of one protobuf message>

- pstree.img: PstreeEntry {1: pid, 2: ppid, 3: pgid, 4: sid, 5: threads (repeated)}
- core-<pid>.img: CoreEntry {3: tc TaskCoreEntry {1: task_state, 2: exit_code, 6: comm}}

Images are untrusted input: every length is checked against the data, sizes are bounded, and
anything malformed raises CriuImageError.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
PSTREE_MAGIC = 0x50273030
CORE_MAGIC = 0x55053847
PSTREE_FILE = "pstree.img"
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_PROCESSES = 65536
# TaskCoreEntry.task_state values (criu/include/pid.h: TASK_ALIVE ... TASK_ZOMBIE).
TASK_STATES = {1: "alive", 2: "dead", 3: "stopped", 6: "zombie"}

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class CriuImageError(ValueError):
    """A CRIU image file that cannot be decoded."""


class Process(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]
    comm: str | None = None  # from core-<pid>.img; None when that file is unreadable
    state: str | None = None


def read_process_tree(image_dir: str) -> list[Process]:
    """The image's processes (pids as the container saw them), in pstree.img order."""
    entries = decode_entries(_read(os.path.join(image_dir, PSTREE_FILE)), PSTREE_MAGIC, PSTREE_FILE)
    if len(entries) > MAX_PROCESSES:
        raise CriuImageError(f"{PSTREE_FILE}: more than {MAX_PROCESSES} processes")
    processes = []
    for entry in entries:
        fields = decode_fields(entry)
        pid = _first_int(fields, 1, PSTREE_FILE)
        comm, state = _core_summary(image_dir, pid)
        processes.append(
            Process(
                pid=pid,
                ppid=_first_int(fields, 2, PSTREE_FILE),
                pgid=_first_int(fields, 3, PSTREE_FILE),
                sid=_first_int(fields, 4, PSTREE_FILE),
                threads=tuple(packed_ints(fields.get(5, []))),
                comm=comm,
                state=state,
            )
        )
    return processes


def _core_summary(image_dir: str, pid: int) -> tuple[str | None, str | None]:
    name = f"core-{pid}.img"
    try:
        entries = decode_entries(_read(os.path.join(image_dir, name)), CORE_MAGIC, name)
        if not entries:
            return None, None
        task_core = decode_fields(entries[0]).get(3)
        if not task_core or not isinstance(task_core[0], bytes):
            return None, None
        fields = decode_fields(task_core[0])
    except (OSError, CriuImageError):
        return None, None
    comm = fields.get(6)
    state = fields.get(1)
    return (
        comm[0].decode("utf-8", "replace") if comm and isinstance(comm[0], bytes) else None,
        TASK_STATES.get(state[0], str(state[0])) if state and isinstance(state[0], int) else None,
    )


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.read(fd, MAX_IMAGE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_IMAGE_BYTES:
        raise CriuImageError(f"{os.path.basename(path)} is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def decode_entries(data: bytes, magic: int, name: str) -> list[bytes]:
    if len(data) < 8:
        raise CriuImageError(f"{name}: too short for a CRIU image")
    first, second = struct.unpack_from("<II", data)
    if first not in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) or second != magic:
        raise CriuImageError(f"{name}: not this kind of CRIU image (magic {first:#x} {second:#x})")
    entries = []
    position = 8
    while position < len(data):
        if position + 4 > len(data):
            raise CriuImageError(f"{name}: truncated entry length")
        (length,) = struct.unpack_from("<I", data, position)
        position += 4
        if position + length > len(data):
            raise CriuImageError(f"{name}: entry of {length} bytes runs past the end")
        entries.append(data[position : position + length])
        position += length
    return entries


def decode_fields(message: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values (ints for varint/fixed fields, bytes for length-delimited)."""
    fields: dict[int, list[int | bytes]] = {}
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == _VARINT:
            value, position = _varint(message, position)
        elif wire_type == _LENGTH:
            length, position = _varint(message, position)
            if position + length > len(message):
                raise CriuImageError("protobuf field runs past its message")
            value, position = message[position : position + length], position + length
        elif wire_type in (_FIXED32, _FIXED64):
            size = 4 if wire_type == _FIXED32 else 8
            if position + size > len(message):
                raise CriuImageError("protobuf field runs past its message")
            value = int.from_bytes(message[position : position + size], "little")
            position += size
        else:
            raise CriuImageError(f"protobuf wire type {wire_type} is not supported")
        fields.setdefault(number, []).append(value)
    return fields


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise CriuImageError("truncated or overlong protobuf varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def packed_ints(values: list[int | bytes]) -> list[int]:
    """Repeated integers, packed (one bytes value) or not."""
    numbers: list[int] = []
    for value in values:
        if isinstance(value, int):
            numbers.append(value)
            continue
        position = 0
        while position < len(value):
            number, position = _varint(value, position)
            numbers.append(number)
    return numbers


def _first_int(fields: dict[int, list[int | bytes]], number: int, name: str) -> int:
    values = fields.get(number)
    if not values or not isinstance(values[0], int):
        raise CriuImageError(f"{name}: entry lacks integer field {number}")
    return values[0]
