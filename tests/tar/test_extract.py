"""Safe extraction: a good package comes out exactly; each hostile tarball is refused, by name,
and nothing is written outside the staging directory."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile

import pytest

from bincache.errors import ExtractError
from bincache.tar.extract import extract_package
from tests.conftest import place_inflate

OLD = "/opt/store/linux-x86_64/pkg-1.0-abcdefabcdefabcdefabcdefabcdefab"
DEP = "/opt/store/linux-x86_64/dep-2.0-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
REL = OLD.lstrip("/")


def member(name, kind="file", data=b"", mode=None, link=""):
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    if kind == "file":
        ti.size = len(data)
        ti.mode = 0o644 if mode is None else mode
    elif kind == "dir":
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755 if mode is None else mode
    elif kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = link
    elif kind == "hardlink":
        ti.type = tarfile.LNKTYPE
        ti.linkname = link
    elif kind == "fifo":
        ti.type = tarfile.FIFOTYPE
    elif kind == "chr":
        ti.type = tarfile.CHRTYPE
    return ti, data


def parents():
    parts = REL.split("/")
    return [member("/".join(parts[: i + 1]), "dir") for i in range(len(parts))]


def make_tarball(path, members, *, with_parents=True):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in (parents() if with_parents else []) + list(members):
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def good_members():
    return [
        member(f"{REL}/bin", "dir"),
        member(f"{REL}/bin/prog", data=b"\x7fELF...", mode=0o755),
        member(f"{REL}/bin/prog-again", "hardlink", link=f"{REL}/bin/prog", mode=0o755),
        member(f"{REL}/lib", "dir", mode=0o555),
        member(f"{REL}/lib/libx.so.1", data=b"lib" * 1000),
        member(f"{REL}/lib/libx.so", "symlink", link="libx.so.1"),
        member(f"{REL}/lib/abs.so", "symlink", link=f"{OLD}/lib/libx.so.1"),
        member(f"{REL}/lib/dep.so", "symlink", link=f"{DEP}/lib/libdep.so"),
        member(f"{REL}/share/deep/dir/f.txt", data=OLD.encode()),
        member(f"{REL}/" + "n" * 150 + "/long-name.txt", data=b"pax"),
    ]


@pytest.fixture
def staging(tmp_path):
    d = tmp_path / "staging"
    d.mkdir()
    return d


def refuse(tmp_path, staging, members, match, **kw):
    tb = make_tarball(tmp_path / "hostile.tar.gz", members, **kw)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExtractError, match=match) as info:
        extract_package(tb, OLD, staging, external_prefixes=[DEP])
    # Nothing appeared beside the staging directory (escapes would land there or in /tmp).
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    return str(info.value)


def test_good_package_comes_out_exactly(tmp_path, staging):
    tb = make_tarball(tmp_path / "p.tar.gz", good_members())
    pkg = extract_package(tb, OLD, staging, external_prefixes=[DEP])
    pkg.apply_dir_modes()
    assert (staging / "bin/prog").read_bytes() == b"\x7fELF..."
    assert stat.S_IMODE(os.stat(staging / "bin/prog").st_mode) == 0o755
    assert os.stat(staging / "bin/prog").st_ino == os.stat(staging / "bin/prog-again").st_ino
    assert pkg.hardlinks == {"bin/prog-again": "bin/prog"}
    assert os.readlink(staging / "lib/libx.so") == "libx.so.1"
    assert os.readlink(staging / "lib/abs.so") == f"{OLD}/lib/libx.so.1"
    assert os.readlink(staging / "lib/dep.so") == f"{DEP}/lib/libdep.so"
    assert stat.S_IMODE(os.stat(staging / "lib").st_mode) == 0o555
    assert (staging / "share/deep/dir/f.txt").read_bytes() == OLD.encode()
    assert (staging / ("n" * 150) / "long-name.txt").read_bytes() == b"pax"
    assert sorted(pkg.files) == sorted(
        ["bin/prog", "lib/libx.so.1", "share/deep/dir/f.txt", "n" * 150 + "/long-name.txt"]
    )
    assert pkg.size == len(b"\x7fELF...") + 3000 + len(OLD) + 3


def test_zstd_tarball_is_read_too(tmp_path, staging):
    import zstandard

    gz = make_tarball(tmp_path / "p.tar.gz", good_members())
    zst = tmp_path / "p.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(gzip.decompress(gz.read_bytes())))
    extract_package(zst, OLD, staging, external_prefixes=[DEP])
    assert (staging / "lib/libx.so.1").read_bytes() == b"lib" * 1000


def test_absolute_member_name_is_refused(tmp_path, staging):
    msg = refuse(tmp_path, staging, [member(f"/{REL}/bin/x", data=b"x")], "absolute")
    assert f"/{REL}/bin/x" in msg


def test_dotdot_traversal_is_refused(tmp_path, staging):
    msg = refuse(tmp_path, staging, [member(f"{REL}/../../../../../../tmp/evil", data=b"x")], r"'\.\.'")
    assert "tmp/evil" in msg


def test_member_outside_the_prefix_is_refused(tmp_path, staging):
    other = "opt/store/linux-x86_64/other-1.0-cccc/bin/x"
    msg = refuse(tmp_path, staging, [member(other, data=b"x")], "outside the package prefix")
    assert other in msg


def test_parent_of_the_prefix_must_be_a_directory(tmp_path, staging):
    refuse(tmp_path, staging, [member("opt/store", data=b"x")], "outside the package prefix",
           with_parents=False)


@pytest.mark.parametrize(
    "target",
    ["../../../../../../../etc/passwd", "/etc/passwd", "/opt/store/linux-x86_64/other/lib"],
)
def test_symlink_escaping_the_prefix_is_refused(tmp_path, staging, target):
    msg = refuse(tmp_path, staging, [member(f"{REL}/lib/evil", "symlink", link=target)], "symlink")
    assert "lib/evil" in msg


def test_symlink_escape_through_another_symlink_is_refused(tmp_path, staging):
    # Lexically `d/y/../..` is the prefix itself; the kernel resolves `y` first (to `d`), so
    # the real target is the prefix's parent.
    msg = refuse(
        tmp_path,
        staging,
        [
            member(f"{REL}/d", "dir"),
            member(f"{REL}/d/x", "symlink", link="y/../.."),
            member(f"{REL}/d/y", "symlink", link="."),
        ],
        "resolves outside",
    )
    assert "d/x" in msg


def test_symlink_loop_is_refused(tmp_path, staging):
    refuse(
        tmp_path,
        staging,
        [member(f"{REL}/a", "symlink", link="b/x"), member(f"{REL}/b", "symlink", link="a/y")],
        "too many levels",
    )


def test_file_through_a_link_is_refused(tmp_path, staging):
    outside = tmp_path / "outside"
    outside.mkdir()
    msg = refuse(
        tmp_path,
        staging,
        [
            member(f"{REL}/evil", "symlink", link=str(outside)),
            member(f"{REL}/evil/pwned", data=b"owned"),
        ],
        "goes through",
    )
    assert "evil/pwned" in msg
    assert list(outside.iterdir()) == []


def test_file_through_an_inside_link_is_refused_too(tmp_path, staging):
    refuse(
        tmp_path,
        staging,
        [
            member(f"{REL}/real", "dir"),
            member(f"{REL}/alias", "symlink", link="real"),
            member(f"{REL}/alias/f", data=b"x"),
        ],
        "goes through",
    )


def test_duplicate_replacing_a_directory_with_a_link_is_refused(tmp_path, staging):
    msg = refuse(
        tmp_path,
        staging,
        [member(f"{REL}/lib", "dir"), member(f"{REL}/lib", "symlink", link="/tmp")],
        "replace a directory",
    )
    assert f"{REL}/lib" in msg


def test_duplicate_file_is_refused(tmp_path, staging):
    refuse(
        tmp_path,
        staging,
        [member(f"{REL}/f", data=b"1"), member(f"{REL}/f", data=b"2")],
        "appears twice",
    )


def test_hardlink_to_outside_is_refused(tmp_path, staging):
    refuse(tmp_path, staging, [member(f"{REL}/hl", "hardlink", link="etc/passwd")], "outside")


def test_hardlink_to_a_symlink_is_refused(tmp_path, staging):
    refuse(
        tmp_path,
        staging,
        [member(f"{REL}/s", "symlink", link="x"), member(f"{REL}/hl", "hardlink", link=f"{REL}/s")],
        "not a regular file",
    )


@pytest.mark.parametrize("kind,word", [("fifo", "fifo"), ("chr", "character device")])
def test_special_members_are_refused(tmp_path, staging, kind, word):
    msg = refuse(tmp_path, staging, [member(f"{REL}/dev0", kind)], word)
    assert "dev0" in msg


def test_member_larger_than_the_stream_is_refused(tmp_path, staging):
    # A header that claims 1 GiB followed by a few bytes and the end of the stream.
    ti = tarfile.TarInfo(f"{REL}/huge")
    ti.size = 1 << 30
    raw = b"".join(t.tobuf(tarfile.PAX_FORMAT) for t, _ in parents()) + ti.tobuf(tarfile.PAX_FORMAT)
    raw += b"x" * 4096
    tb = tmp_path / "huge.tar.gz"
    tb.write_bytes(gzip.compress(raw))
    with pytest.raises(ExtractError, match="huge") as info:
        extract_package(tb, OLD, staging)
    assert "truncated" in str(info.value) or "short" in str(info.value)


@pytest.mark.parametrize("mode", ["thread", "inline"])
def test_truncated_gzip_is_refused(tmp_path, staging, monkeypatch, mode):
    place_inflate(monkeypatch, mode)
    members = [member(f"{REL}/big{i}", data=os.urandom(50_000)) for i in range(4)]
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    data = tb.read_bytes()
    tb.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExtractError, match="truncated") as info:
        extract_package(tb, OLD, staging)
    assert "big" in str(info.value)


@pytest.mark.parametrize("mode", ["thread", "inline"])
def test_damaged_gzip_is_refused(tmp_path, staging, monkeypatch, mode):
    place_inflate(monkeypatch, mode)
    members = [member(f"{REL}/big{i}", data=os.urandom(50_000)) for i in range(4)]
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    data = bytearray(tb.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 / size trailer
    tb.write_bytes(bytes(data))
    with pytest.raises(ExtractError, match="damaged|incorrect|check"):
        extract_package(tb, OLD, staging)


def test_not_a_compressed_tarball(tmp_path, staging):
    tb = tmp_path / "plain.tar"
    tb.write_bytes(b"hello world, no magic here" * 30)
    with pytest.raises(ExtractError, match="not a gzip or zstd"):
        extract_package(tb, OLD, staging)


def test_staging_must_be_empty(tmp_path, staging):
    (staging / "leftover").write_text("x")
    tb = make_tarball(tmp_path / "p.tar.gz", good_members())
    with pytest.raises(ExtractError, match="not empty"):
        extract_package(tb, OLD, staging)


BUILDINFO = f"{REL}/.spack/binary_distribution"


def test_prefix_is_learned_from_the_buildinfo_member(tmp_path, staging):
    members = good_members() + [member(f"{REL}/.spack", "dir"), member(BUILDINFO, data=b"{}")]
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    seen = []

    def deps(prefix_dir):
        seen.append(sorted(os.listdir(prefix_dir)))
        return [DEP]

    pkg = extract_package(tb, None, staging, external_prefixes=deps)
    assert pkg.old_prefix == OLD and pkg.staging == str(staging)
    assert (staging / "bin/prog").read_bytes() == b"\x7fELF..."
    assert (staging / ".spack/binary_distribution").read_bytes() == b"{}"
    assert pkg.hardlinks == {"bin/prog-again": "bin/prog"}
    assert seen == [[".spack", "bin", "lib", "n" * 150, "share"]]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".extract-")]  # no scratch left


def test_learned_prefix_still_refuses_members_outside_it(tmp_path, staging):
    members = [member(f"{REL}/ok", data=b"1"), member("opt/store/other/file", data=b"x"),
               member(BUILDINFO, data=b"{}")]
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    with pytest.raises(ExtractError, match="opt/store/other/file.*outside the package prefix"):
        extract_package(tb, None, staging)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".extract-")]
    assert os.listdir(staging) == []


def test_learned_prefix_needs_one_buildinfo(tmp_path, staging):
    tb = make_tarball(tmp_path / "p.tar.gz", [member(f"{REL}/ok", data=b"1")])
    with pytest.raises(ExtractError, match="not a package tarball"):
        extract_package(tb, None, staging)


def test_learned_prefix_symlink_into_an_undeclared_prefix_is_refused(tmp_path, staging):
    members = [member(f"{REL}/lib", "dir"),
               member(f"{REL}/lib/x.so", "symlink", link=f"{DEP}/lib/x.so"),
               member(BUILDINFO, data=b"{}")]
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    with pytest.raises(ExtractError, match="lib/x.so.*points outside"):
        extract_package(tb, None, staging, external_prefixes=lambda _: [])
    again = tmp_path / "again"
    again.mkdir()
    extract_package(tb, None, again, external_prefixes=lambda _: [DEP])
    assert os.readlink(tmp_path / "again/lib/x.so") == f"{DEP}/lib/x.so"


INFLATE_MODES = ["thread", "inline"]


@pytest.mark.parametrize("mode", INFLATE_MODES)
def test_every_inflate_mode_gives_the_same_files(tmp_path, staging, monkeypatch, mode):
    place_inflate(monkeypatch, mode)
    members = [member(f"{REL}/big{i}", data=os.urandom(300_000)) for i in range(3)]
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    extract_package(tb, OLD, staging)
    for i, (_ti, data) in enumerate(members):
        assert (staging / f"big{i}").read_bytes() == data


@pytest.mark.parametrize("payload", [b"", b"\xff" * 5000], ids=["empty", "junk"])
def test_gzip_of_something_that_is_not_tar(tmp_path, staging, payload):
    tb = tmp_path / "p.tar.gz"
    tb.write_bytes(gzip.compress(payload))
    with pytest.raises(ExtractError, match="damaged tarball: not a valid tar stream"):
        extract_package(tb, OLD, staging)


@pytest.mark.parametrize("mode", INFLATE_MODES)
def test_headers_straddling_inflate_chunks_are_all_read(tmp_path, staging, monkeypatch, mode):
    # Incompressible members of sizes around the 1 MiB inflate chunk put headers across chunk
    # boundaries; every member must come out (a short read once ended the archive silently).
    place_inflate(monkeypatch, mode)
    import random

    rng = random.Random(7)
    members = [member(f"{REL}/f{i:03d}", data=rng.randbytes((1 << 20) - 700 + rng.randrange(1400)))
               for i in range(6)]
    members += [member(f"{REL}/small{i:03d}", data=b"s" * i) for i in range(300)]
    members += [member(f"{REL}/g{i:03d}", data=rng.randbytes(rng.randrange(3 << 20))) for i in range(4)]
    members.append(member(f"{REL}/.spack/binary_distribution", data=b"{}"))
    tb = make_tarball(tmp_path / "p.tar.gz", members)
    pkg = extract_package(tb, None, staging)
    assert len(pkg.files) == len(members)
    for ti, data in members:
        rel = ti.name[len(REL) + 1 :]
        assert (staging / rel).read_bytes() == data
