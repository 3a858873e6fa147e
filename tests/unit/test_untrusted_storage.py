"""Untrusted storage never breaks a container (property-based).

Hypothesis plants random files and trees where ARCH looks: the image path, its leftovers
(`.staging-`, `.old-`, `.removing-`), reader markers, other images of the namespace, and
another container's state record. Contents are random bytes, deeply nested or over-long JSON,
leases with extreme values, mutations of a real image's metadata, symlinks to a directory
outside the roots, FIFOs and directory chains deeper than Python's recursion limit.

Then the real arch-runc (as a process, with stand-ins for runc and CRIU: tests/unit/
storage_fakes.py) creates, checkpoints, deletes, creates again and deletes an opted-in container
there, and the exit watcher's sweep and `archctl gc` run over the roots. Each must behave:
- create exits 0 and runs runc (`create` fresh, or `restore`), never an internal error; after a
  checkpoint that published, the second create restores from that image or logs why not (the
  fake CRIU's files hold no process state the credentials check can read);
- checkpoint exits 0 with a valid image at the path, or 1 saying the container keeps running,
  and then runc was never asked to kill it (and was asked to resume it if ARCH paused it);
- delete exits 0 (after exit 0 of a restored instance, its image is gone); the sweep and gc
  finish (gc reports what it could not do, per entry);
- nothing outside the roots changes, and ARCH's log holds no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from arch.checkpoint.image.validation import validate
from arch.config import HostConfig, load_config
from arch.container.state import EXIT_STATUS, ContainerState
from tests.unit import storage_fakes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: FIFOs, ownership")

EXAMPLES = int(os.environ.get("ARCH_STORAGE_EXAMPLES", "40"))
RUNC_ROOT = "/run/containerd/runc/default"
JOB = "job"
HEX = "0123456789ab"
HOST = os.uname().nodename
# Each example starts arch-runc three times: shrinking a failure would take many minutes, and
# the example as found names the planted entries already.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)

# -- what is planted ---------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    data: bytes


@dataclass(frozen=True)
class Directory:
    entries: tuple[tuple[str, Node], ...]


@dataclass(frozen=True)
class Link:
    """A symlink to the directory outside the roots."""


@dataclass(frozen=True)
class Fifo:
    pass


@dataclass(frozen=True)
class Deep:
    """A chain of nested directories (deeper than Python's recursion limit at the top)."""

    depth: int


Node = Union[File, Directory, Link, Fifo, Deep]

LEASE_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=20),
    st.none(), st.booleans(), st.just(HOST),
)  # fmt: skip


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def _metadata_mutation(draw: st.DrawFn) -> bytes:
    """A real image's metadata.json with one field replaced by something odd."""
    document: dict[str, Any] = json.loads(REAL_METADATA)
    fields = [("format_version",), ("checkpoint_id",), ("namespace",), ("created",),
              ("filesystem", "size"), ("filesystem", "tar"), ("process", "criu_files"),
              ("identity",), ("container_id",)]  # fmt: skip
    path = draw(st.sampled_from(fields))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(st.one_of(LEASE_VALUES, st.just("[" * 5000), st.just("9" * 5000),
                                      st.just({"a": [[[]]]}), st.just("../../x")))  # fmt: skip
    return json.dumps(document, default=str).encode()


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "deep", "long int", "lease", "metadata", "huge float",
                                 "empty"]))  # fmt: skip
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        depth = draw(st.integers(min_value=30, max_value=200_000))
        return b"[" * depth + b"]" * draw(st.integers(min_value=0, max_value=depth))
    if kind == "long int":
        return b'{"pid": ' + b"9" * draw(st.integers(min_value=20, max_value=100_000)) + b"}"
    if kind == "lease":
        keys = ("host", "boot", "pid", "start", "expires")
        return _json_bytes({key: draw(LEASE_VALUES) for key in keys if draw(st.booleans())})
    if kind == "metadata":
        return _metadata_mutation(draw)
    if kind == "huge float":
        return b'{"expires": 1e400, "created": "2026-01-01T00:00:00Z"}'
    return b""


IMAGE_FILES = st.sampled_from(["metadata.json", ".arch-lease", "dump.log", "rootfs-diff.tar",
                               "metadata.sig", "core-1.img", "cpuinfo.img", "x"])  # fmt: skip


def nodes(max_leaves: int = 6) -> st.SearchStrategy[Node]:
    leaves = st.one_of(
        st.builds(File, contents()), st.just(Link()), st.just(Fifo()),
        st.builds(Deep, st.integers(min_value=1, max_value=1200)),
    )  # fmt: skip
    return st.recursive(
        leaves,
        lambda children: st.builds(
            Directory,
            st.lists(st.tuples(IMAGE_FILES, children), max_size=5,
                     unique_by=lambda entry: entry[0]).map(tuple),
        ),
        max_leaves=max_leaves,
    )


