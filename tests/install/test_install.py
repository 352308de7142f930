"""Install from a directory build cache: real gcc-built programs, relocated, and RUN.

The stack: liba (a library with an embedded data path), libb (links liba), and prog (links both
through RUNPATH, prints where they were loaded from and the embedded paths), plus a shell script
with a #! line into the prefix, a .pc file, a CMake config, symlinks (relative, absolute into the
package, absolute into a dependency) and a hardlink. Built under a long root, pushed with
`create`, installed to a shorter root and to a longer one.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile

import pytest

from bincache import api
from bincache.errors import BincacheError, CannotGrowString, InstallError, SignatureError
from bincache.mirror.layout_v3 import MT_TARBALL, BlobRecord, manifest_bytes
from bincache.spec import read_prefix_specfile
from bincache.tree import InstalledSpec, InstallTree, register_prefix

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LIBA_C = r"""
#ifdef DATA
const char *a_data(void) { return DATA; }
#else
const char *a_data(void) { return "no-data"; }
#endif
int a_value(void) { return 42; }
"""
LIBB_C = r"""
int a_value(void);
int b_value(void) { return a_value() + 1; }
"""
PROG_C = r"""
#include <stdio.h>
#include <string.h>
const char *a_data(void);
int b_value(void);
int main(void) {
    char line[4096];
    FILE *maps = fopen("/proc/self/maps", "r");
    while (fgets(line, sizeof line, maps)) {
        char *path = strchr(line, '/');
        if (path && (strstr(path, "liba.so") || strstr(path, "libb.so"))) printf("map %s", path);
    }
    printf("data %s\n", a_data());
    printf("value %d\n", b_value());
    return 0;
}
"""


def gcc(*args: str) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True)


def build_stack(root: str, *, embed: bool) -> dict[str, str]:
    """Compile and register liba, libb and prog under ``root``; returns name -> prefix."""
    src = os.path.join(root, ".src")
    os.makedirs(src, exist_ok=True)
    for name, text in (("a.c", LIBA_C), ("b.c", LIBB_C), ("prog.c", PROG_C)):
        with open(os.path.join(src, name), "w") as f:
            f.write(text)

    def prefix_of(name, version, deps):
        # Register a placeholder to learn the hash, then move it to its projected path.
        tmp = os.path.join(root, f".tmp-{name}")
        os.makedirs(tmp, exist_ok=True)
        inst = register_prefix(tmp, name, version, deps)
        prefix = os.path.join(root, inst.spec.projection())
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        os.rename(tmp, prefix)
        return prefix

    a = prefix_of("liba", "1.0", [])
    for d in ("lib/pkgconfig", "lib/cmake/liba", "bin", "share/liba"):
        os.makedirs(f"{a}/{d}", exist_ok=True)
    data = [f'-DDATA="{a}/share/liba/data.txt"'] if embed else []
    gcc("-shared", "-fPIC", "-O1", *data, "-o", f"{a}/lib/liba.so", f"{src}/a.c")
    with open(f"{a}/share/liba/data.txt", "w") as f:
        f.write(f"data of liba, installed in {a}\n")
    with open(f"{a}/lib/pkgconfig/liba.pc", "w") as f:
        f.write(f"prefix={a}\nlibdir=${{prefix}}/lib\n\nName: liba\nVersion: 1.0\n"
                f"Libs: -L{a}/lib -la\nCflags: -I{a}/include\n")
    with open(f"{a}/lib/cmake/liba/libaConfig.cmake", "w") as f:
        f.write(f'set(LIBA_PREFIX "{a}")\nset(LIBA_LIBRARY "{a}/lib/liba.so")\n')
    shutil.copy("/bin/sh", f"{a}/bin/sh")
    with open(f"{a}/bin/a-script", "w") as f:
        f.write(f"#!{a}/bin/sh\necho script of {a}\n")
    os.chmod(f"{a}/bin/a-script", 0o755)

    b = prefix_of("libb", "1.0", [a])
    os.makedirs(f"{b}/lib", exist_ok=True)
    gcc("-shared", "-fPIC", "-o", f"{b}/lib/libb.so", f"{src}/b.c", f"-L{a}/lib", "-la",
        f"-Wl,-rpath,{a}/lib", "-Wl,--enable-new-dtags")

    p = prefix_of("prog", "2.0", [a, b])
    os.makedirs(f"{p}/bin", exist_ok=True)
    os.makedirs(f"{p}/lib", exist_ok=True)
    gcc("-o", f"{p}/bin/prog", f"{src}/prog.c", f"-L{a}/lib", f"-L{b}/lib", "-la", "-lb",
        f"-Wl,-rpath,{b}/lib:{a}/lib", "-Wl,--enable-new-dtags")
    os.link(f"{p}/bin/prog", f"{p}/bin/prog-hardlink")
    os.symlink("prog", f"{p}/bin/prog-link")
    os.symlink(f"{a}/lib/liba.so", f"{p}/lib/liba-link.so")
    os.chmod(f"{p}/lib", 0o750)
    shutil.rmtree(src)
    for prefix in (a, b, p):
        # Recorded in the tree's database, as `bincache register --root` does.
        nodes = read_prefix_specfile(prefix)
        InstallTree(root).record(InstalledSpec(nodes[0], prefix, tuple(nodes)))
    return {"liba": a, "libb": b, "prog": p}


def pad_root(base: str, length: int) -> str:
    return os.path.join(base, ("o" + "_pad" * 60)[: length - len(base) - 1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two build caches of the stack from a ~130-character root: with and without strings."""
    base = tmp_path_factory.mktemp("build")
    out = {}
    for embed in (True, False):
        root = pad_root(str(base / ("e" if embed else "n")), 130)
        prefixes = build_stack(root, embed=embed)
        mirror = str(base / f"mirror-{'e' if embed else 'n'}")
        api.push(mirror, [], root=root, signed=False, update_index=True)
        out[embed] = {"root": root, "prefixes": prefixes, "mirror": mirror}
    return out


