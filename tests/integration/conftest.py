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

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import checkpointing as cr
from harness import procs
from harness.containerd import ContainerdNode
from harness.docker import DockerDaemon
from harness.images import IMAGE_PATH_ENV, BusyboxImage, build_test_image
from workloads.build import BuildUnavailable

from arch.appliance.oci_image import is_static_elf
from tests.conftest import unavailable

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


@pytest.fixture(scope="session")
def busybox_binary() -> Path:
    for candidate in map(Path, BUSYBOX_CANDIDATES):
        if candidate.is_file() and is_static_elf(candidate):
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


@pytest.fixture(scope="session")
def working_criu() -> None:
    """Skip (with the reason) where CRIU cannot checkpoint on this machine."""
    problem = cr.criu_check()
    if problem is not None:
        unavailable(problem)


@pytest.fixture(scope="session")
def workload_image(
    request: pytest.FixtureRequest,
    test_image: BusyboxImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> cr.WorkloadImage:
    try:
        return cr.session_workload_image(request.config, test_image, tmp_path_factory)
    except BuildUnavailable as reason:
        unavailable(str(reason))


@pytest.fixture
def node(
    working_criu: None,
    containerd_nodes: NodeFactory,
    workload_image: cr.WorkloadImage,
    tmp_path: Path,
) -> Iterator[ContainerdNode]:
    """A node with the workload image, watched by `archctl watch-exits` (as on a real host)."""
    started = containerd_nodes("a", image=False)
    started.import_image(workload_image.oci_archive)
    with cr.watched(started, tmp_path / "watch-exits.out"):
        yield started


@pytest.fixture
def shared_checkpoints(tmp_path: Path) -> Path:
    """A checkpoint root that several nodes share, as hosts sharing EFS/NFS would."""
    shared = tmp_path / "shared-checkpoints"
    shared.mkdir(mode=0o700)
    return shared


@pytest.fixture
def two_nodes(
    working_criu: None,
    containerd_nodes: NodeFactory,
    workload_image: cr.WorkloadImage,
    shared_checkpoints: Path,
    tmp_path: Path,
) -> Iterator[tuple[ContainerdNode, ContainerdNode]]:
    """Nodes a and b with one checkpoint root, each watched by its own exit watcher."""
    with contextlib.ExitStack() as watchers:
        nodes = []
        for name in ("a", "b"):
            node = containerd_nodes(name, checkpoint_root=shared_checkpoints, image=False)
            node.import_image(workload_image.oci_archive)
            watchers.enter_context(cr.watched(node, tmp_path / f"watch-exits-{name}.out"))
            nodes.append(node)
        yield nodes[0], nodes[1]
