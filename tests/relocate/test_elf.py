"""ELF path fields: real gcc-built programs, moved to a shorter and a longer prefix, still run."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from bincache.errors import RelocationError
from bincache.relocate import elf

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

LIB_C = 'const char *foo_where(void) { return "libfoo"; }\n'
PROG_C = textwrap.dedent(
    r"""
    #include <stdio.h>
    #include <string.h>
    const char *foo_where(void);
    int main(void) {
        char line[4096];
        FILE *maps = fopen("/proc/self/maps", "r");
        while (fgets(line, sizeof line, maps))
            if (strstr(line, "libfoo.so")) { printf("loaded %s", strchr(line, '/')); break; }
        printf("%s\n", foo_where());
        return 0;
    }
    """
)


def build(prefix: str, *, new_dtags: bool = True, interp: str | None = None) -> str:
    """libfoo.so and a program linking it through RPATH/RUNPATH into ``prefix``."""
    os.makedirs(f"{prefix}/lib", exist_ok=True)
    os.makedirs(f"{prefix}/bin", exist_ok=True)
    src = os.path.join(prefix, "src")
    os.makedirs(src, exist_ok=True)
    with open(f"{src}/foo.c", "w") as f:
        f.write(LIB_C)
    with open(f"{src}/prog.c", "w") as f:
        f.write(PROG_C)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", f"{prefix}/lib/libfoo.so", f"{src}/foo.c"], check=True
    )
    flags = ["-Wl,--enable-new-dtags" if new_dtags else "-Wl,--disable-new-dtags"]
    if interp:
        flags.append(f"-Wl,--dynamic-linker={interp}")
    subprocess.run(
        ["gcc", "-o", f"{prefix}/bin/prog", f"{src}/prog.c", f"-L{prefix}/lib", "-lfoo",
         f"-Wl,-rpath,{prefix}/lib", *flags],
        check=True,
    )
    return f"{prefix}/bin/prog"


def move(old: str, new: str) -> None:
    shutil.copytree(old, new, symlinks=True)
    shutil.rmtree(old)


def relocate_fields(path: str, old: str, new: str) -> list[elf.ElfEdit]:
    edits = []
    for fld in elf.read_elf_strings(path):
        value = fld.value.replace(old.encode(), new.encode())
        padded = None
        if len(new) <= len(old):
            padded = fld.value.replace(old.encode(), b"/" * (len(old) - len(new)) + new.encode())
        edit = elf.plan_edit(fld, value, padded)
        if edit:
            edits.append(edit)
    elf.apply_edits(path, edits)
    return edits


def run(path: str) -> str:
    return subprocess.run([path], check=True, capture_output=True, text=True, timeout=30).stdout


def readelf_d(path: str) -> str:
    return subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("new_dtags,kind", [(True, "runpath"), (False, "rpath")])
def test_reads_the_search_path_gcc_wrote(tmp_path, new_dtags, kind):
    prefix = str(tmp_path / ("long" * 10) / "pkg")
    prog = build(prefix, new_dtags=new_dtags)
    fields = {f.kind: f for f in elf.read_elf_strings(prog)}
    assert fields[kind].value == f"{prefix}/lib".encode()
    assert fields["interp"].value == b"/lib64/ld-linux-x86-64.so.2"
    with open(prog, "rb") as f:
        f.seek(fields[kind].offset)
        assert f.read(fields[kind].capacity) == f"{prefix}/lib".encode() + b"\0"


@pytest.mark.parametrize("new_dtags,tag", [(True, "RUNPATH"), (False, "RPATH")])
def test_shorter_prefix_is_written_in_place_and_runs(tmp_path, new_dtags, tag):
    old = str(tmp_path / ("long" * 10) / "pkg")
    new = str(tmp_path / "s")
    prog = build(old, new_dtags=new_dtags)
    size = os.path.getsize(prog)
    move(old, new)
    edits = relocate_fields(f"{new}/bin/prog", old, new)
    assert [e.grow for e in edits] == [False]
    assert os.path.getsize(f"{new}/bin/prog") == size
    d = readelf_d(f"{new}/bin/prog")
    assert f"({tag})" in d and f"[{new}/lib]" in d and old not in d
    out = run(f"{new}/bin/prog")
    assert f"loaded {new}/lib/libfoo.so" in out


@pytest.fixture
def growth():
    """Growth is patchelf's (the one way bincache grows a field)."""
    if shutil.which("patchelf") is None:
        pytest.skip("patchelf is not installed")


