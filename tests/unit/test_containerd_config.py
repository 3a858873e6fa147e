"""Tests for arch.appliance.containerd_config: the in-place config.toml editor.

Fixtures in data/: the real `containerd config default` output of containerd 1.6 (version 2)
and a faithful containerd 2.1 one (version 3). Edits are checked line by line: only the
BinaryName line changes, or whole tables are added; everything else stays byte-identical.
The last tests hand the edited files to the real containerd (`config dump`) when installed.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from arch.appliance import containerd_config
from arch.appliance.atomic_write import FileEditError, absent_marker
from arch.appliance.containerd_config import (
    edit_config_text,
    main,
    parse_strict,
    set_binary,
    show_binary,
)

DATA = Path(__file__).parent / "data"
V2_DEFAULT = DATA / "containerd-1.6-config-default.toml"
V3_DEFAULT = DATA / "containerd-2.1-config-default.toml"
ARCH_RUNC = "/usr/local/bin/arch-runc"
REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_CONTAINERD = shutil.which("containerd") or shutil.which("/usr/bin/containerd")
V2_CRI = "io.containerd.grpc.v1.cri"
V3_CRI = "io.containerd.cri.v1.runtime"

DEBIAN_PACKAGE_CONFIG = """\
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""

needs_containerd = pytest.mark.skipif(
    REAL_CONTAINERD is None, reason="containerd is not installed: cannot ask it to parse"
)


# ---- helpers -------------------------------------------------------------------------------


