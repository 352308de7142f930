"""Property tests: the C core's directory sweep (list_dirs, what an index update of a directory
mirror uses to find the per-name directories changed since its last listing) names exactly the
directories a plain os.scandir walk finds, with the change times os.stat gives, whatever else
the directory holds (files, symlinks to directories, dangling links, FIFOs, odd names)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache._native import _pure as pure

native = pytest.importorskip("bincache._native._cffi", reason="the C core is not built")

SKIP = ".tmp-"
KINDS = ("dir", "file", "link-to-dir", "dangling-link", "fifo")
# Bytes a name may hold (not "/" or NUL): ASCII, the skip prefix's letters, and bytes that are
# no UTF-8 (names the file system takes, which Python decodes with surrogateescape).
name_bytes = st.lists(st.sampled_from([*b"ab.-_tmp", 0xC3, 0xA9, 0xFF, 0x80]),
                      min_size=1, max_size=12).map(bytes)
entries = st.dictionaries(
    st.one_of(name_bytes, name_bytes.map(lambda b: SKIP.encode() + b)),
    st.sampled_from(KINDS), max_size=40,
).map(lambda d: {k: v for k, v in d.items() if k not in (b".", b"..")})


def reference(path: str, skip: str) -> list[tuple[str, float]]:
    """What a Python walk finds: the entries that are directories themselves, not links."""
    with os.scandir(path) as it:
        return sorted((e.name, e.stat(follow_symlinks=False).st_ctime) for e in it
                      if e.is_dir(follow_symlinks=False) and not (skip and e.name.startswith(skip)))


def _make(root: bytes, found: dict[bytes, str]) -> None:
    os.mkdir(root + b"/.target")  # what the links to a directory point to
    for name, kind in found.items():
        path = root + b"/" + name
        if kind == "dir":
            os.mkdir(path)
            with open(path + b"/manifest", "wb"):  # a directory with entries of its own
                pass
        elif kind == "file":
            with open(path, "wb") as f:
                f.write(b"x")
        elif kind == "link-to-dir":
            os.symlink(b".target", path)
        elif kind == "dangling-link":
            os.symlink(b"nowhere", path)
        else:
            os.mkfifo(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(found=entries, skip=st.sampled_from([SKIP, ""]))
def test_list_dirs_finds_what_a_python_walk_finds(tmp_path_factory, found, skip):
    root = os.fsencode(tmp_path_factory.mktemp("sweep"))
    _make(root, found)
    want = reference(os.fsdecode(root), skip)
    assert sorted(native.list_dirs(os.fsdecode(root), skip)) == want
    assert sorted(pure.list_dirs(os.fsdecode(root), skip)) == want
    made = {os.fsdecode(n) for n, k in found.items() if k == "dir"}
    assert {n for n, _ in want} == {n for n in made if not (skip and n.startswith(skip))} | {".target"}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(0, 3000))
def test_list_dirs_of_many_directories_keeps_every_name(tmp_path_factory, count):
    """Past the first buffers the core grows (names and times are collected in one each)."""
    root = tmp_path_factory.mktemp("many")
    for i in range(count):
        os.mkdir(root / f"pkg{i:05d}-{'x' * (i % 200)}")
    got = native.list_dirs(str(root))
    assert sorted(got) == reference(str(root), "")
    assert len(got) == count


@pytest.mark.parametrize("impl", [native, pure], ids=["native", "pure"])
def test_list_dirs_of_what_is_no_directory_raises_what_os_raises(tmp_path, impl):
    with pytest.raises(FileNotFoundError):
        impl.list_dirs(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        impl.list_dirs(str(tmp_path / "file"))
