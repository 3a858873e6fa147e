"""Run one task file of the ARCH role (ansible/roles/arch/tasks/NAME.yml) with given variables,
through the bootstrap's ansible-playbook, against private files instead of the host's.

So a test can put the role's own tasks (and the handlers they notify) in front of a private
containerd or dockerd, leaving the host's appliance alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import unavailable

from . import procs
from .chroot import HostChroot

REPO = Path(__file__).resolve().parents[3]
ANSIBLE_PLAYBOOK = Path("/opt/arch/bootstrap/bin/ansible-playbook")


def run_role_tasks(
    work: Path, tasks_from: str, variables: Mapping[str, object], *, succeeds: bool = True
) -> str:
    """ansible-playbook output of the role's `tasks_from` file with `variables`; fails unless
    the play succeeds (or, with succeeds=False, unless it fails)."""
    task = {
        "name": f"The role's {tasks_from}",
        "ansible.builtin.include_role": {"name": "arch", "tasks_from": tasks_from},
        "vars": dict(variables),
    }
    play = {"hosts": "localhost", "gather_facts": False, "tasks": [task]}
    return run_play(work / f"play-{tasks_from}.yml", play, succeeds=succeeds)


def run_play(
    play_file: Path,
    play: Mapping[str, object],
    *,
    succeeds: bool = True,
    options: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
    chroot: HostChroot | None = None,
    ansible_playbook: Path = ANSIBLE_PLAYBOOK,
) -> str:
    """Write `play` (with the role on the roles path) to `play_file`, run it on this host (or in
    `chroot`) with `ansible_playbook` `options` and extra `environment`; its output."""
    if not ansible_playbook.exists():
        unavailable(f"{ansible_playbook} not found: run ansible/install.sh first")
    if chroot is not None:
        play_file = chroot.share / play_file.name
    play_file.write_text(json.dumps([play]))  # JSON is YAML
    variables = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible" / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    if chroot is not None:
        # Ansible's own scratch files go to the chroot's /tmp (a tmpfs), so that the overlay's
        # upper layer holds only what the play itself wrote.
        variables.update(
            ANSIBLE_HOME="/tmp/ansible-home",
            ANSIBLE_LOCAL_TEMP="/tmp/ansible-local",
            ANSIBLE_REMOTE_TEMP="/tmp/ansible-remote",
            PYTHONDONTWRITEBYTECODE="1",
        )
    variables.update(environment or {})
    argv = [str(ansible_playbook), "-i", "localhost,", "-c", "local", *options, str(play_file)]
    if chroot is None:
        completed = procs.run(argv, env=variables, timeout=300, check=False)
    else:
        completed = chroot.run(argv, env=variables)
    assert (completed.returncode == 0) == succeeds, procs.describe(completed)
    return completed.stdout
