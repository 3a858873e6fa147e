"""arch.failpoints: parsing ARCH_FAILPOINTS, arming only with arch.toml's consent, the two
actions (an errno, a SIGKILL of the process itself) and `archctl failpoints`."""

from __future__ import annotations

import ast
import errno
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from arch import failpoints
from arch.cli.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    failpoints.configure(False)


def test_parse_accepts_kill_and_errno_names() -> None:
    spec = "checkpoint.dump-done=kill, gc.renamed-aside=ESTALE,"
    assert failpoints.parse(spec) == {"checkpoint.dump-done": "kill", "gc.renamed-aside": "ESTALE"}


@pytest.mark.parametrize(
    "spec", ["nowhere=kill", "checkpoint.dump-done", "checkpoint.dump-done=EWHAT",
             "checkpoint.dump-done=die", "checkpoint.dump-done=errno"],
)  # fmt: skip
def test_parse_refuses_unknown_points_and_actions(spec: str) -> None:
    with pytest.raises(failpoints.FailpointSpecError):
        failpoints.parse(spec)


def test_points_stay_off_unless_arch_toml_enables_them() -> None:
    environ = {failpoints.ENV: "checkpoint.dump-done=EIO"}
    failpoints.configure(False, environ)
    failpoints.hit("checkpoint.dump-done")  # nothing happens
    assert failpoints.armed() == {}
    failpoints.configure(True, environ)
    assert failpoints.armed() == {"checkpoint.dump-done": "EIO"}


def test_an_errno_action_fails_the_step_with_that_errno(capsys: pytest.CaptureFixture[str]) -> None:
    failpoints.configure(True, {failpoints.ENV: "delete.before-remove=ESTALE"})
    failpoints.hit("delete.after-remove")  # another point: nothing
    with pytest.raises(OSError) as raised:
        failpoints.hit("delete.before-remove")
    assert raised.value.errno == errno.ESTALE
    assert "failpoint delete.before-remove fired: ESTALE" in capsys.readouterr().err


def test_a_malformed_spec_arms_nothing() -> None:
    failpoints.configure(True, {failpoints.ENV: "nowhere=kill"})
    assert failpoints.armed() == {}


def test_kill_sigkills_the_process_itself() -> None:
    program = (
        "from arch import failpoints\n"
        "failpoints.configure(True, {'ARCH_FAILPOINTS': 'gc.renamed-aside=kill'})\n"
        "failpoints.hit('gc.renamed-aside')\n"
        "print('survived')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done
    assert "survived" not in done.stdout
    assert "failpoint gc.renamed-aside fired: kill" in done.stderr


def test_archctl_failpoints_lists_every_declared_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["failpoints", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["points"]
    assert [point["name"] for point in listed] == [point.name for point in failpoints.POINTS]
    assert main(["failpoints"]) == 0
    assert "checkpoint.after-publish-rename" in capsys.readouterr().out


def _hits_in_code() -> dict[str, list[str]]:
    """Every failpoints.hit("NAME") call in arch/, by name -> files."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "arch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "hit"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "failpoints"
            ):
                argument = node.args[0]
                assert isinstance(argument, ast.Constant), f"{path}: hit() needs a literal name"
                found.setdefault(str(argument.value), []).append(str(path.relative_to(REPO)))
    return found


def test_every_hit_names_a_declared_point_and_every_point_is_hit() -> None:
    hits = _hits_in_code()
    assert sorted(set(hits) - failpoints.NAMES) == [], "undeclared points"
    assert sorted(failpoints.NAMES - set(hits)) == [], "declared points the code never reaches"
