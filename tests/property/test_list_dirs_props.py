"""Property tests: the C core's directory sweep (list_dirs, what an index update of a directory
mirror uses to find the per-name directories changed since its last listing) counts exactly the
directories a plain os.scandir walk finds and names those changed since the time asked, with
the change times os.stat gives, whatever else the directory holds (files, symlinks to
directories, dangling links, FIFOs, odd names) and however many threads stat them."""

from __future__ import annotations

import math
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


def expect(root: str, skip: str, since: float) -> tuple[int, float, list[tuple[str, float]]]:
    dirs = reference(root, skip)
    return len(dirs), max((t for _, t in dirs), default=0.0), [d for d in dirs if d[1] >= since]


def sort(got: tuple[int, float, list[tuple[str, float]]]) -> tuple[int, float, list[tuple[str, float]]]:
    return got[0], got[1], sorted(got[2])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(found=entries, skip=st.sampled_from([SKIP, ""]), threads=st.sampled_from([1, 2, 0]),
       cut=st.sampled_from([-math.inf, 0, 1, math.inf]))
def test_list_dirs_finds_what_a_python_walk_finds(tmp_path_factory, found, skip, threads, cut):
    root = os.fsdecode(tmp_path_factory.mktemp("sweep"))
    _make(os.fsencode(root), found)
    # Some directories older than the time the sweep names from (since), some not.
    dirs = reference(root, skip)
    since = cut if math.isinf(cut) or not dirs else sorted(t for _, t in dirs)[len(dirs) // 2] + cut - 1
    want = expect(root, skip, since)
    assert sort(native.list_dirs(root, skip, since, threads)) == want
    assert sort(pure.list_dirs(root, skip, since)) == want
    made = {os.fsdecode(n) for n, k in found.items() if k == "dir"}
    assert {n for n, _ in dirs} == {n for n in made if not (skip and n.startswith(skip))} | {".target"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(0, 10000), threads=st.sampled_from([1, 2, 3, 0]))
def test_list_dirs_of_many_directories_keeps_every_name(tmp_path_factory, count, threads):
    """Past the first buffers the core grows, and over the entries each thread stats (4,096)."""
    root = tmp_path_factory.mktemp("many")
    for i in range(count):
        os.mkdir(root / f"pkg{i:05d}-{'x' * (i % 200)}")
    got = native.list_dirs(str(root), "", -math.inf, threads)
    assert sort(got) == expect(str(root), "", -math.inf)
    assert got[0] == len(got[2]) == count


@pytest.mark.parametrize("impl", [native, pure], ids=["native", "pure"])
def test_list_dirs_of_what_is_no_directory_raises_what_os_raises(tmp_path, impl):
    with pytest.raises(FileNotFoundError):
        impl.list_dirs(str(tmp_path / "missing"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        impl.list_dirs(str(tmp_path / "file"))
