"""Property tests: the C core against the pure-Python twin and against Python's tarfile."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bincache._native import _pure as pure
from bincache.errors import CannotGrowString

native = pytest.importorskip("bincache._native._cffi", reason="the C core is not built")

CHUNK = native.CHUNK_SIZE
READ_PIECE = 256 << 10

# A tiny alphabet makes overlapping prefixes, prefixes of prefixes and near misses common.
small_bytes = (
    st.binary(min_size=0, max_size=300)
    .map(lambda b: bytes(c % 4 for c in b))
    .map(lambda b: b.translate(bytes.maketrans(b"\0\1\2\3", b"/ab\0")))
)
small_prefix = st.text(alphabet="/ab\0", min_size=1, max_size=8).map(str.encode)
prefix_lists = st.lists(small_prefix, min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(data=small_bytes, prefixes=prefix_lists)
def test_scan_buffer_matches_the_pure_twin(data, prefixes):
    assert native.scan_buffer(data, prefixes) == pure.scan_buffer(data, prefixes)


@settings(max_examples=200, deadline=None)
@given(data=small_bytes, prefixes=prefix_lists, cuts=st.lists(st.integers(0, 300), max_size=40))
def test_streaming_scan_finds_matches_across_any_cut(data, prefixes, cuts):
    cuts = sorted(cuts)
    assert native._scan_pieces(data, prefixes, cuts) == pure.scan_buffer(data, prefixes)


def _interesting_offsets(total: int) -> list[int]:
    """Offsets near where the writer's reads and chunks end (the file data starts after a
    512-byte header, so chunk ends fall 512 bytes early in file offsets)."""
    out = []
    for base in range(READ_PIECE, total, READ_PIECE):
        out += [base, base - 512]
    return out


@st.composite
def big_buffers(draw):
    size = draw(st.integers(CHUNK - 4096, 2 * CHUNK + 4096))
    prefixes = draw(
        st.lists(
            st.one_of(
                st.binary(min_size=3, max_size=40),
                st.builds(
                    lambda n, t: b"/opt/spack/" + b"p" * n + t,
                    st.integers(0, 700),
                    st.binary(max_size=3),
                ),
            ),
            min_size=1,
            max_size=4,
        )
    )
    # backgrounds: near misses of the long prefixes, or all byte values (NULs included)
    background = draw(st.sampled_from([b"/opt/spack/", b"/opt/spack/ppp\0", bytes(range(256))]))
    buf = bytearray(background * (size // len(background) + 1))[:size]
    spots = _interesting_offsets(size)
    for _ in range(draw(st.integers(1, 12))):
        p = draw(st.sampled_from(prefixes))
        at = draw(st.sampled_from(spots)) + draw(st.integers(-len(p) - 2, 2))
        at = max(0, min(size - len(p), at))
        buf[at : at + len(p)] = p
    return bytes(buf), prefixes


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=big_buffers())
def test_writer_scan_finds_prefixes_across_read_and_chunk_boundaries(case, tmp_path_factory):
    data, prefixes = case
    path = tmp_path_factory.mktemp("big") / "f"
    path.write_bytes(data)
    expected = pure.scan_buffer(data, prefixes)
    w = native.TarWriter(io.BytesIO(), prefixes=prefixes, threads=1)
    # a member before it shifts where the chunks end within the file
    w.add_bytes("opt/first", b"x" * 1000, 0o644)
    assert w.add_file("opt/f", str(path), 0o644).hits == expected
    assert w.add_bytes("opt/g", data, 0o644).hits == expected
    cuts = _interesting_offsets(len(data))
    assert native._scan_pieces(data, prefixes, sorted(cuts)) == expected


pairs_strategy = st.lists(
    st.tuples(small_prefix, st.text(alphabet="/xyz", min_size=0, max_size=9).map(str.encode)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(data=small_bytes, pairs=pairs_strategy)
def test_relocate_buffer_matches_the_pure_twin_byte_for_byte(data, pairs):
    a, b = bytearray(data), bytearray(data)
    try:
        expected = pure.relocate_buffer(a, pairs)
    except CannotGrowString:
        with pytest.raises(CannotGrowString):
            native.relocate_buffer(b, pairs)
        assert b == bytearray(data)  # nothing written
        return
    assert native.relocate_buffer(b, pairs) == expected
    assert b == a
    assert len(b) == len(data)


name_part = st.text(alphabet="abcXYZ019._-\u00e9", min_size=1, max_size=40)
member_names = st.lists(name_part, min_size=1, max_size=8).map("/".join)
members = st.lists(
    st.tuples(
        st.sampled_from(["file", "dir", "symlink", "hardlink"]),
        member_names,
        st.binary(max_size=3000),
        st.integers(0, 0o7777),
        st.text(alphabet="ab/.", min_size=1, max_size=160),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda m: m[1],
)


@settings(max_examples=100, deadline=None)
@given(members=members, level=st.sampled_from([0, 1, 3, 6]))
def test_tar_writer_output_reads_back_with_tarfile(members, level):
    buf = io.BytesIO()
    w = native.TarWriter(buf, prefixes=[b"/ab"], level=level, threads=2)
    pw = pure.TarWriter(io.BytesIO(), prefixes=[b"/ab"])
    first_file = None
    for kind, name, data, mode, target in members:
        for writer in (w, pw):
            if kind == "file":
                scan = writer.add_bytes(name, data, mode)
            elif kind == "dir":
                writer.add_dir(name, mode)
            elif kind == "symlink":
                writer.add_symlink(name, target)
            elif first_file is not None:
                writer.add_hardlink(name, first_file, mode)
            else:
                writer.add_dir(name, mode)
        if kind == "file":
            assert scan.hits == pure.scan_buffer(data, [b"/ab"])
            first_file = first_file or name
    result = w.finish()
    presult = pw.finish()
    raw = gzip.decompress(buf.getvalue())
    assert result.diff_id == presult.diff_id == hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        got = {m.name: m for m in tf.getmembers()}
        assume(len(got) == len(members))
        first_file = None
        for kind, name, data, mode, target in members:
            m = got[name]
            assert m.mtime == 0 and m.uid == 0 and m.uname == ""
            if kind == "file":
                assert m.isfile() and m.mode == mode
                assert tf.extractfile(m).read() == data
                first_file = first_file or name
            elif kind == "symlink":
                assert m.issym() and m.linkname == target
            elif kind == "hardlink" and first_file is not None:
                assert m.islnk() and m.linkname == first_file and m.mode == mode
            else:
                assert m.isdir() and m.mode == mode


def _add_members(writer, members) -> None:
    """Files (as bytes), symlinks and directories; hardlinks become directories."""
    for kind, name, data, mode, target in members:
        if kind == "file":
            writer.add_bytes(name, data, mode)
        elif kind == "symlink":
            writer.add_symlink(name, target)
        else:
            writer.add_dir(name, mode)


def _unzstd(data: bytes) -> bytes:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(members=members, level=st.sampled_from([1, 3, 9, 19]),
       big=st.integers(0, 3 * CHUNK + 7), threads=st.sampled_from([1, 2, 3]))
def test_zstd_writer_gives_the_tar_stream_of_the_pure_twin(members, level, big, threads):
    # Frames are cut at fixed pieces: any number of threads gives the same bytes, and the
    # stream decompresses (frame after frame) to exactly the twin's tar stream.
    if not native.codec_info("zstd")[0]:
        pytest.skip("the C core was built without libzstd")
    outs = []
    for t in (threads, 1):
        w = native.TarWriter(io.BytesIO(), prefixes=[b"/ab"], codec="zstd", level=level, threads=t)
        outs.append(w)
    pw = pure.TarWriter(io.BytesIO(), prefixes=[b"/ab"], codec="zstd", level=level)
    payload = bytes(range(256)) * (big // 256) + b"/ab" * (big % 256)
    for writer in (*outs, pw):
        _add_members(writer, members)
        writer.add_bytes("big", payload, 0o644)
    bufs = [w._out for w in outs]
    results = [w.finish() for w in outs]
    pbuf = pw._out
    presult = pw.finish()
    assert bufs[0].getvalue() == bufs[1].getvalue()  # thread count does not change the bytes
    raw = _unzstd(bufs[0].getvalue())
    assert raw == _unzstd(pbuf.getvalue())
    assert results[0].diff_id == presult.diff_id == hashlib.sha256(raw).hexdigest()
    assert results[0].digest == hashlib.sha256(bufs[0].getvalue()).hexdigest()
    assert results[0].compressed_size == len(bufs[0].getvalue())
    assert results[0].uncompressed_size == len(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.extractfile("big").read() == payload


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), level=st.sampled_from([1, 3, 19]),
       cut=st.integers(0, 10_000), kind=st.sampled_from(["native", "zstandard"]))
def test_the_frame_walker_knows_a_whole_stream_from_a_cut_one(data, level, cut, kind):
    """bincache.tar.zstd against the reference decoder: every whole stream (the core's frames,
    or python-zstandard's) reads back, and every strict prefix of it is an error."""
    import zstandard

    from bincache.errors import ExtractError
    from bincache.tar.zstd import chunks

    if kind == "native":
        if not native.codec_info("zstd")[0]:
            pytest.skip("the C core was built without libzstd")
        whole = native.compress_buffer(data * 300, level=level, codec="zstd", threads=2)
    else:
        whole = zstandard.ZstdCompressor(level=level, write_checksum=bool(cut % 2)).compress(data)
    assume(whole)  # no input, no frame from the core: nothing a tarball could be
    expected = _unzstd(whole)
    assert b"".join(chunks(io.BytesIO(whole), 1 << 16)) == expected
    cut = cut % len(whole)
    with pytest.raises(ExtractError):
        b"".join(chunks(io.BytesIO(whole[:cut]), 1 << 16))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(streams=st.lists(st.tuples(members, st.integers(0, 3 * CHUNK + 7),
                                  st.sampled_from([("gzip", 1), ("gzip", 2), ("gzip", 6),
                                                   ("zstd", 3)])),
                        min_size=1, max_size=4),
       pool_threads=st.sampled_from([1, 2, 3]), diff_id=st.booleans())
def test_writers_sharing_a_pool_at_once_give_the_bytes_of_a_lone_writer(streams, pool_threads,
                                                                         diff_id):
    # A push packs several packages at once on one pool of deflate threads: pieces of every
    # writer (any codec, any level) interleave on the same threads, and each writer's output is
    # still exactly the single-threaded one; its tar stream is the pure twin's.
    import threading

    if not native.codec_info("zstd")[0]:
        streams = [s for s in streams if s[2][0] == "gzip"]
        assume(streams)

    def feed(writer, case):
        kinds, big, _codec = case
        _add_members(writer, kinds)
        writer.add_bytes("big", bytes(range(256)) * (big // 256) + b"/ab" * (big % 256), 0o644)
        return writer.finish()

    import tempfile

    with native.CompressPool(pool_threads) as pool:
        outs = [io.BytesIO() for _ in streams]
        results: list = [None] * len(streams)

        def run(i):
            # To a descriptor, the pool's threads hash and write the pieces; to a file
            # object, the calling thread does.
            codec, level = streams[i][2]
            with tempfile.TemporaryFile() as f:
                out = f.fileno() if i % 2 else outs[i]
                w = native.TarWriter(out, prefixes=[b"/ab"], codec=codec, level=level,
                                     pool=pool, diff_id=diff_id)
                results[i] = feed(w, streams[i])
                if i % 2:
                    f.seek(0)
                    outs[i].write(f.read())

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(streams))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, case in enumerate(streams):
        codec, level = case[2]
        alone = io.BytesIO()
        aresult = feed(native.TarWriter(alone, prefixes=[b"/ab"], codec=codec, level=level,
                                        threads=1), case)
        pbuf = io.BytesIO()
        presult = feed(pure.TarWriter(pbuf, prefixes=[b"/ab"], codec=codec, level=level), case)
        assert outs[i].getvalue() == alone.getvalue()
        raw = (gzip.decompress if codec == "gzip" else _unzstd)(outs[i].getvalue())
        assert raw == (gzip.decompress if codec == "gzip" else _unzstd)(pbuf.getvalue())
        assert results[i].digest == aresult.digest
        assert results[i].diff_id == (aresult.diff_id if diff_id else "")
        assert aresult.diff_id == presult.diff_id == hashlib.sha256(raw).hexdigest()
        assert results[i].uncompressed_size == len(raw)
        assert results[i].compressed_size == len(outs[i].getvalue())


dir_files = st.lists(
    st.tuples(st.text(alphabet="abcXYZ019._-\u00e9", min_size=1, max_size=30)
              .filter(lambda n: n not in (".", "..")), small_bytes, st.booleans()),
    min_size=1,
    max_size=8,
    unique_by=lambda f: f[0],
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=dir_files, prefixes=prefix_lists)
def test_add_file_at_gives_the_members_of_the_file_read_by_plain_python(files, prefixes, tmp_path_factory):
    # The walk's form (relative to an open directory) against a plain reading of each file
    # (its bytes, Spack's mode from its owner-execute bit) through the pure twin's add_bytes.
    top = tmp_path_factory.mktemp("dir")
    for name, data, exe in files:
        (top / name).write_bytes(data)
        (top / name).chmod(0o700 if exe else 0o600)
    outs = [io.BytesIO(), io.BytesIO(), io.BytesIO()]
    ref = pure.TarWriter(outs[2], prefixes=prefixes)
    writers = [native.TarWriter(outs[0], prefixes=prefixes, threads=1),
               pure.TarWriter(outs[1], prefixes=prefixes)]
    dirfd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, _data, exe in files:
            expected = ref.add_bytes(f"p/{name}", (top / name).read_bytes(), 0o755 if exe else 0o644)
            for w in writers:
                scan = w.add_file_at(f"p/{name}", dirfd, str(top), name, -1)
                assert (scan.kind, scan.size, scan.hits, scan.links) == (
                    expected.kind, expected.size, expected.hits, 1)
                assert scan.inode == (os.stat(top / name).st_dev, os.stat(top / name).st_ino)
    finally:
        os.close(dirfd)
    want = ref.finish().diff_id
    assert [w.finish().diff_id for w in writers] == [want, want]
    raw = [gzip.decompress(o.getvalue()) for o in outs]
    assert raw[0] == raw[1] == raw[2] and hashlib.sha256(raw[2]).hexdigest() == want
