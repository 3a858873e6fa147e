"""Read an OCI config.json the way runc does (Go's encoding/json into runtime-spec's structs).

ARCH decides from config.json whether a container opted in, what identifies its job and what it
may create in its filesystem; runc then runs the container from the same file. Where Python's
json module and Go's decoder read a document differently, the two would disagree about the
container, so this module reproduces what runc's decoder does (`json.NewDecoder(f).Decode(&spec)`
in runc's loadSpec):

- object keys match struct fields exactly, else case-insensitively with Unicode simple folding
  (`"Process"`, `"ENV"`, and `"proce\u017fs"` with a long s, all name `process`); keys that
  match no field are ignored;
- a repeated key decodes again into the same field: structs and maps merge (fields absent from
  the later object keep their earlier values), arrays overwrite element by element and take the
  later length, scalars take the later value;
- `null` resets pointers, slices and maps, and leaves strings, numbers, booleans and structs as
  they were;
- a value of the wrong type fails the whole decode (runc refuses such a config); integers must
  be plain decimal literals in range (no fraction, exponent or sign for unsigned fields);
- invalid UTF-8 in strings reads as U+FFFD; the first JSON value is used and anything after it
  is ignored.

Only the fields ARCH uses are modelled (SPEC below); the result is a plain dict with the
canonical (tag) key names, absent pointers as None.
"""

from __future__ import annotations

import json
from typing import Any, Union

# A field's Go type: "string", "bool", "uint32", ("ptr", T), ("slice", T), ("map", T), or a
# struct as a dict of json tag -> type.
GoType = Union[str, tuple[str, Any], dict[str, Any]]

_CAPABILITIES: dict[str, GoType] = {
    name: ("slice", "string")
    for name in ("bounding", "effective", "inheritable", "permitted", "ambient")
}
_ID_MAPPING: dict[str, GoType] = {"containerID": "uint32", "hostID": "uint32", "size": "uint32"}
_USER: dict[str, GoType] = {
    "uid": "uint32",
    "gid": "uint32",
    "umask": ("ptr", "uint32"),
    "additionalGids": ("slice", "uint32"),
    "username": "string",
}
_PROCESS: dict[str, GoType] = {
    "terminal": "bool",
    "user": _USER,
    "args": ("slice", "string"),
    "commandLine": "string",
    "env": ("slice", "string"),
    "cwd": "string",
    "capabilities": ("ptr", _CAPABILITIES),
    "noNewPrivileges": "bool",
    "apparmorProfile": "string",
    "selinuxLabel": "string",
}
_MOUNT: dict[str, GoType] = {
    "destination": "string",
    "type": "string",
    "source": "string",
    "options": ("slice", "string"),
}
_LINUX: dict[str, GoType] = {
    "uidMappings": ("slice", _ID_MAPPING),
    "gidMappings": ("slice", _ID_MAPPING),
    "namespaces": ("slice", {"type": "string", "path": "string"}),
    # Only whether there is one: the restore's credentials check (image/credentials.py).
    "seccomp": ("ptr", {"defaultAction": "string"}),
}
SPEC: dict[str, GoType] = {
    "ociVersion": "string",
    "process": ("ptr", _PROCESS),
    "root": ("ptr", {"path": "string", "readonly": "bool"}),
    "hostname": "string",
    "mounts": ("slice", _MOUNT),
    "annotations": ("map", "string"),
    "linux": ("ptr", _LINUX),
}

_GO_WHITESPACE = " \t\n\r"
_UINT32_MAX = 2**32 - 1


class SpecError(ValueError):
    """runc's decoder would refuse this config.json."""


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its (key, value) pairs in document order, duplicates kept."""


class _Number(str):
    """A JSON number as its literal text."""

    __slots__ = ()


class DecodedSpec:
    """The decoded spec, and whether the document spelled every modelled key plainly.

    `plain` is False when a modelled key appeared in another case or more than once: a rewrite
    of such a document through Python's json module would not mean what runc reads.
    """

    __slots__ = ("plain", "spec")

    def __init__(self, spec: dict[str, Any], plain: bool) -> None:
        self.spec = spec
        self.plain = plain


def decode(data: bytes) -> DecodedSpec:
    """config.json bytes as runc reads them; SpecError when runc's decoder would refuse them."""
    text = data.decode("utf-8", errors="replace")
    decoder = json.JSONDecoder(
        object_pairs_hook=_Pairs,
        parse_int=_Number,
        parse_float=_Number,
        parse_constant=_refuse_constant,
    )
    start = len(text) - len(text.lstrip(_GO_WHITESPACE))
    try:
        document, _ = decoder.raw_decode(text, start)
    except ValueError as error:
        raise SpecError(f"not valid JSON: {error}") from error
    if document is None:
        raise SpecError("the document is null")
    state = _State()
    spec = state.value(SPEC, document, None, "config")
    return DecodedSpec(spec, state.plain)


