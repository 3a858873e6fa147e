"""The restore's credentials check: CRIU's creds decoded from core-<pid>.img, judged against
config.json. The image decoded is tests/unit/data/criu-pstree (CRIU 4.2.1 dumped `sh -c 'sleep &
sleep'` running as root with every capability); the rules are judged on constructed threads.
The same edits through the real stack: tests/integration/test_restore_credentials.py.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arch.checkpoint.image.credentials import (
    CAPABILITY_NAMES,
    CredentialsError,
    Grant,
    check_image,
    own_lsm_label,
    thread_excess,
)
from arch.checkpoint.image.criu_creds import ThreadCreds, read_thread_creds
from arch.checkpoint.image.criu_images import CORE_MAGIC, IMG_COMMON_MAGIC, CriuImageError

DATA = Path(__file__).parent / "data" / "criu-pstree"
ALL = list(CAPABILITY_NAMES)
DOCKER_DEFAULT = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
NUMBER = {name: number for number, name in enumerate(CAPABILITY_NAMES)}


def spec(
    uid: int = 0,
    gid: int = 0,
    caps: list[str] | None = None,
    *,
    groups: tuple[int, ...] = (),
    inheritable: list[str] | None = None,
    nnp: bool = False,
    seccomp: bool = False,
    apparmor: str = "",
) -> dict[str, Any]:
    caps = DOCKER_DEFAULT if caps is None else caps
    sets = {name: caps for name in ("bounding", "effective", "permitted")}
    return {
        "process": {
            "user": {"uid": uid, "gid": gid, "additionalGids": list(groups)},
            "capabilities": {**sets, "inheritable": inheritable or [], "ambient": []},
            "noNewPrivileges": nnp,
            "apparmorProfile": apparmor,
            "selinuxLabel": "",
        },
        "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO"} if seccomp else None},
    }


def caps(*names: str) -> frozenset[int]:
    return frozenset(NUMBER[name] for name in names)


def thread(**changes: Any) -> ThreadCreds:
    base = ThreadCreds(
        pid=1, tid=1, uids=(0, 0, 0, 0), gids=(0, 0, 0, 0), groups=frozenset(),
        inheritable=frozenset(), permitted=caps(*DOCKER_DEFAULT),
        effective=caps(*DOCKER_DEFAULT), bounding=caps(*DOCKER_DEFAULT), ambient=frozenset(),
        securebits=0, no_new_privs=False, seccomp_mode=0, seccomp_filter=None, lsm_profile=None,
        lsm_sockcreate=None, apparmor_data=False,
    )  # fmt: skip
    return base._replace(**changes)


@pytest.fixture
def image_fd() -> Iterator[int]:
    fd = os.open(DATA, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_the_creds_of_a_real_dump(image_fd: int) -> None:
    threads = read_thread_creds(image_fd)
    assert [(t.pid, t.tid) for t in threads] == [(3944, 3944), (3945, 3945), (3946, 3946)]
    first = threads[0]
    assert first.uids == (0, 0, 0, 0) and first.gids == (0, 0, 0, 0)
    assert first.effective == first.permitted == first.bounding
    assert NUMBER["CAP_SYS_ADMIN"] in first.effective
    assert (first.securebits, first.no_new_privs, first.seccomp_mode) == (0, False, 0)
    assert first.lsm_profile is None and not first.apparmor_data


def test_the_real_dump_is_within_a_grant_of_every_capability(image_fd: int) -> None:
    check_image(image_fd, spec(caps=ALL), ["pstree.img"], None)


def test_the_real_dump_exceeds_dockers_default_capabilities(image_fd: int) -> None:
    with pytest.raises(CredentialsError) as refused:
        check_image(image_fd, spec(), ["pstree.img"], None)
    message = str(refused.value)
    assert message.startswith("the image's processes would hold more than config.json grants")
    assert "pid 3944: effective capabilities CAP_DAC_READ_SEARCH" in message
    assert "CAP_SYS_ADMIN" in message


def test_the_untouched_thread_is_within_its_grant() -> None:
    assert thread_excess(thread(), Grant.from_spec(spec(), None), []) == []


@pytest.mark.parametrize(
    ("changes", "grant", "problem"),
    [
        ({"uids": (0, 1000, 0, 0)}, spec(caps=["CAP_CHOWN"]), "uids 1000 (config.json: 0)"),
        ({"gids": (0, 0, 7, 0)}, spec(caps=["CAP_CHOWN"]), "gids 7 (config.json: 0)"),
        ({"groups": frozenset({5, 9})}, spec(caps=[], groups=(5,)), "groups 9 (config.json: 0, 5)"),
        ({"effective": caps("CAP_SYS_ADMIN")}, spec(), "effective capabilities CAP_SYS_ADMIN"),
        ({"permitted": caps("CAP_BPF")}, spec(), "permitted capabilities CAP_BPF"),
        ({"ambient": caps("CAP_NET_ADMIN")}, spec(), "ambient capabilities CAP_NET_ADMIN"),
        ({"bounding": caps("CAP_SYS_MODULE")}, spec(), "bounding capabilities CAP_SYS_MODULE"),
        ({"inheritable": caps("CAP_SYS_ADMIN")}, spec(), "inheritable capabilities CAP_SYS_ADMIN"),
        ({"securebits": 0x2F}, spec(caps=["CAP_CHOWN"]), "securebits 0x2f without CAP_SETPCAP"),
        ({"no_new_privs": False}, spec(nnp=True), "no_new_privs is off"),
        ({"seccomp_mode": 0}, spec(seccomp=True), "no seccomp filter"),
        ({"seccomp_mode": 9}, spec(seccomp=True), "unknown seccomp mode 9"),
        ({"seccomp_mode": 2, "seccomp_filter": 3}, spec(seccomp=True),
         "seccomp filter index 3 is not in seccomp.img (1 filters)"),
        ({"lsm_profile": "unconfined_t"}, spec(), "LSM label 'unconfined_t' (config.json: None)"),
        ({"lsm_profile": None}, spec(apparmor="docker-default"), "LSM label None"),
        ({"lsm_sockcreate": "x:y:z:s0"}, spec(), "LSM socket label 'x:y:z:s0'"),
        ({"apparmor_data": True}, spec(), "AppArmor policy data to load"),
    ],
)
def test_each_field_beyond_the_grant_is_named(
    changes: dict[str, Any], grant: dict[str, Any], problem: str
) -> None:
    problems = thread_excess(thread(**changes), Grant.from_spec(grant, None), [(b"\0" * 8, None)])
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    ("changes", "grant"),
    [
        ({"uids": (1000, 1000, 1000, 1000)}, spec()),  # CAP_SETUID: any uid
        ({"gids": (5, 5, 5, 5), "groups": frozenset({1, 2})}, spec()),  # CAP_SETGID
        ({"uids": (1000,) * 4, "gids": (100,) * 4, "effective": frozenset(),
          "permitted": frozenset(), "bounding": frozenset(), "groups": frozenset({100, 7})},
         spec(1000, 100, [], groups=(7,))),
        ({"effective": frozenset(), "permitted": caps("CAP_KILL")}, spec()),  # dropped some
        ({"securebits": 0x10}, spec()),  # CAP_SETPCAP
        ({"inheritable": caps("CAP_KILL")}, spec()),
        ({"no_new_privs": True}, spec()),
        ({"seccomp_mode": 2, "seccomp_filter": 0}, spec(seccomp=True)),
        ({"seccomp_mode": 1}, spec(seccomp=True)),  # strict is narrower than any filter
        ({"lsm_profile": "docker-default"}, spec(apparmor="docker-default")),
    ],
)
def test_what_the_process_could_do_itself_is_within_the_grant(
    changes: dict[str, Any], grant: dict[str, Any]
) -> None:
    assert thread_excess(thread(**changes), Grant.from_spec(grant, None), [(b"\0" * 8, None)]) == []


def test_a_root_process_regains_its_bounding_set_at_exec_unless_no_new_privs() -> None:
    fewer = spec()
    fewer["process"]["capabilities"]["permitted"] = ["CAP_KILL"]
    assert thread_excess(thread(), Grant.from_spec(fewer, None), []) == []
    fewer["process"]["noNewPrivileges"] = True
    assert any("permitted capabilities CAP_CHOWN" in p
               for p in thread_excess(thread(no_new_privs=True), Grant.from_spec(fewer, None), []))


@pytest.mark.parametrize(
    ("filters", "problem"),
    [
        ([(b"\0" * 8, 1), (b"\0" * 8, 0)], "chain loops at index 0"),
        ([(b"\0" * 7, None)], "0 is not a whole BPF program"),
        ([(b"", None)], "0 is not a whole BPF program"),
    ],
)
def test_a_filter_chain_crius_restorer_cannot_install_is_refused(
    filters: list[tuple[bytes, int | None]], problem: str
) -> None:
    threads = thread(seccomp_mode=2, seccomp_filter=0)
    assert thread_excess(threads, Grant.from_spec(spec(seccomp=True), None), filters) == [
        f"seccomp filter {problem}"
    ]


def test_without_a_label_in_config_json_this_process_label_is_the_grant() -> None:
    grant = Grant.from_spec(spec(), "runc_t")
    assert thread_excess(thread(lsm_profile="runc_t"), grant, []) == []
    assert thread_excess(thread(lsm_profile="spc_t"), grant, []) != []


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (b"docker-default (enforce)\n", "docker-default"),
        (b"unconfined\n", None),
        (b"system_u:system_r:container_t:s0:c1,c2\0", "system_u:system_r:container_t:s0:c1,c2"),
        (b"", None),
    ],
)
def test_own_lsm_label(tmp_path: Path, text: bytes, label: str | None) -> None:
    (tmp_path / "current").write_bytes(text)
    assert own_lsm_label(str(tmp_path / "current")) == label
    assert own_lsm_label(str(tmp_path / "absent")) is None


def core(message: bytes) -> bytes:
    return struct.pack("<III", IMG_COMMON_MAGIC, CORE_MAGIC, len(message)) + message


def test_a_live_thread_without_creds_is_refused_and_a_zombie_is_skipped(tmp_path: Path) -> None:
    shutil.copy(DATA / "pstree.img", tmp_path)
    for pid in (3945, 3946):
        shutil.copy(DATA / f"core-{pid}.img", tmp_path)
    zombie = b"\x1a\x02\x08\x06"  # tc {task_state: 6}
    (tmp_path / "core-3944.img").write_bytes(core(zombie))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert [t.pid for t in read_thread_creds(fd)] == [3945, 3946]
        (tmp_path / "core-3944.img").write_bytes(core(b"\x1a\x02\x08\x01"))  # alive, no creds
        with pytest.raises(CriuImageError, match="no thread_core"):
            read_thread_creds(fd)
        (tmp_path / "core-3944.img").write_bytes(core(b"\x1a\x02\x08\x01\x2a\x04\x08\x00\x10\x00"))
        with pytest.raises(CriuImageError, match="no creds in thread_core"):
            read_thread_creds(fd)
    finally:
        os.close(fd)


def test_an_apparmor_image_is_refused(image_fd: int) -> None:
    with pytest.raises(CredentialsError, match=r"apparmor\.img: AppArmor policy"):
        check_image(image_fd, spec(caps=ALL), ["pstree.img", "apparmor.img"], None)
