"""Relocation plans and their application on a staged prefix (no ELF here: see test_elf)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from bincache.errors import CannotGrowString, RelocationError
from bincache.relocate.plan import (
    BuildInfo,
    TextRelocator,
    apply_relocation,
    fix_shebang,
    plan_relocation,
    prefix_pairs,
)
from bincache.tar.extract import ExtractedPackage

OLD = "/opt/store/linux-x86_64/pkg-1.0-aaaa"
DEP = "/opt/store/linux-x86_64/dep-1.0-bbbb"
ROOT = "/opt/store"


def test_text_rule_is_spacks_boundary_rule():
    text = TextRelocator(prefix_pairs({"/a/opt": "/new/place"}))
    src = b"/a/opt/lib x=/a/opt -I/a/opt/include /b/a/opt/lib a-/a/opt _/a/opt\n"
    assert text(src) == (
        b"/new/place/lib x=/new/place -I/new/place/include /b/a/opt/lib "
        b"a-/new/place _/new/place\n"
    )


def test_longest_old_prefix_wins():
    text = TextRelocator(prefix_pairs({"/a": "/X", "/a/sub": "/Y", "/a/sub/deeper": "/Z"}))
    assert text(b"/a/sub/deeper/f /a/sub/g /a/h") == b"/Z/f /Y/g /X/h"


def test_identity_pairs_are_dropped_and_order_is_by_length():
    pairs = prefix_pairs({"/a": "/a", "/bb": "/c", "/dddd": "/e"})
    assert pairs == [(b"/dddd", b"/e"), (b"/bb", b"/c")]


@pytest.mark.parametrize(
    "line,expected",
    [
        (b"#!" + b"/p" * 70 + b"/bin/python3\n", b"#!/usr/bin/env python3\n"),
        (b"#!" + b"/p" * 70 + b"/bin/perl -w\n", b"#!/usr/bin/env -S perl -w\n"),
        (b"#!/usr/bin/env " + b"/p" * 70 + b"/bin/tclsh\n", b"#!/usr/bin/env tclsh\n"),
        (b"#!/short/bin/sh\n", b"#!/short/bin/sh\n"),
    ],
)
def test_long_shebang_falls_back_to_env(line, expected):
    new, changed = fix_shebang(line + b"echo hi\n")
    assert new == expected + b"echo hi\n"
    assert changed == (line != expected)


def test_buildinfo_from_spack_keys_only():
    info = BuildInfo.from_dict(
        {
            "buildpath": ROOT,
            "relative_prefix": "linux-x86_64/pkg-1.0-aaaa",
            "relocate_textfiles": ["bin/script"],
            "relocate_binaries": ["lib/libx.so"],
            "relocate_links": [],
            "hash_to_prefix": {"aaaa": OLD},
        }
    )
    assert info.old_prefix == OLD and info.store_root == ROOT
    assert info.offsets == {} and info.textfiles == ["bin/script"]
    with pytest.raises(RelocationError, match="does not say where"):
        BuildInfo.from_dict({"relocate_textfiles": []})


def stage(tmp_path, files: dict[str, bytes], *, hardlinks=None, symlinks=None, modes=None):
    root = tmp_path / "stage"
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, (modes or {}).get(rel, 0o644))
    for rel, first in (hardlinks or {}).items():
        os.link(root / first, root / rel)
    for rel, target in (symlinks or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / rel)
    return ExtractedPackage(
        staging=str(root),
        old_prefix=OLD,
        files=list(files),
        symlinks=dict(symlinks or {}),
        hardlinks=dict(hardlinks or {}),
    )


def binary_with(*strings: bytes) -> tuple[bytes, list[int]]:
    data = bytearray(b"\0\1\2\3" * 16)
    offsets = []
    for s in strings:
        offsets.append(len(data))
        data += s + b"\0" + b"\xff" * 9
    return bytes(data), offsets


def info_for(binaries=(), textfiles=(), offsets=None, prefixes=(OLD, DEP)):
    return BuildInfo(
        old_prefix=OLD,
        store_root=ROOT,
        hash_to_prefix={"aaaa": OLD, "bbbb": DEP},
        textfiles=list(textfiles),
        binaries=list(binaries),
        links=[],
        prefixes=list(prefixes),
        offsets=offsets or {},
    )


NEW = "/n/pkg"
NEW_DEP = "/n/dep"
SHORT = {OLD: NEW, DEP: NEW_DEP, ROOT: "/n"}


def test_shorter_prefix_relocates_text_binary_links_and_hardlinks(tmp_path):
    blob, offs = binary_with(f"{OLD}/share/data".encode(), f"{DEP}/lib".encode())
    pkg = stage(
        tmp_path,
        {
            "bin/script": f"#!{OLD}/bin/python\nimport sys  # {DEP}/lib\n".encode(),
            "lib/blob.bin": blob,
        },
        hardlinks={"lib/blob-hl.bin": "lib/blob.bin"},
        symlinks={"lib/abs": f"{OLD}/lib/blob.bin", "lib/rel": "blob.bin", "lib/d": f"{DEP}/lib"},
        modes={"bin/script": 0o755, "lib/blob.bin": 0o640},
    )
    info = info_for(
        binaries=["lib/blob.bin"],
        textfiles=["bin/script"],
        offsets={"lib/blob.bin": [[0, offs[0]], [1, offs[1]]]},
    )
    plan = plan_relocation(pkg, info, SHORT)
    assert plan.problems == [] and plan.unrelocated == []
    [fp_text, fp_bin] = plan.files
    assert not fp_bin.rescanned and fp_bin.aliases == ["lib/blob-hl.bin"]
    report = apply_relocation(plan)
    root = tmp_path / "stage"
    assert (root / "bin/script").read_bytes() == f"#!{NEW}/bin/python\nimport sys  # {NEW_DEP}/lib\n".encode()
    out = (root / "lib/blob.bin").read_bytes()
    assert len(out) == len(blob)
    pad = b"/" * (len(OLD) - len(NEW))
    assert out[offs[0] :].startswith(pad + f"{NEW}/share/data\0".encode())
    assert out[offs[1] :].startswith(b"/" * (len(DEP) - len(NEW_DEP)) + f"{NEW_DEP}/lib\0".encode())
    assert os.stat(root / "lib/blob.bin").st_ino == os.stat(root / "lib/blob-hl.bin").st_ino
    assert stat.S_IMODE(os.stat(root / "lib/blob.bin").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(root / "bin/script").st_mode) == 0o755
    assert os.readlink(root / "lib/abs") == f"{NEW}/lib/blob.bin"
    assert os.readlink(root / "lib/rel") == "blob.bin"
    assert os.readlink(root / "lib/d") == f"{NEW_DEP}/lib"
    assert (report.text_files, report.binary_files, report.links, report.patches) == (1, 1, 2, 2)
    assert not [p for p in os.listdir(root / "lib") if "bincache" in p]  # no temp files left


def test_stale_offsets_fall_back_to_a_scan(tmp_path):
    blob, offs = binary_with(f"{OLD}/x".encode())
    pkg = stage(tmp_path, {"lib/b": blob})
    info = info_for(binaries=["lib/b"], offsets={"lib/b": [[0, offs[0] + 3]]})
    plan = plan_relocation(pkg, info, SHORT)
    assert plan.files[0].rescanned and plan.files[0].patches == [(offs[0], OLD.encode(), NEW.encode())]
    apply_relocation(plan)
    assert NEW.encode() + b"/x\0" in (tmp_path / "stage/lib/b").read_bytes()


def test_longer_prefix_is_refused_naming_file_and_lengths_and_nothing_changes(tmp_path):
    blob, offs = binary_with(f"{OLD}/etc/config".encode())
    pkg = stage(tmp_path, {"lib/b": blob, "share/t.txt": f"{OLD}\n".encode()})
    info = info_for(binaries=["lib/b"], textfiles=["share/t.txt"])
    longer = {OLD: "/a/much/longer/prefix/than/before/pkg-1.0-aaaa", DEP: NEW_DEP}
    plan = plan_relocation(pkg, info, longer)
    assert [u.path for u in plan.unrelocated] == ["lib/b"]
    with pytest.raises(CannotGrowString) as e:
        apply_relocation(plan)
    msg = str(e.value)
    assert "lib/b" in msg and str(len(OLD)) in msg and str(len(longer[OLD])) in msg
    assert (tmp_path / "stage/lib/b").read_bytes() == blob
    assert (tmp_path / "stage/share/t.txt").read_bytes() == f"{OLD}\n".encode()


def test_allow_unrelocated_installs_and_lists_what_was_left(tmp_path):
    blob, offs = binary_with(f"{OLD}/etc/config".encode(), f"{DEP}/lib".encode())
    pkg = stage(tmp_path, {"lib/b": blob, "share/t.txt": f"{OLD}\n".encode()})
    info = info_for(binaries=["lib/b"], textfiles=["share/t.txt"])
    longer_root = "/a/much/longer/prefix/than/before/pkg-1.0-aaaa"
    plan = plan_relocation(pkg, info, {OLD: longer_root, DEP: NEW_DEP})
    report = apply_relocation(plan, allow_unrelocated=True)
    assert [(u.path, u.offset, u.old) for u in report.unrelocated] == [("lib/b", offs[0], OLD)]
    assert str(len(longer_root)) in str(report.unrelocated[0])
    out = (tmp_path / "stage/lib/b").read_bytes()
    assert OLD.encode() + b"/etc/config" in out  # left as is, and reported
    assert NEW_DEP.encode() + b"/lib\0" in out  # the dependency's (shorter) still moved
    assert (tmp_path / "stage/share/t.txt").read_bytes() == f"{longer_root}\n".encode()


def test_missing_listed_file_is_a_problem(tmp_path):
    pkg = stage(tmp_path, {"a.txt": b"x"})
    plan = plan_relocation(pkg, info_for(textfiles=["a.txt", "gone.txt"]), SHORT, display_root="/n/pkg")
    assert plan.problems == ["/n/pkg/gone.txt: listed for relocation but not in the package"]
    with pytest.raises(RelocationError, match="gone.txt"):
        apply_relocation(plan)


def test_same_prefix_is_a_no_op(tmp_path):
    pkg = stage(tmp_path, {"a.txt": OLD.encode()})
    plan = plan_relocation(pkg, info_for(textfiles=["a.txt"]), {OLD: OLD, DEP: DEP})
    assert plan.files == [] and plan.links == []


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_debug_info_paths_do_not_block_a_longer_prefix(tmp_path):
    # Debug info names the source and build directories; the loader never maps it, so a path
    # there that cannot grow is reported, not refused.
    old = str(tmp_path / "o")
    os.makedirs(f"{old}/src")
    os.makedirs(f"{old}/lib")
    with open(f"{old}/src/x.c", "w") as f:
        f.write("int x(void) { return 1; }\n")
    subprocess.run(["gcc", "-g", "-shared", "-fPIC", "-o", f"{old}/lib/libx.so", f"{old}/src/x.c"],
                   check=True, cwd=f"{old}/src")
    data = open(f"{old}/lib/libx.so", "rb").read()
    assert old.encode() in data
    pkg = stage(tmp_path, {"lib/libx.so": data})
    info = BuildInfo(old_prefix=old, store_root=str(tmp_path), hash_to_prefix={"h": old},
                     textfiles=[], binaries=["lib/libx.so"], links=[])
    plan = plan_relocation(pkg, info, {old: str(tmp_path / ("longer" * 8))})
    assert plan.unrelocated and all(u.section.startswith(".debug") for u in plan.unrelocated)
    report = apply_relocation(plan)  # no allow_unrelocated needed
    assert "not loaded at run time" in str(report.unrelocated[0])