def run(path: str) -> str:
    return subprocess.run([path], check=True, capture_output=True, text=True, timeout=30).stdout


def snapshot(root) -> list[tuple[str, int]]:
    if not os.path.exists(root):
        return []
    return sorted((os.path.relpath(os.path.join(d, n), root), os.lstat(os.path.join(d, n)).st_size)
                  for d, dirs, files in os.walk(root) for n in dirs + files)


def files_holding(root: str, needle: bytes) -> list[str]:
    found = []
    for d, _dirs, files in os.walk(root):
        for n in files:
            path = os.path.join(d, n)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    if needle in f.read():
                        found.append(os.path.relpath(path, root))
    return found


def installed(root: str) -> dict[str, str]:
    return {s.name: s.prefix for s in InstallTree(root).specs().values()}


def test_install_to_a_shorter_prefix_runs_and_points_there(cache, tmp_path):
    c = cache[True]
    root = str(tmp_path / "sw")
    result = api.install(["prog"], mirrors=[c["mirror"]], root=root, unsigned=True)
    assert sorted(p.spec.name for p in result.installed) == ["liba", "libb", "prog"]
    new = installed(root)
    a, b, p = new["liba"], new["libb"], new["prog"]
    assert p == os.path.join(root, "linux-x86_64", os.path.basename(c["prefixes"]["prog"]))

    out = run(f"{p}/bin/prog")
    assert f"map {a}/lib/liba.so" in out and f"map {b}/lib/libb.so" in out
    data = re.search(r"data (.*)", out).group(1)
    assert re.sub("/+", "/", data) == f"{a}/share/liba/data.txt"
    assert "value 43" in out
    assert open(re.sub("/+", "/", data)).read().startswith("data of liba")

    runpath = subprocess.run(["readelf", "-d", f"{p}/bin/prog"], capture_output=True, text=True).stdout
    assert f"Library runpath: [{b}/lib:{a}/lib]" in runpath
    assert run(f"{a}/bin/a-script") == f"script of {a}\n"
    assert open(f"{a}/lib/pkgconfig/liba.pc").read().startswith(f"prefix={a}\n")
    assert f"-L{a}/lib" in open(f"{a}/lib/pkgconfig/liba.pc").read()
    assert f'set(LIBA_PREFIX "{a}")' in open(f"{a}/lib/cmake/liba/libaConfig.cmake").read()

    assert os.readlink(f"{p}/bin/prog-link") == "prog"
    assert os.readlink(f"{p}/lib/liba-link.so") == f"{a}/lib/liba.so"
    assert os.stat(f"{p}/bin/prog").st_ino == os.stat(f"{p}/bin/prog-hardlink").st_ino
    assert stat.S_IMODE(os.stat(f"{p}/lib").st_mode) == 0o755  # 0750 packed as Spack does: 0755
    assert stat.S_IMODE(os.stat(f"{p}/bin/prog").st_mode) == 0o755

    old_root = c["root"].encode()
    assert files_holding(root, old_root) == []
    assert not os.path.exists(os.path.join(root, ".bincache-staging"))
    for name, prefix in new.items():
        spec = json.load(open(f"{prefix}/.spack/spec.json"))["spec"]["nodes"][0]
        assert spec["name"] == name and prefix.endswith(spec["hash"])


