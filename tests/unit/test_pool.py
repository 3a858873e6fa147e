"""Unit tests of pool claiming (arch.checkpoint.storage.pool) on a local directory."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import pytest

from arch.checkpoint.storage import pool

if TYPE_CHECKING:
    from pathlib import Path


def make_entries(pool_dir: Path, count: int) -> list[str]:
    pool_dir.mkdir(parents=True, exist_ok=True)
    names = [pool.new_entry_name(now=1_700_000_000 + index) for index in range(count)]
    for name in names:
        (pool_dir / name).mkdir()
        (pool_dir / name / "metadata.json").write_text(name)
    return names


def test_names() -> None:
    entry = pool.new_entry_name(now=0)
    assert entry.startswith("image-19700101T000000Z-") and pool.is_entry(entry)
    claimed = pool.claimed_name(entry, host="node-1.example")
    assert pool.parse_claimed(claimed) == ("node-1.example", claimed.split("~")[2], entry)
    for other in (entry, ".claimed~h~x~" + entry, ".claimed~h~0123456789ab~junk", "x"):
        assert pool.parse_claimed(other) is None
    assert pool.host_label("a b/c~d") == "a_b_c_d"
    assert pool.host_label("") == "host"


def test_claims_oldest_first_and_each_entry_once(tmp_path: Path) -> None:
    names = make_entries(tmp_path / "p", 3)
    claims = list(pool.claims(str(tmp_path / "p"), attempts=5))
    assert [claim.entry for claim in claims] == names
    assert pool.unclaimed_entries(str(tmp_path / "p")) == []
    for claim in claims:
        assert (tmp_path / "p" / claim.claimed / "metadata.json").read_text() == claim.entry


def test_attempts_bound_the_claims(tmp_path: Path) -> None:
    make_entries(tmp_path / "p", 3)
    assert len(list(pool.claims(str(tmp_path / "p"), attempts=2))) == 2
    assert len(pool.unclaimed_entries(str(tmp_path / "p"))) == 1


def test_missing_pool_claims_nothing(tmp_path: Path) -> None:
    assert pool.claim_next(str(tmp_path / "absent")) is None
    assert pool.unclaimed_entries(str(tmp_path / "absent")) == []


def test_release_and_quarantine(tmp_path: Path) -> None:
    names = make_entries(tmp_path / "p", 2)
    first, second = pool.claims(str(tmp_path / "p"), attempts=2)
    assert pool.release(first.path) == str(tmp_path / "p" / names[0])
    moved = pool.quarantine(second.path)
    assert moved is not None and moved.startswith(str(tmp_path / "p" / ".invalid~"))
    assert pool.unclaimed_entries(str(tmp_path / "p")) == [names[0]]
    assert pool.release(second.path) is None  # moved aside already
    with pytest.raises(pool.PoolError):
        pool.release(str(tmp_path / "p" / names[0]))


def test_racing_claimers_never_share_an_entry(tmp_path: Path) -> None:
    make_entries(tmp_path / "p", 20)
    won: list[list[str]] = [[] for _ in range(8)]
    barrier = threading.Barrier(len(won))

    def claimer(index: int) -> None:
        barrier.wait()
        while (claim := pool.claim_next(str(tmp_path / "p"))) is not None:
            won[index].append(claim.entry)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(len(won))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [entry for entries in won for entry in entries]
    assert len(every) == 20 and len(set(every)) == 20


def test_publication_path_is_a_claimed_name(tmp_path: Path) -> None:
    path = pool.publication_path(str(tmp_path))
    parsed = pool.parse_claimed(path.rsplit("/", 1)[1])
    assert parsed is not None and pool.is_entry(parsed.entry)


def test_a_pool_behind_a_symlink_is_not_touched(tmp_path: Path) -> None:
    """The pool directory is resolved beneath its root: a symlink on the way is refused."""
    names = make_entries(tmp_path / "outside" / "p", 1)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "ns").symlink_to(tmp_path / "outside")
    pool_dir = str(tmp_path / "root" / "ns" / "p")
    with pytest.raises(pool.PoolError, match="symlink"):
        list(pool.claims(pool_dir, attempts=1, root=str(tmp_path / "root")))
    claimed = pool.claimed_name(names[0])
    (tmp_path / "outside" / "p" / names[0]).rename(tmp_path / "outside" / "p" / claimed)
    for move in (pool.release, pool.quarantine):
        with pytest.raises(pool.PoolError, match="symlink"):
            move(os.path.join(pool_dir, claimed), root=str(tmp_path / "root"))
    assert os.listdir(tmp_path / "outside" / "p") == [claimed]
    with pytest.raises(pool.PoolError, match="not beneath"):
        pool.release(os.path.join(pool_dir, claimed), root=str(tmp_path / "elsewhere"))
