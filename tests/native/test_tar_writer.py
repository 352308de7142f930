"""The C tar writer: what every tar/gzip reader sees, determinism, and parity with _pure."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bincache.errors import NativeError, NoSpaceError

CHUNK = 1 << 20
LONG_SPLIT = "opt/" + "/".join(f"dir{i:03d}" for i in range(25)) + "/file.txt"  # ustar prefix
LONG_PAX = "opt/" + "y" * 120 + "/" + "z" * 120 + "/file.bin"  # no split fits: PAX path
PREFIXES = [b"/opt/spack/linux/zlib-1.3", b"/opt/spack/linux/zlib-1.3-abc", b"/opt/spack"]


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, poorly compressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Files on disk that the members below are read from."""
    d = tmp_path_factory.mktemp("tree")
    files = {
        "empty": b"",
        "text": b'#!/bin/sh\nexec /opt/spack/linux/zlib-1.3-abc/bin/z "$@"\n',
        "binary": b"\0\1\2/opt/spack\0tail",
        "chunk": pattern(CHUNK, 1),
        "big": pattern(CHUNK * 2 + 12345, 2)[:CHUNK]
        + b"/opt/spack/linux/zlib-1.3"
        + pattern(CHUNK + 999, 3),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    shutil.copy("/bin/true", d / "elf")
    return d


def write_all(mod, out, tree, **kw):
    """The same sequence of calls for any backend; returns (TarResult, scans)."""
    w = mod.TarWriter(out, prefixes=PREFIXES, **kw)
    scans = {}
    w.add_dir("opt")
    w.add_dir("opt/pkg/", 0o755)
    w.add_dir("opt/pkg/bin", 0o700)
    for name, mode in [
        ("empty", 0o644),
        ("text", 0o755),
        ("binary", 0o600),
        ("chunk", 0o644),
        ("big", 0o640),
        ("elf", 0o4755),
    ]:
        scans[name] = w.add_file(f"opt/pkg/{name}", str(tree / name), mode)
    scans["bytes"] = w.add_bytes("opt/pkg/bytes", b"inline /opt/spack data", 0o644)
    w.add_symlink("opt/pkg/bin/link", "../text")
    w.add_symlink("opt/pkg/bin/far", "/" + "t" * 150)
    w.add_hardlink("opt/pkg/bin/hard", "opt/pkg/text", 0o755)
    w.add_bytes(LONG_SPLIT, b"split", 0o644)
    w.add_bytes(LONG_PAX, b"pax", 0o644)
    w.add_bytes("opt/pkg/caf\u00e9-\udcff", b"non-ascii", 0o644)
    for i in range(300):
        w.add_bytes(f"opt/pkg/many/{i:04d}", b"%d\n" % i, 0o644)
    return w.finish(), scans


@pytest.fixture(scope="module")
def written(native, tree):
    buf = io.BytesIO()
    result, scans = write_all(native, buf, tree, threads=2)
    return buf.getvalue(), result, scans


def core_threads(name: str = "bc-") -> set[str]:
    """The ids of this process's threads the C core started (it names them), by name prefix.

    Counting every thread in the process would also count threads other tests left winding
    down (seen: one flaky failure in a full run).
    """
    found = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/self/task/{tid}/comm").read_text().startswith(name):
                found.add(tid)
    return found


def settles(condition: Callable[[], bool], within: float = 5.0) -> bool:
    """True once `condition()` holds, polled for up to `within` seconds.

    For what /proc/self/task shows of the core's threads, which lags the C side both ways: a
    new thread is listed under the parent's name until it has named itself, and pthread_join
    returns when the thread's exit clears its tid, a moment before the kernel takes it out of
    the list (seen in CI: 3 threads listed right after a join of 2 of them).
    """
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_tarfile_reads_back_every_member_exactly(written, tree):
    data, _, _ = written
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        members = {m.name: m for m in tf.getmembers()}
        for m in members.values():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert members["opt/pkg/bin"].isdir() and members["opt/pkg/bin"].mode == 0o700
        for name, mode in [
            ("empty", 0o644),
            ("text", 0o755),
            ("binary", 0o600),
            ("chunk", 0o644),
            ("big", 0o640),
            ("elf", 0o4755),
        ]:
            m = members[f"opt/pkg/{name}"]
            assert m.isfile() and m.mode == mode
            assert tf.extractfile(m).read() == (tree / name).read_bytes()
        link = members["opt/pkg/bin/link"]
        assert link.issym() and link.linkname == "../text"
        assert members["opt/pkg/bin/far"].linkname == "/" + "t" * 150
        hard = members["opt/pkg/bin/hard"]
        assert hard.islnk() and hard.linkname == "opt/pkg/text" and hard.mode == 0o755
        assert tf.extractfile(members[LONG_SPLIT]).read() == b"split"
        assert tf.extractfile(members[LONG_PAX]).read() == b"pax"
        assert "opt/pkg/caf\u00e9-\udcff" in members
        assert sum(n.startswith("opt/pkg/many/") for n in members) == 300


def test_gnu_tar_and_gzip_accept_the_output(written, tmp_path):
    data, _, _ = written
    path = tmp_path / "out.tar.gz"
    path.write_bytes(data)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    listing = subprocess.run(
        ["tar", "-tzvf", str(path)], check=True, capture_output=True, text=True, errors="replace"
    ).stdout
    assert LONG_PAX in listing and LONG_SPLIT in listing
    assert "opt/pkg/bin/link -> ../text" in listing
    assert "opt/pkg/bin/hard link to opt/pkg/text" in listing
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(path), "-C", str(out)], check=True)
    assert (out / LONG_PAX).read_bytes() == b"pax"
    assert os.path.samefile(out / "opt/pkg/text", out / "opt/pkg/bin/hard")


