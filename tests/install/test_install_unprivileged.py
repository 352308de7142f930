"""Installs without root's powers. CI runs as root, which writes any file whatever its mode, so
the install runs here with CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER dropped: it meets
file modes as any other user does. The package comes from another producer that keeps read-only
modes (0444 text, 0555 program) on files relocation must patch; bincache's own packer writes
Spack's 0644/0755."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import sys
import tarfile

import pytest

from bincache import _native, create
from bincache.mirror import open_cache, resolve
from bincache.tar.pack import buildinfo, pack_prefix, write_buildinfo
from bincache.tree import InstallTree, register_prefix
from tests.conftest import REPO, run_cli

DROP = "-dac_override,-dac_read_search,-fowner"

PROGRAM_C = r"""
#include <stdio.h>
int main(void) { printf("data in %s\n", DATA); return 0; }
"""


class _KeepModes:
    """A tar writer as another producer uses it: each file's mode as it is on disk."""

    def __init__(self, writer):
        self._w = writer

    def add_file(self, name, path, mode):
        return self._w.add_file(name, path, stat.S_IMODE(os.lstat(path).st_mode))

    def add_file_at(self, name, dirfd, directory, base, mode):
        mode = stat.S_IMODE(os.lstat(base, dir_fd=dirfd).st_mode)
        return self._w.add_file_at(name, dirfd, directory, base, mode)

    def __getattr__(self, name):
        if name == "add_entries":  # the C walk's modes are Spack's: pack file by file
            raise AttributeError(name)
        return getattr(self._w, name)


def push_keeping_modes(inst, tree, mirror: str) -> None:
    prefixes, hash_to_prefix = create.old_prefixes(inst, tree)
    out_path = os.path.join(mirror + "-staging.tar.gz")
    with open(out_path, "wb") as out:
        writer = _native.TarWriter(out.fileno(), prefixes=[p.encode() for p in prefixes])
        report = pack_prefix(_KeepModes(writer), inst.prefix, prefixes)
        info = buildinfo(report, inst.prefix, tree.root, prefixes, hash_to_prefix)
        write_buildinfo(writer, inst.prefix, info)
        result = writer.finish()
    packed = create.PackedPackage(spec=inst.spec, nodes=inst.nodes, prefix=inst.prefix,
                                  specfile=create._buildcache_specfile(inst.nodes, result.digest),
                                  tarball=out_path, result=result, buildinfo=info)
    open_cache(resolve(mirror, "push")).push_package(packed, None)
    os.unlink(out_path)


def _unprivileged(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's write-anything capability")
    return subprocess.run(["setpriv", f"--bounding-set={DROP}", f"--inh-caps={DROP}",
                           sys.executable, "-m", "bincache", *args],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO),
                          stdin=subprocess.DEVNULL)


def test_a_read_only_file_to_relocate_installs_and_keeps_its_mode(tmp_path):
    root = str(tmp_path / ("build" + "_" * 100))
    prefix = os.path.join(root, "tool-1.0")
    os.makedirs(os.path.join(prefix, "bin"))
    os.makedirs(os.path.join(prefix, "share"))
    src = tmp_path / "p.c"
    src.write_text(PROGRAM_C)
    exe = os.path.join(prefix, "bin", "tool")
    subprocess.run(["gcc", f'-DDATA="{prefix}/share"', "-o", exe, str(src)], check=True)
    note = os.path.join(prefix, "share", "where")
    with open(note, "w") as f:
        f.write(f"{prefix}/share\n")
    inst = register_prefix(prefix, "tool", "1.0", root=root)
    os.chmod(exe, 0o555)
    os.chmod(note, 0o444)
    mirror = str(tmp_path / "mirror")
    push_keeping_modes(inst, InstallTree(root), mirror)
    [blob] = [p for p in glob.glob(os.path.join(mirror, "blobs/sha256/*/*"))
              if tarfile.is_tarfile(p)]
    with tarfile.open(blob) as tf:
        modes = {("/" + m.name)[len(prefix):]: m.mode for m in tf if ("/" + m.name).startswith(prefix + "/")}
    assert modes["/bin/tool"] == 0o555 and modes["/share/where"] == 0o444

    new = str(tmp_path / "new")
    p = _unprivileged("--root", new, "install", "--unsigned", "--mirror", mirror, "tool")
    assert p.returncode == 0, p.stdout + p.stderr
    [installed] = glob.glob(os.path.join(new, "**", "tool-1.0-*"), recursive=True)
    assert open(os.path.join(installed, "share", "where")).read() == f"{installed}/share\n"
    assert stat.S_IMODE(os.stat(os.path.join(installed, "share", "where")).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(os.path.join(installed, "bin", "tool")).st_mode) == 0o555
    out = subprocess.run([os.path.join(installed, "bin", "tool")], capture_output=True, text=True, check=True)
    # binary strings keep their length: the new prefix is padded with "/", which resolves as one
    assert os.path.normpath(out.stdout.split(" ", 2)[2].strip()) == f"{installed}/share"


def test_the_packer_writes_spack_modes(tmp_path):
    root = str(tmp_path / "root")
    prefix = os.path.join(root, "modes-1.0")
    os.makedirs(os.path.join(prefix, "bin"))
    for name, mode in (("ro-exe", 0o500), ("rw-exe", 0o775), ("ro", 0o400), ("group-w", 0o664)):
        path = os.path.join(prefix, "bin", name)
        open(path, "w").write("x\n")
        os.chmod(path, mode)
    os.chmod(os.path.join(prefix, "bin"), 0o700)
    register_prefix(prefix, "modes", "1.0", root=root)
    mirror = str(tmp_path / "mirror")
    run_cli("--root", root, "create", "--unsigned", mirror, "modes", check=True)
    [blob] = [p for p in glob.glob(os.path.join(mirror, "blobs/sha256/*/*")) if tarfile.is_tarfile(p)]
    with tarfile.open(blob) as tf:
        modes = {m.name.rsplit("/", 1)[-1]: m.mode for m in tf if "/modes-1.0/bin" in m.name}
    assert modes == {"bin": 0o755, "ro-exe": 0o755, "rw-exe": 0o755, "ro": 0o644, "group-w": 0o644}
