"""Atomic file writes (bincache/atomic.py): the target is replaced whole or left as it was,
nothing is written through a link planted beside it, and no temporary file is left."""

from __future__ import annotations

import os
import stat

import pytest

from bincache.atomic import atomic_file, atomic_path, link_or_copy_atomic, write_atomic


def _names(d) -> list[str]:
    return sorted(os.listdir(d))


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"  # tmp_path holds the session's home too
    d.mkdir()
    return d


def test_a_failed_write_leaves_the_old_file_and_nothing_else(work):
    target = work / "index.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(str(target)) as f:
        f.write(b"half of the new")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert _names(work) == ["index.json"]


def test_the_mode_is_the_one_asked_for_or_the_umask_default(tmp_path):
    write_atomic(str(tmp_path / "a"), b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o644
    write_atomic(str(tmp_path / "b"), b"x", 0o600)
    assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o600
    old = os.umask(0o027)
    try:
        write_atomic(str(tmp_path / "c"), b"x", None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o640


def test_a_link_planted_at_a_predictable_name_is_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    d = tmp_path / "d"
    d.mkdir()
    for name in (".spec.json.tmp", "spec.json.part", ".tmp-spec.json"):
        os.symlink(outside, d / name)
    write_atomic(str(d / "spec.json"), b"new")
    assert (d / "spec.json").read_bytes() == b"new"
    assert outside.read_bytes() == b"keep"


def test_atomic_path_publishes_only_when_the_writer_succeeds(work):
    dest = work / "blob"
    with pytest.raises(ValueError), atomic_path(str(dest)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"unchecked")
        raise ValueError("checksum mismatch")
    assert _names(work) == []
    with atomic_path(str(dest)) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"checked")
    assert dest.read_bytes() == b"checked"
    assert _names(work) == ["blob"]


def test_link_or_copy_links_on_one_file_system_and_replaces_the_target(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"blob")
    dest = tmp_path / "out" / "blob"
    dest.parent.mkdir()
    dest.write_bytes(b"older")
    link_or_copy_atomic(str(src), str(dest), 0o644, prefix=".tmp-")
    assert dest.read_bytes() == b"blob"
    assert os.stat(dest).st_ino == os.stat(src).st_ino
    assert _names(dest.parent) == ["blob"]


def test_link_or_copy_copies_when_a_link_is_refused(work):
    # A source that cannot be hard-linked (a directory entry the kernel refuses: /proc files
    # are on another file system) is copied instead.
    dest = work / "version"
    link_or_copy_atomic("/proc/version", str(dest))
    assert dest.read_bytes().startswith(b"Linux")
    assert _names(work) == ["version"]