def test_digests_and_sizes_match_the_bytes(written):
    data, result, _ = written
    raw = gzip.decompress(data)
    assert result.digest == hashlib.sha256(data).hexdigest()
    assert result.compressed_size == len(data)
    assert result.diff_id == hashlib.sha256(raw).hexdigest()
    assert result.uncompressed_size == len(raw)
    assert len(raw) % 512 == 0 and raw.endswith(b"\0" * 1024)


def test_uncompressed_stream_is_identical_to_the_pure_twin(native, pure, written, tree):
    data, result, scans = written
    buf = io.BytesIO()
    presult, pscans = write_all(pure, buf, tree)
    assert gzip.decompress(data) == gzip.decompress(buf.getvalue())
    assert result.diff_id == presult.diff_id
    assert scans == pscans


def test_same_calls_give_the_same_bytes_for_any_thread_count(native, tree, written):
    data, _, _ = written
    for threads in (1, 2, 3):
        buf = io.BytesIO()
        write_all(native, buf, tree, threads=threads)
        assert buf.getvalue() == data, f"threads={threads}"


def test_scan_reports_kinds_and_prefix_hits(written, tree, pure):
    _, _, scans = written
    assert scans["elf"].kind == "elf"
    assert scans["binary"].kind == "binary"
    assert scans["text"].kind == "text" and scans["empty"].kind == "text"
    assert scans["empty"].size == 0 and scans["empty"].hits == []
    # the longest prefix wins at a position; hits never overlap
    assert scans["text"].hits == [(1, 15)]
    assert scans["binary"].hits == [(2, 3)]
    big = (tree / "big").read_bytes()
    assert scans["big"].hits == pure.scan_buffer(big, PREFIXES) == [(0, CHUNK)]


def test_file_descriptor_output_equals_file_object_output(native, tree, written, tmp_path):
    data, result, _ = written
    path = tmp_path / "fd.tar.gz"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fresult, _ = write_all(native, fd, tree, threads=2)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert fresult == result


def test_every_level_gives_a_valid_stream(native, tree):
    for level in range(10):
        buf = io.BytesIO()
        w = native.TarWriter(buf, prefixes=[], level=level, threads=2)
        w.add_file("opt/big", str(tree / "big"), 0o644)
        w.finish()
        with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
            assert tf.extractfile("opt/big").read() == (tree / "big").read_bytes()


def test_add_file_at_names_the_directory_and_entry_in_its_errors(backend, tmp_path):
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "fifo")
    buf = io.BytesIO()
    w = backend.TarWriter(buf, prefixes=[])
    dirfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(NativeError,
                           match=f"cannot read {tmp_path}/nope: No such file or directory"):
            w.add_file_at("opt/nope", dirfd, str(tmp_path), "nope", -1)
        with pytest.raises(NativeError, match=f"cannot read {tmp_path}/sub: Is a directory"):
            w.add_file_at("opt/sub", dirfd, str(tmp_path), "sub", -1)
        with pytest.raises(NativeError, match=f"cannot read {tmp_path}/fifo: not a regular file"):
            w.add_file_at("opt/fifo", dirfd, str(tmp_path), "fifo", -1)
        (tmp_path / "ok").write_bytes(b"ok")
        w.add_file_at("opt/ok", dirfd, str(tmp_path), "ok", -1)
    finally:
        os.close(dirfd)
    w.finish()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.getnames() == ["opt/ok"]
        assert tf.extractfile("opt/ok").read() == b"ok"


