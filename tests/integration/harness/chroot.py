"""A real chroot of this host, for running the Ansible role where a Packer chroot build would.

The chroot's root is a fresh tmpfs (so it is not this host's root directory: Ansible's is_chroot
sees another device and inode) holding one bind mount per top-level directory of a copy-on-write
view of the host: an overlay whose lower layer is `/` and whose upper layer lives on a tmpfs the
test owns. Whatever a command in the chroot writes lands in that upper layer, never on the host,
and `changes()` lists it. /proc is a fresh proc mount, /dev and /sys the host's, /tmp an empty
tmpfs, /run an empty directory of the test's (`run_dir`: a build root runs no services).

Every command runs in its own private mount namespace (`unshare --mount`): the overlay, proc and
bind mounts exist only there and go away with it. The one mount in the host's namespace, the
upper layer's tmpfs, is unmounted by path when the `host_chroot` context ends, pass or fail.

The test hands files to the chroot in `share`, a host directory seen at the same path inside
it. Before a command runs, the test may also shape the view: `put` a file or `hide` a path (an
overlay whiteout), e.g. to lay out another distribution's paths.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from . import procs

# Runs as root inside the private mount namespace: $1 the chroot's work directory, $2.. the
# command. $1/share is bound at the same path (files the test hands over: plays, modules).
# ARCH_CHROOT_EXTRA_BINDS: host directories the overlay's lower layer does not show (on another
# filesystem than /) or the chroot's fresh /tmp hides (a checkout under /tmp), bound at the
# same path.
ENTER_SCRIPT = r"""
set -eu
work=$1
shift
mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$work/layers/upper,workdir=$work/layers/work" "$work/view"
mount -t tmpfs -o mode=0755 tmpfs "$work/root"
for entry in "$work/view"/*; do
    name=${entry##*/}
    if [ -L "$entry" ]; then
        ln -s "$(readlink "$entry")" "$work/root/$name"
    elif [ -d "$entry" ]; then
        mkdir "$work/root/$name"
        case $name in
            proc) mount -t proc proc "$work/root/proc" ;;
            dev | sys) mount --rbind "/$name" "$work/root/$name" ;;
            run) mount --bind "$work/run" "$work/root/run" ;;
            tmp) mount -t tmpfs -o mode=1777 tmpfs "$work/root/tmp" ;;
            *) mount --bind "$work/view/$name" "$work/root/$name" ;;
        esac
    fi
done
mkdir -p "$work/root$work/share"
mount --bind "$work/share" "$work/root$work/share"
for path in ${ARCH_CHROOT_EXTRA_BINDS:-}; do
    mkdir -p "$work/root$path"  # under the chroot's own /tmp, the mount point is made here
    mount --bind -o ro "$path" "$work/root$path"
done
exec chroot "$work/root" "$@"
"""


class HostChroot:
    """The chroot under `work` (see the module docstring); made by `host_chroot`."""

    def __init__(self, work: Path, extra_binds: Sequence[Path]) -> None:
        self.work = work
        self.upper = work / "layers" / "upper"
        # Seen at the same path in the chroot. Keep `work` under /tmp (the chroot's /tmp is a
        # tmpfs): its mount point is then no change to the overlay.
        self.share = work / "share"
        self.share.mkdir()
        # The chroot's /run: empty at first (no service runs in a build root), kept for the test.
        self.run_dir = work / "run"
        self.run_dir.mkdir(mode=0o755)
        self._extra_binds = tuple(extra_binds)
        self._script = work / "enter.sh"
        self._script.write_text(ENTER_SCRIPT)

    def _upper_path(self, path: str) -> Path:
        """`path`'s place in the upper layer, its parents created like the host's."""
        assert path.startswith("/"), path
        target = self.upper / path.lstrip("/")
        host_parent = Path(path).parent
        missing = []
        while not (self.upper / str(host_parent).lstrip("/")).is_dir():
            missing.append(host_parent)
            host_parent = host_parent.parent
        for directory in reversed(missing):
            # The upper copy of a directory lends the merged view its owner and mode.
            info = os.stat(directory)
            copy = self.upper / str(directory).lstrip("/")
            copy.mkdir(mode=stat.S_IMODE(info.st_mode))
            os.chown(copy, info.st_uid, info.st_gid)
        return target

    def put(self, path: str, *, copy_of: Path | None = None, text: str | None = None) -> None:
        """Give the chroot a file at `path`: a copy of a host file, or `text` (mode 0644)."""
        target = self._upper_path(path)
        if copy_of is not None:
            shutil.copy2(copy_of, target)
        else:
            assert text is not None
            target.write_text(text)
            target.chmod(0o644)

    def hide(self, path: str) -> None:
        """Make `path` absent in the chroot (an overlay whiteout: a 0/0 character device)."""
        os.mknod(self._upper_path(path), stat.S_IFCHR | 0o600, os.makedev(0, 0))

    def changes(self) -> dict[str, str]:
        """Everything in the upper layer: path in the chroot -> what it is (content digest)."""
        import hashlib

        found: dict[str, str] = {}
        for directory, subdirectories, files in os.walk(self.upper):
            for name in sorted(subdirectories + files):
                full = Path(directory, name)
                info = full.lstat()
                key = "/" + str(full.relative_to(self.upper))
                if stat.S_ISREG(info.st_mode):
                    digest = hashlib.sha256(full.read_bytes()).hexdigest()
                    found[key] = f"file {stat.S_IMODE(info.st_mode):o} {digest}"
                elif stat.S_ISLNK(info.st_mode):
                    found[key] = f"link {os.readlink(full)}"
                else:
                    found[key] = f"{stat.filemode(info.st_mode)} {stat.S_IMODE(info.st_mode):o}"
        return found

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the chroot (its own mount namespace), with exactly `env`."""
        environment = dict(env)
        environment["ARCH_CHROOT_EXTRA_BINDS"] = " ".join(map(str, self._extra_binds))
        return procs.run(
            ["unshare", "--mount", "--propagation", "private", "--",
             "bash", str(self._script), str(self.work), *argv],
            env=environment,
            timeout=timeout,
            check=False,
        )  # fmt: skip


@contextmanager
def host_chroot(work: Path, needed: Sequence[Path] = ()) -> Iterator[HostChroot]:
    """A chroot of this host under `work` (which must be empty). `needed`: host paths the
    command in it uses, bound into it when they are not on the root filesystem."""
    if shutil.which("unshare") is None or shutil.which("chroot") is None:
        from tests.conftest import unavailable

        unavailable("unshare and chroot (util-linux, coreutils) are needed for a chroot")
    root_device = os.stat("/").st_dev
    extra_binds = [path for path in needed
                   if os.stat(path).st_dev != root_device or _under_fresh_tmp(path)]  # fmt: skip
    layers = work / "layers"
    for directory in (layers, work / "view", work / "root"):
        directory.mkdir(parents=True)
    procs.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(layers)])
    try:
        (layers / "upper").mkdir()
        (layers / "work").mkdir()
        chroot = HostChroot(work, extra_binds)
        for path in extra_binds:
            if not _under_fresh_tmp(path):
                # The mount point, on the overlay (its copy in the upper layer is made here).
                chroot._upper_path(str(path / "x"))
        yield chroot
    finally:
        procs.run(["umount", str(layers)])


def _under_fresh_tmp(path: Path) -> bool:
    """Whether `path` is below /tmp, which the chroot mounts afresh (an empty tmpfs)."""
    resolved = path.resolve()
    return len(resolved.parts) > 2 and resolved.parts[1] == "tmp"
