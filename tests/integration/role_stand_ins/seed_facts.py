#!/usr/bin/python
"""Test module: returns its `facts` argument as the host's facts (what `setup` would gather).

ARCH's Amazon Linux 2023 check-mode test seeds AL2023's facts with it, in a play that gathers none.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={"facts": {"type": "dict", "required": True}},
        supports_check_mode=True,
    )
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
