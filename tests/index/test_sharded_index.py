"""The sharded index of a layout v3 mirror: an update costs what changed, a lookup one shard,
and Spack's single index beside it stays the index of every package."""

from __future__ import annotations

import json
import os

import pytest

from bincache import index as ix
from bincache.index_db import Index
from bincache.index_shards import MT_SHARD, ROOT_PATH, Root, shard_key
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.layout_v3 import INDEX_MANIFEST, LayoutV3Cache
from tests.conftest import run_cli
from tests.index.conftest import tick
from tests.index.packages import closure, make_specs, put_package


class CountingBackend(DirectoryBackend):
    """A directory mirror that remembers every path read (what an update or a lookup costs)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def read(self, rel, max_size=None):
        self.reads.append(rel)
        return super().read(rel, max_size)


def _mirror(path, specs):
    cache = LayoutV3Cache(CountingBackend(str(path)))
    by_hash = {s.hash: s for s in specs}
    for s in specs:
        put_package(cache, s, by_hash)
    tick()  # the first update's listing is after these directories' last change
    return cache, by_hash


def _root(cache) -> Root:
    return Root.from_bytes(cache.backend.read(ROOT_PATH), "root")


def _blob_reads(cache, checksums) -> list[str]:
    return [r for r in cache.backend.reads if r.rsplit("/", 1)[-1] in checksums]


def _expected_spack_index(cache, specs, by_hash) -> dict:
    """Spack's index as a full rebuild (bincache's single-document writer) makes it."""
    idx = Index()
    for s in specs:
        manifest = cache.fetch_manifest(s)
        idx.add_specfile(closure(s, by_hash), manifest.tarball.content_length)
    return json.loads(idx.to_bytes("8"))


def _spack_index(cache) -> dict:
    return json.loads(cache.read_index_bytes())


def test_update_after_one_new_package_reads_and_writes_only_its_shards(tmp_path):
    specs = make_specs([f"pkg{i:03d}" for i in range(120)])
    cache, by_hash = _mirror(tmp_path / "m", specs[:-1])
    view, fetched = ix.update_index(cache)
    assert fetched == 119 and view.package_count() == 119
    before = _root(cache)
    assert len(before.shards) > 60  # spread over many shards

    new = specs[-1]
    put_package(cache, new, by_hash)
    cache.backend.reads.clear()
    view, fetched = ix.update_index(cache)
    assert fetched == 1 and view.package_count() == 120
    after = _root(cache)
    changed = {k for k in after.shards if after.shards[k] != before.shards.get(k)}
    touched = {shard_key(n.name) for n in closure(new, by_hash)}
    assert changed <= touched and shard_key(new.name) in changed
    # Read: the root, the shards of the new package's DAG names, its manifest and spec blob, and
    # the previous index.json (spliced, not parsed) - no other shard.
    shard_sums = {i.checksum for i in before.shards.values()}
    assert len(_blob_reads(cache, shard_sums)) <= len(touched)
    # Spack's index is still the index of every package, as a full rebuild writes it.
    assert _spack_index(cache) == _expected_spack_index(cache, specs, by_hash)


def test_an_update_with_nothing_new_writes_nothing(tmp_path):
    cache, _ = _mirror(tmp_path / "m", make_specs([f"p{i}" for i in range(30)]))
    ix.update_index(cache)
    root = cache.backend.read(ROOT_PATH)
    cache.backend.reads.clear()
    assert ix.update_index(cache)[1] == 0
    assert cache.backend.read(ROOT_PATH) == root
    assert not [r for r in cache.backend.reads if r.startswith("blobs/")]


def test_a_vanished_package_leaves_the_index_and_its_node_stays(tmp_path):
    specs = make_specs(["zlib", "curl", "git", "cmake"], chain=1)  # each depends on the one before
    cache, by_hash = _mirror(tmp_path / "m", specs)
    ix.update_index(cache)
    # A manifest removed by hand, its blobs left: only the full listing sees it go
    # (docs/internals.md, "Finding new packages by their blobs").
    os.unlink(cache.backend._path(cache.manifest_path(specs[0].name, specs[0].version, specs[0].hash)))
    view, _ = ix.update_index(cache, full=True)
    assert sorted(e.spec.name for e in view.packages()) == ["cmake", "curl", "git"]
    record = _spack_index(cache)["database"]["installs"][specs[0].hash]
    assert record["in_buildcache"] is False and record["ref_count"] == 1
    assert _spack_index(cache) == _expected_spack_index(cache, specs[1:], by_hash)


def test_list_name_reads_the_root_and_one_shard(tmp_path):
    specs = make_specs([f"lib{i}" for i in range(80)])
    cache, _ = _mirror(tmp_path / "m", specs)
    ix.update_index(cache)
    sums = {i.checksum for i in _root(cache).shards.values()}
    fresh = LayoutV3Cache(CountingBackend(cache.backend.root))
    view = ix.open_index(fresh)
    found = view.find("lib42")
    assert [e.spec.name for e in found] == ["lib42"]
    assert len(_blob_reads(fresh, sums)) == 1
    assert INDEX_MANIFEST in fresh.backend.reads  # Spack's manifest checked, its index not read
    spack_blob = json.loads(fresh.backend.read(INDEX_MANIFEST))["data"][0]["checksum"]
    assert not _blob_reads(fresh, {spack_blob})


def test_a_mirror_with_only_spack_index_is_read_and_gets_a_root(tmp_path):
    specs = make_specs(["alpha", "beta", "gamma"])
    cache, _ = _mirror(tmp_path / "m", specs)
    ix.update_index(cache)
    os.unlink(cache.backend._path(ROOT_PATH))  # as Spack or an older bincache leaves it
    listed = run_cli("list", str(tmp_path / "m"), "beta", check=True).stdout
    assert "beta" in listed and "alpha" not in listed
    assert run_cli("update-index", str(tmp_path / "m"), check=True).stdout.startswith(
        "index updated: 3 packages (0 new)")
    assert len(_root(cache).shards) == len({shard_key(s.name) for s in specs})


def test_the_root_is_a_manifest_naming_every_blob_of_the_index(tmp_path):
    cache, _ = _mirror(tmp_path / "m", make_specs(["a", "b", "c", "d"]))
    ix.update_index(cache)
    doc = json.loads(cache.backend.read(ROOT_PATH))
    kinds = sorted({d["mediaType"] for d in doc["data"]})
    assert kinds == sorted(["application/vnd.spack.db.v8+json", MT_SHARD])
    for d in doc["data"]:  # prune keeps what a manifest names
        assert os.path.exists(cache.backend._path(f"blobs/sha256/{d['checksum'][:2]}/{d['checksum']}"))


def test_a_signed_root_is_verified_and_a_forged_one_is_not_trusted(tmp_path, keyed, monkeypatch):
    from bincache.signing import Signer

    home, key = keyed
    monkeypatch.setenv("BINCACHE_GNUPGHOME", home)
    cache, _ = _mirror(tmp_path / "m", make_specs(["one", "two"]))
    signer = Signer(key.fingerprint, home=home)
    try:
        ix.update_index(cache, signer=signer)
    finally:
        signer.close()
    raw = cache.backend.read(ROOT_PATH)
    assert raw.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    assert [e.spec.name for e in ix.open_index(cache).find("two")] == ["two"]
    # The signed text altered (one package hidden): gpg refuses it, Spack's index is read.
    forged = raw.replace(b'"packages":1', b'"packages":0', 1)
    cache.backend.write(ROOT_PATH, forged)
    view = ix.open_index(cache)
    assert isinstance(view, Index) and {e.spec.name for e in view.packages()} == {"one", "two"}


@pytest.mark.parametrize("version", ["7", "8"])
def test_db_version_asked_for_rewrites_every_shard(tmp_path, version):
    cache, _ = _mirror(tmp_path / "m", make_specs(["x", "y"]))
    ix.update_index(cache, db_version=version)
    assert _root(cache).db_version == version
    assert _spack_index(cache)["database"]["version"] == version
