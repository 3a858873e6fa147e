"""The role's containerd wiring, judged by the containerd of the stack under test.

The role's own task (configure-containerd.yml, through ansible-playbook) edits a private
config.toml; then containerd itself (`containerd --config F config dump`) must read the runc
runtime's BinaryName as arch-runc. containerd 1.6 reads `version = 2` files, containerd 2.x
`version = 3` ones (another plugin path); with ARCH_TEST_STACK the newer stack's containerd
judges (see tests/stack.py). Nothing here touches the host's containerd or its config.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import procs
from harness.role import run_role_tasks

from tests.conftest import STACK

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytestmark = [pytest.mark.root, pytest.mark.containerd]

ARCH_RUNC = "/usr/local/bin/arch-runc"
# Where containerd keeps the runc runtime of its CRI plugin, by config version.
CRI_RUNTIME_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}


def run_role_task(tmp_path: Path, config: Path) -> str:
    return run_role_tasks(
        tmp_path,
        "configure-containerd",
        {
            "arch_containerd_config": str(config),
            "arch_containerd_binary": STACK.containerd,
            "arch_backup_dir": str(tmp_path / "backup"),
            "arch_venv_dir": str(Path(sys.executable).parent.parent),
            "arch_runc_shim_path": ARCH_RUNC,
            "arch_was_installed": False,
            "arch_systemd_running": False,
            "arch_manage_containerd_directly": False,
        },
    )


def config_dump(config: Path) -> dict[str, object]:
    dumped = procs.run([STACK.containerd, "--config", str(config), "config", "dump"]).stdout
    return tomllib.loads(dumped)


def runc_binary_name(dump: dict[str, object]) -> object:
    version = dump.get("version")
    assert isinstance(version, int) and version in CRI_RUNTIME_PLUGIN, dump.get("version")
    plugins = dump["plugins"]
    assert isinstance(plugins, dict)
    runtime = plugins[CRI_RUNTIME_PLUGIN[version]]["containerd"]["runtimes"]["runc"]
    return runtime["options"]["BinaryName"]


@pytest.mark.parametrize("starting_from", ["default config", "no config"])
def test_role_wires_arch_runc_as_containerd_reads_it(tmp_path: Path, starting_from: str) -> None:
    config = tmp_path / "containerd" / "config.toml"
    config.parent.mkdir()
    default = subprocess.run(
        [STACK.containerd, "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    if starting_from == "default config":
        config.write_text(default)
        assert runc_binary_name(config_dump(config)) in ("", None)

    output = run_role_task(tmp_path, config)

    assert "changed=1" in output, output
    dump = config_dump(config)
    assert dump["version"] == tomllib.loads(default)["version"]  # the version it writes
    assert runc_binary_name(dump) == ARCH_RUNC
    # A second run changes nothing.
    assert "changed=0" in run_role_task(tmp_path, config)
