"""CRIU's own image messages, for tests that edit a dumped image field by field.

tests/data/criu-images-4.2.1/ holds the .proto files the tests need, copied unchanged from
CRIU 4.2.1's release tarball (images/, MIT licence, LICENSE beside them). protoc compiles them
into a temporary directory once per session; python protobuf (the test extra) loads them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

PROTO_DIR = Path(__file__).resolve().parents[2] / "data" / "criu-images-4.2.1"
HEADER_BYTES = 8  # two u32 magics
LENGTH = struct.Struct("<I")


class CriuMessages:
    """The compiled modules: `core` (core_entry), `pstree`, `seccomp`, `creds`."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        protos = sorted(str(path) for path in PROTO_DIR.glob("*.proto"))
        protoc = shutil.which("protoc")
        assert protoc, "protoc is missing (tests/run.sh installs protobuf-compiler)"
        subprocess.run([protoc, f"-I{PROTO_DIR}", f"--python_out={out_dir}", *protos],
                       check=True)  # fmt: skip
        sys.path.insert(0, str(out_dir))
        try:
            self.core = _load("core_pb2")
            self.pstree = _load("pstree_pb2")
            self.seccomp = _load("seccomp_pb2")
        finally:
            sys.path.remove(str(out_dir))


def _load(name: str) -> ModuleType:
    return importlib.import_module(name)


def read_entries(path: Path, message_type: Any) -> tuple[bytes, list[Any]]:
    """An image file's header and its entries, parsed as `message_type`."""
    data = path.read_bytes()
    header, position, entries = data[:HEADER_BYTES], HEADER_BYTES, []
    while position < len(data):
        (length,) = LENGTH.unpack_from(data, position)
        position += LENGTH.size
        entry = message_type()
        entry.ParseFromString(data[position : position + length])
        entries.append(entry)
        position += length
    return header, entries


def write_entries(path: Path, header: bytes, entries: list[Any]) -> None:
    body = b"".join(LENGTH.pack(len(raw)) + raw for raw in
                    (entry.SerializeToString() for entry in entries))  # fmt: skip
    path.write_bytes(header + body)


def init_pid(messages: CriuMessages, image_dir: Path) -> int:
    _, entries = read_entries(image_dir / "pstree.img", messages.pstree.pstree_entry)
    return int(entries[0].pid)


def edit_init_core(
    messages: CriuMessages, image_dir: Path, edit: Callable[[Any], None]
) -> None:
    """Apply `edit` to the init process's core_entry and record the file's new size and sha256
    in metadata.json, as a writer of the storage would (the image stays unsigned)."""
    name = f"core-{init_pid(messages, image_dir)}.img"
    header, entries = read_entries(image_dir / name, messages.core.core_entry)
    edit(entries[0])
    write_entries(image_dir / name, header, entries)
    record_file(image_dir, name)


def record_file(image_dir: Path, name: str) -> None:
    metadata_path = image_dir / "metadata.json"
    document = json.loads(metadata_path.read_text())
    data = (image_dir / name).read_bytes()
    for entry in document["process"]["criu_files"]:
        if entry["name"] == name:
            entry["size"] = len(data)
            if entry.get("sha256"):
                entry["sha256"] = hashlib.sha256(data).hexdigest()
    metadata_path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
