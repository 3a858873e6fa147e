"""Run one task file of the ARCH role (ansible/roles/arch/tasks/NAME.yml) with given variables,
through the bootstrap's ansible-playbook, against private files instead of the host's.

So a test can put the role's own tasks (and the handlers they notify) in front of a private
containerd or dockerd, leaving the host's appliance alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import unavailable

from . import procs

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


def run_play(play_file: Path, play: Mapping[str, object], *, succeeds: bool = True) -> str:
    """Write `play` (with the role on the roles path) to `play_file`, run it on this host."""
    if not ANSIBLE_PLAYBOOK.exists():
        unavailable(f"{ANSIBLE_PLAYBOOK} not found: run ansible/install.sh first")
    play_file.write_text(json.dumps([play]))  # JSON is YAML
    environment = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible" / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO / "ansible" / "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    completed = procs.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(play_file)],
        env=environment,
        timeout=300,
        check=False,
    )
    assert (completed.returncode == 0) == succeeds, procs.describe(completed)
    return completed.stdout
