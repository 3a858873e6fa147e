"""The archive policy: a restore creates from the tar only what the job could have created.

Crafted tars go through the real apply code (apply_layer with the policy of a config.json);
each case is refused (nothing applied) for a job without the capability and applied for one
with it. Runs as root (ownership, device nodes, security.* xattrs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import tarfile
from typing import TYPE_CHECKING, Any

import pytest

from arch.checkpoint.layer.filesystem import apply_layer
from arch.checkpoint.layer.policy import ArchivePolicy, ArchiveRefused
from arch.container.oci_spec import decode

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership, mknod, xattrs")

DOCKER_DEFAULT_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
CAP_V2 = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep, version 2


def v3_capability(rootid: int) -> bytes:
    return struct.pack("<IIIIII", 0x03000001, 1 << 13, 0, 0, 0, rootid)


def policy(uid: int = 0, caps: list[str] | None = None, gids: list[int] | None = None,
           userns: int | None = None) -> ArchivePolicy:  # fmt: skip
    capabilities = DOCKER_DEFAULT_CAPS if caps is None else caps
    sets = {"bounding": capabilities, "effective": capabilities, "permitted": capabilities}
    spec: dict[str, Any] = {
        "process": {
            "user": {"uid": uid, "gid": uid, "additionalGids": gids or []},
            "capabilities": sets,
        },
    }
    if userns is not None:
        mapping = [{"containerID": 0, "hostID": userns, "size": 65536}]
        spec["linux"] = {"namespaces": [{"type": "user"}], "uidMappings": mapping,
                         "gidMappings": mapping}  # fmt: skip
    return ArchivePolicy.from_spec(decode(json.dumps(spec).encode()).spec)


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = 0,
          gid: int = 0, xattrs: dict[str, bytes] | None = None, device: tuple[int, int] = (0, 0),
          ) -> tarfile.TarInfo:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
    info.devmajor, info.devminor = device
    for key, value in (xattrs or {}).items():
        info.pax_headers[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
    return info


def apply(tmp_path: Path, infos: list[tarfile.TarInfo], job: ArchivePolicy) -> Path:
    """Apply a tar of `infos` to tmp_path/rootfs under `job`'s policy; the rootfs."""
    tar = tmp_path / "layer.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as archive:
        for info in infos:
            archive.addfile(info, io.BytesIO(b"x" * info.size))
    data = tar.read_bytes()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(exist_ok=True)
    os.chmod(rootfs, 0o777)  # anyone may create here: the cases judge what they create
    journal = apply_layer(str(tar), str(rootfs), hashlib.sha256(data).hexdigest(), len(data),
                          policy=job)  # fmt: skip
    journal.commit()
    return rootfs


CASES = [
    # (what, tar members, a job that could not create it, a job that could)
    ("setuid root file", [entry("bin/sh", mode=0o4755)], policy(uid=1000, caps=[]),
     policy(uid=0, caps=[])),  # root owns it: chmod u+s needs no capability
    ("setuid file of another uid", [entry("bin/x", mode=0o4755, uid=2000, gid=2000)],
     policy(uid=0, caps=["CAP_CHOWN"]), policy(uid=0, caps=["CAP_CHOWN", "CAP_FOWNER"])),
    ("setgid file of a foreign group", [entry("bin/g", mode=0o2755, uid=1000, gid=42)],
     policy(uid=1000, caps=["CAP_CHOWN"]), policy(uid=1000, caps=["CAP_CHOWN", "CAP_FSETID"])),
    ("setgid file of the job's group", [entry("g", mode=0o2755, uid=1000, gid=42)],
     policy(uid=1000, caps=[]), policy(uid=1000, caps=[], gids=[42])),
    ("character device", [entry("dev-mem", tarfile.CHRTYPE, 0o600, device=(1, 1))],
     policy(uid=0, caps=["CAP_CHOWN"]), policy(uid=0, caps=["CAP_MKNOD"])),
    ("block device", [entry("disk", tarfile.BLKTYPE, 0o600, device=(8, 0))],
     policy(uid=0, caps=[]), policy(uid=0)),
    ("device in a user namespace", [entry("null", tarfile.CHRTYPE, 0o666, 100000, 100000,
                                          device=(1, 3))],
     policy(uid=0, userns=100000), policy(uid=0)),
    ("file owned by another uid", [entry("data/f", uid=0, gid=0)],
     policy(uid=1000, caps=[]), policy(uid=1000, caps=["CAP_CHOWN"])),
    ("owner outside the user namespace", [entry("data/f", uid=0, gid=0)],
     policy(uid=0, userns=100000), policy(uid=0)),
    ("owner inside the user namespace", [entry("f", uid=100005, gid=100005)],
     policy(uid=7, caps=[], userns=100000), policy(uid=0, userns=100000)),
    ("file capability", [entry("bin/ping", mode=0o755, xattrs={"security.capability": CAP_V2})],
     policy(uid=0, caps=["CAP_CHOWN"]), policy(uid=0, caps=["CAP_SETFCAP"])),
    ("non-namespaced file capability in a user namespace",
     [entry("ping", mode=0o755, uid=100000, gid=100000,
            xattrs={"security.capability": CAP_V2})],
     policy(uid=0, userns=100000),
     policy(uid=0, caps=["CAP_SETFCAP"], userns=100000)),  # with v3 below
    ("trusted xattr", [entry("f", xattrs={"trusted.x": b"1"})], policy(uid=0),
     policy(uid=0, caps=["CAP_SYS_ADMIN"])),
    ("IMA xattr", [entry("f", xattrs={"security.ima": b"\x01"})], policy(uid=0),
     policy(uid=0, caps=["CAP_SYS_ADMIN"])),
]


