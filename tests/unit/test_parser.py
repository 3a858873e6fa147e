"""Tests of the runc command-line parser (arch.runc.parser) and its flag tables."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arch.runc.flags import COMMAND_LOOKUP, COMMANDS, GLOBAL_FLAGS, CommandSpec, FlagSpec
from arch.runc.parser import Option, ParseError, RuncCommand, parse
from tests.conftest import find_executable
from tests.stack import current

# The runc of the stack under test (ARCH_TEST_STACK, see tests/stack.py), else the host's.
RUNC = current().runc or find_executable("runc") or "/usr/sbin/runc"
NEEDS_RUNC = pytest.mark.skipif(
    not os.access(RUNC, os.X_OK), reason=f"{RUNC} is not installed on this machine"
)

BUNDLE = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"
ROOT = [
    "--root",
    "/run/containerd/runc/k8s.io",
    "--log",
    f"{BUNDLE}/log.json",
    "--log-format",
    "json",
]


# -- what containerd and Docker send -------------------------------------------------------


def test_containerd_create() -> None:
    argv = [*ROOT, "create", "--bundle", BUNDLE, "--pid-file", f"{BUNDLE}/init.pid", "abc"]
    command = parse(argv)
    assert command.subcommand == "create"
    assert command.container_id == "abc"
    assert command.namespace == "k8s.io"
    assert command.get("bundle") == BUNDLE
    assert command.get("pid-file") == f"{BUNDLE}/init.pid"
    assert command.get_global("log-format") == "json"
    assert not command.has("no-pivot")
    assert not command.has_unknown_flags
    assert command.render() == argv


@pytest.mark.parametrize(
    ("tail", "subcommand", "container_id", "positionals"),
    [
        (["start", "abc"], "start", "abc", ["abc"]),
        (["delete", "abc"], "delete", "abc", ["abc"]),
        (["delete", "--force", "abc"], "delete", "abc", ["abc"]),
        (["kill", "abc", "9"], "kill", "abc", ["abc", "9"]),
        (["pause", "abc"], "pause", "abc", ["abc"]),
        (["resume", "abc"], "resume", "abc", ["abc"]),
        (["state", "abc"], "state", "abc", ["abc"]),
        (["list"], "list", None, []),
        (["features"], "features", None, []),
        (["spec", "--rootless"], "spec", None, []),
        (["h", "create"], "help", None, ["create"]),
    ],
)
def test_containerd_shapes(
    tail: list[str], subcommand: str, container_id: str | None, positionals: list[str]
) -> None:
    command = parse([*ROOT, *tail])
    assert command.subcommand == subcommand
    assert command.container_id == container_id
    assert command.positionals == positionals
    assert command.render() == [*ROOT, *tail]


def test_containerd_exec() -> None:
    command = parse(
        [*ROOT, "exec", "--process", "/tmp/runc-process1", "--detach", "--pid-file", "x.pid", "abc"]
    )
    assert command.container_id == "abc"
    assert command.get("process") == "/tmp/runc-process1"
    assert command.has("detach")
    assert command.get("detach") is None


def test_ctr_checkpoint() -> None:
    command = parse(
        [
            *ROOT,
            "checkpoint",
            "--image-path",
            "/tmp/img",
            "--work-path",
            "/w",
            "--leave-running",
            "abc",
        ]
    )
    assert command.subcommand == "checkpoint"
    assert command.get("image-path") == "/tmp/img"
    assert command.has("leave-running")
    assert command.container_id == "abc"


def test_docker_namespace() -> None:
    command = parse(["--root", "/run/docker/runtime-runc/moby/", "start", "abc"])
    assert command.namespace == "moby"


def test_no_root_no_namespace() -> None:
    assert parse(["start", "abc"]).namespace is None
    assert parse(["--root", "/", "start", "abc"]).namespace is None


def test_no_subcommand() -> None:
    command = parse(["--version"])
    assert command.subcommand is None
    assert command.has_global("version")
    assert command.container_id is None
    assert parse([]).render() == []


# -- Go flag syntax -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        ["-b", "/b"],
        ["--bundle", "/b"],
        ["-bundle", "/b"],
        ["--bundle=/b"],
        ["-b=/b"],
    ],
)
def test_every_spelling_gives_the_canonical_name(spelling: list[str]) -> None:
    command = parse(["create", *spelling, "abc"])
    assert command.get("bundle") == "/b"
    assert command.get("b") == "/b"
    assert command.options[0].name == "bundle"
    assert command.options[0].tokens == tuple(spelling)
    assert command.container_id == "abc"


def test_boolean_with_explicit_value() -> None:
    assert not parse(["delete", "--force=false", "abc"]).has("force")
    assert parse(["delete", "-f=1", "abc"]).has("force")
    assert not parse(["delete", "--force=maybe", "abc"]).has("force")
    # A boolean never takes the next argument: "false" is the container id here.
    command = parse(["delete", "--force", "false"])
    assert command.has("force")
    assert command.container_id == "false"


def test_valued_flag_takes_next_argument_even_if_it_looks_like_a_flag() -> None:
    command = parse(["exec", "--cwd", "--detach", "abc", "ls"])
    assert command.get("cwd") == "--detach"
    assert not command.has("detach")
    assert command.positionals == ["abc", "ls"]


def test_empty_value_with_equals() -> None:
    command = parse(["create", "--pid-file=", "abc"])
    assert command.get("pid-file") == ""
    assert command.has("pid-file")


def test_last_use_wins_and_repeatable_flags_collect() -> None:
    command = parse(["exec", "-e", "A=1", "--env=B=2", "--user", "1", "-u", "2", "abc", "sh"])
    assert command.get_all("env") == ["A=1", "B=2"]
    assert command.get("env") == "B=2"
    assert command.get("user") == "2"


def test_double_dash_ends_flags() -> None:
    command = parse(["delete", "--", "--force"])
    assert not command.has("force")
    assert command.container_id == "--force"
    command = parse(["--root", "/r/ns", "--", "start", "abc"])
    assert command.subcommand == "start"
    assert command.container_id == "abc"


def test_single_dash_is_a_positional() -> None:
    command = parse(["update", "-r", "-", "abc"])
    assert command.get("resources") == "-"
    assert command.container_id == "abc"
    assert parse(["state", "-"]).container_id == "-"


# -- urfave/cli argument reordering (checked against runc 1.1.5 by hand and below) --------


def test_flag_after_container_id_is_applied() -> None:
    command = parse(["delete", "abc", "--force"])
    assert command.has("force")
    assert command.positionals == ["abc"]


def test_reorder_quirk_boolean_drags_next_word() -> None:
    # urfave moves "abc" next to the first --force, so the second one is an argument.
    command = parse(["delete", "--force", "abc", "--force"])
    assert command.positionals == ["abc", "--force"]


def test_reorder_takes_value_from_after_the_id() -> None:
    command = parse(["create", "abc", "--bundle", "/b"])
    assert command.get("bundle") == "/b"
    assert command.container_id == "abc"


def test_reorder_can_steal_the_id_as_value() -> None:
    # runc 1.1.5: `create ID --bundle` fails with "requires exactly 1 argument(s)".
    command = parse(["create", "abc", "--bundle"])
    assert command.get("bundle") == "abc"
    assert command.container_id is None


def test_reorder_keeps_a_dash_value_with_its_flag() -> None:
    # runc 1.1.5: `create --bundle -x ID` fails with "chdir -x".
    command = parse(["create", "--bundle", "-x", "abc"])
    assert command.get("bundle") == "-x"
    assert command.container_id == "abc"


def test_reorder_moves_the_delimiter_first() -> None:
    # runc 1.1.5: `delete ID --` acts on ID; `kill ID -- 9` sends signal 9 to ID.
    assert parse(["delete", "abc", "--"]).positionals == ["abc"]
    assert parse(["kill", "abc", "--", "9"]).positionals == ["abc", "9"]
    # ...unless a flag written without '=' takes it as its value
    assert parse(["delete", "-f", "--"]).positionals == []


def test_exec_and_ps_do_not_reorder() -> None:
    command = parse(["exec", "abc", "sh", "-c", "--detach"])
    assert not command.has("detach")
    assert not command.has("cap")
    assert command.positionals == ["abc", "sh", "-c", "--detach"]
    command = parse(["ps", "abc", "-f", "json"])
    assert command.get("format") is None
    assert command.positionals == ["abc", "-f", "json"]


def test_kill_signal_and_all_after_it() -> None:
    command = parse(["kill", "abc", "KILL", "-a"])
    assert command.has("all")
    assert command.positionals == ["abc", "KILL"]


# -- unknown flags and malformed input ----------------------------------------------------


def test_unknown_flags_are_kept_verbatim() -> None:
    argv = ["--future-global=1", "create", "--new-thing=v", "--other", "abc"]
    command = parse(argv)
    assert command.has_unknown_flags
    assert command.container_id == "abc"
    assert [o.known for o in command.options] == [False, False]
    assert command.options[0] == Option("new-thing", "v", ("--new-thing=v",), known=False)
    assert command.global_options[0].tokens == ("--future-global=1",)
    assert command.render() == argv


def test_bare_unknown_flag_is_boolean() -> None:
    command = parse(["start", "--wat", "abc"])
    assert command.has_unknown_flags
    assert command.container_id == "abc"


def test_bad_flag_syntax_is_unknown() -> None:
    for bad in ("---force", "-=x", "--=x"):
        command = parse(["delete", bad, "abc"])
        assert command.has_unknown_flags, bad
        assert command.render() == ["delete", bad, "abc"]


def test_unknown_subcommand() -> None:
    command = parse(["--root", "/r/x", "frobnicate", "--x", "abc"])
    assert command.subcommand == "frobnicate"
    assert command.spec is None
    assert command.container_id is None
    assert command.positionals == ["--x", "abc"]
    assert command.render() == ["--root", "/r/x", "frobnicate", "--x", "abc"]


@pytest.mark.parametrize(
    "argv", [["create", "--bundle"], ["--root"], ["exec", "--pid-file"], ["list", "-q", "-f"]]
)
def test_valued_flag_without_value_is_a_parse_error(argv: list[str]) -> None:
    with pytest.raises(ParseError):
        parse(argv)
    assert issubclass(ParseError, ValueError)


def test_lookups_of_unknown_names_raise() -> None:
    command = parse(["start", "abc"])
    with pytest.raises(ValueError, match="no flag"):
        command.get("bundle")
    with pytest.raises(ValueError, match="no flag"):
        command.get_global("nope")


# -- derived commands ---------------------------------------------------------------------


def test_create_to_restore() -> None:
    create = parse([*ROOT, "create", "-b", BUNDLE, "--no-new-keyring", "abc"])
    with pytest.raises(ValueError, match="no-new-keyring"):
        create.with_subcommand("restore")
    restore = (
        create.with_subcommand("restore", drop_unsupported=True)
        .with_option("image-path", "/checkpoint/k8s.io/abc")
        .with_option("detach")
    )
    assert restore.render() == [
        *ROOT,
        "restore",
        "--bundle",
        BUNDLE,
        "--image-path",
        "/checkpoint/k8s.io/abc",
        "--detach",
        "abc",
    ]
    assert restore.container_id == "abc"
    assert restore.namespace == "k8s.io"
    # the original is untouched
    assert create.subcommand == "create"
    assert create.render() == [*ROOT, "create", "-b", BUNDLE, "--no-new-keyring", "abc"]


def test_with_option_replaces_every_spelling() -> None:
    command = parse(["create", "-b", "/a", "--bundle=/b", "abc"]).with_option("bundle", "/c")
    assert command.render() == ["create", "--bundle", "/c", "abc"]


def test_with_option_appends_to_repeatable() -> None:
    command = parse(["exec", "-e", "A=1", "abc", "sh"]).with_option("env", "B=2", replace=False)
    assert command.render() == ["exec", "--env", "A=1", "--env", "B=2", "abc", "sh"]
    with pytest.raises(ValueError, match="not repeatable"):
        command.with_option("cwd", "/", replace=False)


def test_without_option_and_value_checks() -> None:
    command = parse(["checkpoint", "--leave-running", "--image-path", "/i", "abc"])
    assert command.without_option("leave-running").render() == [
        "checkpoint",
        "--image-path",
        "/i",
        "abc",
    ]
    with pytest.raises(ValueError, match="needs a value"):
        command.with_option("work-path")


def test_global_option_changes() -> None:
    command = parse(["--root", "/a/ns1", "--debug", "start", "abc"])
    changed = command.with_global_option("root", "/b/ns2").without_global_option("debug")
    assert changed.render() == ["--root", "/b/ns2", "start", "abc"]
    assert changed.namespace == "ns2"
    assert command.namespace == "ns1"


def test_derived_value_starting_with_dash_uses_equals() -> None:
    command = parse(["create", "abc"]).with_option("pid-file", "-weird")
    assert command.render() == ["create", "--pid-file=-weird", "abc"]
    assert parse(command.render()).get("pid-file") == "-weird"


def test_derived_positionals_get_a_separator_when_needed() -> None:
    command = parse(["delete", "abc"]).with_positionals(["-abc"])
    assert command.render() == ["delete", "--", "-abc"]
    assert parse(command.render()).container_id == "-abc"
    exec_command = parse(["exec", "abc", "sh", "-c", "true"]).with_option("detach")
    assert exec_command.render() == ["exec", "--detach", "abc", "sh", "-c", "true"]


# -- property tests -----------------------------------------------------------------------

WORDS = st.text(alphabet="abc-=./:019", min_size=0, max_size=6)


def _spellings(flag: FlagSpec) -> list[str]:
    names = [flag.name, *flag.aliases]
    return [dashes + name for name in names for dashes in ("-", "--")]


@st.composite
def flag_tokens(draw: st.DrawFn, flags: tuple[FlagSpec, ...]) -> list[str]:
    """One use of a flag from `flags`, in any spelling, or an unknown flag."""
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(["future", "x", "zz-top"]))
        return [draw(st.sampled_from(["-", "--"])) + name + draw(st.sampled_from(["", "=v", "="]))]
    flag = draw(st.sampled_from(flags))
    spelled = draw(st.sampled_from(_spellings(flag)))
    if not flag.takes_value:
        suffix = draw(st.sampled_from(["", "", "=true", "=false", "=1"]))
        return [spelled + suffix]
    value = draw(st.one_of(WORDS, st.sampled_from(["-", "--", "-x", "--bundle", "-d"])))
    if draw(st.booleans()):
        return [f"{spelled}={value}"]
    return [spelled, value]


@st.composite
def runc_argv(draw: st.DrawFn) -> list[str]:
    """argv built from the tables: globals, a subcommand, flags, positionals, `--`."""
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        argv.extend(draw(flag_tokens(GLOBAL_FLAGS)))
    if draw(st.integers(0, 9)) == 0:
        return argv
    command: CommandSpec = draw(st.sampled_from(COMMANDS))
    argv.append(draw(st.sampled_from([command.name, *command.aliases])))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 5))
        if kind <= 2:
            argv.extend(draw(flag_tokens(command.flags)))
        elif kind <= 4:
            argv.append(draw(st.one_of(WORDS, st.sampled_from(["abc", "-", "-x", "--x=1"]))))
        else:
            argv.append("--")
    return argv


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(runc_argv())
def test_parse_then_render_is_identity(argv: list[str]) -> None:
    try:
        command = parse(argv)
    except ParseError:
        return
    assert command.render() == argv
    assert parse(command.render()).render() == argv


def _meaning(command: RuncCommand) -> tuple[object, ...]:
    """What runc acts on; a bare boolean means the same as `=true`."""
    return (
        [(o.name, o.value) for o in command.global_options],
        command.subcommand,
        [(o.name, "true" if o.value is None else o.value) for o in command.options],
        command.positionals,
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(runc_argv(), st.data())
def test_derived_commands_mean_what_they_say(argv: list[str], data: st.DataObject) -> None:
    """A derived command renders (canonical form) to argv that parses back to it."""
    try:
        command = parse(argv)
    except ParseError:
        return
    if command.spec is None or command.has_unknown_flags:
        return
    flag = data.draw(st.sampled_from(command.spec.flags))
    value = data.draw(st.one_of(WORDS, st.just("-v"))) if flag.takes_value else None
    derived = command.with_option(flag.name, value)
    reparsed = parse(derived.render())
    assert _meaning(reparsed) == _meaning(derived)
    assert reparsed.get(flag.name) == value or (value is None and reparsed.has(flag.name))
    assert reparsed.container_id == command.container_id
    stripped = derived.without_option(flag.name)
    assert not parse(stripped.render()).has(flag.name)


# -- the tables against the installed runc ------------------------------------------------


def _runc_version() -> tuple[int, ...]:
    out = subprocess.run([RUNC, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"runc version (\d+)\.(\d+)", out)
    assert match, out
    return (int(match.group(1)), int(match.group(2)))


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _listed_by_help(flag: FlagSpec, version: tuple[int, ...]) -> bool:
    added = flag.since is None or _release(flag.since) <= version
    hidden = flag.hidden_since is not None and _release(flag.hidden_since) <= version
    return added and not hidden


_HELP_LINE = re.compile(r"^\s+(-{1,2}[a-z0-9-]+(?: value)?(?:, -{1,2}[a-z0-9-]+(?: value)?)*)\s")


def _help_flags(args: list[str]) -> set[tuple[str, frozenset[str], bool]]:
    """(name, aliases, takes value) of each flag under OPTIONS in runc's help text."""
    out = subprocess.run([RUNC, *args], capture_output=True, text=True, check=True).stdout
    section = re.split(r"^(?:GLOBAL )?OPTIONS:\s*$", out, flags=re.M)
    if len(section) < 2:
        return set()
    flags = set()
    for line in section[1].splitlines():
        match = _HELP_LINE.match(line)
        if not match:
            continue
        spellings = [part.strip() for part in match.group(1).split(",")]
        names = [s.split()[0].lstrip("-") for s in spellings]
        flags.add((names[0], frozenset(names[1:]), spellings[0].endswith(" value")))
    return flags


