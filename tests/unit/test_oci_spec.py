"""config.json read as runc's Go decoder reads it (arch.container.oci_spec)."""

from __future__ import annotations

import pytest

from arch.container.oci_spec import SpecError, decode


def test_a_plain_document() -> None:
    decoded = decode(
        b'{"process": {"args": ["sh"], "env": ["A=1"], "cwd": "/w", "user": {"uid": 5, "gid": 6,'
        b' "additionalGids": [7]}, "capabilities": {"bounding": ["CAP_CHOWN"]}},'
        b' "root": {"path": "rootfs"}, "hooks": {"prestart": []}}'
    )
    assert decoded.plain
    process = decoded.spec["process"]
    assert (process["args"], process["env"], process["cwd"]) == (["sh"], ["A=1"], "/w")
    assert process["user"] == {"uid": 5, "gid": 6, "additionalGids": [7], "umask": None,
                               "username": ""}  # fmt: skip
    assert process["capabilities"]["bounding"] == ["CAP_CHOWN"]
    assert process["capabilities"]["effective"] is None
    assert decoded.spec["linux"] is None


def test_repeated_structs_merge_and_arrays_overwrite_by_element() -> None:
    decoded = decode(
        b'{"mounts": [{"destination": "/a", "source": "x"}, {"destination": "/b"}],'
        b' "Mounts": [{"destination": "/c"}],'
        b' "process": {"user": {"uid": 1}}, "PROCESS": {"user": {"gid": 2}, "cwd": null}}'
    )
    assert not decoded.plain
    assert [(m["destination"], m["source"]) for m in decoded.spec["mounts"]] == [("/c", "x")]
    assert decoded.spec["process"]["user"]["uid"] == 1
    assert decoded.spec["process"]["user"]["gid"] == 2
    assert decoded.spec["process"]["cwd"] == ""


def test_struct_keys_fold_and_map_keys_do_not() -> None:
    document = '{"annotations": {"K": "v"}, "LINUX": {"namespaces": [{"type": "user"}]}, ' + (
        '"process": {"arg\u017f": ["sh"]}}'
    )
    decoded = decode(document.encode())
    assert decoded.spec["process"]["args"] == ["sh"]
    assert decoded.spec["annotations"] == {"K": "v"}
    assert decoded.spec["linux"]["namespaces"] == [{"type": "user", "path": ""}]


@pytest.mark.parametrize(
    "document",
    [
        b'{"process": {"user": {"uid": 4294967296}}}',
        b'{"process": {"user": {"uid": 1e3}}}',
        b'{"process": {"user": {"uid": "1"}}}',
        b'{"process": {"args": [1]}}',
        b'{"process": []}',
        b'{"process": {"terminal": "yes"}}',
        b'{"process": {"env": [NaN]}}',
        b"null",
        b"\xef\xbb\xbf{}",  # Go refuses a byte order mark
        b"",
    ],
)
def test_what_runc_refuses(document: bytes) -> None:
    with pytest.raises(SpecError):
        decode(document)