def readelf_clean(path: str) -> None:
    """readelf reads every header and table without a complaint."""
    proc = subprocess.run(["readelf", "-a", "-W", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("new_dtags,tag", [(True, "RUNPATH"), (False, "RPATH")])
def test_longer_prefix_grows_the_string_table_and_runs(tmp_path, new_dtags, tag, growth):
    old = str(tmp_path / "o")
    new = str(tmp_path / ("much-longer-prefix" * 6))
    build(old, new_dtags=new_dtags)
    move(old, new)
    edits = relocate_fields(f"{new}/bin/prog", old, new)
    assert [e.grow for e in edits] == [True]
    d = readelf_d(f"{new}/bin/prog")
    assert f"({tag})" in d and f"[{new}/lib]" in d
    assert f"loaded {new}/lib/libfoo.so" in run(f"{new}/bin/prog")
    readelf_clean(f"{new}/bin/prog")
    assert old.encode() + b"/lib\0" not in open(f"{new}/bin/prog", "rb").read()


def test_growing_twice_runs_and_stays_small(tmp_path, growth):
    old = str(tmp_path / "o")
    build(old)
    sizes = []
    for new in (str(tmp_path / ("l" * 60)), str(tmp_path / ("m" * 120))):
        move(old, new)
        relocate_fields(f"{new}/bin/prog", old, new)
        assert f"loaded {new}/lib/libfoo.so" in run(f"{new}/bin/prog")
        readelf_clean(f"{new}/bin/prog")
        sizes.append(os.path.getsize(f"{new}/bin/prog"))
        old = new
    # patchelf adds a page-aligned segment per growth (about 4 KiB), not a copy of the file
    assert sizes[1] - sizes[0] < 8192


def test_shared_library_grows_and_still_loads(tmp_path, growth):
    old = str(tmp_path / "o")
    build(old)
    # libfoo gets a RUNPATH of its own, to be grown.
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", f"{old}/lib/libfoo.so", f"{old}/src/foo.c",
                    f"-Wl,-rpath,{old}/lib", "-Wl,--enable-new-dtags"], check=True)
    new = str(tmp_path / ("n" * 100))
    move(old, new)
    relocate_fields(f"{new}/lib/libfoo.so", old, new)
    relocate_fields(f"{new}/bin/prog", old, new)
    assert f"[{new}/lib]" in readelf_d(f"{new}/lib/libfoo.so")
    readelf_clean(f"{new}/lib/libfoo.so")
    assert f"loaded {new}/lib/libfoo.so" in run(f"{new}/bin/prog")


def test_interpreter_inside_the_prefix_is_relocated_both_ways(tmp_path, growth):
    old = str(tmp_path / ("p" * 40))
    os.makedirs(f"{old}/lib")
    shutil.copy("/lib64/ld-linux-x86-64.so.2", f"{old}/lib/ld.so")
    build(old, interp=f"{old}/lib/ld.so")
    assert f"loaded {old}/lib/libfoo.so" in run(f"{old}/bin/prog")
    for new in (str(tmp_path / "q"), str(tmp_path / ("r" * 90))):
        move(old, new)
        relocate_fields(f"{new}/bin/prog", old, new)
        fields = {f.kind: f.value for f in elf.read_elf_strings(f"{new}/bin/prog")}
        assert fields["interp"] == f"{new}/lib/ld.so".encode()
        assert f"loaded {new}/lib/libfoo.so" in run(f"{new}/bin/prog")
        readelf_clean(f"{new}/bin/prog")
        old = new


def test_growth_without_patchelf_is_a_clear_error(tmp_path, monkeypatch):
    old = str(tmp_path / "o")
    new = str(tmp_path / ("longer" * 10))
    build(old)
    monkeypatch.setenv("BINCACHE_PATCHELF", str(tmp_path / "no-such-patchelf"))
    assert elf.patchelf_program() is None
    runpath = next(f for f in elf.read_elf_strings(f"{old}/bin/prog") if f.kind == "runpath")
    problem = elf.growth_problem(f"{old}/bin/prog", [elf.ElfEdit(runpath, b"/x" * 80, True)])
    assert problem is not None and "patchelf" in problem
    with pytest.raises(RelocationError, match="patchelf"):
        relocate_fields(f"{old}/bin/prog", old, new)


def test_shared_tail_keeps_its_bytes_in_place():
    fld = elf.ElfString("rpath", 100, 21, b"/old/long/prefix/lib", tail_shared=True)
    padded = b"/" * 12 + b"/new/lib"
    edit = elf.plan_edit(fld, b"/new/lib", padded)
    assert edit is not None and not edit.grow and edit.new == padded
    clean = elf.plan_edit(elf.ElfString("rpath", 100, 21, b"/old/long/prefix/lib"), b"/new/lib", None)
    assert clean is not None and clean.new == b"/new/lib"
    assert elf.plan_edit(fld, fld.value, fld.value) is None


def test_not_an_elf_file(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x7fELF" + b"\xff" * 60)
    with pytest.raises(elf.ElfFormatError, match="bad"):
        elf.read_elf_strings(str(bad))