def _table_flags(
    flags: tuple[FlagSpec, ...], version: tuple[int, ...], *, with_help: bool
) -> set[tuple[str, frozenset[str], bool]]:
    return {
        (f.name, frozenset(f.aliases), f.takes_value)
        for f in flags
        if _listed_by_help(f, version) and (with_help or f.name != "help")
    }


@NEEDS_RUNC
@pytest.mark.parametrize("name", [c.name for c in COMMANDS if c.name != "help"])
def test_table_matches_installed_runc_help(name: str) -> None:
    version = _runc_version()
    assert _help_flags([name, "--help"]) == _table_flags(
        COMMAND_LOOKUP[name].flags, version, with_help=False
    )


@NEEDS_RUNC
def test_global_table_matches_installed_runc_help() -> None:
    version = _runc_version()
    assert _help_flags(["--help"]) == _table_flags(GLOBAL_FLAGS, version, with_help=True)


# -- differential tests: what runc does with an argv vs. what the parse predicts ----------


def _run_runc(root: Path, argv: list[str]) -> tuple[int, str]:
    result = subprocess.run(
        [RUNC, "--root", str(root), *argv], capture_output=True, text=True, timeout=20, check=False
    )
    return result.returncode, result.stdout + result.stderr


USAGE_ERRORS = (
    "flag provided but not defined",
    "bad flag syntax",
    "Cannot use two forms",
    "invalid boolean value",
    "flag needs an argument",
)


