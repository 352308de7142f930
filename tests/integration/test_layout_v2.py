"""Old build caches (Spack's layout v2, Spack before 1.0) are read: list, install, download.

There is no Spack here, so each test writes a real v2 cache by hand, as Spack's
binary_distribution.py does: a C library and a program compiled with gcc into a long Spack-style
store, gzipped tarballs of the prefixes at ``build_cache/<arch>/<compiler>/<name>-<version>/
<stem>.spack`` (with their buildinfo at ``.spack/binary_distribution`` and Spack's keys only),
spec files ``build_cache/<stem>.spec.json`` naming the tarball's sha256 in
``binary_cache_checksum``, clearsigned by the real gpg into ``.spec.json.sig``, public keys in
``build_cache/_pgp/``, and ``build_cache/index.json``. Then the real CLI reads it and the
installed program is RUN from its new prefix.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

import pytest
import yaml

from bincache import signing
from bincache.demo import padded_root
from bincache.mirror import open_cache
from bincache.mirror.config import MirrorRef
from bincache.mirror.layout_v2 import LayoutV2Cache
from bincache.mirror.layout_v3 import LayoutV3Cache
from bincache.spec import dag_hash
from tests.fixtures.moto import moto_server

ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}
COMPILER = {"name": "gcc", "version": "12.2.0"}
ARCH_S = "linux-debian12-x86_64"
COMPILER_S = "gcc-12.2.0"

FOO_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
const char *foo_datadir(void) { return FOO_DATADIR; }
/* Where the dynamic loader found this library: proves which copy runs. */
const char *foo_where(void) {
    Dl_info info;
    if (dladdr((void *)foo_where, &info) && info.dli_fname) return info.dli_fname;
    return "?";
}
"""
PROG_C = r"""
#include <stdio.h>
const char *foo_datadir(void);
const char *foo_where(void);
int main(void) {
    printf("prog %s\nfoo data %s\nfoo lib %s\n", PROG_PREFIX, foo_datadir(), foo_where());
    return 0;
}
"""


def _node(name: str, version: str, deps: list[dict]) -> dict:
    """A spec node as Spack 0.21-0.23 write them (format v4: arch and compiler per node)."""
    node: dict = {"name": name, "version": version, "arch": dict(ARCH), "compiler": dict(COMPILER),
                  "namespace": "builtin", "parameters": {"build_system": "generic", "cflags": [],
                                                         "cppflags": [], "ldflags": []},
                  "package_hash": "a" * 32}
    if deps:
        node["dependencies"] = [{"name": d["name"], "hash": d["hash"],
                                 "parameters": {"deptypes": ["build", "link"], "virtuals": []}}
                                for d in deps]
    node["hash"] = dag_hash(node)
    return node


