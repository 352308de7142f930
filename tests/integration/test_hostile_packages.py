"""Packages whose metadata is hostile: a signature proves who built a package, not that its
buildinfo or spec file is harmless. Each case must be refused and touch nothing outside the root.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile

import pytest

from tests.conftest import run_cli

OLD = "/opt/old/evil-1.0-x"


def _blob(mirror: str, data: bytes, media_type: str, compression: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(mirror, "blobs", "sha256", digest[:2], digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return {"contentLength": len(data), "mediaType": media_type, "compression": compression,
            "checksumAlgorithm": "sha256", "checksum": digest}


def _hash(node: dict) -> str:
    text = json.dumps({k: v for k, v in node.items() if k != "hash"}, separators=(",", ":"))
    return base64.b32encode(hashlib.sha1(text.encode()).digest()).decode().lower()[:32]


def _member(name: str, data: bytes | None = None, *, link: str | None = None) -> tuple:
    ti = tarfile.TarInfo(name.lstrip("/"))
    if link is not None:
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    else:
        ti.size, ti.mode = len(data or b""), 0o644
    return ti, data


def make_mirror(mirror: str, members: list, buildinfo: str = "", name: str = "evil",
                dirname: str = "evil") -> str:
    """A directory mirror holding one unsigned package whose every byte the test chose."""
    node = {"name": name, "version": "1.0",
            "arch": {"platform": "linux", "platform_os": "debian12", "target": "x86_64"},
            "namespace": "x", "parameters": {}}
    node["hash"] = h = _hash(node)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        parts = OLD.strip("/").split("/") + [".spack"]
        for i in range(1, len(parts) + 1):
            ti = tarfile.TarInfo("/".join(parts[:i]))
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        info = (buildinfo or "relocate_textfiles: []\n") + (
            "relocate_binaries: []\nrelocate_links: []\nhardlinks_deduped: true\n"
            f"bincache: {{version: 1, prefix: {OLD}, store_root: /opt/old}}\n")
        if "hash_to_prefix" not in info:
            info += f"hash_to_prefix: {{{h}: {OLD}}}\n"
        ti, data = _member(OLD + "/.spack/binary_distribution", info.encode())
        tf.addfile(ti, io.BytesIO(data))
    tar = _blob(mirror, gzip.compress(buf.getvalue(), mtime=0),
                "application/vnd.spack.install.v2.tar+gzip", "gzip")
    spec = _blob(mirror, gzip.compress(json.dumps({"spec": {"_meta": {"version": 5}, "nodes": [node]}}).encode()),
                 "application/vnd.spack.spec.v5+json", "gzip")
    mdir = os.path.join(mirror, "v3", "manifests", "spec", dirname)
    os.makedirs(mdir, exist_ok=True)
    with open(os.path.join(mdir, f"{dirname}-1.0-{h}.spec.manifest.json"), "w") as f:
        json.dump({"version": 3, "data": [tar, spec]}, f)
    with open(os.path.join(mirror, "v3", "layout.json"), "w") as f:
        f.write("{}")
    return h


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text(f"config={OLD}/lib\n")
    return path


def _install(tmp_path, mirror, *extra):
    root = tmp_path / "root"
    p = run_cli("--root", str(root), "install", "--unsigned", "--mirror", str(mirror), *extra, "evil")
    return p, root


def _files_outside(tmp_path, root) -> list[str]:
    known = {"victim.txt", "root", "mirror", "home"}
    return sorted(n for n in os.listdir(tmp_path) if n not in known)


@pytest.mark.parametrize("listed", ["ABS", "../../../../../../VICTIM"])
def test_buildinfo_cannot_name_files_outside_the_package(tmp_path, victim, listed):
    mirror = tmp_path / "mirror"
    path = {"ABS": str(victim)}.get(listed, listed.replace("VICTIM", str(victim).lstrip("/")))
    make_mirror(str(mirror), [_member(OLD + "/a.txt", b"x")], buildinfo=f"relocate_textfiles: [{path}]\n")
    p, root = _install(tmp_path, mirror)
    assert p.returncode == 1, p.stdout
    assert "listed for relocation but not in the package" in p.stderr and "Traceback" not in p.stderr
    assert victim.read_text() == f"config={OLD}/lib\n"
    assert not (root / "linux-x86_64").exists() or not any((root / "linux-x86_64").iterdir())


def test_buildinfo_cannot_widen_where_symlinks_may_point(tmp_path, victim):
    mirror = tmp_path / "mirror"
    make_mirror(str(mirror), [_member(OLD + "/.spack/spec.json.tmp", link=str(victim)),
                              _member(OLD + "/etc", link="/etc")],
                buildinfo="relocate_textfiles: []\nhash_to_prefix: {aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: /}\n")
    p, root = _install(tmp_path, mirror)
    assert p.returncode == 1, p.stdout
    assert "Traceback" not in p.stderr
    assert victim.read_text() == f"config={OLD}/lib\n"
    for dirpath, dirnames, files in os.walk(root):
        for n in dirnames + files:
            full = os.path.join(dirpath, n)
            assert not (os.path.islink(full) and os.readlink(full) == "/etc"), full


def test_a_spec_name_with_slashes_is_refused(tmp_path):
    mirror = tmp_path / "mirror"
    make_mirror(str(mirror), [_member(OLD + "/a.txt", b"x")], name="../../../escaped")
    p, root = _install(tmp_path, mirror)
    assert p.returncode == 1, p.stdout
    assert "invalid package name" in p.stderr and "Traceback" not in p.stderr
    assert _files_outside(tmp_path, root) == []


def test_a_projection_outside_the_root_is_refused(tmp_path):
    mirror = tmp_path / "mirror"
    make_mirror(str(mirror), [_member(OLD + "/a.txt", b"x")])
    outside = tmp_path / "elsewhere"
    p, root = _install(tmp_path, mirror, "--projection", str(outside) + "/{name}")
    assert p.returncode != 0
    assert "outside the install root" in p.stderr and "Traceback" not in p.stderr
    assert not outside.exists()