def test_install_to_a_longer_prefix_grows_runpath_and_runs(cache, tmp_path):
    c = cache[False]
    root = pad_root(str(tmp_path), 180)
    result = api.install(["prog"], mirrors=[c["mirror"]], root=root, unsigned=True)
    assert result.unrelocated == []
    new = installed(root)
    a, b, p = new["liba"], new["libb"], new["prog"]
    out = run(f"{p}/bin/prog")
    assert f"map {a}/lib/liba.so" in out and f"map {b}/lib/libb.so" in out
    assert "data no-data" in out
    runpath = subprocess.run(["readelf", "-d", f"{p}/bin/prog"], capture_output=True, text=True,
                             check=True).stdout
    assert f"Library runpath: [{b}/lib:{a}/lib]" in runpath
    # The #! line no longer fits the kernel's limit: it goes through env, and still runs.
    assert open(f"{a}/bin/a-script").readline() == "#!/usr/bin/env sh\n"
    assert any("a-script" in w and "/usr/bin/env" in w for w in result.warnings)
    assert run(f"{a}/bin/a-script") == f"script of {a}\n"
    assert files_holding(root, c["root"].encode()) == []


def test_longer_prefix_with_embedded_strings_is_refused_and_root_unchanged(cache, tmp_path):
    c = cache[True]
    root = pad_root(str(tmp_path), 180)
    with pytest.raises(CannotGrowString) as e:
        api.install(["prog"], mirrors=[c["mirror"]], root=root, unsigned=True)
    lines = str(e.value).splitlines()
    assert len(lines) == 1  # only liba.so embeds a string
    old_a = c["prefixes"]["liba"]
    assert "lib/liba.so" in lines[0]
    assert f"({len(old_a)} bytes)" in lines[0]
    new_a = os.path.join(root, os.path.relpath(old_a, c["root"]))
    assert f"needs {len(new_a)} bytes" in lines[0]
    assert not os.path.exists(root)