class Store:
    """libfoo and prog (RUNPATH to libfoo) installed in a Spack-style store."""

    def __init__(self, base: str):
        self.root = padded_root(os.path.join(base, "spack", "opt"), 130)
        self.foo = _node("libfoo", "1.0", [])
        self.prog = _node("prog", "2.3", [self.foo])
        self.prefix = {n["name"]: self.prefix_of(n) for n in (self.foo, self.prog)}
        self.nodes = {"libfoo": [self.foo], "prog": [self.prog, self.foo]}

    def prefix_of(self, node: dict) -> str:
        return os.path.join(self.root, ARCH_S, COMPILER_S, f"{node['name']}-{node['version']}-{node['hash']}")

    def build(self, src: str) -> None:
        foo, prog = self.prefix["libfoo"], self.prefix["prog"]
        for d in (f"{foo}/lib", f"{foo}/share/foo", f"{prog}/bin", f"{prog}/share/prog"):
            os.makedirs(d)
        with open(f"{src}/foo.c", "w") as f:
            f.write(FOO_C)
        with open(f"{src}/prog.c", "w") as f:
            f.write(PROG_C)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", f'-DFOO_DATADIR="{foo}/share/foo"',
                        "-Wl,-soname,libfoo.so.1", "-o", f"{foo}/lib/libfoo.so.1", f"{src}/foo.c", "-ldl"],
                       check=True)
        os.symlink("libfoo.so.1", f"{foo}/lib/libfoo.so")
        with open(f"{foo}/share/foo/data.txt", "w") as f:
            f.write("foo data\n")
        subprocess.run(["gcc", "-O2", f'-DPROG_PREFIX="{prog}"', "-o", f"{prog}/bin/prog", f"{src}/prog.c",
                        f"-L{foo}/lib", f"-Wl,-rpath,{foo}/lib", "-lfoo"], check=True)
        with open(f"{prog}/share/prog/prog.conf", "w") as f:
            f.write(f"prefix={prog}\nfoo={foo}/lib\n")
        for name, nodes in self.nodes.items():
            os.makedirs(f"{self.prefix[name]}/.spack")
            with open(f"{self.prefix[name]}/.spack/spec.json", "w") as f:
                json.dump({"spec": {"_meta": {"version": 4}, "nodes": nodes}}, f)

    def buildinfo(self, name: str, *, old_style: bool = False) -> dict:
        """Spack's buildinfo (binary_distribution.get_buildinfo_dict), no ``bincache:`` section.
        ``old_style``: Spack <= 0.21 wrote ``prefix_to_hash`` instead of ``hash_to_prefix``."""
        prefix = self.prefix[name]
        text = {"libfoo": ["share/foo/data.txt"], "prog": ["share/prog/prog.conf"]}[name]
        binaries = {"libfoo": ["lib/libfoo.so.1"], "prog": ["bin/prog"]}[name]
        info = {"sbang_install_path": f"{self.root}/bin/sbang", "buildpath": self.root,
                "spackprefix": "/opt/spack-src", "relative_prefix": os.path.relpath(prefix, self.root),
                "relocate_textfiles": text, "relocate_binaries": binaries, "relocate_links": [],
                "hardlinks_deduped": True}
        mapping = {n["hash"]: self.prefix_of(n) for n in self.nodes[name]}
        if old_style:
            info["prefix_to_hash"] = {p: h for h, p in mapping.items()}
        else:
            info["hash_to_prefix"] = mapping
        return info


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    base = tmp_path_factory.mktemp("v2store")
    s = Store(str(base))
    src = base / "src"
    src.mkdir()
    s.build(str(src))
    return s


@pytest.fixture(scope="module")
def signing_home():
    """The key of whoever signed the old cache, in a keyring of its own."""
    home = tempfile.mkdtemp(prefix="bcv2", dir="/tmp")
    key = signing.create_key("Old Cache", "old@example.com", home=home)
    yield home, key.fingerprint
    signing.stop_agent(home)
    shutil.rmtree(home, ignore_errors=True)


