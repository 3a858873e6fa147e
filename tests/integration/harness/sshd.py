"""A private OpenSSH server on 127.0.0.1 for tests: its own host key, port, authorized keys.

Started in the foreground (`sshd -D -e`) and stopped by its own pid. Needs openssh-server and
openssh-client (ssh-keygen), and root (sshd's privilege separation).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import procs

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def make_key(path: Path) -> Path:
    procs.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)])
    return path


@dataclass
class SshServer:
    directory: Path
    authorized_key: Path  # the public key of the one key this server accepts
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    # sshd's ForceCommand: run for every session instead of the client's command, which it
    # finds in $SSH_ORIGINAL_COMMAND (the tests' way to make one command misbehave).
    force_command: str | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "sshd.log"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        host_key = make_key(self.directory / "host_key")
        authorized = self.directory / "authorized_keys"
        authorized.write_text(self.authorized_key.read_text())
        authorized.chmod(0o600)
        self.port = free_port()
        config = self.directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    *([f"ForceCommand {self.force_command}"] if self.force_command else []),
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
        procs.run([SSHD, "-t", "-f", str(config)])
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"sshd exited {self.process.returncode}: {procs.tail(self.log_file)}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"sshd is not listening on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.process is not None:
            procs.stop_process(self.process)
            self.process = None

    def address(self, user: str = "root") -> str:
        return f"{user}@127.0.0.1:{self.port}"

    def known_hosts_line(self) -> str:
        """This server's entry as OpenSSH's known_hosts writes it for a non-default port."""
        key_type, key = (self.directory / "host_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"
