"""The writer's direct output (O_DIRECT) where it cannot or must not be used: a file system that
refuses it, a write it refuses, a pipe, a memory file system under the default policy, and the
descriptor it hands back."""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import REPO

LOCAL_DISK = {"ef53", "58465342", "9123683e"}  # statfs types: ext2/3/4, xfs, btrfs
BIG = 3 << 20  # several 1 MiB direct buffers


def _content(n: int = BIG) -> bytes:
    import random

    return random.Random(n).randbytes(n // 2) + b"/opt/spack/x " * (n // 26)


def _pack(native, out, **kw):
    w = native.TarWriter(out, prefixes=[b"/opt/spack"], threads=2, **kw)
    w.add_bytes("share/data.bin", _content(), 0o644)
    return w.finish()


def _expected(native) -> bytes:
    buf = io.BytesIO()
    _pack(native, buf)
    return buf.getvalue()


def _fs_type(path: str) -> str:
    return subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def disk_dir(tmp_path):
    """A directory on a local disk file system (tmp_path if it is one, else beside the repo)."""
    if _fs_type(str(tmp_path)) in LOCAL_DISK:
        yield str(tmp_path)
        return
    d = tempfile.mkdtemp(prefix=".test-direct-", dir=REPO)
    assert _fs_type(d) in LOCAL_DISK, "no local disk file system to test direct output on"
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_on_a_local_disk_whole_blocks_bypass_the_page_cache_and_the_flag_is_cleared(native,
                                                                                   disk_dir):
    path = os.path.join(disk_dir, "t.tar.gz")
    with open(path, "wb") as f:
        res = _pack(native, f.fileno(), direct_io="local")
        assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    data = open(path, "rb").read()
    assert data == _expected(native)
    assert res.direct_bytes == len(data) // 4096 * 4096 > 1 << 20


def test_a_write_the_file_system_refuses_falls_back_to_the_page_cache(native, disk_dir):
    # O_DIRECT is set, but a disk file system refuses a write at an offset off its blocks
    # (EINVAL): the writer goes on buffered from that byte.
    path = os.path.join(disk_dir, "t.tar.gz")
    with open(path, "wb") as f:
        f.write(b"x" * 100)
        f.flush()
        res = _pack(native, f.fileno(), direct_io="any")
        assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
    assert open(path, "rb").read() == b"x" * 100 + _expected(native)
    assert res.direct_bytes == 0


def test_a_file_system_that_refuses_o_direct_gets_buffered_writes(native, tmp_path):
    # ramfs refuses O_DIRECT outright (tmpfs takes it since Linux 6.6); mounted in a user and
    # mount namespace of a child, so no privilege is needed.
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is not installed")
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    child = f"""
import fcntl, io, json, os, sys
sys.path.insert(0, {REPO!r})
from tests.native.test_direct_output import _pack
from bincache._native import _cffi as native
path = os.path.join({str(mnt)!r}, "t.tar.gz")
out = {{}}
for mode in ("any", "local"):
    with open(path, "wb") as f:
        out[mode] = _pack(native, f.fileno(), direct_io=mode).direct_bytes
        out[mode + "_flag"] = bool(fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT)
    out[mode + "_bytes"] = open(path, "rb").read().hex()
print(json.dumps(out))
"""
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           'mount -t ramfs none "$1" && exec "$2" -c "$3"', "sh", str(mnt),
                           sys.executable, child], capture_output=True, text=True)
    if proc.returncode != 0 and "mount" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr:
        pytest.skip(f"cannot mount ramfs in a user namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = _expected(native).hex()
    assert out["any"] == out["local"] == 0
    assert out["any_bytes"] == out["local_bytes"] == expected
    assert not out["any_flag"] and not out["local_flag"]


def test_memory_file_systems_and_pipes_are_written_as_before(native):
    # The default policy keeps O_DIRECT to disk file systems (tmpfs: nothing to skip); on a
    # pipe the flag would mean packet mode, so it is never set there.
    expected = _expected(native)
    if os.path.isdir("/dev/shm") and _fs_type("/dev/shm") not in LOCAL_DISK:
        with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
            res = _pack(native, f.fileno(), direct_io="local")
            assert open(f.name, "rb").read() == expected
        assert res.direct_bytes == 0
    r, w = os.pipe()
    chunks: list[bytes] = []
    import threading

    def drain():
        while piece := os.read(r, 1 << 16):
            chunks.append(piece)

    t = threading.Thread(target=drain)
    t.start()
    res = _pack(native, w, direct_io="any")
    assert not fcntl.fcntl(w, fcntl.F_GETFL) & os.O_DIRECT
    os.close(w)
    t.join()
    os.close(r)
    assert b"".join(chunks) == expected
    assert res.direct_bytes == 0


def test_an_unfinished_writer_hands_the_descriptor_back_without_o_direct(native, disk_dir):
    path = os.path.join(disk_dir, "t.tar.gz")
    with open(path, "wb") as f:
        w = native.TarWriter(f.fileno(), prefixes=[], threads=2, direct_io="local")
        w.add_bytes("share/data.bin", _content(), 0o644)
        assert fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
        w.close()
        assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_DIRECT
        f.write(b"still writable")


def test_an_unknown_direct_io_policy_is_refused_by_both_backends(backend):
    from bincache.errors import NativeError

    with pytest.raises(NativeError, match="direct_io must be one of never, local, any"):
        backend.TarWriter(io.BytesIO(), prefixes=[], direct_io="yes")


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_many_buffers_handed_to_the_flusher_keep_their_order(native, disk_dir, where):
    # Stored (level 0) random bytes: 24 full 1 MiB buffers, each written by the flusher while
    # the next fills; on tmpfs ("any": it takes O_DIRECT since Linux 6.6) a write returns at
    # once, so hand-overs race with the flusher finishing.
    base = disk_dir if where == "disk" or not os.path.isdir("/dev/shm") else "/dev/shm"
    data = os.urandom(24 << 20)

    def pack(out, **kw):
        w = native.TarWriter(out, prefixes=[], level=0, threads=2, **kw)
        w.add_bytes("share/blob", data, 0o644)
        w.add_bytes("share/small", b"x" * 5000, 0o644)
        return w.finish()

    mem = io.BytesIO()
    pack(mem)
    for _ in range(3):
        with tempfile.NamedTemporaryFile(dir=base) as f:
            res = pack(f.fileno(), direct_io="any")
            assert open(f.name, "rb").read() == mem.getvalue()
        assert res.compressed_size == len(mem.getvalue())
        assert res.direct_bytes in (0, len(mem.getvalue()) // 4096 * 4096)


def test_writers_one_after_another_on_a_pool_write_what_a_lone_writer_does(native, disk_dir):
    # A push's pool keeps the piece and direct-output buffers of each finished writer for the
    # next one: what a larger package left in them never reaches a smaller one's bytes.
    sizes = [BIG, 5 << 20, 100_000, BIG + 4097, 0]
    with native.CompressPool(2) as pool:
        for n, level in zip(sizes, [2, 1, 2, 6, 2]):
            path = os.path.join(disk_dir, f"out-{n}.tar.gz")
            with open(path, "wb") as f:
                w = native.TarWriter(f.fileno(), prefixes=[b"/opt/spack"], level=level,
                                     pool=pool, direct_io="any")
                w.add_bytes("share/data.bin", _content(n), 0o644)
                res = w.finish()
            alone = io.BytesIO()
            lone = native.TarWriter(alone, prefixes=[b"/opt/spack"], level=level, threads=1)
            lone.add_bytes("share/data.bin", _content(n), 0o644)
            lone.finish()
            with open(path, "rb") as f:
                assert f.read() == alone.getvalue(), (n, level)
            assert res.direct_bytes > 0 or n < (1 << 20)