def _runc_outcome(code: int, output: str) -> str:
    if any(text in output for text in USAGE_ERRORS):
        return "usage-error"
    if "requires exactly" in output:
        return "arg-count"
    if code == 0 and "NAME:" in output:
        return "help"
    if "container does not exist" in output:
        return "not-exist"
    if "invalid container ID format" in output:
        return "bad-id"
    if "invalid format option" in output:
        return "bad-format"
    if code == 0:
        return "ok:" + output.strip()
    return "other:" + output


def _usage_error(command: RuncCommand) -> bool:
    """What runc rejects before acting: unknown flags, both spellings, a bad boolean."""
    if command.has_unknown_flags:
        return True
    spec = command.spec
    assert spec is not None
    for flag in spec.flags:
        used = {
            o.tokens[0].lstrip("-").partition("=")[0]
            for o in command.options
            if o.name == flag.name
        }
        if len(used) > 1:
            return True
        bools = [o.value for o in command.options if o.name == flag.name and not flag.takes_value]
        valid = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}
        if any(value is not None and value not in valid for value in bools):
            return True
    return False


# runc's container ID check (libcontainer validateID).
VALID_ID = re.compile(r"[\w+,\-.]+", re.ASCII)


def _predicted_delete(argv: list[str]) -> str:
    try:
        command = parse(["delete", *argv])
    except ParseError:
        return "usage-error"
    if _usage_error(command):
        return "usage-error"
    if command.has("help"):
        return "help"
    if len(command.positionals) != 1:
        return "arg-count"
    if not VALID_ID.fullmatch(command.positionals[0]):
        return "bad-id"
    return "ok:" if command.has("force") else "not-exist"


