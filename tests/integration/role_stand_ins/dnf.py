#!/usr/bin/python
"""Stand-in for Ansible's dnf module in ARCH's Amazon Linux 2023 check-mode test only.

Found first on ANSIBLE_LIBRARY, it answers the `package` tasks that pkg_mgr=dnf sends to
ansible.legacy.dnf on a host that has neither dnf nor its Python bindings. It runs only in
check mode, changes nothing on the host, and appends what it was asked for to the JSON-lines
file $ARCH_TEST_DNF_REQUESTS (the test's); `present` reports changed, as on a host without the
packages.
"""

from __future__ import annotations

import json
import os

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "aliases": ["pkg"], "default": []},
            "state": {"type": "str", "default": "present"},
        },
        supports_check_mode=True,
    )
    if not module.check_mode:
        module.fail_json(msg="this dnf stand-in only answers check mode (a test module)")
    names = module.params["name"]
    state = module.params["state"]
    with open(os.environ["ARCH_TEST_DNF_REQUESTS"], "a", encoding="utf-8") as requests:
        requests.write(json.dumps({"name": names, "state": state}) + "\n")
    module.exit_json(changed=state in ("present", "installed", "latest") and bool(names))


if __name__ == "__main__":
    main()