def test_missing_file_and_directory_are_named_in_the_error(backend, tmp_path):
    buf = io.BytesIO()
    w = backend.TarWriter(buf, prefixes=[])
    with pytest.raises(
        NativeError, match=f"cannot read {tmp_path}/nope: No such file or directory"
    ):
        w.add_file("opt/nope", str(tmp_path / "nope"), 0o644)
    with pytest.raises(NativeError, match=f"cannot read {tmp_path}: Is a directory"):
        w.add_file("opt/dir", str(tmp_path), 0o644)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NativeError, match="fifo: not a regular file"):
        w.add_file("opt/fifo", str(tmp_path / "fifo"), 0o644)
    # nothing of those members was written: the writer still produces a valid tarball
    w.add_bytes("opt/ok", b"ok", 0o644)
    w.finish()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.getnames() == ["opt/ok"]


def test_a_finished_writer_refuses_more_members(backend):
    w = backend.TarWriter(io.BytesIO(), prefixes=[])
    w.finish()
    with pytest.raises(NativeError, match="already finished"):
        w.add_dir("opt")
    with pytest.raises(NativeError, match="already finished"):
        w.finish()


def test_bad_arguments_are_refused(backend):
    with pytest.raises(NativeError, match="level must be 0-9, not 12"):
        backend.TarWriter(io.BytesIO(), prefixes=[], level=12)
    w = backend.TarWriter(io.BytesIO(), prefixes=[])
    with pytest.raises(NativeError, match="NUL"):
        w.add_bytes("opt/a\0b", b"", 0o644)


def test_full_disk_is_a_no_space_error(native, tree):
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(NoSpaceError, match="No space left on device"):
            w = native.TarWriter(fd, prefixes=[], threads=2)
            w.add_file("opt/big", str(tree / "big"), 0o644)
            w.finish()
    finally:
        os.close(fd)


def test_backend_and_default_level_are_reported(native):
    assert native.BACKEND in ("isal", "zlib")
    assert 0 <= native.DEFAULT_LEVEL <= 9


def test_a_writer_broken_by_a_write_error_refuses_more_work(native, tree):
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        w = native.TarWriter(fd, prefixes=[], threads=2)
        with pytest.raises(NoSpaceError):
            for _ in range(8):
                w.add_file("opt/big", str(tree / "big"), 0o644)
            w.finish()
        with pytest.raises(NativeError, match="unusable after an earlier error: .*No space"):
            w.add_dir("opt")
    finally:
        os.close(fd)


