"""Every tunable of the role is in defaults/main.yml: any arch_* variable its tasks, handlers,
templates or files use is a default, an OS-family value (vars/), or set by the role itself."""

from __future__ import annotations

import re
from pathlib import Path

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "arch"
VARIABLE = re.compile(r"\barch_[a-z0-9_]+\b")
TOP_LEVEL_KEY = re.compile(r"^(arch_[a-z0-9_]+):", re.MULTILINE)
# Set by the role: registered results, loop variables, set_fact keys (indented mapping keys).
SET_BY_ROLE = re.compile(r"(?:register|loop_var):\s*(arch_[a-z0-9_]+)|^\s+(arch_[a-z0-9_]+):", re.M)


def test_every_variable_the_role_reads_is_defined() -> None:
    defined = set(TOP_LEVEL_KEY.findall((ROLE / "defaults" / "main.yml").read_text()))
    for os_vars in (ROLE / "vars").glob("*.yml"):
        defined |= set(TOP_LEVEL_KEY.findall(os_vars.read_text()))
    used: set[str] = set()
    for folder in ("tasks", "handlers", "templates", "files"):
        for path in (ROLE / folder).iterdir():
            text = path.read_text()
            used |= set(VARIABLE.findall(text))
            defined |= {name for pair in SET_BY_ROLE.findall(text) for name in pair if name}
    assert sorted(used - defined) == []