PLACES = st.sampled_from([
    JOB, f".staging-{JOB}-{HEX}", f".old-{JOB}-{HEX}", f".removing-{JOB}-{HEX}",
    f".old-{JOB}-zz", f".reading~{JOB}~{HOST}~999999~abcdef",
    f".reading~{JOB}~elsewhere~1~abcdef", "other", "image-20260101T000000Z-0123456789ab",
])  # fmt: skip


@dataclass(frozen=True)
class Planted:
    in_namespace: tuple[tuple[str, Node], ...]
    foreign_record: bytes | None  # another container's state record.json


plantings = st.builds(
    Planted,
    st.lists(st.tuples(PLACES, nodes()), max_size=4, unique_by=lambda entry: entry[0]).map(tuple),
    st.one_of(st.none(), contents()),
)


def plant(path: Path, node: Node, outside: Path) -> None:
    if isinstance(node, File):
        path.write_bytes(node.data)
    elif isinstance(node, Link):
        path.symlink_to(outside)
    elif isinstance(node, Fifo):
        os.mkfifo(path)
    elif isinstance(node, Deep):
        path.mkdir()
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(node.depth):
                os.mkdir("d", dir_fd=fd)
                next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        finally:
            os.close(fd)
    else:
        path.mkdir()
        for name, child in node.entries:
            plant(path / name, child, outside)


# -- one host -------------------------------------------------------------------------------------


def _real_metadata() -> str:
    """metadata.json of a real published image (the base of the mutations)."""
    from tests.unit.test_image import publish_image

    with tempfile.TemporaryDirectory() as directory:
        image = Path(directory) / "default" / JOB
        publish_image(image, container_id=JOB)
        return (image / "metadata.json").read_text()


REAL_METADATA = _real_metadata()


