"""Parse and render runc command lines exactly as runc understands them.

runc uses urfave/cli v1 over Go's `flag` package:
  - global flags come first and stop at the first non-flag (the subcommand) or `--`;
  - `-name` and `--name` are the same; values go as `--name=value` or `--name value`
    (the next argument, whatever it looks like); a boolean takes only `--name=BOOL`;
  - a subcommand's flags stop at the first positional or at `--`, BUT urfave/cli
    first moves the command's known flags that come after positionals to the front
    (urfave v1.22 `reorderArgs`), except for `exec` and `ps`: `runc delete ID --force` forces.
This module reproduces both steps so that the container id and options seen here are
the ones runc acts on. A parsed command renders back to the identical argv.

Hot path: imported by every `arch-runc` call; it imports only the flag tables.
"""

from __future__ import annotations

from arch.runc.flags import COMMAND_LOOKUP, GLOBAL_LOOKUP

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from arch.runc.flags import CommandSpec, FlagSpec

# strconv.ParseBool, which Go's flag package uses for `--bool=VALUE`.
_GO_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))


class ParseError(ValueError):
    """argv that runc itself would reject before doing anything (a flag missing its value)."""


class Option:
    """One flag as written: canonical name, value (None for a bare boolean), original tokens."""

    __slots__ = ("known", "name", "tokens", "value")

    name: str
    value: str | None
    tokens: tuple[str, ...]
    known: bool

    def __init__(
        self, name: str, value: str | None, tokens: tuple[str, ...], known: bool = True
    ) -> None:
        self.name = name
        self.value = value
        self.tokens = tokens
        self.known = known

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.value!r}, tokens={self.tokens!r}, known={self.known})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Option):
            return NotImplemented
        return (self.name, self.value, self.tokens, self.known) == (
            other.name,
            other.value,
            other.tokens,
            other.known,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.value, self.tokens, self.known))


