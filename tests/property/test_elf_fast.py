"""The struct reader of ELF path fields (relocate/elffast.py) against pyelftools (relocate/elf.py):
the same fields on real programs and libraries; on damaged headers it answers the same or
declines (None), and never raises."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache.relocate import elf, elffast

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

PROG = r"""
#include <stdio.h>
extern int lib_value(void);
int main(void) { printf("%d\n", lib_value()); return 0; }
"""


def _slow(path: str):
    try:
        return [(s.kind, s.offset, s.capacity, s.value, s.tail_shared) for s in elf.read_elf_strings(path)]
    except elf.ElfFormatError:
        return "error"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("elffast")
    (d / "lib.c").write_text("int lib_value(void) { return 7; }\n")
    (d / "prog.c").write_text(PROG)
    rpath = f"-Wl,-rpath,/opt/some/where/lib:{d}/lib"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "libv.so"), str(d / "lib.c"), rpath],
                   check=True)
    subprocess.run(["gcc", "-o", str(d / "prog"), str(d / "prog.c"), f"-L{d}", "-lv", rpath,
                    "-Wl,--disable-new-dtags"], check=True)
    subprocess.run(["gcc", "-m32", "-o", str(d / "prog32"), str(d / "prog.c"), "-Wl,-rpath,/x/lib",
                    "-nostdlib", "-Wl,-e,main", "-Wl,--unresolved-symbols=ignore-all"],
                   capture_output=True)  # a 32-bit ELF where the toolchain has multilib
    return d


def test_same_fields_as_pyelftools_on_real_files(built):
    files = [str(built / n) for n in ("libv.so", "prog", "prog32") if (built / n).exists()]
    files += sorted(glob.glob("/usr/bin/*"))[:60] + sorted(glob.glob("/usr/lib/x86_64-linux-gnu/lib*.so*"))[:40]
    checked = 0
    for path in files:
        if os.path.islink(path) or not os.path.isfile(path) or not elf.is_elf(path):
            continue
        fast = elffast.read_fields(path)
        assert fast is None or fast == _slow(path), path
        checked += fast is not None
    assert checked >= 2
    fields = {f[0]: f[3] for f in elffast.read_fields(str(built / "prog"))}
    assert fields["rpath"] == f"/opt/some/where/lib:{built}/lib".encode()
    assert fields["interp"].startswith(b"/lib")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_damaged_headers_same_answer_or_declined(built, tmp_path_factory, data):
    seed = (built / "prog").read_bytes()
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        # Where a reader looks: the ELF header, program headers, section headers, .dynamic.
        region = data.draw(st.sampled_from(["ehdr", "phdr", "shdr", "any"]))
        lo, hi = {"ehdr": (0, 64), "phdr": (64, 64 + 13 * 56), "any": (0, len(buf)),
                  "shdr": (max(0, len(buf) - 64 * 40), len(buf))}[region]
        buf[data.draw(st.integers(lo, hi - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("dmg") / "prog"
    path.write_bytes(bytes(buf))
    fast = elffast.read_fields(str(path))
    if fast is not None:
        slow = _slow(str(path))
        if slow != "error":
            assert fast == slow
        for _kind, offset, capacity, _value, _shared in fast:
            assert 0 <= offset and offset + capacity <= len(buf)  # only in-file bytes are written
