"""The C core's directory walk (TarWriter.add_entries) against pack.py's Python walk.

Hypothesis builds prefixes of files (text, binary, ELF, holding a prefix or not), symlinks
(to a prefix or not), hard links within and across directories, empty and nested directories,
names of any bytes, the buildinfo to leave out, and compares: the same tarball byte for byte,
and the same report of what to relocate.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache._native import _cffi as native
from bincache.tar.pack import pack_prefix

# Names of any bytes but NUL and "/", "." and ".."; some that sort differently as bytes than
# as text (high bytes, invalid UTF-8) and some that are the buildinfo's own.
name_bytes = st.one_of(
    st.binary(min_size=1, max_size=8).filter(lambda b: b"\0" not in b and b"/" not in b
                                              and b not in (b".", b"..")),
    st.sampled_from([b"a", b"B", b"\xff", b"\xc3\xa9", b".spack", b"binary_distribution",
                     b"lib", b"x.so"]),
)
contents = st.sampled_from(["text", "prefix", "elf", "elf-prefix", "binary", "empty"])


@st.composite
def trees(draw, depth=0):
    entries = {}
    for name in draw(st.lists(name_bytes, max_size=6, unique=True)):
        kind = draw(st.sampled_from(["file", "file", "link", "hard", "dir"] if depth < 2
                                    else ["file", "link", "hard"]))
        if kind == "dir":
            entries[name] = ("dir", draw(trees(depth=depth + 1)))
        elif kind == "file":
            entries[name] = ("file", draw(contents), draw(st.booleans()))
        elif kind == "link":
            entries[name] = ("link", draw(st.sampled_from(["prefix", "relative", "absolute",
                                                           "long"])))
        else:
            entries[name] = ("hard",)
    return entries


def build(root: bytes, prefix: bytes, tree: dict, files: list[bytes]) -> None:
    os.makedirs(root, exist_ok=True)
    for name, spec in tree.items():
        path = os.path.join(root, name)
        if spec[0] == "dir":
            build(path, prefix, spec[1], files)
        elif spec[0] == "file":
            data = {"text": b"plain text\n", "prefix": b"at " + prefix + b"/lib\n",
                    "elf": b"\x7fELF\x02\x01\x01" + b"\0" * 9, "binary": b"a\0b",
                    "elf-prefix": b"\x7fELF\x02" + b"\0" * 12 + prefix + b"\0",
                    "empty": b""}[spec[1]]
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, 0o755 if spec[2] else 0o644)
            files.append(path)
        elif spec[0] == "link":
            target = {"prefix": prefix + b"/lib/x", "relative": b"../x",
                      "absolute": b"/usr/lib/y", "long": b"d/" * 700 + prefix}[spec[1]]
            os.symlink(target, path)
        elif files:  # another name of a file made before (in this or another directory)
            os.link(files[len(files) // 2], path)
        else:
            with open(path, "wb") as f:
                f.write(b"lone\n")


class PythonWalk:
    """The native writer with the C walk hidden: pack_prefix takes its Python loop."""

    def __init__(self, writer):
        self._w = writer

    def __getattr__(self, name):
        if name == "add_entries":
            raise AttributeError(name)
        return getattr(self._w, name)


def pack(prefix: str, prefixes: list[str], python_walk: bool):
    buf = io.BytesIO()
    w = native.TarWriter(buf, prefixes=[p.encode() for p in prefixes], level=1, threads=1)
    report = pack_prefix(PythonWalk(w) if python_walk else w, prefix, prefixes)
    w.finish()
    return buf.getvalue(), report


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), buildinfo=st.booleans())
def test_the_c_walk_packs_what_the_python_walk_packs(tree, buildinfo):
    base = tempfile.mkdtemp(prefix="bcwalk")
    try:
        prefix = os.path.join(base, "opt", "p-1.0-aaaa")
        bprefix = os.fsencode(prefix)
        build(bprefix, bprefix, tree, [])
        spack_dir = os.path.join(bprefix, b".spack")
        if buildinfo and not os.path.lexists(os.path.join(spack_dir, b"binary_distribution")) \
                and (os.path.isdir(spack_dir) or not os.path.lexists(spack_dir)):
            # an old buildinfo in the prefix is left out: the pack writes its own
            os.makedirs(spack_dir, exist_ok=True)
            with open(os.path.join(spack_dir, b"binary_distribution"), "wb") as f:
                f.write(b"old: " + bprefix + b"\n")
        prefixes = [prefix, os.path.join(base, "opt", "dep-2.0-bbbb")]
        c_bytes, c_report = pack(prefix, prefixes, python_walk=False)
        py_bytes, py_report = pack(prefix, prefixes, python_walk=True)
        assert c_bytes == py_bytes
        assert c_report == py_report
    finally:
        shutil.rmtree(base)


def test_many_symlinks_and_hard_links_in_one_prefix(tmp_path):
    # More than any small example holds: buffers the walk keeps between entries and
    # directories (link targets, the table of files with several links) grow and are reused.
    prefix = tmp_path / "opt" / "p-1.0-aaaa"
    for d in range(3):
        sub = prefix / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(150):
            (sub / f"s{i:03d}").symlink_to("x" * (i * 7) + (str(prefix) if i % 3 == 0 else ""))
            f = sub / f"f{i:03d}"
            f.write_text(f"{i} {prefix}\n" if i % 5 == 0 else f"{i}\n")
            if d > 0:
                os.link(prefix / "d0" / f"f{i:03d}", sub / f"h{i:03d}")
    prefixes = [str(prefix)]
    c_bytes, c_report = pack(str(prefix), prefixes, python_walk=False)
    py_bytes, py_report = pack(str(prefix), prefixes, python_walk=True)
    assert c_bytes == py_bytes and c_report == py_report
    assert len(c_report.links) == 3 * 50 and len(c_report.hardlinks) == 2 * 150
    assert c_report.files == 150 * 3 and len(c_report.textfiles) == 3 * 30
