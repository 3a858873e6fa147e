"""arch.appliance.checkpoint_mount: what `archctl verify` says about the checkpoint root's mount.

The mountinfo lines are as the kernel writes them for the three EFS cases (NFS cannot be mounted
on these machines: the kernel has no NFS client): an efs-utils TLS mount goes through the
helper's stunnel on 127.0.0.1, a plain NFS mount names the file system's DNS name.
"""

from __future__ import annotations

from pathlib import Path

from arch.appliance.checkpoint_mount import describe, fstab_entry

EFS_DNS = "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com"
ROOT_LINE = "22 1 259:1 / / rw,noatime shared:1 - xfs /dev/nvme0n1p1 rw,attr2\n"
TLS_LINE = (
    "98 22 0:51 / /checkpoint rw,relatime shared:60 - nfs4 127.0.0.1:/ rw,vers=4.1,"
    "rsize=1048576,wsize=1048576,hard,noresvport,proto=tcp,port=20049,timeo=600,retrans=2,"
    "sec=sys,clientaddr=127.0.0.1,local_lock=none,addr=127.0.0.1\n"
)
PLAIN_LINE = (
    f"98 22 0:51 / /checkpoint rw,relatime shared:60 - nfs4 {EFS_DNS}:/ rw,vers=4.1,"
    "rsize=1048576,wsize=1048576,hard,noresvport,proto=tcp,timeo=600,retrans=2,sec=sys,"
    "clientaddr=10.0.1.17,local_lock=none,addr=10.0.2.33\n"
)
EFS_FSTAB = f"{EFS_DNS}:/ /checkpoint efs _netdev,noresvport,tls,iam,nofail 0 0\n"
NFS_FSTAB = f"{EFS_DNS}:/ /checkpoint nfs4 nfsvers=4.1,hard,_netdev,nofail 0 0\n"


def write(tmp_path: Path, mountinfo: str, fstab: str) -> tuple[str, str]:
    (tmp_path / "mountinfo").write_text(mountinfo)
    (tmp_path / "fstab").write_text("# comment\n/dev/nvme0n1p1 / xfs defaults 0 0\n" + fstab)
    return str(tmp_path / "mountinfo"), str(tmp_path / "fstab")


def test_efs_utils_with_tls_and_iam(tmp_path: Path) -> None:
    report = describe("/checkpoint", *write(tmp_path, ROOT_LINE + TLS_LINE, EFS_FSTAB))
    assert report.kind == "efs-utils" and report.status_ok
    assert report.detail == (
        f"/checkpoint: EFS through amazon-efs-utils ({EFS_DNS}:/; TLS on (the mount helper's "
        "stunnel); IAM authorisation on)"
    )


def test_efs_utils_without_iam_is_worth_a_warning(tmp_path: Path) -> None:
    fstab = EFS_FSTAB.replace(",iam", "")
    report = describe("/checkpoint/default", *write(tmp_path, ROOT_LINE + TLS_LINE, fstab))
    assert report.kind == "efs-utils" and not report.status_ok
    assert "IAM authorisation off" in report.detail


def test_plain_nfs_fallback_is_named(tmp_path: Path) -> None:
    report = describe("/checkpoint", *write(tmp_path, ROOT_LINE + PLAIN_LINE, NFS_FSTAB))
    assert report.kind == "efs-nfs" and not report.status_ok
    assert report.detail.startswith(f"/checkpoint: EFS as plain NFS ({EFS_DNS}:/, nfs4): no TLS")
    assert "fallback without amazon-efs-utils" in report.detail


def test_local_storage(tmp_path: Path) -> None:
    report = describe("/checkpoint", *write(tmp_path, ROOT_LINE, ""))
    assert (report.kind, report.status_ok) == ("local", True)
    assert report.detail == "/checkpoint: local storage (xfs at /)"


def test_other_nfs(tmp_path: Path) -> None:
    line = PLAIN_LINE.replace(EFS_DNS, "filer.example.com")
    report = describe("/checkpoint", *write(tmp_path, ROOT_LINE + line, ""))
    assert (report.kind, report.status_ok) == ("nfs", True)


def test_fstab_entry_takes_the_last_line_for_the_mount_point(tmp_path: Path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text(NFS_FSTAB + EFS_FSTAB + "other:/ /checkpoint2 nfs4 defaults 0 0\n")
    assert fstab_entry("/checkpoint/", str(fstab)) == (
        f"{EFS_DNS}:/",
        "efs",
        ["_netdev", "noresvport", "tls", "iam", "nofail"],
    )
    assert fstab_entry("/nowhere", str(fstab)) is None
    assert fstab_entry("/checkpoint", str(tmp_path / "missing")) is None