class Host:
    """Roots, a bundle of an opted-in container, fakes for runc and CRIU, and arch.toml."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "checkpoint"
        self.namespace = self.root / "default"
        self.outside = base / "outside"
        self.bundle = base / "bundle"
        for directory in (self.namespace, self.outside, self.bundle / "rootfs", base / "bin"):
            directory.mkdir(parents=True)
        (self.outside / "canary").write_text("must stay")
        spec = {"process": {"args": ["sh"], "cwd": "/", "env": ["ARCH_ENABLE=1"],
                            "user": {"uid": 0, "gid": 0}}, "root": {"path": "rootfs"}}  # fmt: skip
        (self.bundle / "config.json").write_text(json.dumps(spec))
        self.runc, criu, self.calls_log = storage_fakes.install(base / "bin", sys.executable,
                                                                self.bundle)  # fmt: skip
        self.log = base / "arch.log"
        key = base / "image.key"  # images are signed, as by default
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)
        self.config_file = base / "arch.toml"
        self.config_file.write_text(
            f'runc = "{self.runc}"\ncriu = "{criu}"\ncheckpoint_root = "{self.root}"\n'
            f'state_dir = "{base / "state"}"\nlog_file = "{self.log}"\nmetrics_file = ""\n'
            f'image_key_file = "{key}"\n'
        )
        self.config: HostConfig = load_config(str(self.config_file))

    def arch_runc(self, *args: str) -> int:
        env = {**os.environ, "ARCH_CONFIG": str(self.config_file)}
        completed = subprocess.run([sys.executable, "-m", "arch.shim", "--root", RUNC_ROOT, *args],
                                   env=env, capture_output=True, text=True, timeout=120,
                                   check=False)  # fmt: skip
        return completed.returncode

    def runc_calls(self) -> list[list[str]]:
        return [call[1:] for call in storage_fakes.calls(self.calls_log) if call[0] == "runc"]

    def outside_listing(self) -> list[tuple[str, str]]:
        return sorted((str(p.relative_to(self.outside)), p.read_text() if p.is_file() else "")
                      for p in self.outside.rglob("*"))  # fmt: skip

    def arch_log(self) -> str:
        try:
            return self.log.read_text()
        except FileNotFoundError:
            return ""


def subcommands(calls: list[list[str]]) -> list[str]:
    found = []
    for call in calls:
        args = list(call)
        while args and args[0].startswith("--"):
            args = args[2:] if "=" not in args[0] else args[1:]
        found.append(args[0] if args else "")
    return found


# -- the property ---------------------------------------------------------------------------------


@given(planted=plantings)
@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
def test_create_checkpoint_delete_sweep_and_gc_behave(planted: Planted) -> None:
    base = Path(tempfile.mkdtemp(prefix="arch-untrusted-"))
    try:
        host = Host(base)
        for name, node in planted.in_namespace:
            plant(host.namespace / name, node, host.outside)
        for name, node in planted.in_namespace:
            event(f"planted {type(node).__name__} at {name.split('-')[0].split('~')[0]}")
        if planted.foreign_record is not None:
            foreign = base / "state" / "default" / "foreign"
            foreign.mkdir(parents=True)
            (foreign / "record.json").write_bytes(planted.foreign_record)
        outside_before = host.outside_listing()
        _check_create(host)
        published = _check_checkpoint(host)
        _check_delete(host)  # checkpointed: the image stays
        restored = _check_create(host)  # from the image just published, junk around it
        if published and not restored:  # the fake CRIU's files hold no real process state
            assert "restore refused, starting fresh" in host.arch_log(), host.arch_log()
        _check_delete(host)  # exit 0: the image it was created against goes
        if restored:
            assert not (host.namespace / JOB).exists(), host.arch_log()
        _check_sweep_and_gc(host)
        assert host.outside_listing() == outside_before
        log = host.arch_log()
        assert "Traceback" not in log and "internal error" not in log, log
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


def _check_create(host: Host) -> bool:
    """Whether it restored."""
    before = len(host.runc_calls())
    status = host.arch_runc("create", "--bundle", str(host.bundle), JOB)
    assert status == 0, host.arch_log()
    made = set(subcommands(host.runc_calls()[before:]))
    assert {"create", "restore"} & made, host.runc_calls()
    event(f"create: {'restored' if 'restore' in made else 'fresh'}")
    return "restore" in made


def _check_checkpoint(host: Host) -> bool:
    """Whether it published an image."""
    before = len(host.runc_calls())
    status = host.arch_runc("checkpoint", JOB)
    made = subcommands(host.runc_calls()[before:])
    event(f"checkpoint: exit {status}")
    if status == 0:
        validate(str(host.namespace / JOB))  # the published image is whole
        assert "kill" in made, made
        return True
    assert status == 1, host.arch_log()
    assert "checkpoint failed, the container keeps running" in host.arch_log()
    assert "kill" not in made, made
    if "pause" in made:
        assert made[-1] == "resume", made
    return False


def _check_delete(host: Host) -> None:
    state = ContainerState(host.config.state_dir, "default", JOB)
    if state.exists():
        state.set(EXIT_STATUS, "0")  # what the exit watcher records
    assert host.arch_runc("delete", JOB) == 0, host.arch_log()


def _check_sweep_and_gc(host: Host) -> None:
    from arch.checkpoint.storage.sweep import sweep_host
    from arch.operator import gc

    swept = sweep_host(host.config, str(host.runc))
    event(f"sweep: {'removed something' if swept else 'nothing to do'}")
    plan = gc.plan([str(host.root)], host.config, older_than=1.0, now=4_000_000_000.0)
    outcomes = gc.execute(plan.actions) + gc.sweep_leftovers(plan.sweep_dirs, dry_run=False,
                                                              now=4_000_000_000.0)  # fmt: skip
    event(f"gc: {len(plan.actions)} actions planned, {len(plan.kept)} kept")
    for outcome in outcomes:
        if outcome.error:
            event(f"gc reported an error: {outcome.error.split(':')[0][:40]}")


# -- a refused image is never removed by the refused container's exit ----------------------------


def _use_job(host: Host, args: list[str]) -> None:
    spec = {"process": {"args": args, "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["ARCH_ENABLE=1", "ARCH_CHECKPOINT_ID=victim"]},
            "root": {"path": "rootfs"}}  # fmt: skip
    (host.bundle / "config.json").write_text(json.dumps(spec))


def test_exit_0_of_a_job_refused_for_identity_keeps_the_other_jobs_image(tmp_path: Path) -> None:
    """A task definition names a victim's ARCH_CHECKPOINT_ID: its restore is refused (another
    job), it starts fresh and exits 0; the victim's image must stay."""
    host = Host(tmp_path)
    _use_job(host, ["victim-job"])
    assert host.arch_runc("create", "--bundle", str(host.bundle), "c1") == 0
    assert host.arch_runc("checkpoint", "c1") == 0, host.arch_log()
    assert host.arch_runc("delete", "c1") == 0
    image = host.namespace / "victim"
    validate(str(image))

    _use_job(host, ["attacker"])
    assert host.arch_runc("create", "--bundle", str(host.bundle), "c2") == 0
    assert "the image was taken from another job: it differs in command" in host.arch_log()
    assert subcommands(host.runc_calls())[-1] == "create"  # fresh
    ContainerState(host.config.state_dir, "default", "c2").set(EXIT_STATUS, "0")
    assert host.arch_runc("delete", "c2") == 0

    validate(str(image))  # still there, whole
    kept = next(line for line in host.arch_log().splitlines() if "delete default/c2" in line)
    print(kept)
    assert "was refused at create (the image was taken from another job" in kept