def test_allow_unrelocated_installs_and_lists_what_was_left(cache, tmp_path):
    c = cache[True]
    root = pad_root(str(tmp_path), 180)
    proc = subprocess.run(
        [sys.executable, "-m", "bincache", "--root", root, "install", "-m", c["mirror"],
         "--unsigned", "--allow-unrelocated", "prog"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "not relocated" in line]
    assert len(warned) == 1 and "lib/liba.so" in warned[0] and c["prefixes"]["liba"] in warned[0]
    p = installed(root)["prog"]
    out = run(f"{p}/bin/prog")
    assert f"map {installed(root)['liba']}/lib/liba.so" in out
    # The only file still holding the old root is the one reported.
    assert [f for f in files_holding(root, c["root"].encode())] == [
        os.path.relpath(installed(root)["liba"], root) + "/lib/liba.so"
    ]


def test_already_installed_is_skipped_and_force_reinstalls(cache, tmp_path):
    c = cache[True]
    root = str(tmp_path / "sw")
    api.install(["liba"], mirrors=[c["mirror"]], root=root, unsigned=True)
    again = api.install(["prog"], mirrors=[c["mirror"]], root=root, unsigned=True)
    assert [s.name for s in again.skipped] == ["liba"]
    assert sorted(p.spec.name for p in again.installed) == ["libb", "prog"]
    a = installed(root)["liba"]
    os.unlink(f"{a}/share/liba/data.txt")
    forced = api.install(["liba"], mirrors=[c["mirror"]], root=root, unsigned=True, force=True)
    assert [p.spec.name for p in forced.installed] == ["liba"]
    assert os.path.exists(f"{a}/share/liba/data.txt")
    assert "value 43" in run(f"{installed(root)['prog']}/bin/prog")


def test_unrecorded_prefix_where_the_install_would_put_it_counts_as_installed(cache, tmp_path):
    # The database lost (removed by hand): the dependency's prefix is found where this
    # install would put it, from its own spec file, and is used, not installed again.
    c = cache[True]
    root = str(tmp_path / "sw")
    api.install(["liba"], mirrors=[c["mirror"]], root=root, unsigned=True)
    a = installed(root)["liba"]
    shutil.rmtree(os.path.join(root, ".spack-db"))
    again = api.install(["prog"], mirrors=[c["mirror"]], root=root, unsigned=True)
    assert [(s.name, s.prefix) for s in again.skipped] == [("liba", a)]
    assert sorted(p.spec.name for p in again.installed) == ["libb", "prog"]
    assert "value 43" in run(f"{installed(root)['prog']}/bin/prog")


def test_a_dependency_no_mirror_has_is_found_anywhere_in_the_tree(cache, tmp_path):
    # liba is in the tree only as a prefix moved by hand away from where an install would put
    # it, unrecorded, and the mirror lacks it: the tree is scanned for it, and prog uses it.
    c = cache[True]
    mirror = str(tmp_path / "no-liba")
    api.push(mirror, ["prog"], root=c["root"], include_deps=False, signed=False, update_index=True)
    api.push(mirror, ["libb"], root=c["root"], include_deps=False, signed=False, update_index=True)
    root = str(tmp_path / "sw")
    api.install(["liba"], mirrors=[c["mirror"]], root=root, unsigned=True)
    moved = os.path.join(root, "by-hand", "liba")
    os.makedirs(os.path.dirname(moved))
    os.rename(installed(root)["liba"], moved)
    shutil.rmtree(os.path.join(root, ".spack-db"))
    result = api.install(["prog"], mirrors=[mirror], root=root, unsigned=True)
    assert [(s.name, s.prefix) for s in result.skipped] == [("liba", moved)]
    assert sorted(p.spec.name for p in result.installed) == ["libb", "prog"]
    assert "value 43" in run(f"{installed(root)['prog']}/bin/prog")


def test_unsigned_packages_need_unsigned(cache, tmp_path):
    root = str(tmp_path / "sw")
    with pytest.raises(SignatureError, match="not signed"):
        api.install(["liba"], mirrors=[cache[True]["mirror"]], root=root)
    assert not os.path.exists(root)


def test_failed_install_removes_the_directories_it_made_for_the_root(cache, tmp_path):
    root = str(tmp_path / "new" / "deeper" / "sw")
    with pytest.raises(CannotGrowString):
        api.install(["prog"], mirrors=[cache[True]["mirror"]], unsigned=True,
                    root=pad_root(root, 180))
    assert not os.path.exists(tmp_path / "new")


def test_download_fetches_and_verifies_without_installing(cache, tmp_path):
    from bincache.install.stage import download

    got = download(["prog"], str(tmp_path / "dl"), mirrors=[api.resolve(cache[True]["mirror"], "fetch")],
                   unsigned=True)
    assert sorted(d.spec.name for d in got) == ["liba", "libb", "prog"]
    for d in got:
        assert os.path.getsize(d.tarball) == d.size
        assert json.load(open(d.specfile))["spec"]["nodes"][0]["hash"] == d.spec.hash
    assert sorted(os.listdir(tmp_path / "dl")) == sorted(
        [os.path.basename(d.tarball) for d in got] + [os.path.basename(d.specfile) for d in got])


def test_cli_install_and_unknown_spec(cache, tmp_path):
    root = str(tmp_path / "sw")
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "bincache", "--root", root, "install", "-m", cache[True]["mirror"],
           "--unsigned"]
    ok = subprocess.run(cmd + ["libb"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "installed liba@1.0" in ok.stdout and "installed libb@1.0" in ok.stdout
    bad = subprocess.run(cmd + ["nosuch"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.startswith('error: no package matches "nosuch"') and "Traceback" not in bad.stderr


# -- hostile packages -------------------------------------------------------------------------
def _package_files(mirror: str, name: str) -> tuple[str, dict, str]:
    [manifest] = [os.path.join(d, f) for d, _, fs in os.walk(f"{mirror}/v3/manifests/spec/{name}")
                  for f in fs]
    doc = json.load(open(manifest))
    rec = next(r for r in doc["data"] if r["mediaType"] == MT_TARBALL)
    blob = f"{mirror}/blobs/sha256/{rec['checksum'][:2]}/{rec['checksum']}"
    return manifest, doc, blob


def _rewrite(mirror: str, name: str, transform, *, update_manifest: bool = True) -> None:
    """Replace a package's tarball by ``transform(members)`` (and, normally, its manifest)."""
    manifest, doc, blob = _package_files(mirror, name)
    with tarfile.open(blob, "r:gz") as tf:
        members = [(m, tf.extractfile(m).read() if m.isreg() else None) for m in tf.getmembers()]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m, data in transform(members):
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    data = transform.finish(raw.getvalue()) if hasattr(transform, "finish") else gzip.compress(raw.getvalue())
    if not update_manifest:
        os.chmod(blob, 0o644)
        with open(blob, "wb") as f:
            f.write(data)
        return
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    path = f"{mirror}/blobs/sha256/{digest[:2]}/{digest}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    records = [BlobRecord.from_dict(r) for r in doc["data"]]
    records = [BlobRecord(len(data), r.media_type, r.compression, digest) if r.media_type == MT_TARBALL
               else r for r in records]
    with open(manifest, "wb") as f:
        f.write(manifest_bytes(records))


def _insert_before_buildinfo(*extra):
    def transform(members):
        members = list(members)
        prefix = members[-1][0].name[: -len("/.spack/binary_distribution")]
        out = members[:-1]
        for make in extra:
            out += make(prefix)
        return out + members[-1:]

    return transform


def _m(name, kind="file", data=b"x", link=""):
    ti = tarfile.TarInfo(name)
    if kind == "file":
        ti.size = len(data)
        return [(ti, data)]
    ti.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}[kind]
    ti.linkname = link
    return [(ti, None)]


def _truncated(members):
    return members


_truncated.finish = lambda raw: gzip.compress(raw)[: len(gzip.compress(raw)) // 2]  # type: ignore[attr-defined]


class _Huge:
    """Drop the buildinfo, and end the stream inside a member that claims 1 GiB."""

    prefix = ""

    def __call__(self, members):
        self.prefix = members[-1][0].name[: -len("/.spack/binary_distribution")]
        return members[:-1]

    def finish(self, raw: bytes) -> bytes:
        body = raw.rstrip(b"\0")
        body += b"\0" * (-len(body) % 512)
        ti = tarfile.TarInfo(f"{self.prefix}/huge-file")
        ti.size = 1 << 30
        return gzip.compress(body + ti.tobuf(tarfile.PAX_FORMAT) + b"x" * 4096)


_huge = _Huge()

HOSTILE = {
    "path traversal": (_insert_before_buildinfo(lambda p: _m(f"{p}/../../../../../../../../tmp/evil")),
                       r"'\.\.'"),
    "absolute name": (_insert_before_buildinfo(lambda p: _m(f"/{p}/abs")), "absolute"),
    "symlink escape": (_insert_before_buildinfo(lambda p: _m(f"{p}/lib/esc", "symlink", link="/etc")),
                       "points outside"),
    "link then file through link": (
        _insert_before_buildinfo(lambda p: _m(f"{p}/lnk", "symlink", link="/tmp"),
                                 lambda p: _m(f"{p}/lnk/pwned")),
        "goes through"),
    "outside the prefix": (_insert_before_buildinfo(lambda p: _m("opt/elsewhere/file")),
                           "outside the package prefix"),
    "huge member": (_huge, "truncated|short|end of data"),
    "truncated gzip": (_truncated, "truncated"),
}


@pytest.fixture
def short_tmp():
    """A short directory in /tmp, so no #! line crosses the kernel's limit and changes form."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hostile_mirror(cache, tmp_path):
    mirror = str(tmp_path / "mirror")
    shutil.copytree(cache[True]["mirror"], mirror)
    return mirror


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarball_is_refused_and_root_unchanged(hostile_mirror, tmp_path, case):
    transform, pattern = HOSTILE[case]
    _rewrite(hostile_mirror, "libb", transform)
    root = str(tmp_path / "sw")
    api.install(["liba"], mirrors=[hostile_mirror], root=root, unsigned=True)
    before = snapshot(root)
    with pytest.raises(BincacheError, match=pattern) as e:
        api.install(["prog"], mirrors=[hostile_mirror], root=root, unsigned=True)
    assert "libb@1.0" in str(e.value)
    assert snapshot(root) == before
    assert not os.path.exists("/tmp/evil") and not os.path.exists("/tmp/pwned")


def test_wrong_checksum_is_refused_and_root_unchanged(hostile_mirror, tmp_path):
    _rewrite(hostile_mirror, "libb", lambda members: members, update_manifest=False)
    root = str(tmp_path / "sw")
    with pytest.raises(BincacheError, match="size|checksum"):
        api.install(["prog"], mirrors=[hostile_mirror], root=root, unsigned=True)
    assert snapshot(root) == []


def test_every_problem_is_named_at_once(hostile_mirror, tmp_path):
    _rewrite(hostile_mirror, "liba", lambda members: members, update_manifest=False)
    _rewrite(hostile_mirror, "libb", HOSTILE["absolute name"][0])
    _rewrite(hostile_mirror, "prog", HOSTILE["symlink escape"][0])
    root = str(tmp_path / "sw")
    with pytest.raises(InstallError) as e:
        api.install(["prog"], mirrors=[hostile_mirror], root=root, unsigned=True)
    assert len(e.value.problems) == 3
    [a, b, p] = sorted(e.value.problems)
    assert a.startswith("liba@1.0") and ("checksum" in a or "size" in a)
    assert b.startswith("libb@1.0") and "absolute" in b
    assert p.startswith("prog@2.0") and "points outside" in p
    assert snapshot(root) == []


# -- round trip -------------------------------------------------------------------------------
def _normalized(path: str, prefixes: dict[str, str]) -> bytes:
    data = open(path, "rb").read()
    alternatives = b"|".join(re.escape(p.encode()) for p in sorted(prefixes, key=len, reverse=True))
    data = re.sub(b"/*(" + alternatives + b")", lambda m: b"<" + prefixes[m.group(1).decode()].encode() + b">", data)
    return re.sub(b"\0+", b"\0", data)


def test_round_trip_same_hashes_same_contents_modulo_prefix(cache, tmp_path, short_tmp):
    c = cache[True]
    root = os.path.join(short_tmp, "sw")
    api.install(["prog"], mirrors=[c["mirror"]], root=root, unsigned=True)
    mirror2 = str(tmp_path / "mirror2")
    api.push(mirror2, [], root=root, signed=False, update_index=True)
    first = {e.spec.hash for e in api.list_mirror(c["mirror"])[0]}
    second = {e.spec.hash for e in api.list_mirror(mirror2)[0]}
    assert first == second
    new = installed(root)
    tokens = {p: n for n, p in c["prefixes"].items()} | {p: n for n, p in new.items()}
    tokens[c["root"]] = "root"
    tokens[root] = "root"
    for name, old_prefix in c["prefixes"].items():
        for d, _dirs, files in os.walk(old_prefix):
            for f in files:
                rel = os.path.relpath(os.path.join(d, f), old_prefix)
                if rel.startswith(".spack/"):
                    continue
                a, b = os.path.join(old_prefix, rel), os.path.join(new[name], rel)
                if os.path.islink(a):
                    assert os.path.islink(b)
                    continue
                assert _normalized(a, tokens) == _normalized(b, tokens), rel


def test_existing_unrecorded_directory_is_not_overwritten(cache, tmp_path):
    c = cache[True]
    root = str(tmp_path / "sw")
    squatter = os.path.join(root, os.path.relpath(c["prefixes"]["liba"], c["root"]))
    os.makedirs(squatter)
    with open(os.path.join(squatter, "precious"), "w") as f:
        f.write("keep me")
    before = snapshot(root)
    with pytest.raises(BincacheError, match="already exists.*--force"):
        api.install(["liba"], mirrors=[c["mirror"]], root=root, unsigned=True)
    assert snapshot(root) == before
    api.install(["liba"], mirrors=[c["mirror"]], root=root, unsigned=True, force=True)
    assert not os.path.exists(os.path.join(squatter, "precious"))
    assert os.path.exists(os.path.join(squatter, "lib", "liba.so"))


def test_failure_while_relocating_leaves_nothing_behind(cache, tmp_path, monkeypatch):
    # A patchelf that fails: the growth of RUNPATH breaks after extraction and planning.
    broken = tmp_path / "patchelf"
    broken.write_text("#!/bin/sh\necho 'patchelf: cannot do it' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("BINCACHE_PATCHELF", str(broken))
    root = pad_root(str(tmp_path), 180)
    with pytest.raises(BincacheError, match="patchelf could not grow"):
        api.install(["prog"], mirrors=[cache[False]["mirror"]], root=root, unsigned=True)
    assert not os.path.exists(root)


def test_cli_download(cache, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    dest = tmp_path / "dl"
    proc = subprocess.run(
        [sys.executable, "-m", "bincache", "download", "-m", cache[True]["mirror"], "--unsigned",
         "--only", "package", "-d", str(dest), "libb"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("downloaded libb@1.0")
    [tarball] = [n for n in os.listdir(dest) if n.endswith(".tar.gz")]
    with tarfile.open(dest / tarball) as tf:
        assert any(n.endswith("/lib/libb.so") for n in tf.getnames())


def test_mirror_without_an_index_is_read_from_its_manifests(cache, tmp_path):
    mirror = str(tmp_path / "mirror")
    shutil.copytree(cache[True]["mirror"], mirror)
    shutil.rmtree(os.path.join(mirror, "v3", "manifests", "index"))
    root = str(tmp_path / "sw")
    result = api.install(["prog@2.0"], mirrors=[mirror], root=root, unsigned=True, jobs=2)
    assert sorted(p.spec.name for p in result.installed) == ["liba", "libb", "prog"]
    assert "value 43" in run(f"{installed(root)['prog']}/bin/prog")