@pytest.mark.parametrize(("what", "infos", "refused_job", "allowed_job"), CASES,
                         ids=[case[0] for case in CASES])  # fmt: skip
def test_refused_without_the_capability_applied_with_it(
    tmp_path: Path, what: str, infos: list[tarfile.TarInfo], refused_job: ArchivePolicy,
    allowed_job: ArchivePolicy,
) -> None:
    (tmp_path / "refused").mkdir()
    with pytest.raises(ArchiveRefused, match="archive policy"):
        apply(tmp_path / "refused", infos, refused_job)
    assert os.listdir(tmp_path / "refused" / "rootfs") == []  # nothing was applied
    if what == "non-namespaced file capability in a user namespace":
        infos = [entry("ping", mode=0o755, uid=100000, gid=100000,
                       xattrs={"security.capability": v3_capability(100000)})]  # fmt: skip
    (tmp_path / "allowed").mkdir()
    rootfs = apply(tmp_path / "allowed", infos, allowed_job)
    created = rootfs / infos[-1].name
    info = os.lstat(created)
    assert stat.S_IMODE(info.st_mode) == infos[-1].mode
    assert (info.st_uid, info.st_gid) == (infos[-1].uid, infos[-1].gid)


def test_copy_up_of_the_images_own_setuid_file_is_allowed(tmp_path: Path) -> None:
    """A non-root job touched /usr/bin/passwd's metadata: overlay copied it up, owner and bits."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "passwd").write_bytes(b"")  # the member's contents
    os.chmod(rootfs / "usr" / "bin" / "passwd", 0o4755)
    os.chown(rootfs / "usr", 0, 0)
    members = [entry("usr", tarfile.DIRTYPE, 0o755), entry("usr/bin", tarfile.DIRTYPE, 0o755),
               entry("usr/bin/passwd", mode=0o4755)]  # fmt: skip
    apply(tmp_path, members, policy(uid=1000, caps=[]))
    assert os.lstat(rootfs / "usr" / "bin" / "passwd").st_mode & stat.S_ISUID
    with pytest.raises(ArchiveRefused, match="a change in 'usr/bin'"):  # not in the lower layers
        apply(tmp_path, [entry("usr/bin/other", mode=0o4755)], policy(uid=1000, caps=[]))


def test_fifos_and_own_files_need_nothing(tmp_path: Path) -> None:
    job = policy(uid=1000, caps=[])
    rootfs = apply(tmp_path, [entry("pipe", tarfile.FIFOTYPE, 0o600, 1000, 1000),
                              entry("own", tarfile.REGTYPE, 0o4700, 1000, 1000)], job)  # fmt: skip
    assert stat.S_ISFIFO(os.lstat(rootfs / "pipe").st_mode)
    assert os.lstat(rootfs / "own").st_mode & stat.S_ISUID  # chmod u+s of one's own file


def test_a_non_root_jobs_bounding_set_does_not_count(tmp_path: Path) -> None:
    spec = {"process": {"user": {"uid": 1000, "gid": 1000},
                        "capabilities": {"bounding": DOCKER_DEFAULT_CAPS}}}  # fmt: skip
    job = ArchivePolicy.from_spec(decode(json.dumps(spec).encode()).spec)
    assert job.capabilities == frozenset()
    with pytest.raises(ArchiveRefused, match="a character device without CAP_MKNOD"):
        apply(tmp_path, [entry("d", tarfile.CHRTYPE, 0o600, 1000, 1000, device=(1, 1))], job)