def _tarball(store: Store, name: str, dest: str, *, layout: int, old_style: bool = False) -> str:
    """The .spack file of layout 1/2: a gzipped tar of the prefix, buildinfo last; layout 2
    includes the prefix's parent directories, layout 1 starts at the prefix."""
    prefix = store.prefix[name]
    with open(dest, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if layout >= 2:
            parts = prefix.strip("/").split("/")
            for i in range(1, len(parts)):
                info = tarfile.TarInfo("/".join(parts[:i]))
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        for dirpath, dirnames, files in os.walk(prefix):
            dirnames.sort()
            tar.add(dirpath, arcname=dirpath.lstrip("/"), recursive=False)
            for f in sorted(files):
                tar.add(os.path.join(dirpath, f), arcname=os.path.join(dirpath, f).lstrip("/"), recursive=False)
        data = yaml.safe_dump(store.buildinfo(name, old_style=old_style), default_flow_style=True).encode()
        info = tarfile.TarInfo(f"{prefix.lstrip('/')}/.spack/binary_distribution")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, __import__("io").BytesIO(data))
    with open(dest, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_v2_cache(store: Store, mirror: str, *, signer: tuple[str, str] | None, layout: int = 2,
                   index: bool = True, old_style: bool = False) -> dict[str, str]:
    """A Spack layout v2 mirror at ``mirror``; returns name -> spec file path."""
    bc = os.path.join(mirror, "build_cache")
    paths = {}
    for name, nodes in store.nodes.items():
        node = nodes[0]
        stem = f"{ARCH_S}-{COMPILER_S}-{name}-{node['version']}-{node['hash']}"
        tdir = os.path.join(bc, ARCH_S, COMPILER_S, f"{name}-{node['version']}")
        os.makedirs(tdir, exist_ok=True)
        checksum = _tarball(store, name, os.path.join(tdir, stem + ".spack"), layout=layout, old_style=old_style)
        doc = {"spec": {"_meta": {"version": 4}, "nodes": nodes}, "buildcache_layout_version": layout,
               "binary_cache_checksum": {"hash_algorithm": "sha256", "hash": checksum}}
        body = json.dumps(doc, indent=0, separators=(",", ":")).encode()
        path = os.path.join(bc, stem + ".spec.json")
        if signer is not None:
            body = signing.Signer(signer[1], home=signer[0]).clearsign(body)
            path += ".sig"
        with open(path, "wb") as f:
            f.write(body)
        paths[name] = path
    if signer is not None:
        pgp = os.path.join(bc, "_pgp")
        os.makedirs(pgp, exist_ok=True)
        data, _ = signing.export_keys([signer[1]], home=signer[0])
        with open(os.path.join(pgp, f"{signer[1]}.pub"), "wb") as f:
            f.write(data)
        with open(os.path.join(pgp, "index.json"), "w") as f:
            json.dump({"keys": {signer[1]: {}}}, f)
    if index:
        installs = {n["hash"]: {"spec": n, "ref_count": 1 if n is store.foo else 0, "in_buildcache": True}
                    for n in (store.foo, store.prog)}
        text = json.dumps({"database": {"version": "7", "installs": installs}}).encode()
        with open(os.path.join(bc, "index.json"), "wb") as f:
            f.write(text)
        with open(os.path.join(bc, "index.json.hash"), "w") as f:
            f.write(hashlib.sha256(text).hexdigest())
    return paths


def run_prog(root: str) -> str:
    progs = [os.path.join(d, "prog") for d, _, files in os.walk(root) if "prog" in files and d.endswith("/bin")]
    assert len(progs) == 1, progs
    return subprocess.run([progs[0]], capture_output=True, text=True, check=True).stdout


def assert_relocated(out: str, new_root: str, store: Store) -> None:
    # Strings in binaries are left-padded with slashes when the new prefix is shorter (Spack's rule).
    lines = {k: re.sub(r"^/+", "/", v) for k, v in (
        line.split(" ", 1) if not line.startswith("foo") else line.rsplit(" ", 1) for line in out.splitlines())}
    assert lines["prog"].startswith(new_root + "/"), out
    assert lines["foo data"].startswith(new_root + "/") and lines["foo data"].endswith("/share/foo"), out
    # The library the loader found is the installed copy, through the rewritten RUNPATH.
    assert lines["foo lib"].startswith(new_root + "/") and lines["foo lib"].endswith("libfoo.so.1"), out
    assert store.root not in out


def test_signed_v2_cache_lists_installs_downloads_and_runs(store, signing_home, tmp_path, cli):
    mirror = str(tmp_path / "old-mirror")
    write_v2_cache(store, mirror, signer=signing_home, layout=2)
    assert isinstance(open_cache(MirrorRef(mirror)), LayoutV2Cache)

    listed = cli("list", mirror, "--json", check=True)
    rows = json.loads(listed.stdout)
    assert sorted((r["name"], r["version"], r["hash"]) for r in rows) == sorted(
        (n["name"], n["version"], n["hash"]) for n in (store.foo, store.prog))

    # The signer's key is not trusted yet: refused, nothing installed.
    new_root = str(tmp_path / "new")
    refused = cli("--root", new_root, "install", "--mirror", mirror, "prog")
    assert refused.returncode == 1
    assert "unknown key" in refused.stderr and "keys install" in refused.stderr
    assert not os.path.exists(new_root)

    # Trusting the keys the old cache publishes in build_cache/_pgp/ makes it verify.
    cli("keys", "install", mirror, "--trust", check=True)
    done = cli("--root", new_root, "install", "--mirror", mirror, "prog", check=True)
    assert "prog" in done.stdout
    assert_relocated(run_prog(new_root), new_root, store)
    conf = [os.path.join(d, "prog.conf") for d, _, f in os.walk(new_root) if "prog.conf" in f][0]
    assert store.root not in open(conf).read()

    out = tmp_path / "dl"
    cli("download", "--mirror", mirror, "prog", "-d", str(out), check=True)
    got = sorted(os.listdir(out))
    assert got == sorted(f"{n['name']}-{n['version']}-{n['hash']}{ext}" for n in (store.foo, store.prog)
                         for ext in (".spec.json", ".tar.gz"))
    tarball = out / f"prog-2.3-{store.prog['hash']}.tar.gz"
    spec_doc = json.loads((out / f"prog-2.3-{store.prog['hash']}.spec.json").read_bytes())
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == spec_doc["binary_cache_checksum"]["hash"]


def test_unsigned_layout1_cache_without_index_needs_unsigned(store, tmp_path, cli):
    """Layout version 1 (Spack <= 0.21): no parent directories in the tarball; and no index:
    the packages are read from the spec files themselves."""
    mirror = str(tmp_path / "m")
    write_v2_cache(store, mirror, signer=None, layout=1, index=False)
    listed = cli("list", mirror, check=True)
    assert "libfoo" in listed.stdout and "prog" in listed.stdout and "2 packages" in listed.stdout

    new_root = str(tmp_path / "r")
    refused = cli("--root", new_root, "install", "--mirror", mirror, "prog")
    assert refused.returncode == 1 and "not signed" in refused.stderr and "--unsigned" in refused.stderr
    assert not os.path.exists(new_root)

    cli("--root", new_root, "install", "--unsigned", "--mirror", mirror, "prog", check=True)
    assert_relocated(run_prog(new_root), new_root, store)

    # A mirror configured `signed: false` installs unsigned packages without the flag.
    cli("mirror", "add", "--unsigned", "old", mirror, check=True)
    other = str(tmp_path / "r2")
    cli("--root", other, "install", "--mirror", "old", "prog", check=True)
    assert_relocated(run_prog(other), other, store)


def test_tampered_signature_is_refused(store, signing_home, tmp_path, cli):
    mirror = str(tmp_path / "m")
    paths = write_v2_cache(store, mirror, signer=signing_home)
    cli("keys", "install", mirror, "--trust", check=True)
    data = open(paths["prog"], "rb").read()
    # One byte of the signed JSON: the version the spec file claims.
    tampered = data.replace(b'"version":"2.3"', b'"version":"2.4"', 1)
    assert tampered != data
    open(paths["prog"], "wb").write(tampered)
    new_root = str(tmp_path / "r")
    refused = cli("--root", new_root, "install", "--mirror", mirror, f"/{store.prog['hash']}")
    assert refused.returncode == 1
    assert "BAD signature" in refused.stderr
    assert not os.path.exists(new_root)


def test_tarball_that_does_not_match_its_checksum_is_refused(store, signing_home, tmp_path, cli):
    mirror = str(tmp_path / "m")
    write_v2_cache(store, mirror, signer=signing_home)
    cli("keys", "install", mirror, "--trust", check=True)
    # Swap in another valid tarball (libfoo's) under prog's name: the signed spec file's
    # binary_cache_checksum no longer matches.
    node = store.prog
    tdir = os.path.join(mirror, "build_cache", ARCH_S, COMPILER_S, "prog-2.3")
    prog_tar = os.path.join(tdir, f"{ARCH_S}-{COMPILER_S}-prog-2.3-{node['hash']}.spack")
    foo_tar = os.path.join(mirror, "build_cache", ARCH_S, COMPILER_S, "libfoo-1.0",
                           f"{ARCH_S}-{COMPILER_S}-libfoo-1.0-{store.foo['hash']}.spack")
    shutil.copyfile(foo_tar, prog_tar)
    new_root = str(tmp_path / "r")
    refused = cli("--root", new_root, "install", "--mirror", mirror, "prog")
    assert refused.returncode == 1
    assert "checksum mismatch" in refused.stderr and "prog@2.3" in refused.stderr
    assert not os.path.exists(new_root)
    out = tmp_path / "dl"
    refused = cli("download", "--mirror", mirror, "prog", "-d", str(out))
    assert refused.returncode == 1 and "checksum mismatch" in refused.stderr
    assert not [f for f in os.listdir(out) if not f.startswith(".")]


def test_update_index_of_a_spack_v2_cache_and_v3_wins_when_both_exist(store, tmp_path, cli):
    mirror = str(tmp_path / "m")
    write_v2_cache(store, mirror, signer=None, index=False)
    # A damaged index is reported with advice that works for a v2 cache; install still finds
    # the packages through their spec files.
    with open(os.path.join(mirror, "build_cache", "index.json"), "w") as f:
        f.write("{not json")
    res = cli("list", mirror)
    assert res.returncode == 1 and "spack buildcache update-index" in res.stderr
    assert "bincache update-index" in res.stderr
    new_root = str(tmp_path / "r")
    cli("--root", new_root, "install", "--unsigned", "--mirror", mirror, "prog", check=True)
    assert_relocated(run_prog(new_root), new_root, store)
    # bincache rewrites the index of Spack's cache in the form Spack 0.2x reads: DB v7 and the
    # hash file beside it; nothing of layout v3 appears.
    cli("update-index", mirror, check=True)
    data = open(os.path.join(mirror, "build_cache", "index.json"), "rb").read()
    assert json.loads(data)["database"]["version"] == "7"
    assert open(os.path.join(mirror, "build_cache", "index.json.hash")).read() == hashlib.sha256(data).hexdigest()
    assert not os.path.exists(os.path.join(mirror, "v3"))
    rows = json.loads(cli("list", mirror, "--json", check=True).stdout)
    assert sorted(r["name"] for r in rows) == ["libfoo", "prog"]
    # A mirror migrated to v3 in place keeps build_cache/ but has v3/layout.json: it is v3.
    os.makedirs(os.path.join(mirror, "v3"))
    with open(os.path.join(mirror, "v3", "layout.json"), "w") as f:
        f.write("{}")
    assert isinstance(open_cache(MirrorRef(mirror)), LayoutV3Cache)


def test_oldest_layout_is_refused_clearly(store, tmp_path, cli):
    """The oldest Spack releases put a .tar.gz and a detached signature inside the .spack file
    and wrote no buildcache_layout_version."""
    mirror = str(tmp_path / "m")
    paths = write_v2_cache(store, mirror, signer=None)
    doc = json.loads(open(paths["prog"], "rb").read())
    del doc["buildcache_layout_version"]
    with open(paths["prog"], "w") as f:
        json.dump(doc, f)
    new_root = str(tmp_path / "r")
    refused = cli("--root", new_root, "install", "--unsigned", "--mirror", mirror, "prog")
    assert refused.returncode == 1
    assert "buildcache_layout_version 0" in refused.stderr and "tarball inside" in refused.stderr
    assert not os.path.exists(new_root)


def test_buildinfo_with_prefix_to_hash_relocates_dependencies(store, tmp_path, cli):
    """Spack <= 0.21 buildinfo names dependency prefixes in ``prefix_to_hash`` (prefix -> hash)."""
    mirror = str(tmp_path / "m")
    write_v2_cache(store, mirror, signer=None, layout=1, old_style=True)
    new_root = str(tmp_path / "r")
    cli("--root", new_root, "install", "--unsigned", "--mirror", mirror, "prog", check=True)
    assert_relocated(run_prog(new_root), new_root, store)


@pytest.fixture
def http_served():
    """Serve directories over http on 127.0.0.1 (a read-only mirror, as a web server gives)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    servers = []

    def serve(directory: str) -> str:
        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_signed_v2_cache_over_http(store, signing_home, tmp_path, cli, http_served):
    """Over http the tarball's size is unknown until it is fetched (v2 records none)."""
    mirror = str(tmp_path / "m")
    write_v2_cache(store, mirror, signer=signing_home)
    url = http_served(mirror)
    assert isinstance(open_cache(MirrorRef(url)), LayoutV2Cache)
    key = tmp_path / "old.pub"
    shutil.copyfile(os.path.join(mirror, "build_cache", "_pgp", f"{signing_home[1]}.pub"), key)
    cli("keys", "trust", str(key), check=True)
    listed = cli("list", url, check=True)
    assert "prog" in listed.stdout and "libfoo" in listed.stdout
    new_root = str(tmp_path / "r")
    done = cli("--root", new_root, "install", "--json", "--mirror", url, "prog", check=True)
    assert_relocated(run_prog(new_root), new_root, store)
    # The sizes reported are the tarballs' real sizes, learned while fetching them.
    sizes = {f.split("-")[5]: os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(mirror)
             for f in files if f.endswith(".spack")}
    report = json.loads(done.stdout)
    installed = {p["name"]: p["size"] for p in report["installed"]}
    assert installed == sizes


@pytest.fixture
def s3_env():
    """A real S3-compatible server (moto_server) on loopback, with a bucket "cache"."""
    with moto_server() as (env, client):
        yield env, client


def test_signed_v2_cache_on_s3(store, signing_home, tmp_path, cli, s3_env):
    env, client = s3_env
    mirror = str(tmp_path / "m")
    write_v2_cache(store, mirror, signer=signing_home)
    for d, _, files in os.walk(mirror):
        for f in files:
            path = os.path.join(d, f)
            client.upload_file(path, "cache", "old/" + os.path.relpath(path, mirror))
    cli("keys", "install", "s3://cache/old", "--trust", env=env, check=True)
    listed = cli("list", "s3://cache/old", env=env, check=True)
    assert "prog" in listed.stdout and "libfoo" in listed.stdout
    new_root = str(tmp_path / "r")
    cli("--root", new_root, "install", "--mirror", "s3://cache/old", "prog", env=env, check=True)
    assert_relocated(run_prog(new_root), new_root, store)
