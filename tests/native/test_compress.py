"""compress_buffer: the raw engine the writer uses (also the benchmark's ceiling)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from bincache.errors import NativeError


def sample() -> bytes:
    with open("/bin/ls", "rb") as f:
        elf = f.read()
    text = b"".join(b"line %d: /opt/spack/linux/pkg-%d/lib\n" % (i, i % 17) for i in range(40000))
    return (elf + text) * 3  # a few MiB: several chunks


def test_every_level_round_trips_and_threads_do_not_change_the_bytes(native):
    data = sample()
    for level in range(10):
        one = native.compress_buffer(data, level, 1)
        assert gzip.decompress(one) == data, level
        assert native.compress_buffer(data, level, 2) == one, level
    assert gzip.decompress(native.compress_buffer(b"", 1, 2)) == b""


def test_default_level_stays_within_1_2x_of_gzip_6(native):
    data = sample()
    ours = len(native.compress_buffer(data, native.DEFAULT_LEVEL, 2))
    gzip6 = len(zlib.compress(data, 6))
    assert ours <= 1.2 * gzip6


def test_level_out_of_range_is_refused(native):
    with pytest.raises(NativeError, match="level must be 0-9"):
        native.compress_buffer(b"x", -1, 1)
    with pytest.raises(NativeError, match="threads must be >= 0"):
        native.compress_buffer(b"x", 1, -2)


CONTRACT = [
    "TarWriter",
    "FileScan",
    "TarResult",
    "scan_buffer",
    "relocate_buffer",
    "apply_patches",
    "compress_buffer",
    "BACKEND",
    "DEFAULT_LEVEL",
]


def test_both_backends_expose_the_contract(native, pure):
    for name in CONTRACT:
        assert hasattr(native, name) and hasattr(pure, name), name
    assert native.FileScan is pure.FileScan and native.TarResult is pure.TarResult
    assert gzip.decompress(pure.compress_buffer(b"abc" * 1000, 6, 2)) == b"abc" * 1000