class RuncCommand:
    """A runc invocation: global options, subcommand, its options and positionals.

    Instances are not changed after construction; the `with_*`/`without_*` methods
    return new commands, which render in the canonical `--name value` form.
    """

    __slots__ = (
        "_argv",
        "_subcommand_token",
        "global_options",
        "has_unknown_flags",
        "options",
        "positionals",
        "subcommand",
    )

    global_options: list[Option]
    subcommand: str | None
    options: list[Option]
    positionals: list[str]
    has_unknown_flags: bool
    _argv: tuple[str, ...] | None
    _subcommand_token: str | None

    def __init__(
        self,
        global_options: list[Option],
        subcommand: str | None,
        options: list[Option],
        positionals: list[str],
        *,
        subcommand_token: str | None = None,
        argv: tuple[str, ...] | None = None,
    ) -> None:
        self.global_options = global_options
        self.subcommand = subcommand
        self.options = options
        self.positionals = positionals
        self.has_unknown_flags = _any_unknown(global_options) or _any_unknown(options)
        self._subcommand_token = subcommand if subcommand_token is None else subcommand_token
        self._argv = argv

    def __repr__(self) -> str:
        return f"RuncCommand({self.render()!r})"

    # -- what the command means -------------------------------------------------------

    @property
    def spec(self) -> CommandSpec | None:
        """The flag table of the subcommand, or None when runc has no such subcommand."""
        if self.subcommand is None:
            return None
        return COMMAND_LOOKUP.get(self.subcommand)

    @property
    def container_id(self) -> str | None:
        """The container the subcommand acts on: its first positional (None if absent/empty)."""
        spec = self.spec
        if spec is None or not spec.takes_container_id or not self.positionals:
            return None
        return self.positionals[0] or None

    @property
    def namespace(self) -> str | None:
        """Last path component of the global --root (containerd: /run/containerd/runc/<ns>)."""
        root = self.get_global("root")
        if not root:
            return None
        return root.rstrip("/").rpartition("/")[2] or None

    def get(self, name: str) -> str | None:
        """Value of a subcommand flag (last use wins, as in Go); None if absent or a bare bool."""
        return _last_value(self.options, self._flag(name).name)

    def has(self, name: str) -> bool:
        """Whether a subcommand flag is in effect: given (valued flag) or true (boolean flag)."""
        return _is_set(self.options, self._flag(name))

    def get_all(self, name: str) -> list[str]:
        """Every value given to a repeatable subcommand flag (exec --env, --cap, ...), in order."""
        canonical = self._flag(name).name
        return [
            o.value for o in self.options if o.known and o.name == canonical and o.value is not None
        ]

    def get_global(self, name: str) -> str | None:
        """Value of a global flag such as "root" or "log"; None if absent or a bare bool."""
        return _last_value(self.global_options, _resolve(GLOBAL_LOOKUP, name, "global").name)

    def has_global(self, name: str) -> bool:
        """Whether a global flag is in effect (given, or true for a boolean)."""
        return _is_set(self.global_options, _resolve(GLOBAL_LOOKUP, name, "global"))

    # -- rendering --------------------------------------------------------------------

    def render(self) -> list[str]:
        """The argv (without argv[0]): identical to the parsed one unless derived."""
        if self._argv is not None:
            return list(self._argv)
        argv = _render_options(self.global_options, GLOBAL_LOOKUP, False)
        if self._subcommand_token is None:
            return argv
        argv.append(self._subcommand_token)
        spec = self.spec
        if spec is None:
            argv.extend(_render_options(self.options, {}, False))
            argv.extend(self.positionals)
            return argv
        separate = _needs_separator(spec, self.positionals)
        # urfave's reorder would glue `--` to a bare boolean before it as its "value".
        argv.extend(_render_options(self.options, spec.lookup, separate and spec.reorders_args))
        if separate:
            argv.append("--")
        argv.extend(self.positionals)
        return argv

    # -- derived commands -------------------------------------------------------------

    def with_subcommand(self, name: str, *, drop_unsupported: bool = False) -> RuncCommand:
        """The same command as another subcommand (e.g. create -> restore).

        Options the new subcommand does not have raise ValueError, or are dropped
        with drop_unsupported=True.
        """
        spec = COMMAND_LOOKUP.get(name)
        if spec is None:
            raise ValueError(f"runc has no subcommand {name!r}")
        kept: list[Option] = []
        for option in self.options:
            flag = spec.lookup.get(option.name) if option.known else None
            if flag is not None:
                kept.append(_canonical_option(flag, option.value))
            elif not drop_unsupported:
                raise ValueError(f"runc {spec.name} has no flag --{option.name}")
        return self._derive(subcommand=spec.name, options=kept)

    def with_option(
        self, name: str, value: str | None = None, *, replace: bool = True
    ) -> RuncCommand:
        """Set a subcommand flag; value None for a boolean. replace=False appends (repeatable)."""
        flag = self._flag(name)
        _check_value(flag, value)
        if not replace and not flag.repeatable:
            raise ValueError(f"--{flag.name} is not repeatable")
        options = _without(self.options, flag.name) if replace else list(self.options)
        options.append(_canonical_option(flag, value))
        return self._derive(options=options)

    def without_option(self, name: str) -> RuncCommand:
        """The command without any use of a subcommand flag (every spelling)."""
        return self._derive(options=_without(self.options, self._flag(name).name))

    def with_global_option(self, name: str, value: str | None = None) -> RuncCommand:
        """Set a global flag (replacing earlier uses); value None for a boolean."""
        flag = _resolve(GLOBAL_LOOKUP, name, "global")
        _check_value(flag, value)
        options = _without(self.global_options, flag.name)
        options.append(_canonical_option(flag, value))
        return self._derive(global_options=options)

    def without_global_option(self, name: str) -> RuncCommand:
        """The command without any use of a global flag."""
        flag = _resolve(GLOBAL_LOOKUP, name, "global")
        return self._derive(global_options=_without(self.global_options, flag.name))

    def with_positionals(self, positionals: Iterable[str]) -> RuncCommand:
        """The command with other positional arguments (container id first)."""
        return self._derive(positionals=list(positionals))

    def _derive(
        self,
        *,
        global_options: list[Option] | None = None,
        subcommand: str | None = None,
        options: list[Option] | None = None,
        positionals: list[str] | None = None,
    ) -> RuncCommand:
        return RuncCommand(
            list(self.global_options if global_options is None else global_options),
            self.subcommand if subcommand is None else subcommand,
            list(self.options if options is None else options),
            list(self.positionals if positionals is None else positionals),
            subcommand_token=self._subcommand_token if subcommand is None else subcommand,
        )

    def _flag(self, name: str) -> FlagSpec:
        spec = self.spec
        if spec is None:
            raise ValueError(f"unknown subcommand {self.subcommand!r} has no flag table")
        return _resolve(spec.lookup, name, spec.name)


def parse(argv: Sequence[str]) -> RuncCommand:
    """Parse runc's arguments (argv without argv[0]); ParseError if a flag lacks its value."""
    args = tuple(argv)
    global_options, rest = _parse_flags(args, GLOBAL_LOOKUP)
    if not rest:
        return RuncCommand(global_options, None, [], [], argv=args)
    token = rest[0]
    sub_args = rest[1:]
    spec = COMMAND_LOOKUP.get(token)
    if spec is None:
        # runc prints "No help topic"; keep everything so it renders back.
        return RuncCommand(global_options, token, [], list(sub_args), argv=args)
    if spec.reorders_args:
        sub_args = _reorder(sub_args, spec.lookup)
    options, positionals = _parse_flags(sub_args, spec.lookup)
    return RuncCommand(
        global_options, spec.name, options, list(positionals), subcommand_token=token, argv=args
    )


