"""Spack's index.json beside the sharded index, spliced from the previous one by an update:
byte for byte what an index written from scratch holds, and written without the page cache."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from bincache import index as ix
from bincache.errors import UsageError
from bincache.index_blobs import STATE_PATH, BlobState
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.layout_v3 import INDEX_MANIFEST, LayoutV3Cache
from bincache.unbuffered import CHUNK, UnbufferedWriter
from tests.index.conftest import tick
from tests.index.packages import make_specs, put_package


class RemoteLike(DirectoryBackend):
    """A directory that does not offer its files' paths, so the update reads the previous
    index.json as bytes, as from S3."""

    def local_path(self, rel):
        return None


def _mirror(path, specs, backend=DirectoryBackend):
    cache = LayoutV3Cache(backend(str(path)))
    by_hash = {s.hash: s for s in specs}
    for s in specs:
        put_package(cache, s, by_hash)
    tick()
    return cache, by_hash


def _spack_blob(cache) -> tuple[str, bytes]:
    rec = json.loads(cache.backend.read(INDEX_MANIFEST))["data"][0]
    data = cache.backend.read(f"blobs/sha256/{rec['checksum'][:2]}/{rec['checksum']}")
    assert hashlib.sha256(data).hexdigest() == rec["checksum"] and len(data) == rec["contentLength"]
    return rec["checksum"], data


def _from_scratch(path, specs) -> bytes:
    cache, _ = _mirror(path, specs)
    ix.update_index(cache)
    return _spack_blob(cache)[1]


@pytest.mark.parametrize("backend", [DirectoryBackend, RemoteLike], ids=["streamed", "joined"])
def test_the_spliced_index_is_the_index_written_from_scratch(tmp_path, backend):
    specs = make_specs([f"pkg{i:03d}" for i in range(150)])
    cache, by_hash = _mirror(tmp_path / "m", specs[:-2], backend)
    ix.update_index(cache)
    first, _ = _spack_blob(cache)
    for new in specs[-2:]:  # a new name, then another depending on it (two shards move)
        put_package(cache, new, by_hash)
        ix.update_index(cache)
    checksum, spliced = _spack_blob(cache)
    assert checksum != first
    doc = json.loads(spliced)
    assert len([r for r in doc["database"]["installs"].values() if r["in_buildcache"]]) == 150
    assert spliced == _from_scratch(tmp_path / "scratch", specs)
    assert not [n for n in os.listdir(tmp_path / "m" / "blobs" / "sha256") if n.startswith(".tmp-")]


def test_a_previous_index_json_altered_is_not_spliced_from(tmp_path):
    specs = make_specs([f"lib{i:02d}" for i in range(40)])
    cache, by_hash = _mirror(tmp_path / "m", specs[:-1])
    ix.update_index(cache)
    checksum, data = _spack_blob(cache)
    # The update recorded that file as the one it wrote: unchanged, it would not be hashed again.
    assert BlobState.from_bytes(cache.backend.read(STATE_PATH)).spack[2] == len(data)
    # Same size, one record's version changed: only its digest tells (a write moves the ctime).
    path = cache.backend._path(f"blobs/sha256/{checksum[:2]}/{checksum}")
    forged = data.replace(b'"version":"1.5"', b'"version":"9.5"', 1)
    assert forged != data and len(forged) == len(data)
    with open(path, "wb") as f:
        f.write(forged)
    put_package(cache, specs[-1], by_hash)
    ix.update_index(cache)
    _, now = _spack_blob(cache)
    assert b'"version":"9.5"' not in now  # joined from the shards instead
    assert now == _from_scratch(tmp_path / "scratch", specs)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, CHUNK, CHUNK + 1, 3 * CHUNK - 5])
def test_unbuffered_writes_leave_exactly_the_bytes_written(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    h = hashlib.sha256()
    try:
        w = UnbufferedWriter(fd, h)
        for i in range(0, size, 70_001):  # pieces that straddle the buffer's end
            w.write(memoryview(data)[i:i + 70_001])
        w.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert h.hexdigest() == hashlib.sha256(data).hexdigest() and w.size == size


def _write(path, data, direct_io=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = UnbufferedWriter(fd, direct_io=direct_io)
        w.write(data)
        w.close()
    finally:
        os.close(fd)
    return w.direct


def _tmpfs_dir():
    with open("/proc/mounts") as f:
        for line in f:
            dev, where, kind = line.split()[:3]
            if kind == "tmpfs" and where == "/dev/shm" and os.access(where, os.W_OK):
                return where
    pytest.skip("no writable tmpfs at /dev/shm")


def test_unbuffered_writes_go_around_the_page_cache_as_create_s_tarballs_do(tmp_path, monkeypatch):
    # The same rule as create (BINCACHE_DIRECT_IO, local disk file systems only): an install
    # tree on NFS or Lustre does not get synchronous direct writes of its index.json.
    data = os.urandom(CHUNK + 12_345)
    shm = os.path.join(_tmpfs_dir(), f"bincache-test-{os.getpid()}")
    try:
        assert _write(shm, data) is False  # tmpfs: not a local disk file system
        _write(shm, data, direct_io="any")  # taken or refused, the bytes are the same
        with open(shm, "rb") as f:
            assert f.read() == data
    finally:
        os.unlink(shm)
    monkeypatch.setenv("BINCACHE_DIRECT_IO", "0")
    assert _write(tmp_path / "never", data) is False
    assert (tmp_path / "never").read_bytes() == data
    monkeypatch.setenv("BINCACHE_DIRECT_IO", "sometimes")
    with pytest.raises(UsageError, match="BINCACHE_DIRECT_IO"):
        _write(tmp_path / "bad", data)


def test_a_failing_source_leaves_no_file(tmp_path):
    backend = DirectoryBackend(str(tmp_path / "m"))

    def chunks():
        yield b"x" * 5000
        raise OSError(5, "Input/output error")

    with pytest.raises(Exception, match="Input/output error"):
        backend.put_hashed("blobs/sha256", chunks(), lambda d: f"blobs/sha256/{d[:2]}/{d}")
    assert os.listdir(tmp_path / "m" / "blobs" / "sha256") == []


def test_a_previous_index_json_written_to_while_it_is_read_is_not_spliced_from(tmp_path):
    # Its digest is checked before the splice reads it (index_spack.OldIndex, beside the sweep
    # of the directories): a write in between, even of the same bytes, moves its ctime.
    from bincache.index_spack import (
        OldIndex,
        OldIndexChanged,
        old_layout,
        pieces,
        shard_bytes,
        spliced_chunks,
    )

    installs, sizes = '"h1":{"spec":{"name":"a"}}', '"h1":12'
    data = shard_bytes("8", installs, sizes)
    path = tmp_path / "index.json"
    path.write_bytes(data)
    at, mid, tail = old_layout("8", {"00": (len(installs), len(sizes))})
    parts = pieces("8", ["00"], {}, at)

    def splice() -> bytes:
        old = OldIndex(str(path), hashlib.sha256(data).hexdigest(), len(data))
        try:
            old.file()  # checked
            if rewrite:
                tick()  # past the clock tick of the file's own write
                with open(path, "r+b") as f:
                    f.write(data[:1])
            return b"".join(bytes(c) for c in spliced_chunks(old, parts, mid, tail))
        finally:
            old.close()

    rewrite = False
    assert splice() == data
    rewrite = True
    with pytest.raises(OldIndexChanged, match="changed while it was read"):
        splice()
    path.write_bytes(data.replace(b'"a"', b'"b"'))  # same size, other bytes
    rewrite = False
    with pytest.raises(OldIndexChanged, match="checksum mismatch"):
        splice()