class _State:
    def __init__(self) -> None:
        self.plain = True

    def value(self, go_type: GoType, item: object, current: Any, where: str) -> Any:
        if isinstance(go_type, dict):
            return self.struct(go_type, item, current, where)
        if isinstance(go_type, tuple):
            kind, element = go_type
            if item is None:
                return None  # pointers, slices and maps become nil
            if kind == "ptr":
                return self.value(element, item, current, where)
            if kind == "slice":
                return self.slice(element, item, current, where)
            return self.map(element, item, current, where)
        return _scalar(go_type, item, current, where)

    def struct(
        self, fields: dict[str, GoType], item: object, current: Any, where: str
    ) -> dict[str, Any]:
        if item is None:
            kept: dict[str, Any] = current if current is not None else _zero(fields)
            return kept
        if not isinstance(item, _Pairs):
            raise SpecError(f"{where}: cannot decode {_json_type(item)} into an object")
        result = dict(current) if current is not None else _zero(fields)
        seen: set[str] = set()
        for key, value in item:
            name = _field_for(fields, key)
            if name is None:
                continue
            if name != key or name in seen:
                self.plain = False
            seen.add(name)
            result[name] = self.value(fields[name], value, result[name], f"{where}.{name}")
        return result

    def slice(self, element: GoType, item: object, current: Any, where: str) -> list[Any]:
        if not isinstance(item, list) or isinstance(item, _Pairs):
            raise SpecError(f"{where}: cannot decode {_json_type(item)} into an array")
        previous = current or []
        return [
            self.value(
                element, value, previous[i] if i < len(previous) else _zero(element), where
            )
            for i, value in enumerate(item)
        ]

    def map(self, element: GoType, item: object, current: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, _Pairs):
            raise SpecError(f"{where}: cannot decode {_json_type(item)} into an object")
        result = dict(current or {})
        for key, value in item:
            result[key] = self.value(element, value, _zero(element), f"{where}[{key}]")
        return result


def _scalar(go_type: str, item: object, current: Any, where: str) -> Any:
    if item is None:
        return current  # null leaves a string, number or boolean as it was
    if go_type == "string" and isinstance(item, str) and not isinstance(item, _Number):
        return item
    if go_type == "bool" and isinstance(item, bool):
        return item
    if go_type == "uint32" and isinstance(item, _Number):
        if item.isdigit() and int(item) <= _UINT32_MAX:
            return int(item)
        raise SpecError(f"{where}: cannot decode number {item} into uint32")
    raise SpecError(f"{where}: cannot decode {_json_type(item)} into {go_type}")


def zero_process() -> dict[str, Any]:
    """The process section runc has when config.json has none."""
    value: dict[str, Any] = _zero(_PROCESS)
    return value


def _zero(go_type: GoType) -> Any:
    if isinstance(go_type, dict):
        return {name: _zero(field) for name, field in go_type.items()}
    if isinstance(go_type, tuple):
        return None
    return {"string": "", "bool": False, "uint32": 0}[go_type]


def _field_for(fields: dict[str, GoType], key: str) -> str | None:
    """The struct field a JSON key sets: an exact match first, else a case-folded one."""
    if key in fields:
        return key
    folded = _fold(key)
    for name in fields:
        if _fold(name) == folded:
            return name
    return None


def _fold(text: str) -> str:
    """Go's bytes.EqualFold key, enough for ASCII field names: ASCII case, plus the two
    non-ASCII letters whose simple case folding reaches ASCII (long s, Kelvin sign)."""
    return "".join(
        "s" if char == "\u017f" else "k" if char == "\u212a" else char.lower() if char.isascii()
        else char
        for char in text
    )  # fmt: skip


def _json_type(item: object) -> str:
    if isinstance(item, _Pairs):
        return "object"
    if isinstance(item, list):
        return "array"
    if isinstance(item, _Number):
        return f"number {item}"
    if isinstance(item, bool):
        return "bool"
    return "string" if isinstance(item, str) else "null"


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")
