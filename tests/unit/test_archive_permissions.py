"""The archive policy's permission rules: a member is allowed only where the job could have
made that change itself (directory write permission, the sticky bit, in-place chown/chmod/write,
the lower-layer exemption by contents, deletions judged in their directory).

One crafted tar per rule, applied for real (apply_layer) to a rootfs laid out like an image's
lower layers; each is refused (nothing applied) for a job without the right and applied for one
with it. Runs as root (ownership, modes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from typing import TYPE_CHECKING, Any

import pytest

from arch.checkpoint.layer.filesystem import apply_layer
from arch.checkpoint.layer.policy import ArchivePolicy, ArchiveRefused
from arch.container.oci_spec import decode

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: ownership and modes")

JOB = 1000  # the job's uid and gid
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
SU = b"\x7fELF the real su"


def job(uid: int = JOB, caps: tuple[str, ...] = (), gids: tuple[int, ...] = (),
        userns: int | None = None) -> ArchivePolicy:  # fmt: skip
    sets = {"bounding": list(caps), "effective": list(caps), "permitted": list(caps)}
    spec: dict[str, Any] = {
        "process": {"user": {"uid": uid, "gid": uid, "additionalGids": list(gids)},
                    "capabilities": sets},
    }  # fmt: skip
    if userns is not None:
        mapping = [{"containerID": 0, "hostID": userns, "size": 65536}]
        spec["linux"] = {"namespaces": [{"type": "user"}], "uidMappings": mapping,
                         "gidMappings": mapping}  # fmt: skip
    return ArchivePolicy.from_spec(decode(json.dumps(spec).encode()).spec)


def node(root: Path, name: str, mode: int, uid: int = 0, gid: int = 0,
         data: bytes | None = None) -> None:  # fmt: skip
    """A directory (data None) or file of the 'lower layers'."""
    path = root / name
    if data is None:
        path.mkdir(exist_ok=True)
    else:
        path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """What a container image's lower layers hold, as the merged view shows them."""
    root = tmp_path / "rootfs"
    node(root, "", 0o755)
    node(root, "etc", 0o755)
    node(root, "etc/passwd", 0o644, data=PASSWD)
    node(root, "usr", 0o755)
    node(root, "usr/bin", 0o755)
    node(root, "usr/bin/su", 0o4755, data=SU)
    node(root, "tmp", 0o1777)
    node(root, "tmp/roots", 0o644, data=b"root's")
    node(root, "tmp/jobs", 0o644, JOB, JOB, b"the job's")
    node(root, "home", 0o755)
    node(root, "home/job", 0o755, JOB, JOB)
    node(root, "home/job/notes", 0o644, JOB, JOB, b"notes")
    node(root, "srv", 0o755)
    node(root, "srv/team", 0o775, 0, 42)  # group-writable for gid 42
    node(root, "srv/drop", 0o2777, 0, 42)  # setgid, writable by all
    node(root, "srv/open", 0o777, 0, 42)  # not setgid
    node(root, "app", 0o755)
    node(root, "app/shared.txt", 0o666, data=b"anyone writes")
    node(root, "app/fixed.txt", 0o644, data=b"root writes")
    node(root, "work", 0o755, JOB, JOB)
    node(root, "work/tree", 0o755, JOB, JOB)
    node(root, "work/tree/sub", 0o755)  # root's, inside the job's tree
    node(root, "work/tree/sub/x", 0o644, data=b"x")
    return root


Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, uid: int = JOB,
           gid: int = JOB, data: bytes = b"", link: str = "") -> Member:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.linkname = kind, mode, uid, gid, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0
              ) -> Member:  # fmt: skip
    return member(name, tarfile.DIRTYPE, mode, uid, gid)


def whiteout(directory_name: str, name: str) -> Member:
    prefix = f"{directory_name}/" if directory_name else ""
    return member(f"{prefix}.wh.{name}", uid=0, gid=0)


def opaque(directory_name: str) -> Member:
    return member(f"{directory_name}/.wh..wh..opq", uid=0, gid=0)


