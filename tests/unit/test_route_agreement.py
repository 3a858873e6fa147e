"""The native front and Python route every call alike.

One corpus of arch.toml files, config.json files, ARCH state and runc argv. For each case the
compiled front runs with a recording fake runc and a recording fake Python shim (which binary it
execs is its route), and Python's decision (arch.shim.route.decide) runs over the same files.
Where the front goes straight to runc, Python must pass the call through to that same runc;
where Python handles the call itself, the front must have handed it to Python.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, NamedTuple

import pytest

from arch.config import KNOWN_KEYS
from tests.unit import fake_runc

if TYPE_CHECKING:
    from pathlib import Path

SOURCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "arch", "shim", "launcher.c",
)  # fmt: skip
COMPILER = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the launcher")

ROOT = "/run/containerd/runc/agree"  # namespace "agree"
ENABLED = '{"process": {"args": ["sh"], "env": ["PATH=/bin", "ARCH_ENABLE=1"]}}'
PLAIN = '{"process": {"args": ["sh"], "env": ["PATH=/bin"]}}'
# Expected routes: ARCH handles it, or it passes through to the configured runc ("runc") or,
# with a configuration Python refuses, to the runc on PATH ("path").
ARCH, RUNC, PATH_RUNC = "arch", "runc", "path"
# The front's own route: straight to the configured runc, or to Python.
DIRECT, PYTHON = "direct", "python"


class Case(NamedTuple):
    name: str
    config: str  # arch.toml; {runc}, {state}, {other_state} are filled in
    bundle: str | None  # config.json of the create's bundle
    args: list[str]
    route: str  # Python's decision
    front: str  # the front's route
    notice: bool = False  # a Spot notice is active (spot-watch's marker in the state dir)


STATE_CALL = ["--root", ROOT, "delete", "job-1"]  # job-1 has ARCH state in {state}
CREATE = ["--root", ROOT, "create", "--bundle", "{bundle}", "job-2"]
BASE = 'runc = "{runc}"\nstate_dir = "{state}"\n'

CORPUS = [
    # arch.toml forms
    Case("plain config, no ARCH container", BASE, None, ["state", "job-9"], RUNC, DIRECT),
    Case("plain config, ARCH container", BASE, None, STATE_CALL, ARCH, PYTHON),
    Case("all known keys", BASE + 'criu = "/usr/local/sbin/criu"\ncheckpoint_root = '
         '"/checkpoint"\nlog_file = "/var/log/a.log"\nlog_level = "INFO"  # any case\n'
         'allowed_roots = ["/checkpoint", "/data",]\ncriu_options = ["--tcp-established", '
         '"--manage-cgroups-mode=soft"]\nmetrics_file = "/var/lib/m/arch.prom"\n'
         'checkpoint_timeout = 600\nrestore_timeout = 90\n', None,
         ["state", "job-9"], RUNC, DIRECT),
    Case("platform and restore_wait", BASE + 'platform = "batch"\nrestore_wait = 90\n', None,
         ["state", "job-9"], RUNC, DIRECT),
    Case("unknown platform", BASE + 'platform = "k8s"\n', None, ["state", "job-9"], PATH_RUNC,
         PYTHON),
    Case("platform in capitals", BASE + 'platform = "ECS"\n', None, ["state", "job-9"],
         PATH_RUNC, PYTHON),
    Case("fault points on", BASE + "failpoints = true\n", None, ["state", "job-9"], RUNC, DIRECT),
    Case("fault points off", BASE + "failpoints = false # default\n", None, ["state", "job-9"],
         RUNC, DIRECT),
    Case("fault points not a boolean", BASE + 'failpoints = "yes"\n', None, ["state", "job-9"],
         PATH_RUNC, PYTHON),
    Case("metrics off", BASE + 'metrics_file = ""\n', None, ["state", "job-9"], RUNC, DIRECT),
    Case("signing keys", BASE + 'image_key_file = "/etc/arch/image.key"\nimage_verify_key_files'
         ' = ["/etc/arch/old.key"]\nunsigned_images = "allow"\n', None, ["state", "job-9"], RUNC,
         DIRECT),
    Case("signing off", BASE + 'image_key_file = ""\n', None, ["state", "job-9"], RUNC, DIRECT),
    Case("bad unsigned_images", BASE + 'unsigned_images = "Allow"\n', None, ["state", "job-9"],
         PATH_RUNC, PYTHON),
    Case("relative metrics file", BASE + 'metrics_file = "arch.prom"\n', None, ["state", "job-9"],
         PATH_RUNC, PYTHON),
    Case("CRLF line ends", BASE.replace("\n", "\r\n"), None, ["state", "job-9"], RUNC, DIRECT),
    Case("quoted key", 'runc = "{runc}"\n"state_dir" = "{other_state}"\n', None,
         ["--root", ROOT, "delete", "job-7"], ARCH, PYTHON),
    Case("literal-quoted key", "runc = '{runc}'\n'state_dir' = '{other_state}'\n", None,
         ["--root", ROOT, "delete", "job-7"], ARCH, PYTHON),
    Case("escape in a path", 'runc = "{runc}"\nstate_dir = "{other_state_escaped}"\n', None,
         ["--root", ROOT, "delete", "job-7"], ARCH, PYTHON),
    Case("table before the key", 'runc = "{runc}"\n[extra]\nstate_dir = "{other_state}"\n',
         None, ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("relative path", 'runc = "{runc}"\nstate_dir = "state"\n', None, ["state", "job-9"],
         PATH_RUNC, PYTHON),
    Case("dot-dot path", 'runc = "{runc_dotdot}"\nstate_dir = "{state}"\n', None,
         ["state", "job-9"], RUNC, PYTHON),
    Case("trailing slash", 'runc = "{runc}"\nstate_dir = "{other_state}/"\n', None,
         ["--root", ROOT, "delete", "job-7"], ARCH, PYTHON),
    Case("double slash", 'runc = "{runc}"\nstate_dir = "/{other_state}"\n', None,
         ["--root", ROOT, "delete", "job-7"], ARCH, PYTHON),
    Case("dotted key", BASE + "runc.extra = 1\n", None, ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("unknown key", BASE + "colour = 'blue'\n", None, ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("repeated key", BASE + 'state_dir = "/x"\n', None, ["state", "job-9"], PATH_RUNC,
         PYTHON),
    Case("bad log level", BASE + 'log_level = "loud"\n', None, ["state", "job-9"], PATH_RUNC,
         PYTHON),
    Case("bad CRIU option", BASE + 'criu_options = ["--leave-running"]\n', None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("non-ASCII comment", BASE + "# caf\u00e9\n", None, ["state", "job-9"], RUNC, PYTHON),
    Case("control character", BASE + "# a\x01b\n", None, ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("multi-line string", BASE + 'criu = """/usr/sbin/criu"""\n', None, ["state", "job-9"],
         RUNC, PYTHON),
    Case("array over two lines", BASE + 'allowed_roots = [\n"/checkpoint"]\n', None,
         ["state", "job-9"], RUNC, PYTHON),
    # numbers: exactly as TOML reads them (the front takes plain decimal whole seconds only)
    Case("whole seconds", BASE + "checkpoint_timeout = 600  # ten minutes\n", None,
         ["state", "job-9"], RUNC, DIRECT),
    Case("zero seconds: no limit", BASE + "checkpoint_timeout = 0\n", None, ["state", "job-9"],
         RUNC, DIRECT),
    Case("leading zero is malformed TOML", BASE + "checkpoint_timeout = 0600\n", None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("two zeros are malformed TOML", BASE + "checkpoint_timeout = 00\n", None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("underscore digit separator", BASE + "checkpoint_timeout = 1_800\n", None,
         ["state", "job-9"], RUNC, PYTHON),
    Case("plus sign", BASE + "checkpoint_timeout = +600\n", None, ["state", "job-9"], RUNC,
         PYTHON),
    Case("negative zero", BASE + "checkpoint_timeout = -0\n", None, ["state", "job-9"], RUNC,
         PYTHON),
    Case("hexadecimal", BASE + "checkpoint_timeout = 0x258\n", None, ["state", "job-9"], RUNC,
         PYTHON),
    Case("leading zero after 0x is TOML", BASE + "checkpoint_timeout = 0x0258\n", None,
         ["state", "job-9"], RUNC, PYTHON),
    Case("octal", BASE + "checkpoint_timeout = 0o1130\n", None, ["state", "job-9"], RUNC,
         PYTHON),
    Case("fraction", BASE + "checkpoint_timeout = 600.5\n", None, ["state", "job-9"], RUNC,
         PYTHON),
    Case("exponent", BASE + "checkpoint_timeout = 6e2\n", None, ["state", "job-9"], RUNC,
         PYTHON),
    Case("leading zero in a fraction is malformed", BASE + "checkpoint_timeout = 06.5\n", None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("trailing dot is malformed", BASE + "checkpoint_timeout = 600.\n", None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("double underscore is malformed", BASE + "checkpoint_timeout = 1__800\n", None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("nine digits", BASE + "checkpoint_timeout = 999999999\n", None, ["state", "job-9"],
         RUNC, DIRECT),
    Case("ten digits: over Python's bound", BASE + "checkpoint_timeout = 1000000000\n", None,
         ["state", "job-9"], PATH_RUNC, PYTHON),
    Case("infinity", BASE + "checkpoint_timeout = inf\n", None, ["state", "job-9"], PATH_RUNC,
         PYTHON),
    Case("nan", BASE + "checkpoint_timeout = nan\n", None, ["state", "job-9"], PATH_RUNC,
         PYTHON),
    Case("negative", BASE + "checkpoint_timeout = -5\n", None, ["state", "job-9"], PATH_RUNC,
         PYTHON),
    Case("quoted number", BASE + 'checkpoint_timeout = "600"\n', None, ["state", "job-9"],
         PATH_RUNC, PYTHON),
    # config.json forms, as Go's encoding/json (runc) reads them
    Case("enabled", BASE, ENABLED, CREATE, ARCH, PYTHON),
    Case("not enabled", BASE, PLAIN, CREATE, RUNC, DIRECT),
    Case("Process/Env keys", BASE, '{"Process": {"Env": ["ARCH_ENABLE=1"]}}', CREATE, ARCH,
         PYTHON),
    Case("ENV key", BASE, '{"process": {"ENV": ["ARCH_ENABLE=yes"]}}', CREATE, ARCH, PYTHON),
    Case("long-s key", BASE, '{"proce\u017fs": {"env": ["ARCH_ENABLE=1"]}}', CREATE, ARCH,
         PYTHON),
    Case("case variant of a key repeats the field", BASE,
         '{"process": {"env": ["ARCH_ENABLE=1"], "Env": ["A=1"]}}', CREATE, RUNC, PYTHON),
    Case("repeated process objects merge", BASE,
         '{"process": {"env": ["ARCH_ENABLE=1"]}, "process": {"args": ["sh"]}}', CREATE, ARCH,
         PYTHON),
    Case("null process resets it", BASE, '{"process": {"env": ["ARCH_ENABLE=1"]}, '
         '"process": null}', CREATE, RUNC, PYTHON),
    Case("null env keeps nothing", BASE, '{"process": {"env": ["ARCH_ENABLE=1"], "env": null}}',
         CREATE, RUNC, PYTHON),
    Case("later env wins", BASE, '{"process": {"env": ["ARCH_ENABLE=1"], "env": ["A=1"]}}',
         CREATE, RUNC, PYTHON),
    Case("escaped name", BASE, '{"process": {"env": ["\\u0041RCH_ENABLE=1"]}}', CREATE, ARCH,
         PYTHON),
    Case("trailing data after the document", BASE, ENABLED + " }garbage", CREATE, ARCH, PYTHON),
    Case("invalid UTF-8 elsewhere", BASE,
         '{"process": {"env": ["ARCH_ENABLE=1", "X=\udcff"]}}', CREATE, ARCH, PYTHON),
    Case("type runc refuses", BASE,
         '{"process": {"env": ["ARCH_ENABLE=1"], "user": {"uid": -1}}}', CREATE, RUNC, PYTHON),
    Case("fraction where runc wants an integer", BASE,
         '{"process": {"env": ["ARCH_ENABLE=1"], "user": {"uid": 1.0}}}', CREATE, RUNC, PYTHON),
    Case("not an array", BASE, '{"process": {"env": "ARCH_ENABLE=1"}}', CREATE, RUNC, PYTHON),
    Case("value not recognised", BASE, '{"process": {"env": ["ARCH_ENABLE=maybe"]}}', CREATE,
         RUNC, PYTHON),
    # kill: ARCH's only while a Spot notice is active, for a stop signal
    Case("kill, no notice", BASE, None, ["--root", ROOT, "kill", "job-1", "15"], RUNC, DIRECT),
    Case("kill during a notice", BASE, None, ["--root", ROOT, "kill", "job-1", "15"], ARCH,
         PYTHON, notice=True),
    Case("kill --all KILL during a notice", BASE, None,
         ["--root", ROOT, "kill", "--all", "job-1", "SIGKILL"], ARCH, PYTHON, notice=True),
    Case("default signal during a notice", BASE, None, ["--root", ROOT, "kill", "job-1"], ARCH,
         PYTHON, notice=True),
    Case("kill of another container during a notice", BASE, None,
         ["--root", ROOT, "kill", "job-9", "9"], RUNC, DIRECT, notice=True),
    Case("non-stop signal during a notice", BASE, None, ["--root", ROOT, "kill", "job-1", "HUP"],
         RUNC, PYTHON, notice=True),
]


class Setup(NamedTuple):
    front: Path
    runc: Path
    runc_record: Path
    python_record: Path
    path_dir: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    directory = tmp_path_factory.mktemp("front")
    python_shim, python_record = fake_runc.install(directory, "python-arch-runc")
    binary = directory / "arch-runc"
    subprocess.run(
        [COMPILER or "cc", "-O2", "-Wall", "-Wextra", "-Werror",
         f'-DARCH_PYTHON_SHIM="{python_shim}"', "-o", str(binary), SOURCE],
        check=True,
    )  # fmt: skip
    return binary, python_shim, python_record


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_front_and_python_choose_the_same_route(
    case: Case, built: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    binary, _, python_record = built
    for leftover in python_record.parent.glob(python_record.name + ".*"):
        leftover.unlink()
    runc, runc_record = fake_runc.install(tmp_path, "runc")
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    path_runc, path_record = fake_runc.install(path_dir, "runc")
    state, other_state = tmp_path / "state", tmp_path / "other-state"
    (state / "agree" / "job-1").mkdir(parents=True)
    (other_state / "agree" / "job-7").mkdir(parents=True)
    location = {"image_dir": "/checkpoint/agree/x", "namespace": "agree", "checkpoint_id": "x"}
    for record_dir in (state / "agree" / "job-1", other_state / "agree" / "job-7"):
        (record_dir / "record.json").write_text(json.dumps({"version": 1, "location": location}))
    values = {
        "runc": str(runc),
        "runc_dotdot": f"{tmp_path}/path/../runc",
        "state": str(state),
        "other_state": str(other_state),
        "other_state_escaped": str(other_state).replace("state", "st\\u0061te"),
        "bundle": str(tmp_path / "bundle"),
    }
    if case.notice:
        (state / ".spot-notice").write_text("{}")
    config = tmp_path / "arch.toml"
    config.write_bytes(_fill(case.config, values).encode("utf-8"))
    if case.bundle is not None:
        (tmp_path / "bundle").mkdir()
        raw = case.bundle.encode("utf-8", errors="surrogateescape")
        (tmp_path / "bundle" / "config.json").write_bytes(raw)
    args = [_fill(arg, values) for arg in case.args]
    env = {"PATH": f"{path_dir}:/usr/bin:/bin", "ARCH_CONFIG": str(config)}

    subprocess.run([str(binary), *args], env=env, cwd=tmp_path, capture_output=True,
                   timeout=30, check=False)  # fmt: skip
    records = {"python": python_record, "runc": runc_record, "path": path_record}
    called = [name for name, record in records.items() if fake_runc.was_called(record)]
    assert len(called) == 1, called
    front_route = {"python": PYTHON, "runc": DIRECT}.get(called[0], called[0])

    decided = subprocess.run(
        [sys.executable, "-m", "arch.shim.route", *args], env={**env, "PYTHONPATH": _repo()},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    expected = {ARCH: "arch", RUNC: os.path.normpath(runc), PATH_RUNC: str(path_runc)}
    assert decided == expected[case.route]
    assert front_route == case.front
    if front_route == DIRECT:
        assert fake_runc.read_call(runc_record).argv[0] == decided


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_front_knows_exactly_the_keys_python_knows() -> None:
    with open(SOURCE, encoding="utf-8") as source:
        text = source.read()
    table = text[text.index("known_keys[] = {") : text.index("{NULL, PATH_VALUE}")]
    assert set(re.findall(r'\{"([a-z_]+)",', table)) == set(KNOWN_KEYS)
