"""Property tests: a tarball written around the page cache (O_DIRECT) has exactly the bytes of
one written through it, and of the same writer's in-memory output, at every size around the
4 KiB blocks direct writes go out in and the 1 MiB buffer they collect in."""

from __future__ import annotations

import gzip
import io
import os
import random
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache._native import _pure as pure

native = pytest.importorskip("bincache._native._cffi", reason="the C core is not built")

BLOCK = 4096
BUF = 1 << 20
# Sizes of the compressed output the writer must get right: empty-ish, the block and buffer
# edges, and several buffers with a tail.
OUTPUT_SIZES = [BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 1, BUF - 1, BUF, BUF + 1,
                BUF + BLOCK - 1, 3 * BUF + 5]
# Sizes of one file's content (0 and 1: no data block, one short block).
INPUT_SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BUF + 17]
LOCAL_DISK = {"ef53", "58465342", "9123683e"}  # statfs types: ext2/3/4, xfs, btrfs


def _fs_type(path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def _takes_o_direct(path) -> bool:
    import fcntl

    probe = os.path.join(path, ".probe")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(probe)


def _content(n: int, random_bytes: bool) -> bytes:
    # Random content makes the compressed size follow n byte by byte (sized outputs); text
    # gives the deflate something to do.
    if random_bytes:
        return random.Random(n).randbytes(n)
    return (b"lib/libfoo.so.1 /opt/spack/prefix " * (n // 34 + 1))[:n]


def _write(writer, n: int, random_bytes: bool):
    writer.add_bytes("share/data.bin", _content(n, random_bytes), 0o644)
    return writer.finish()


def _in_memory(n: int, random_bytes: bool, codec: str, level: int) -> bytes:
    out = io.BytesIO()
    _write(native.TarWriter(out, prefixes=[b"/opt/spack"], codec=codec, level=level,
                            threads=1), n, random_bytes)
    return out.getvalue()


_SIZED: dict = {}


def _input_for_output(target: int, codec: str, level: int) -> int:
    """A size of random content whose tarball is ``target`` bytes, or near it (stored blocks,
    level 0, grow with the tar's 512-byte records)."""
    key = (target, codec, level)
    if key not in _SIZED:
        n, best = max(0, target - 1024), None
        for _ in range(6):
            got = len(_in_memory(n, True, codec, level))
            if best is None or abs(got - target) < abs(best[1] - target):
                best = (n, got)
            if got == target:
                break
            n = max(0, n + target - got)
        _SIZED[key] = best[0]
    return _SIZED[key]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    base = tmp_path_factory.mktemp("direct")
    fs_direct = _takes_o_direct(base)
    return base, {"local": fs_direct and _fs_type(base) in LOCAL_DISK, "any": fs_direct}


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.sampled_from(OUTPUT_SIZES).map(lambda s: ("out", s)),
                      st.sampled_from(INPUT_SIZES).map(lambda s: ("in", s))),
       codec_level=st.sampled_from([("gzip", 0), ("gzip", 2), ("gzip", 6), ("zstd", 3)]),
       threads=st.sampled_from([1, 2]), direct_io=st.sampled_from(["local", "any"]))
def test_direct_output_has_the_bytes_of_buffered_output_at_every_size(size, codec_level, threads,
                                                                    direct_io, places):
    codec, level = codec_level
    if codec == "zstd" and not native.codec_info("zstd")[0]:
        codec, level = "gzip", 2
    base, direct_possible = places
    kind, value = size
    n = _input_for_output(value, codec, level) if kind == "out" else value
    rnd = kind == "out"
    expected = _in_memory(n, rnd, codec, level)
    blobs, results = {}, {}
    for mode in (direct_io, "never"):
        path = base / f"{mode}.tar"
        with open(path, "wb") as f:
            results[mode] = _write(native.TarWriter(f.fileno(), prefixes=[b"/opt/spack"],
                                                    codec=codec, level=level, threads=threads,
                                                    direct_io=mode), n, rnd)
        blobs[mode] = path.read_bytes()
    assert blobs[direct_io] == blobs["never"] == expected
    assert results[direct_io].digest == results["never"].digest
    assert results[direct_io].compressed_size == len(expected)
    # Whole blocks went out directly, the tail through the page cache.
    whole = len(expected) // BLOCK * BLOCK
    assert results[direct_io].direct_bytes == (whole if direct_possible[direct_io] else 0)
    assert results["never"].direct_bytes == 0
    if codec == "gzip":
        ref = io.BytesIO()
        _write(pure.TarWriter(ref, prefixes=[b"/opt/spack"], level=level), n, rnd)
        assert gzip.decompress(expected) == gzip.decompress(ref.getvalue())