def _parse_flags(
    args: Sequence[str], lookup: Mapping[str, FlagSpec]
) -> tuple[list[Option], Sequence[str]]:
    """Go's FlagSet.Parse: flags up to the first non-flag or `--` (consumed).

    Unknown or malformed flags (where runc would fail) are kept as self-contained
    unknown options and parsing goes on. Returns the options and what is left.
    """
    options: list[Option] = []
    index = 0
    count = len(args)
    while index < count:
        token = args[index]
        if len(token) < 2 or token[0] != "-":
            break
        index += 1
        if token == "--":
            break
        body = token[2:] if token[1] == "-" else token[1:]
        equals = body.find("=", 1)
        name = body if equals < 0 else body[:equals]
        value = None if equals < 0 else body[equals + 1 :]
        flag = lookup.get(name) if name[:1] not in ("", "-", "=") else None
        if flag is None:
            options.append(Option(name, value, (token,), known=False))
        elif value is not None or not flag.takes_value:
            options.append(Option(flag.name, value, (token,)))
        elif index < count:
            options.append(Option(flag.name, args[index], (token, args[index])))
            index += 1
        else:
            raise ParseError(f"flag needs an argument: {token}")
    return options, args[index:]


def _reorder(args: Sequence[str], lookup: Mapping[str, FlagSpec]) -> list[str]:
    """urfave/cli v1.22 reorderArgs: the command's known flags (and a value after each) first.

    Reproduced with its quirks: after a flag written without '=', the next argument
    that is not a known flag travels with it, even after a boolean and even `--`;
    a delimiting `--` goes to the front of the arguments that stay in place.
    """
    moved: list[str] = []
    remaining: list[str] = []
    next_may_be_value = False
    for index, arg in enumerate(args):
        is_flag = _is_command_flag(arg, lookup)
        if next_may_be_value and not is_flag:
            next_may_be_value = False
            moved.append(arg)
        elif arg == "--":
            remaining = ["--", *remaining, *args[index + 1 :]]
            break
        elif is_flag:
            moved.append(arg)
            next_may_be_value = "=" not in arg
        else:
            remaining.append(arg)
    return moved + remaining


def _is_command_flag(arg: str, lookup: Mapping[str, FlagSpec]) -> bool:
    """urfave/cli v1 argIsFlag: strips up to three leading dashes, cuts at '='."""
    if arg in ("-", "--") or not arg.startswith("-"):
        return False
    name = arg[2:] if arg.startswith("--") else arg
    if name.startswith("-"):
        name = name[1:]
    return name.partition("=")[0] in lookup


def _resolve(lookup: Mapping[str, FlagSpec], name: str, where: str) -> FlagSpec:
    """The flag named `name` (any spelling, dashes optional) in a table."""
    found = lookup.get(name.lstrip("-"))
    if found is None:
        raise ValueError(f"runc {where} has no flag {name!r}")
    return found


def _any_unknown(options: list[Option]) -> bool:
    return any(not option.known for option in options)


def _last_value(options: list[Option], canonical: str) -> str | None:
    for option in reversed(options):
        if option.known and option.name == canonical:
            return option.value
    return None


def _is_set(options: list[Option], flag: FlagSpec) -> bool:
    for option in reversed(options):
        if option.known and option.name == flag.name:
            return flag.takes_value or option.value is None or option.value in _GO_TRUE
    return False


def _without(options: list[Option], canonical: str) -> list[Option]:
    return [o for o in options if not (o.known and o.name == canonical)]


def _check_value(flag: FlagSpec, value: str | None) -> None:
    if flag.takes_value and value is None:
        raise ValueError(f"--{flag.name} needs a value")


def _canonical_option(flag: FlagSpec, value: str | None) -> Option:
    """`--name value`; `--name=value` where the value could be taken for a flag."""
    dashed = "--" + flag.name
    if value is None:
        tokens: tuple[str, ...] = (dashed,)
    elif not flag.takes_value or value.startswith("-"):
        tokens = (f"{dashed}={value}",)
    else:
        tokens = (dashed, value)
    return Option(flag.name, value, tokens)


def _render_options(
    options: list[Option], lookup: Mapping[str, FlagSpec], explicit_bools: bool
) -> list[str]:
    """Known flags in canonical form (the only form safe to move around); unknown as given."""
    argv: list[str] = []
    for option in options:
        flag = lookup.get(option.name) if option.known else None
        if flag is None:
            argv.extend(option.tokens)
        elif explicit_bools and option.value is None and not flag.takes_value:
            argv.append(f"--{flag.name}=true")
        else:
            argv.extend(_canonical_option(flag, option.value).tokens)
    return argv


def _needs_separator(spec: CommandSpec, positionals: list[str]) -> bool:
    """Whether positionals must follow `--` so runc does not read them as flags."""
    if not positionals:
        return False
    if spec.reorders_args:
        return any(arg.startswith("-") for arg in positionals)
    return positionals[0].startswith("-")
