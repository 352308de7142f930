"""The streaming gzip Inflater: the C core (ISA-L or zlib) and its pure twin agree with zlib,
accept concatenated members, and refuse damaged input with a message saying what is wrong."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache.errors import IntegrityError, NativeError

ROOT = Path(__file__).resolve().parents[2]


def _file(tmp_path, data: bytes, name: str = "blob.gz"):
    path = tmp_path / name
    path.write_bytes(data)
    return open(path, "rb")


def _inflate(mod, f, sizes=(65536,), **kw) -> bytes:
    inf = mod.Inflater(f, **kw)
    out = []
    i = 0
    while True:
        part = inf.read(sizes[i % len(sizes)])
        i += 1
        if not part:
            return b"".join(out)
        out.append(part)


def _payload(n: int = 300_000) -> bytes:
    # Compressible text and incompressible noise (stored blocks) in one stream.
    return os.urandom(n // 3) + b"lib/libfoo.so.1 /opt/store/pkg " * (n // 48)


def _damaged(kind: str) -> bytes:
    g = gzip.compress(_payload())
    b = bytearray(g)
    if kind == "crc":
        b[-8] ^= 0x01
    elif kind == "isize":
        b[-1] ^= 0x01
    elif kind == "truncated":
        del b[len(b) // 2:]
    elif kind == "trailer-cut":
        del b[-3:]
    elif kind == "garbage":
        b += b"this is not another gzip member"
    elif kind == "not-gzip":
        b = bytearray(b"plain text, no magic bytes at all" * 10)
    elif kind == "empty":
        b = bytearray()
    return bytes(b)


EXPECTED = {
    "crc": r"bad CRC in gzip member 1",
    "isize": r"wrong length \(ISIZE\) in gzip member 1",
    "truncated": r"truncated gzip stream: it ends inside member 1",
    "trailer-cut": r"truncated gzip stream",
    "garbage": r"unexpected data after gzip member 1 .*not another gzip member",
    "not-gzip": r"not a gzip stream: bad header",
    "empty": r"empty input: not a gzip stream",
}


def test_one_member_inflates_and_hashes_the_compressed_bytes(backend, tmp_path):
    raw = _payload()
    g = gzip.compress(raw)
    with _file(tmp_path, g) as f:
        inf = backend.Inflater(f, digest=True)
        assert inf.read() == raw
        assert inf.hexdigest() == hashlib.sha256(g).hexdigest()
        assert inf.compressed_size == len(g)


def test_concatenated_members_are_one_stream(backend, tmp_path):
    parts = [b"first " * 1000, b"", os.urandom(70_000), b"last"]
    g = b"".join(gzip.compress(p, compresslevel=lvl) for p, lvl in zip(parts, (1, 6, 9, 6)))
    with _file(tmp_path, g) as f:
        assert _inflate(backend, f, sizes=(1, 511, 4096, 1 << 20)) == b"".join(parts)


def test_an_empty_member_is_empty_data_but_no_input_is_an_error(backend, tmp_path):
    with _file(tmp_path, gzip.compress(b"")) as f:
        assert _inflate(backend, f) == b""
    with _file(tmp_path, b"", "empty.gz") as f:
        with pytest.raises(IntegrityError, match="empty input: not a gzip stream"):
            _inflate(backend, f)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_damaged_input_is_refused_with_what_is_wrong(backend, tmp_path, kind):
    with _file(tmp_path, _damaged(kind)) as f:
        with pytest.raises(IntegrityError, match=EXPECTED[kind]):
            _inflate(backend, f)


def test_the_c_core_names_both_values_of_a_bad_trailer(native, tmp_path):
    raw = _payload()
    g = bytearray(gzip.compress(raw))
    crc = zlib.crc32(raw)
    g[-8:-4] = (crc ^ 0x10).to_bytes(4, "little")
    with _file(tmp_path, bytes(g)) as f:
        with pytest.raises(IntegrityError, match=f"stored {crc ^ 0x10:08x}, data gives {crc:08x}"):
            _inflate(native, f)
    g[-8:-4] = crc.to_bytes(4, "little")
    g[-4:] = (len(raw) + 5).to_bytes(4, "little")
    with _file(tmp_path, bytes(g)) as f:
        with pytest.raises(IntegrityError, match=f"stored {len(raw) + 5}, data gives {len(raw)}"):
            _inflate(native, f)


def test_bytes_before_the_damage_come_out_first(backend, tmp_path):
    raw = os.urandom(300_000)  # stored blocks: output tracks input closely
    g = gzip.compress(raw)
    with _file(tmp_path, g[: len(g) * 3 // 4]) as f:
        inf = backend.Inflater(f)
        got = b""
        with pytest.raises(IntegrityError, match="truncated"):
            while True:
                part = inf.read(4096)
                if not part:
                    break
                got += part
        # What was inflated is handed out before the error (so extraction names the member
        # the damage is in), and it is the start of the real data.
        assert len(got) > len(raw) // 2 and raw.startswith(got)


def test_c_core_and_pure_twin_agree(native, pure, tmp_path):
    for kind in sorted(EXPECTED) + ["fine"]:
        data = _damaged(kind) if kind != "fine" else gzip.compress(_payload())
        results = []
        for mod in (native, pure):
            with _file(tmp_path, data) as f:
                try:
                    results.append(("ok", hashlib.sha256(_inflate(mod, f)).hexdigest()))
                except IntegrityError as e:
                    results.append(("error", str(e).split(":")[0].split(" (")[0]))
        assert results[0][0] == results[1][0], kind
        if results[0][0] == "ok":
            assert results[0] == results[1]


def test_offset_is_where_reading_starts_and_the_file_position_is_left_alone(backend, tmp_path):
    g = gzip.compress(b"payload" * 100)
    with _file(tmp_path, b"HEADERxx" + g) as f:
        f.seek(3)
        assert _inflate(backend, f, offset=8) == b"payload" * 100
        assert f.tell() == 3


def test_a_pipe_is_read_from_its_current_position(backend):
    g = gzip.compress(b"through a pipe " * 5000)
    r, w = os.pipe()
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=w)
    os.close(w)
    try:
        proc.stdin.write(g)
        proc.stdin.close()
        assert _inflate(backend, r, offset=None) == b"through a pipe " * 5000
    finally:
        proc.wait()
        os.close(r)


def test_the_digest_is_known_only_at_the_end(backend, tmp_path):
    with _file(tmp_path, gzip.compress(os.urandom(200_000))) as f:
        inf = backend.Inflater(f, digest=True)
        inf.read(1000)
        with pytest.raises(NativeError, match="only after the whole stream"):
            inf.hexdigest()
    with _file(tmp_path, gzip.compress(b"x")) as f:
        inf = backend.Inflater(f)
        inf.read()
        with pytest.raises(NativeError, match="digest=True"):
            inf.hexdigest()


def test_tarfile_stream_mode_reads_through_it(backend, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(50):
            data = os.urandom(i * 300)
            info = tarfile.TarInfo(f"opt/p/f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with _file(tmp_path, gzip.compress(buf.getvalue())) as f:
        with tarfile.open(fileobj=backend.Inflater(f), mode="r|") as tf:
            names = [m.name for m in tf]
    assert names == [f"opt/p/f{i}" for i in range(50)]


def test_readinto_fills_any_writable_buffer(backend, tmp_path):
    raw = _payload(100_000)
    with _file(tmp_path, gzip.compress(raw)) as f:
        inf = backend.Inflater(f)
        out = bytearray(len(raw) + 10)
        view = memoryview(out)
        n = 0
        while True:
            k = inf.readinto(view[n:n + 7777])
            if not k:
                break
            n += k
        assert n == len(raw) and bytes(out[:n]) == raw


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.binary(max_size=5000) | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 3000)), min_size=1, max_size=4),
    levels=st.lists(st.integers(0, 9), min_size=4, max_size=4),
    sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=4),
)
def test_property_matches_zlib(native, pure, tmp_path, parts, levels, sizes):
    g = b"".join(gzip.compress(p, compresslevel=lvl) for p, lvl in zip(parts, levels))
    expected = b"".join(zlib.decompress(gzip.compress(p), 31) for p in parts)
    for mod in (native, pure):
        with _file(tmp_path, g) as f:
            inf = mod.Inflater(f, digest=True)
            assert _inflate(mod, f, sizes=sizes) == expected
            assert inf.read() == expected
            assert inf.hexdigest() == hashlib.sha256(g).hexdigest()


ZLIB_CHECK = r"""
import gzip, hashlib, os, sys, tempfile
from bincache._native import _cffi as n
from bincache.errors import IntegrityError
assert n.BACKEND == "zlib", n.BACKEND
raw = os.urandom(50_000) + b"abc" * 100_000
g = gzip.compress(raw)
cases = {"ok": g + gzip.compress(b"more"), "crc": g[:-8] + bytes([g[-8] ^ 1]) + g[-7:],
         "isize": g[:-1] + bytes([g[-1] ^ 1]), "truncated": g[: len(g) // 2],
         "garbage": g + b"garbage", "empty": b""}
for name, data in cases.items():
    with tempfile.TemporaryFile() as f:
        f.write(data); f.flush()
        inf = n.Inflater(f, digest=True)
        try:
            out = inf.read()
            print(name, "ok", out == raw + b"more", inf.hexdigest() == hashlib.sha256(data).hexdigest())
        except IntegrityError as e:
            print(name, "error", str(e))
"""


@pytest.mark.slow
def test_the_zlib_build_inflates_and_refuses_the_same(tmp_path):
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    shutil.copytree(ROOT / "bincache", tmp_path / "bincache",
                    ignore=shutil.ignore_patterns("_lib*.so", "__pycache__"))
    env = {**os.environ, "BINCACHE_NO_ISAL": "1"}
    build = ("import sys; sys.path.insert(0, 'bincache/_native'); "
             "from _build import ffibuilder; ffibuilder.compile(tmpdir='.')")
    subprocess.run([sys.executable, "-c", build], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-c", ZLIB_CHECK], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["ok"] == "ok True True"
    assert lines["crc"].startswith("error bad CRC in gzip member 1: stored")
    assert lines["isize"].startswith("error wrong length (ISIZE) in gzip member 1")
    assert lines["truncated"].startswith("error truncated gzip stream")
    assert "not another gzip member" in lines["garbage"]
    assert lines["empty"] == "error empty input: not a gzip stream"


# -- the extraction's short path for tar headers ---------------------------------------------
def _parse(cls, buf: bytes):
    try:
        info = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as e:  # noqa: BLE001 - the same failure is what is compared
        return ("error", type(e).__name__, str(e))
    return ("ok", info.name, info.mode, info.uid, info.gid, info.size, info.mtime, info.chksum,
            info.type, info.linkname, info.uname, info.gname, info.devmajor, info.devminor)


@settings(max_examples=150, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=180),
    kind=st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                          tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE, b"L", b"x", b"S"]),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 2**40),
    link=st.text(max_size=60),
    fmt=st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]),
    flips=st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)), max_size=3),
    fix_checksum=st.booleans(),
)
def test_short_header_path_parses_exactly_like_tarfile(name, kind, mode, size, link, fmt, flips,
                                                       fix_checksum):
    from bincache.tar.extract import _FastTarInfo

    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    try:
        data = info.tobuf(fmt, "utf-8", "surrogateescape")
    except ValueError:
        return  # not representable in this format
    buf = bytearray(data[:512])
    for pos, value in flips:  # damaged headers: both must refuse (or accept) them alike
        buf[pos] = value
    if fix_checksum:  # so that damaged fields get past the checksum into the parsing
        buf[148:156] = b"%06o\0 " % (256 + sum(buf) - sum(buf[148:156]))
    assert _parse(_FastTarInfo, bytes(buf)) == _parse(tarfile.TarInfo, bytes(buf))


def test_a_bad_trailer_still_hands_out_the_data_first(backend, tmp_path):
    raw = _payload(50_000)
    g = bytearray(gzip.compress(raw))
    g[-6] ^= 0xFF
    with _file(tmp_path, bytes(g)) as f:
        inf = backend.Inflater(f)
        assert inf.read(len(raw)) == raw  # one inflate call sees data and trailer together
        with pytest.raises(IntegrityError, match="bad CRC"):
            inf.read(1)


def test_extraction_names_the_tarball_and_the_member_a_bad_crc_hit(tmp_path, monkeypatch):
    from bincache.errors import ExtractError
    from bincache.tar.extract import extract_package
    from tests.conftest import place_inflate

    place_inflate(monkeypatch, "inline")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("opt", "opt/p"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        data = os.urandom(40_000)
        info = tarfile.TarInfo("opt/p/last-file")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    g = bytearray(gzip.compress(buf.getvalue()))
    g[-6] ^= 0xFF
    (tmp_path / "pkg.tar.gz").write_bytes(bytes(g))
    (tmp_path / "staging").mkdir()
    with pytest.raises(ExtractError) as info:
        extract_package(tmp_path / "pkg.tar.gz", "/opt/p", tmp_path / "staging")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'pkg.tar.gz'}: bad CRC in gzip member 1")
    assert "(at member 'opt/p/last-file')" in message
