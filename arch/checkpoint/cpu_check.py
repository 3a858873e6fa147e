"""Whether this host's CPU can run an image's processes: `criu cpuinfo check` of the image's
cpuinfo.img, started early so that it runs while the restore prepares, answered from
binary_facts' cache when CRIU approved that cpuinfo.img before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from typing import TYPE_CHECKING

from arch.checkpoint.image.metadata import host_cpu_summary
from arch.checkpoint.image.validation import ValidImage
from arch.runc import binary_facts
from arch.runc.binary_facts import CPUINFO_IMAGE
from arch.runc.process_group import dies_with_this_process

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("arch")

CPUINFO_READ_LIMIT = 1 << 20  # CRIU's cpuinfo.img is a few hundred bytes


class CpuCheck:
    """CRIU's verdict on whether this CPU has the features the image's processes may use.

    `criu cpuinfo check` against the image's cpuinfo.img runs in the background from start().
    """

    def __init__(
        self,
        image: ValidImage,
        process: subprocess.Popen[str] | None,
        approval: binary_facts.CpuinfoApproval | None = None,
    ) -> None:
        self.image = image
        self.process = process
        self.approval = approval  # remembered if CRIU approves
        self.verdict: list[str] | None = None

    @classmethod
    def start(
        cls,
        image: ValidImage,
        criu: str,
        on_start: Callable[[int], None] | None = None,
        binary_facts_dir: str | None = None,
    ) -> CpuCheck:
        """`binary_facts_dir`: where an approval of the same cpuinfo.img by this CRIU on this
        boot is remembered; such an image is not checked again."""
        cpuinfo_path = os.path.join(image.path, CPUINFO_IMAGE)
        approval = None
        try:
            with open(cpuinfo_path, "rb") as cpuinfo:
                cpuinfo_sha256 = hashlib.sha256(cpuinfo.read(CPUINFO_READ_LIMIT)).hexdigest()
            approval = binary_facts.CpuinfoApproval(criu, binary_facts_dir, cpuinfo_sha256)
        except FileNotFoundError:
            return cls(image, None)
        except OSError as error:
            logger.debug("cpuinfo check: %s not read: %s", cpuinfo_path, error)
        if approval is not None and approval.given():
            return cls(image, None)
        process = subprocess.Popen(
            [criu, "cpuinfo", "check", "--cpu-cap=cpu", "-D", image.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=dies_with_this_process(),
        )
        if on_start is not None:
            on_start(process.pid)
        return cls(image, process, approval)

    def problems(self) -> list[str]:
        if self.verdict is None:
            self.verdict = self._wait()
        return self.verdict

    def _wait(self) -> list[str]:
        if self.process is None:
            return []
        _, stderr = self.process.communicate(timeout=60)
        if self.process.returncode == 0:
            if self.approval is not None:
                self.approval.remember()
            return []
        recorded, here = self.image.metadata.cpu, host_cpu_summary()
        missing = sorted(set(recorded.flags) - set(here.flags)) if recorded and here else []
        detail = f" (missing here: {' '.join(missing)})" if missing else ""
        return [f"`criu cpuinfo check` refuses this CPU{detail}: {stderr.strip()[-500:]}"]
