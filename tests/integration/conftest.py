"""Fixtures for integration tests against real containerd/dockerd with arch-runc as runtime.

- `test_image`: the offline busybox image (built once per session).
- `containerd_nodes`: a factory of private containerd instances ("nodes"); call it once per node
  (migration tests start two sharing one checkpoint root). `containerd_node` is one such node
  with the test image imported.
- `docker_daemon`: a private dockerd on its own node, runtime `arch` = arch-runc, image imported.
Every daemon is stopped by its own pid at teardown, pass or fail; on failure, the daemons' logs,
arch-runc's log and the runc calls arch-runc made are attached to the test report.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import procs
from harness.containerd import ContainerdNode
from harness.docker import DockerDaemon
from harness.images import IMAGE_PATH_ENV, BusyboxImage, build_test_image

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
LOG_FILES_KEY = pytest.StashKey[list[tuple[str, Path]]]()

NodeFactory = Callable[..., ContainerdNode]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed:
        for title, path in item.stash.get(LOG_FILES_KEY, []):
            report.sections.append((title, procs.tail(path)))


def attach_log(request: pytest.FixtureRequest, title: str, path: Path) -> None:
    """Show `path` in the report of the requesting test if it fails."""
    item = request.node
    item.stash.setdefault(LOG_FILES_KEY, []).append((title, path))


def _is_static_elf(path: Path) -> bool:
    """True when the ELF file has no program interpreter (PT_INTERP), i.e. is static."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return False
    (program_header_offset,) = struct.unpack_from("<Q", data, 0x20)
    entry_size, entry_count = struct.unpack_from("<HH", data, 0x36)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", data, program_header_offset + index * entry_size)[0] != pt_interp
        for index in range(entry_count)
    )


@pytest.fixture(scope="session")
def busybox_binary() -> Path:
    for candidate in map(Path, BUSYBOX_CANDIDATES):
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    reason = "a static busybox is not installed (Debian package busybox-static)"
    if os.environ.get("ARCH_TESTS_STRICT") == "1":
        pytest.fail(f"{reason} [ARCH_TESTS_STRICT=1 turns this skip into a failure]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def test_image(busybox_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> BusyboxImage:
    return build_test_image(busybox_binary, tmp_path_factory.mktemp("image"))


@pytest.fixture
def containerd_nodes(
    request: pytest.FixtureRequest,
    arch_runc_binary: Path,
    real_runc_binary: Path,
    test_image: BusyboxImage,
) -> Iterator[NodeFactory]:
    """Start private containerd nodes: `containerd_nodes("a", checkpoint_root=..., image=True)`."""
    started: list[ContainerdNode] = []

    def start(
        name: str = "node", *, checkpoint_root: Path | None = None, image: bool = True
    ) -> ContainerdNode:
        node = ContainerdNode(
            name,
            arch_runc=arch_runc_binary,
            real_runc=real_runc_binary,
            checkpoint_root=checkpoint_root,
        )
        started.append(node)
        attach_log(request, f"containerd {name} log", node.log_file)
        attach_log(request, f"arch-runc log ({name})", node.arch.log_file)
        attach_log(request, f"runc calls made by arch-runc ({name})", node.arch.runc_calls_log)
        node.start()
        if image:
            node.import_image(test_image.oci_archive)
        return node

    yield start
    _stop_all([node.stop for node in reversed(started)])


@pytest.fixture
def containerd_node(containerd_nodes: NodeFactory) -> ContainerdNode:
    return containerd_nodes("a")


@pytest.fixture
def docker_daemon(
    request: pytest.FixtureRequest, containerd_nodes: NodeFactory, test_image: BusyboxImage
) -> Iterator[DockerDaemon]:
    daemon = DockerDaemon(containerd_nodes("docker", image=False))
    attach_log(request, "dockerd log", daemon.log_file)
    try:
        daemon.start()
        daemon.import_rootfs(test_image.rootfs_tar, test_image.docker_name, IMAGE_PATH_ENV)
        yield daemon
    finally:
        daemon.stop()


def _stop_all(stoppers: list[Callable[[], None]]) -> None:
    """Run every stop function even if some fail; then report all failures together."""
    failures = []
    for stop in stoppers:
        try:
            stop()
        except Exception as error:  # report every daemon's failure, not just the first
            failures.append(f"{type(error).__name__}: {error}")
    if failures:
        raise AssertionError("\n".join(failures))
