"""arch.host_identity: the EC2 instance id (DMI asset tag, else IMDSv2 on EC2), else machine id
+ boot id, never the hostname; cached per boot in the state dir."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from arch import host_identity


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake /sys, /etc/machine-id and boot id under tmp_path; nothing cached."""
    files = {
        "ASSET_TAG": "board_asset_tag", "DMI_VENDOR": "sys_vendor",
        "HYPERVISOR_UUID": "hypervisor_uuid", "MACHINE_ID": "machine-id", "BOOT_ID": "boot_id",
    }  # fmt: skip
    for constant, name in files.items():
        monkeypatch.setattr(host_identity, constant, str(tmp_path / name))
    (tmp_path / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "boot_id").write_text("11111111-2222-3333-4444-555555555555\n")
    monkeypatch.setattr(host_identity, "_cached", None)
    monkeypatch.setattr(host_identity, "_state_dir", None)
    yield tmp_path


def test_without_ec2_machine_id_and_boot_id_not_the_hostname(machine: Path) -> None:
    first = host_identity.current()
    assert first.startswith("h-") and len(first) == 26
    import os

    assert os.uname().nodename not in first
    host_identity._cached = None
    (machine / "boot_id").write_text("99999999-2222-3333-4444-555555555555\n")
    assert host_identity.current() != first, "another boot is another holder"


def test_nitro_asset_tag_gives_the_instance_id_without_a_network_call(machine: Path) -> None:
    (machine / "board_asset_tag").write_text("i-0123456789abcdef0\n")
    assert host_identity.current() == "i-0123456789abcdef0"


class _Imds(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        self._answer(200, b"token")

    def do_GET(self) -> None:
        ok = self.path == "/latest/meta-data/instance-id" and self.headers.get(
            "X-aws-ec2-metadata-token") == "token"  # fmt: skip
        self._answer(200 if ok else 401, b"i-0fedcba9876543210" if ok else b"")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


def test_xen_ec2_asks_imdsv2_once_per_boot_and_caches_it(
    machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (machine / "hypervisor_uuid").write_text("ec2e1916-9099-7caf-fd21-012345abcdef\n")
    server = HTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT",
                           f"http://127.0.0.1:{server.server_address[1]}")  # fmt: skip
        state = machine / "state"
        state.mkdir()
        host_identity.use_state_dir(str(state))
        assert host_identity.current() == "i-0fedcba9876543210"
    finally:
        server.shutdown()
        server.server_close()
    cached = json.loads((state / host_identity.CACHE_FILE).read_text())
    assert cached == {"identity": "i-0fedcba9876543210",
                      "boot": "11111111-2222-3333-4444-555555555555"}  # fmt: skip
    host_identity._cached = None
    assert host_identity.current() == "i-0fedcba9876543210", "read from the cache, server gone"


def test_a_cache_from_another_boot_is_not_used(machine: Path) -> None:
    state = machine / "state"
    state.mkdir()
    host_identity.write_cache(str(state), "i-0aaaaaaaaaaaaaaaa", boot="old-boot")
    host_identity.use_state_dir(str(state))
    assert host_identity.current().startswith("h-")
    host_identity.write_cache(str(state), "node-a")
    host_identity._cached = None
    assert host_identity.current() == "node-a"