def test_an_abandoned_writer_stops_its_threads(native, tree):
    before = core_threads()
    w = native.TarWriter(io.BytesIO(), prefixes=[], threads=2)
    w.add_file("opt/big", str(tree / "big"), 0o644)  # more than a chunk: workers started
    assert settles(lambda: len(core_threads() - before) == 2)
    del w
    # the C threads are joined when the handle is freed; a process that never finishes its
    # writer still exits cleanly
    assert settles(lambda: core_threads() == before)
    out = subprocess.run(
        [
            "python",
            "-c",
            "import io, sys; from bincache._native import _cffi as n; "
            "w = n.TarWriter(io.BytesIO(), prefixes=[], threads=2); "
            f"w.add_file('a', {str(tree / 'big')!r}, 0o644); print('done')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0 and out.stdout == "done\n"


def test_without_diff_id_only_the_uncompressed_digest_is_left_out(backend, tree):
    full, bare = io.BytesIO(), io.BytesIO()
    result, scans = write_all(backend, full, tree)
    bare_result, bare_scans = write_all(backend, bare, tree, diff_id=False)
    assert bare.getvalue() == full.getvalue() and bare_scans == scans
    assert bare_result.diff_id == "" and result.diff_id
    assert (bare_result.digest, bare_result.compressed_size, bare_result.uncompressed_size) == (
        result.digest, result.compressed_size, result.uncompressed_size)


def test_a_negative_mode_takes_spacks_mode_from_the_file_and_the_links_are_reported(backend,
                                                                                     tmp_path):
    # The packer walks without a stat per file: the writer's own fstat gives the mode and the
    # link count (a file with several names is then looked up by its inode).
    tool, data, twin = tmp_path / "tool", tmp_path / "data", tmp_path / "twin"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o700)
    data.write_bytes(b"x")
    data.chmod(0o600)
    os.link(data, twin)
    buf = io.BytesIO()
    w = backend.TarWriter(buf, prefixes=[])
    scans = {p.name: w.add_file(p.name, str(p), -1) for p in (tool, data)}
    scans["bytes"] = w.add_bytes("bytes", b"y", 0o644)
    w.finish()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        assert tf.getmember("tool").mode == 0o755 and tf.getmember("data").mode == 0o644
    st = os.stat(data)
    assert (scans["data"].links, scans["data"].inode) == (2, (st.st_dev, st.st_ino))
    assert scans["tool"].links == 1
    assert (scans["bytes"].links, scans["bytes"].inode) == (1, (0, 0))


def test_a_shared_pool_starts_its_threads_once_and_outlives_an_abandoned_writer(native, tree,
                                                                                written):
    data, _, _ = written

    before = core_threads("bc-deflate")
    pool = native.CompressPool(2)
    assert core_threads("bc-deflate") == before  # threads start with the first piece, not before
    started = None
    for _ in range(3):
        buf = io.BytesIO()
        write_all(native, buf, tree, pool=pool)
        assert buf.getvalue() == data
        assert settles(lambda: len(core_threads("bc-deflate") - before) == 2)
        now = core_threads("bc-deflate") - before
        assert len(now) == 2 and (started is None or now == started)  # the same two threads
        started = now
    # A writer dropped with pieces still queued: they are taken back, the pool carries on.
    w = native.TarWriter(io.BytesIO(), prefixes=[], pool=pool)
    for i in range(4):
        w.add_file(f"opt/big{i}", str(tree / "big"), 0o644)
    w.close()
    buf = io.BytesIO()
    write_all(native, buf, tree, pool=pool)
    assert buf.getvalue() == data
    pool.close()
    assert settles(lambda: core_threads("bc-deflate") == before)
    with pytest.raises(NativeError, match="pool is closed"):
        native.TarWriter(io.BytesIO(), prefixes=[], pool=pool)


@pytest.mark.slow
def test_a_file_of_8_gib_or_more_gets_a_pax_size(native, tmp_path):
    """ustar's size field ends at 8 GiB - 1; beyond it the size goes into a PAX record."""
    import zlib

    size = 8 << 30
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.seek(size - 7)
        f.write(b"/opt/p\n")  # a sparse file with a prefix at its very end
    out = tmp_path / "big.tar.gz"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = native.TarWriter(fd, prefixes=[b"/opt/p"], level=1, threads=2)
        scan = w.add_file("opt/sparse", str(path), 0o644)
        result = w.finish()
    finally:
        os.close(fd)
    assert scan.size == size and scan.hits == [(0, size - 7)] and scan.kind == "binary"
    assert result.uncompressed_size == 512 * 3 + size + 1024
    with open(out, "rb") as f:
        head = zlib.decompressobj(31).decompress(f.read(1 << 16), 4096)
    with tarfile.open(fileobj=io.BytesIO(head + b"\0" * 4096), mode="r:") as tf:
        member = tf.next()
    assert member.name == "opt/sparse" and member.size == size


def test_cancel_from_another_thread_stops_a_large_file(backend, tmp_path):
    import threading
    import time

    big = tmp_path / "big"
    big.write_bytes(os.urandom(32 << 20).translate(bytes(97 + b % 16 for b in range(256))))
    with open(tmp_path / "out.tar.gz", "wb") as out:
        w = backend.TarWriter(out, prefixes=[b"/x"], level=9, threads=2)
        t0 = time.monotonic()
        timer = threading.Timer(0.3, w.cancel)
        timer.start()
        with pytest.raises(NativeError, match="cancelled"):
            w.add_file("big", str(big), 0o644)
        took = time.monotonic() - t0
        timer.join()
        w.close()  # abandoned: its threads are stopped, nothing else to finish
    # 32 MB at level 9 is seconds of work; the cancel is seen within a block or two
    if backend.__name__.endswith("_cffi"):
        assert took < 1.5, f"{took:.2f}s"