def _predicted_list(argv: list[str]) -> str:
    try:
        command = parse(["list", *argv])
    except ParseError:
        return "usage-error"
    if _usage_error(command):
        return "usage-error"
    if command.has("help"):
        return "help"
    if command.positionals:
        return "arg-count"
    if command.has("quiet"):
        return "ok:"
    form = command.get("format") or "table"
    if form == "json":
        return "ok:null"
    if form != "table":
        return "bad-format"
    return "ok:ID          PID         STATUS      BUNDLE      CREATED     OWNER"


DELETE_TOKENS = [
    "-f", "--force", "-force", "--force=true", "--force=false", "-f=1", "--force=maybe",
    "-h", "--help=false", "--bogus", "-x=1", "---force", "nosuch", "other", "--", "-",
]  # fmt: skip
LIST_TOKENS = [
    "json", "table", "xml", "-q", "--quiet", "--quiet=false", "-f", "--format", "-format=json",
    "--format=table", "-f=xml", "--", "-", "--bogus", "-h",
]  # fmt: skip


@NEEDS_RUNC
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(DELETE_TOKENS), max_size=5))
def test_delete_parse_agrees_with_runc(tmp_path: Path, argv: list[str]) -> None:
    outcome = _runc_outcome(*_run_runc(tmp_path, ["delete", *argv]))
    assert outcome == _predicted_delete(argv), argv


@NEEDS_RUNC
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(LIST_TOKENS), max_size=5))
def test_list_parse_agrees_with_runc(tmp_path: Path, argv: list[str]) -> None:
    outcome = _runc_outcome(*_run_runc(tmp_path, ["list", *argv]))
    assert outcome == _predicted_list(argv), argv