def tree_of(root: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every node's mode, owner, group and file contents."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = os.lstat(path)
        data = path.read_bytes() if stat.S_ISREG(info.st_mode) else None
        found[str(path.relative_to(root))] = (info.st_mode, info.st_uid, info.st_gid, data)
    return found


def apply(tmp_path: Path, rootfs: Path, members: list[Member],
          policy: ArchivePolicy) -> None:  # fmt: skip
    tar = tmp_path / "layer.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data))
    content = tar.read_bytes()
    journal = apply_layer(str(tar), str(rootfs), hashlib.sha256(content).hexdigest(),
                          len(content), policy=policy)  # fmt: skip
    journal.commit()


def refused(tmp_path: Path, rootfs: Path, members: list[Member],
            policy: ArchivePolicy, reason: str) -> str:  # fmt: skip
    """Apply must refuse with `reason` and change nothing; the message."""
    before = tree_of(rootfs)
    with pytest.raises(ArchiveRefused, match=reason) as raised:
        apply(tmp_path, rootfs, members, policy)
    assert tree_of(rootfs) == before  # refused before anything was applied
    message = str(raised.value)
    print(message)  # the evidence: the rule that refused it
    assert message.endswith("(archive policy)")
    return message


# -- a new name needs a directory the job may write ----------------------------------------------


def test_ld_so_preload_in_roots_etc(tmp_path: Path, rootfs: Path) -> None:
    preload = [directory("etc"), member("etc/ld.so.preload", data=b"/tmp/evil.so\n")]
    message = refused(tmp_path, rootfs, preload, job(), "a change in 'etc'")
    assert message.startswith("refusing 'etc/ld.so.preload': a change in 'etc', a directory "
                              "uid 1000 may not write")  # fmt: skip
    apply(tmp_path, rootfs, preload, job(caps=("CAP_DAC_OVERRIDE",)))
    assert (rootfs / "etc" / "ld.so.preload").read_bytes() == b"/tmp/evil.so\n"


@pytest.mark.parametrize("capability", ["CAP_FOWNER", "CAP_CHOWN"])
def test_taking_the_directory_over_is_write_permission_too(
    tmp_path: Path, rootfs: Path, capability: str
) -> None:
    """chmod (CAP_FOWNER) or chown to itself (CAP_CHOWN), then write."""
    members = [directory("etc"), member("etc/motd", data=b"hi")]
    refused(tmp_path, rootfs, members, job(caps=("CAP_SETUID", "CAP_KILL")), "a change in 'etc'")
    apply(tmp_path, rootfs, members, job(caps=(capability,)))


def test_group_write_permission(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("srv/team", 0o775, 0, 42), member("srv/team/report", data=b"r")]
    refused(tmp_path, rootfs, members, job(), "a change in 'srv/team'")
    apply(tmp_path, rootfs, members, job(gids=(42,)))


def test_the_jobs_own_directory_even_read_only(tmp_path: Path, rootfs: Path) -> None:
    os.chmod(rootfs / "home" / "job", 0o555)  # its owner may chmod it back
    apply(tmp_path, rootfs, [directory("home/job", 0o555, JOB, JOB),
                             member("home/job/new", data=b"n")], job())  # fmt: skip
    assert (rootfs / "home" / "job" / "new").read_bytes() == b"n"


def test_a_directory_the_tar_creates_is_the_jobs(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("home/job/made", 0o500, JOB, JOB), member("home/job/made/f", data=b"f")]
    apply(tmp_path, rootfs, members, job())


def test_unlisted_parents_are_created_root_owned(tmp_path: Path, rootfs: Path) -> None:
    """The apply creates a parent the tar does not list as root:root 0755: judged as that."""
    members = [member("home/job/a/b/f", data=b"f")]
    refused(tmp_path, rootfs, members, job(), "refusing 'home/job/a': owner uid 0")
    apply(tmp_path, rootfs, members, job(uid=0, caps=("CAP_DAC_OVERRIDE", "CAP_CHOWN")))


def test_a_hard_link_is_a_new_name_in_its_directory(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("home/job", 0o755, JOB, JOB), member("home/job/f", data=b"f"),
               directory("etc"), member("etc/f", tarfile.LNKTYPE, link="home/job/f")]  # fmt: skip
    refused(tmp_path, rootfs, members, job(), "refusing 'etc/f': a change in 'etc'")
    apply(tmp_path, rootfs, members, job(caps=("CAP_DAC_OVERRIDE",)))


def test_user_namespace_capabilities_skip_unmapped_directories(
    tmp_path: Path, rootfs: Path
) -> None:
    """etc is root's (host uid 0), outside the namespace's map: CAP_DAC_OVERRIDE does not
    reach it (capable_wrt_inode_uidgid)."""
    members = [directory("etc"), member("etc/x", uid=100000, gid=100000, data=b"x")]
    caps = ("CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_CHOWN")
    refused(tmp_path, rootfs, members, job(uid=0, caps=caps, userns=100000), "a change in 'etc'")
    apply(tmp_path, rootfs, members, job(uid=0, caps=caps))


# -- the sticky bit -------------------------------------------------------------------------------


def test_sticky_directory_keeps_other_users_entries(tmp_path: Path, rootfs: Path) -> None:
    tmp = directory("tmp", 0o1777)
    refused(tmp_path, rootfs, [tmp, whiteout("tmp", "roots")], job(),
            "another user's entry in the sticky directory 'tmp'")  # fmt: skip
    replaced = member("tmp/roots", tarfile.SYMTYPE, 0o777, link="/etc/shadow")  # not in place
    refused(tmp_path, rootfs, [tmp, replaced], job(),
            "another user's entry in the sticky directory 'tmp'")  # fmt: skip
    apply(tmp_path, rootfs, [tmp, whiteout("tmp", "jobs")], job())  # its own entry
    assert not (rootfs / "tmp" / "jobs").exists()
    apply(tmp_path, rootfs, [tmp, whiteout("tmp", "roots")], job(caps=("CAP_FOWNER",)))
    assert not (rootfs / "tmp" / "roots").exists()


# -- in place: chown, chmod, write ----------------------------------------------------------------


def test_a_job_owned_etc_passwd(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("etc"), member("etc/passwd", data=PASSWD)]  # same bytes, now the job's
    message = refused(tmp_path, rootfs, members, job(), "owner uid 0 changed to 1000")
    assert "which the job could not have changed" in message
    apply(tmp_path, rootfs, members, job(caps=("CAP_CHOWN",)))
    assert os.lstat(rootfs / "etc" / "passwd").st_uid == JOB


def test_a_rewritten_root_owned_etc_passwd(tmp_path: Path, rootfs: Path) -> None:
    rewritten = PASSWD.replace(b"root:x:", b"root::")  # no password
    members = [directory("etc"), member("etc/passwd", uid=0, gid=0, data=rewritten)]
    refused(tmp_path, rootfs, members, job(), "new contents of a file uid 1000 may not write")
    apply(tmp_path, rootfs, members, job(caps=("CAP_DAC_OVERRIDE",)))
    assert (rootfs / "etc" / "passwd").read_bytes() == rewritten


def test_same_size_other_contents_is_a_change(tmp_path: Path, rootfs: Path) -> None:
    """The lower-layer exemption compares the contents' sha256, not only type/owner/mode/size."""
    other = bytes(reversed(PASSWD))
    assert len(other) == len(PASSWD)
    refused(tmp_path, rootfs, [directory("etc"), member("etc/passwd", uid=0, gid=0, data=other)],
            job(), "new contents")  # fmt: skip
    apply(tmp_path, rootfs, [directory("etc"), member("etc/passwd", uid=0, gid=0, data=PASSWD)],
          job())  # fmt: skip  # exactly the lower file: overlay's copy-up


def test_world_writable_file_may_be_written_in_place(tmp_path: Path, rootfs: Path) -> None:
    shared = [directory("app"), member("app/shared.txt", mode=0o666, uid=0, gid=0, data=b"new")]
    apply(tmp_path, rootfs, shared, job())
    fixed = [directory("app"), member("app/fixed.txt", uid=0, gid=0, data=b"new")]
    refused(tmp_path, rootfs, fixed, job(), "new contents of a file uid 1000 may not write")


def test_etc_made_world_writable(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("etc", 0o777)]
    refused(tmp_path, rootfs, members, job(), "mode 755 changed to 777")
    apply(tmp_path, rootfs, members, job(caps=("CAP_FOWNER",)))
    assert stat.S_IMODE(os.lstat(rootfs / "etc").st_mode) == 0o777


def test_setuid_su_with_other_contents(tmp_path: Path, rootfs: Path) -> None:
    trojan = b"\x7fELF a shell!!!"
    members = [directory("usr"), directory("usr/bin"),
               member("usr/bin/su", mode=0o4755, uid=0, gid=0, data=trojan)]  # fmt: skip
    refused(tmp_path, rootfs, members, job(), "new contents of a file uid 1000 may not write")
    # Writing drops the setuid bit unless CAP_FSETID (or the job may chmod it back).
    refused(tmp_path, rootfs, members, job(caps=("CAP_DAC_OVERRIDE",)),
            "setuid/setgid file keeping its bit without CAP_FSETID")  # fmt: skip
    apply(tmp_path, rootfs, members, job(caps=("CAP_DAC_OVERRIDE", "CAP_FSETID")))


def test_setuid_su_copied_up_unchanged(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("usr"), directory("usr/bin"),
               member("usr/bin/su", mode=0o4755, uid=0, gid=0, data=SU)]  # fmt: skip
    apply(tmp_path, rootfs, members, job())
    assert os.lstat(rootfs / "usr" / "bin" / "su").st_mode & stat.S_ISUID


def test_a_new_group_must_be_the_owners_own(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("home/job", 0o755, JOB, JOB),
               member("home/job/notes", uid=JOB, gid=42, data=b"notes")]  # fmt: skip
    refused(tmp_path, rootfs, members, job(), "group 1000 changed to 42")
    apply(tmp_path, rootfs, members, job(gids=(42,)))


def test_setgid_directory_gives_its_group(tmp_path: Path, rootfs: Path) -> None:
    inherited = [directory("srv/drop", 0o2777, 0, 42), member("srv/drop/f", gid=42, data=b"f")]
    apply(tmp_path, rootfs, inherited, job())
    foreign = [directory("srv/open", 0o777, 0, 42), member("srv/open/f", gid=42, data=b"f")]
    refused(tmp_path, rootfs, foreign, job(), "group 42")


# -- whiteouts and opaque markers: deletions in their directory -----------------------------------


def test_whiteout_of_etc_shadow(tmp_path: Path, rootfs: Path) -> None:
    node(rootfs, "etc/shadow", 0o640, data=b"root:*:")
    members = [directory("etc"), whiteout("etc", "shadow")]
    message = refused(tmp_path, rootfs, members, job(), "a change in 'etc'")
    assert message.startswith("refusing 'etc/shadow' (a whiteout): ")
    apply(tmp_path, rootfs, members, job(uid=0, caps=()))  # root owns etc
    assert not (rootfs / "etc" / "shadow").exists()


def test_whiteout_of_nothing_changes_nothing(tmp_path: Path, rootfs: Path) -> None:
    apply(tmp_path, rootfs, [directory("etc"), whiteout("etc", "absent")], job())


def test_whiteout_of_a_tree_needs_every_directory_in_it(tmp_path: Path, rootfs: Path) -> None:
    members = [directory("work", 0o755, JOB, JOB), whiteout("work", "tree")]
    refused(tmp_path, rootfs, members, job(), "deleting in 'work/tree/sub'")
    apply(tmp_path, rootfs, members, job(caps=("CAP_DAC_OVERRIDE",)))
    assert not (rootfs / "work" / "tree").exists()


def test_opaque_marker_empties_its_directory(tmp_path: Path, rootfs: Path) -> None:
    message = refused(tmp_path, rootfs, [directory("etc"), opaque("etc")], job(),
                      "deleting in 'etc'")  # fmt: skip
    assert message.startswith("refusing 'etc' (an opaque marker): ")
    refused(tmp_path, rootfs, [directory("tmp", 0o1777), opaque("tmp")], job(),
            "deleting another user's 'tmp/roots' in a sticky directory")  # fmt: skip
    apply(tmp_path, rootfs, [directory("home/job", 0o755, JOB, JOB), opaque("home/job")], job())
    assert list((rootfs / "home" / "job").iterdir()) == []


def test_below_an_emptied_directory_nothing_is_a_copy_up(tmp_path: Path, rootfs: Path) -> None:
    """After an opaque marker the old passwd is gone: the same bytes are a new root-owned file."""
    node(rootfs, "home/job/etc", 0o755, JOB, JOB)
    node(rootfs, "home/job/etc/passwd", 0o644, data=PASSWD)  # root's, in the job's directory
    members = [directory("home/job/etc", 0o755, JOB, JOB), opaque("home/job/etc"),
               member("home/job/etc/passwd", uid=0, gid=0, data=PASSWD)]  # fmt: skip
    refused(tmp_path, rootfs, members, job(), "refusing 'home/job/etc/passwd': owner uid 0")
