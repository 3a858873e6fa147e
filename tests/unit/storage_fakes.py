"""Stand-ins for runc and CRIU that keep what ARCH asks of them in a log, for tests of what ARCH
does with the checkpoint storage (tests/unit/test_untrusted_storage.py).

The fake runc answers `state` (a running container), `pause`, `resume`, `kill`, `create`,
`restore`, `delete` and `checkpoint --image-path DIR` (a dump.log that reports success and one
CRIU file); the fake CRIU answers `--version` and `cpuinfo dump|check`. Every call appends its
argv, as one JSON line, to $FAKE_LOG.
"""

from __future__ import annotations

import json
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

RUNC = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(["runc", *args]) + "\n")
if args[:1] == ["--version"]:
    print("runc version 1.1.5")
    sys.exit(0)
while args and args[0].startswith("--"):  # runc's global options (all take a value here)
    args = args[2:] if "=" not in args[0] else args[1:]
command = args[0] if args else ""
if command == "state":
    print(json.dumps({{"status": "running", "pid": os.getppid(), "bundle": {bundle!r},
                      "rootfs": {bundle!r} + "/rootfs"}}))
elif command == "checkpoint":
    image = args[args.index("--image-path") + 1]
    with open(os.path.join(image, "dump.log"), "w") as dump_log:
        dump_log.write("(00.1) Dumping finished successfully\n")
    for name in ("inventory.img", "core-1.img"):
        with open(os.path.join(image, name), "wb") as criu_file:
            criu_file.write(b"\0" * 64)
'''

CRIU = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as log:
    log.write(json.dumps(["criu", *args]) + "\n")
if args[:1] == ["--version"]:
    print("Version: 4.2.1")
elif args[:2] == ["cpuinfo", "dump"]:
    with open(os.path.join(args[args.index("-D") + 1], "cpuinfo.img"), "wb") as image:
        image.write(b"cpuinfo")
'''


def install(directory: Path, python: str, bundle: Path) -> tuple[Path, Path, Path]:
    """(runc, criu, log) in `directory`."""
    log = directory / "calls.log"
    runc = directory / "runc"
    criu = directory / "criu"
    runc.write_text(RUNC.format(python=python, log=str(log), bundle=str(bundle)))
    criu.write_text(CRIU.format(python=python, log=str(log)))
    for binary in (runc, criu):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return runc, criu, log


def calls(log: Path) -> list[list[str]]:
    try:
        return [json.loads(line) for line in log.read_text().splitlines()]
    except FileNotFoundError:
        return []
