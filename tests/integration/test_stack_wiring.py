"""The role's containerd wiring, judged by the containerd of the stack under test.

The role's own task (configure-containerd.yml, through ansible-playbook) edits a private
config.toml; then containerd itself (`containerd --config F config dump`) must read the runc
runtime's BinaryName as arch-runc. containerd 1.6 reads `version = 2` files, containerd 2.x
`version = 3` ones (another plugin path); with ARCH_TEST_STACK the newer stack's containerd
judges (see tests/stack.py). Nothing here touches the host's containerd or its config.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import procs

from tests.conftest import STACK, unavailable

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytestmark = [pytest.mark.root, pytest.mark.containerd]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path("/opt/arch/bootstrap/bin/ansible-playbook")
ARCH_RUNC = "/usr/local/bin/arch-runc"
# Where containerd keeps the runc runtime of its CRI plugin, by config version.
CRI_RUNTIME_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}

PLAY = """- hosts: localhost
  gather_facts: false
  tasks:
    - name: The role's containerd wiring
      ansible.builtin.include_role:
        name: arch
        tasks_from: configure-containerd
      vars:
        arch_containerd_config: {config}
        arch_containerd_binary: {containerd}
        arch_backup_dir: {backups}
        arch_venv_dir: {venv}
        arch_runc_shim_path: {arch_runc}
        arch_was_installed: false
        arch_systemd_running: false
        arch_manage_containerd_directly: false
"""


def run_role_task(tmp_path: Path, config: Path) -> str:
    if not ANSIBLE_PLAYBOOK.exists():
        unavailable(f"{ANSIBLE_PLAYBOOK} not found: run ansible/install.sh first")
    play = tmp_path / "play.yml"
    play.write_text(
        PLAY.format(
            config=config,
            containerd=STACK.containerd,
            backups=tmp_path / "backup",
            venv=Path(sys.executable).parent.parent,
            arch_runc=ARCH_RUNC,
        )
    )
    environment = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible" / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    completed = procs.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(play)],
        env=environment,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, procs.describe(completed)
    return completed.stdout


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