def line_changes(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed lines, added lines) of a line-by-line diff."""
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


def runtime_options(data: dict, version: int = 2, runtime: str = "runc") -> dict:
    plugin = V2_CRI if version == 2 else V3_CRI
    return data["plugins"][plugin]["containerd"]["runtimes"][runtime]["options"]


def runtime_table(data: dict, version: int = 2, runtime: str = "runc") -> dict:
    plugin = V2_CRI if version == 2 else V3_CRI
    return data["plugins"][plugin]["containerd"]["runtimes"][runtime]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def set_binary_cli(
    capsys: pytest.CaptureFixture[str], config: Path, backup: Path, *extra: str
) -> tuple[int, dict, str]:
    code, out, err = cli(
        capsys,
        "set-binary",
        "--config",
        str(config),
        "--binary-name",
        ARCH_RUNC,
        "--backup",
        str(backup),
        *extra,
    )
    return code, (json.loads(out) if out else {}), err


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    return tmp_path


def fake_containerd(directory: Path, output_file: Path, exit_code: int = 0) -> Path:
    """An executable that prints `output_file` for `config default`, like containerd."""
    script = directory / "fake-containerd"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1 $2" = "config default" ] || exit 99\n'
        f"cat '{output_file}'\n"
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return script


# ---- the fixtures themselves ---------------------------------------------------------------


def test_v2_fixture_is_real_containerd_16_output_with_empty_binary_name() -> None:
    data = parse_strict(V2_DEFAULT.read_text())
    assert data["version"] == 2
    assert runtime_options(data)["BinaryName"] == ""


def test_v3_fixture_has_the_containerd_2_runtime_table() -> None:
    data = parse_strict(V3_DEFAULT.read_text())
    assert data["version"] == 3
    assert runtime_options(data, 3)["BinaryName"] == ""
    assert runtime_table(data, 3)["runtime_type"] == "io.containerd.runc.v2"


# ---- edits of full default configs ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "old_line", "new_line"),
    [
        (V2_DEFAULT, '            BinaryName = ""', f'            BinaryName = "{ARCH_RUNC}"'),
        (V3_DEFAULT, "            BinaryName = ''", f"            BinaryName = '{ARCH_RUNC}'"),
    ],
    ids=["v2-containerd-1.6", "v3-containerd-2.1"],
)
def test_default_config_changes_only_the_binary_name_line(
    capsys: pytest.CaptureFixture[str], work: Path, fixture: Path, old_line: str, new_line: str
) -> None:
    config = work / "etc" / "config.toml"
    shutil.copyfile(fixture, config)
    original = config.read_bytes()

    code, result, _ = set_binary_cli(capsys, config, work / "backup" / "config.toml")

    assert code == 0
    assert result["changed"] is True
    assert line_changes(original.decode(), config.read_text()) == ([old_line], [new_line])
    assert (work / "backup" / "config.toml").read_bytes() == original


def test_second_run_is_unchanged_and_leaves_file_untouched(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    config = work / "etc" / "config.toml"
    shutil.copyfile(V2_DEFAULT, config)
    backup = work / "backup"
    set_binary_cli(capsys, config, backup)
    edited = config.read_bytes()
    os.utime(config, ns=(1_000_000_000, 1_000_000_000))

    code, result, _ = set_binary_cli(capsys, config, backup)

    assert code == 0
    assert result["changed"] is False
    assert config.read_bytes() == edited
    assert config.stat().st_mtime_ns == 1_000_000_000


def test_already_wanted_value_creates_no_backup(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    config = work / "etc" / "config.toml"
    config.write_text(
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes.runc.options]\n'
        f'  BinaryName = "{ARCH_RUNC}"\n'
    )
    code, result, _ = set_binary_cli(capsys, config, work / "backup")
    assert (code, result["changed"]) == (0, False)
    assert not (work / "backup").exists()
    assert not absent_marker(work / "backup").exists()


def test_restore_puts_original_back_byte_for_byte_with_its_mode(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    config = work / "etc" / "config.toml"
    shutil.copyfile(V3_DEFAULT, config)
    config.chmod(0o600)
    original = config.read_bytes()
    backup = work / "backup" / "config.toml"
    set_binary_cli(capsys, config, backup)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    code, out, _ = cli(capsys, "restore", "--config", str(config), "--backup", str(backup))

    assert code == 0
    assert json.loads(out)["changed"] is True
    assert config.read_bytes() == original
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert not backup.exists()


def test_restore_without_backup_is_unchanged(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    config = work / "etc" / "config.toml"
    config.write_text(DEBIAN_PACKAGE_CONFIG)
    code, out, _ = cli(capsys, "restore", "--config", str(config), "--backup", str(work / "b"))
    assert code == 0
    assert json.loads(out)["changed"] is False
    assert config.read_text() == DEBIAN_PACKAGE_CONFIG


def test_existing_backup_is_never_overwritten(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    config = work / "etc" / "config.toml"
    config.write_text(DEBIAN_PACKAGE_CONFIG.replace("/usr/lib/cni", "/opt/arch-era/cni"))
    backup = work / "backup"
    backup.write_text(DEBIAN_PACKAGE_CONFIG)

    code, result, _ = set_binary_cli(capsys, config, backup)

    assert (code, result["changed"]) == (0, True)
    assert backup.read_text() == DEBIAN_PACKAGE_CONFIG
    cli(capsys, "restore", "--config", str(config), "--backup", str(backup))
    assert config.read_text() == DEBIAN_PACKAGE_CONFIG


def test_existing_absent_marker_is_kept_when_file_exists_later(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    config = work / "etc" / "config.toml"
    config.write_text(DEBIAN_PACKAGE_CONFIG)
    backup = work / "backup"
    absent_marker(backup).write_text("did not exist\n")

    set_binary_cli(capsys, config, backup)

    assert not backup.exists()
    cli(capsys, "restore", "--config", str(config), "--backup", str(backup))
    assert not config.exists()
    assert not absent_marker(backup).exists()


# ---- missing, empty, malformed, unsupported files ------------------------------------------


def test_missing_file_is_created_from_containerd_config_default(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    containerd = fake_containerd(work, V3_DEFAULT)
    config = work / "etc" / "containerd" / "config.toml"
    backup = work / "backup" / "config.toml"

    code, result, _ = set_binary_cli(capsys, config, backup, "--containerd-bin", str(containerd))

    assert (code, result["changed"]) == (0, True)
    assert "config default" in result["msg"]
    removed, added = line_changes(V3_DEFAULT.read_text(), config.read_text())
    assert (removed, added) == (
        ["            BinaryName = ''"],
        [f"            BinaryName = '{ARCH_RUNC}'"],
    )
    assert not backup.exists()
    assert absent_marker(backup).exists()
    assert stat.S_IMODE(config.stat().st_mode) == 0o644

    code, out, _ = cli(capsys, "restore", "--config", str(config), "--backup", str(backup))
    assert (code, json.loads(out)["changed"]) == (0, True)
    assert not config.exists()
    assert not absent_marker(backup).exists()


def test_empty_file_is_filled_and_restored_empty(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    containerd = fake_containerd(work, V2_DEFAULT)
    config = work / "etc" / "config.toml"
    config.write_bytes(b"")
    backup = work / "backup"

    code, _, _ = set_binary_cli(capsys, config, backup, "--containerd-bin", str(containerd))

    assert code == 0
    assert runtime_options(parse_strict(config.read_text()))["BinaryName"] == ARCH_RUNC
    assert backup.read_bytes() == b""
    cli(capsys, "restore", "--config", str(config), "--backup", str(backup))
    assert config.read_bytes() == b""


@pytest.mark.parametrize("version", [2, 3])
def test_missing_file_without_containerd_gets_a_minimal_config(
    capsys: pytest.CaptureFixture[str], work: Path, version: int
) -> None:
    config = work / "etc" / "config.toml"
    code, result, _ = set_binary_cli(
        capsys,
        config,
        work / "backup",
        "--containerd-bin",
        str(work / "no-such-containerd"),
        "--fallback-version",
        str(version),
    )
    assert (code, result["changed"]) == (0, True)
    assert "containerd not found" in result["msg"]
    data = parse_strict(config.read_text())
    assert data["version"] == version
    assert runtime_options(data, version)["BinaryName"] == ARCH_RUNC
    assert runtime_table(data, version)["runtime_type"] == "io.containerd.runc.v2"


def test_failing_containerd_config_default_is_an_error(
    capsys: pytest.CaptureFixture[str], work: Path
) -> None:
    containerd = fake_containerd(work, V2_DEFAULT, exit_code=3)
    config = work / "etc" / "config.toml"
    code, _, err = set_binary_cli(
        capsys, config, work / "backup", "--containerd-bin", str(containerd)
    )
    assert code == 1
    assert "config default` failed (exit 3)" in err
    assert not config.exists()
    assert not absent_marker(work / "backup").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('version = 2\n[plugins\nfoo = "bar"\n', "malformed TOML"),
        ('version = 2\nroot = "/a"\nroot = "/b"\n', "malformed TOML"),
        ('root = "/var/lib/containerd"\n[plugins.cri]\n  systemd_cgroup = true\n', "version 1"),
        ("version = 1\n[plugins.cri]\n  systemd_cgroup = true\n", "version 1"),
        ("version = 4\n", "unsupported config version 4"),
        ('version = 2\nplugins = "oops"\n', "`plugins` is not a table"),
        (
            'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
            '  runtime_type = "io.containerd.runsc.v1"\n',
            "not a runc shim",
        ),
        (b"version = 2\n# caf\xe9\n", "not UTF-8"),
    ],
    ids=[
        "syntax",
        "duplicate-key",
        "no-version",
        "version-1",
        "version-4",
        "not-a-table",
        "not-runc",
        "not-utf8",
    ],
)
def test_refused_files_are_left_untouched(
    capsys: pytest.CaptureFixture[str], work: Path, content: str | bytes, message: str
) -> None:
    config = work / "etc" / "config.toml"
    raw = content if isinstance(content, bytes) else content.encode()
    config.write_bytes(raw)
    os.utime(config, ns=(2_000_000_000, 2_000_000_000))

    code, out, err = cli(
        capsys,
        "set-binary",
        "--config",
        str(config),
        "--binary-name",
        ARCH_RUNC,
        "--backup",
        str(work / "backup"),
    )

    assert code == 1
    assert out == ""
    assert message in err
    assert str(config) in err
    assert config.read_bytes() == raw
    assert config.stat().st_mtime_ns == 2_000_000_000
    assert not (work / "backup").exists()


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    with pytest.raises(SystemExit) as missing_option:
        main(["set-binary", "--config", str(work / "c.toml")])
    with pytest.raises(SystemExit) as empty_name:
        main(["set-binary", "--config", "c", "--binary-name", "", "--backup", "b"])
    with pytest.raises(SystemExit) as no_command:
        main([])
    assert missing_option.value.code == empty_name.value.code == no_command.value.code == 2


# ---- layouts -------------------------------------------------------------------------------


def test_missing_runtime_tables_are_appended_and_nothing_else_changes() -> None:
    edited = edit_config_text(DEBIAN_PACKAGE_CONFIG, ARCH_RUNC)

    assert edited.startswith(DEBIAN_PACKAGE_CONFIG)
    assert edited[len(DEBIAN_PACKAGE_CONFIG) :] == (
        "\n"
        f'[plugins."{V2_CRI}".containerd.runtimes.runc]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
        "\n"
        f'[plugins."{V2_CRI}".containerd.runtimes.runc.options]\n'
        f'  BinaryName = "{ARCH_RUNC}"\n'
    )


def test_missing_options_table_only_adds_options() -> None:
    text = (
        "version = 3\n"
        f"[plugins.'{V3_CRI}'.containerd.runtimes.runc]\n"
        "  runtime_type = 'io.containerd.runc.v2'\n"
        "[grpc]\n"
        "  address = '/run/containerd/containerd.sock'"  # no final newline
    )
    edited = edit_config_text(text, ARCH_RUNC)
    assert edited == text + (
        f"\n\n[plugins.'{V3_CRI}'.containerd.runtimes.runc.options]\n  BinaryName = '{ARCH_RUNC}'\n"
    )


def test_binary_name_added_to_indented_options_table_keeps_indentation() -> None:
    text = (
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes.runc]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
        f'  [plugins."{V2_CRI}".containerd.runtimes.runc.options]\n'
        "    SystemdCgroup = true  # cgroup driver\n"
        "\n"
        "[grpc]\n"
        '  address = "/run/containerd/containerd.sock"\n'
    )
    edited = edit_config_text(text, ARCH_RUNC)
    assert line_changes(text, edited) == ([], [f'    BinaryName = "{ARCH_RUNC}"'])
    assert "    SystemdCgroup = true  # cgroup driver\n" in edited


def test_existing_binary_name_keeps_comment_and_quote_style() -> None:
    text = (
        "version = 3\n"
        f"[plugins.'{V3_CRI}'.containerd.runtimes.runc.options]\n"
        "  BinaryName = '/usr/sbin/runc'   # the host runc\n"
        "  Root = ''\n"
    )
    edited = edit_config_text(text, ARCH_RUNC)
    assert line_changes(text, edited) == (
        ["  BinaryName = '/usr/sbin/runc'   # the host runc"],
        [f"  BinaryName = '{ARCH_RUNC}'   # the host runc"],
    )


def test_comments_blank_lines_and_imports_are_kept(work: Path) -> None:
    text = (
        "# containerd for the ECS agent\n"
        "version = 2\n"
        'imports = ["/etc/containerd/conf.d/*.toml"]  # drop-ins\n'
        "\n"
        "\n"
        "# CRI\n"
        f'[plugins."{V2_CRI}".containerd]\n'
        '  snapshotter = "overlayfs"  # default\n'
        "  # runtimes below\n"
        f'  [plugins."{V2_CRI}".containerd.runtimes.runc]\n'
        '    runtime_type = "io.containerd.runc.v2"\n'
        "    # options of the runc shim\n"
        f'    [plugins."{V2_CRI}".containerd.runtimes.runc.options]\n'
        '      BinaryName = ""\n'
        "      SystemdCgroup = false\n"
        "# trailing comment\n"
    )
    config = work / "etc" / "config.toml"
    config.write_text(text)
    result = set_binary(config, ARCH_RUNC, work / "backup")
    assert line_changes(text, config.read_text()) == (
        ['      BinaryName = ""'],
        [f'      BinaryName = "{ARCH_RUNC}"'],
    )
    assert "imports" in result.msg


@pytest.mark.parametrize(
    "text",
    [
        # runtime table with dotted keys for its options
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes.runc]\n'
        'runtime_type = "io.containerd.runc.v2"\n'
        "options.SystemdCgroup = true  # dotted\n"
        '[plugins."io.containerd.internal.v1.opt"]\n'
        'path = "/x"\n',
        # everything as dotted keys under [plugins]
        "version = 2\n"
        "[plugins]\n"
        f'"{V2_CRI}".containerd.runtimes.runc.runtime_type = "io.containerd.runc.v2"\n'
        f'"{V2_CRI}".containerd.runtimes.runc.options.BinaryName = "/usr/sbin/runc"\n'
        '"io.containerd.internal.v1.opt".path = "/x"\n',
        # dotted keys at the root, runtime missing, followed by another root key
        "version = 2\n"
        f'plugins."{V2_CRI}".containerd.snapshotter = "overlayfs"  # c1\n'
        'root = "/var/lib/containerd"\n'
        "[grpc]\n"
        '  address = "/x"\n',
        # inline tables
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes]\n'
        'runc = { runtime_type = "io.containerd.runc.v2", options = { SystemdCgroup = true } }\n',
        # inline runtime table without options: a [..options] header would be invalid TOML
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes]\n'
        'runc = { runtime_type = "io.containerd.runc.v2" }\n'
        "# end\n",
        # inline runtimes table without runc: runc is created inline, with its runtime_type
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd]\n'
        'runtimes = { crun = { runtime_type = "io.containerd.runc.v2" } }\n',
        # runtimes table given, runc absent, out-of-order tables
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes.crun]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
        "[grpc]\n"
        '  address = "/x"\n'
        f'[plugins."{V2_CRI}".containerd]\n'
        '  snapshotter = "overlayfs"\n',
    ],
    ids=[
        "dotted-options",
        "dotted-under-plugins",
        "dotted-at-root",
        "inline",
        "inline-no-options",
        "inline-runtimes",
        "out-of-order",
    ],
)
def test_layouts_end_with_exactly_the_wanted_change(text: str) -> None:
    before = parse_strict(text)

    edited = edit_config_text(text, ARCH_RUNC)

    expected = copy.deepcopy(before)
    runtimes = expected["plugins"][V2_CRI]["containerd"].setdefault("runtimes", {})
    runc = runtimes.setdefault("runc", {"runtime_type": "io.containerd.runc.v2"})
    runc.setdefault("options", {})["BinaryName"] = ARCH_RUNC
    assert parse_strict(edited) == expected
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            assert line in edited.splitlines()
    assert edit_config_text(edited, ARCH_RUNC) == edited


def test_other_runtime_name_is_created_with_runc_shim_type() -> None:
    edited = edit_config_text(V3_DEFAULT.read_text(), ARCH_RUNC, runtime="arch")
    data = parse_strict(edited)
    assert runtime_options(data, 3, "arch") == {"BinaryName": ARCH_RUNC}
    assert runtime_table(data, 3, "arch")["runtime_type"] == "io.containerd.runc.v2"
    assert runtime_options(data, 3)["BinaryName"] == ""
    assert edited.startswith(V3_DEFAULT.read_text())


def test_runtime_name_needing_quotes() -> None:
    edited = edit_config_text("version = 2\n", ARCH_RUNC, runtime="arch.v1")
    assert runtime_options(parse_strict(edited), 2, "arch.v1")["BinaryName"] == ARCH_RUNC
    assert '.runtimes."arch.v1".options]' in edited


def test_binary_name_with_quote_falls_back_to_basic_string() -> None:
    weird = "/opt/it's/arch-runc"
    edited = edit_config_text(V3_DEFAULT.read_text(), weird)
    assert runtime_options(parse_strict(edited), 3)["BinaryName"] == weird


def test_plugins_as_array_of_tables_is_refused() -> None:
    text = "version = 2\n[[plugins]]\nname = 'x'\n"
    with pytest.raises(FileEditError, match="`plugins` is not a table"):
        edit_config_text(text, ARCH_RUNC)


# ---- show and the module entry point -------------------------------------------------------


def test_show(capsys: pytest.CaptureFixture[str], work: Path) -> None:
    config = work / "etc" / "config.toml"
    assert cli(capsys, "show", "--config", str(config)) == (0, "", "")
    config.write_text(DEBIAN_PACKAGE_CONFIG)
    assert cli(capsys, "show", "--config", str(config)) == (0, "", "")
    set_binary(config, ARCH_RUNC, work / "backup")
    assert cli(capsys, "show", "--config", str(config)) == (0, ARCH_RUNC + "\n", "")
    assert show_binary(config, runtime="other") is None
    config.write_text("[broken\n")
    code, out, err = cli(capsys, "show", "--config", str(config))
    assert (code, out) == (1, "")
    assert "malformed TOML" in err


def test_runs_as_python_module(work: Path) -> None:
    config = work / "etc" / "config.toml"
    config.write_text(DEBIAN_PACKAGE_CONFIG)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [
        sys.executable,
        "-m",
        "arch.appliance.containerd_config",
        "set-binary",
        "--config",
        str(config),
        "--binary-name",
        ARCH_RUNC,
        "--backup",
        str(work / "backup"),
    ]
    first = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    second = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "changed": True,
        "msg": f"set BinaryName of runtime 'runc' to {ARCH_RUNC} in {config}",
    }
    assert json.loads(second.stdout)["changed"] is False
    assert first.stdout.count("\n") == 1


def test_edit_follows_a_symlinked_config(work: Path) -> None:
    real = work / "etc" / "real-config.toml"
    real.write_text(DEBIAN_PACKAGE_CONFIG)
    link = work / "etc" / "config.toml"
    link.symlink_to(real.name)
    set_binary(link, ARCH_RUNC, work / "backup")
    assert link.is_symlink()
    assert runtime_options(parse_strict(real.read_text()))["BinaryName"] == ARCH_RUNC


@pytest.mark.root
def test_owner_is_preserved(work: Path) -> None:
    config = work / "etc" / "config.toml"
    config.write_text(DEBIAN_PACKAGE_CONFIG)
    os.chown(config, 4321, 4322)
    set_binary(config, ARCH_RUNC, work / "backup")
    assert (config.stat().st_uid, config.stat().st_gid) == (4321, 4322)
    assert ((work / "backup").stat().st_uid, (work / "backup").stat().st_gid) == (4321, 4322)


# ---- the real containerd parses what we write ----------------------------------------------


def containerd_dump(config: Path) -> dict:
    assert REAL_CONTAINERD is not None
    dumped = subprocess.run(
        [REAL_CONTAINERD, "--config", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr
    return parse_strict(dumped.stdout)


@needs_containerd
@pytest.mark.parametrize(
    "original",
    [
        V2_DEFAULT.read_text(),
        DEBIAN_PACKAGE_CONFIG,
        "version = 2\n[plugins]\n"
        f'"{V2_CRI}".containerd.runtimes.runc.runtime_type = "io.containerd.runc.v2"\n'
        f'"{V2_CRI}".containerd.runtimes.runc.options.SystemdCgroup = false\n',
        "version = 2\n"
        f'[plugins."{V2_CRI}".containerd.runtimes]\n'
        'runc = { runtime_type = "io.containerd.runc.v2" }\n',
        "version = 2\n"
        f'plugins."{V2_CRI}".containerd.snapshotter = "overlayfs"\n'
        'root = "/var/lib/containerd"\n',
        None,  # missing file: created by the real `containerd config default`
    ],
    ids=["config-default", "debian-package", "dotted", "inline", "dotted-at-root", "missing"],
)
def test_real_containerd_reads_the_binary_name(work: Path, original: str | None) -> None:
    config = work / "etc" / "config.toml"
    if original is not None:
        config.write_text(original)

    result = set_binary(config, ARCH_RUNC, work / "backup", containerd_bin=REAL_CONTAINERD)

    assert result.changed
    dumped = containerd_dump(config)
    assert runtime_options(dumped)["BinaryName"] == ARCH_RUNC
    assert runtime_table(dumped)["runtime_type"] == "io.containerd.runc.v2"


@needs_containerd
@pytest.mark.parametrize("version", [2])
def test_real_containerd_reads_the_minimal_config(work: Path, version: int) -> None:
    config = work / "etc" / "config.toml"
    set_binary(
        config,
        ARCH_RUNC,
        work / "backup",
        containerd_bin=str(work / "absent"),
        fallback_version=version,
    )
    dumped = containerd_dump(config)
    assert runtime_options(dumped)["BinaryName"] == ARCH_RUNC
    assert runtime_table(dumped)["runtime_type"] == "io.containerd.runc.v2"


def test_module_names_its_plugins_by_version() -> None:
    assert containerd_config.runtime_table_path(2, "runc")[1] == V2_CRI
    assert containerd_config.runtime_table_path(3, "runc")[1] == V3_CRI
