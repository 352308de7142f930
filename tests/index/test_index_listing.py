"""update-index on a directory mirror lists only the per-name manifest directories that
changed since the last update, and still sees what another tool wrote or what prune removed."""

from __future__ import annotations

import json
import os
import shutil

from bincache import api
from bincache import index as ix
from bincache.index_blobs import STATE_PATH, BlobState
from bincache.index_listing import LISTING_PATH
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.layout_v3 import SPEC_MANIFESTS, LayoutV3Cache
from tests.conftest import run_cli
from tests.index.conftest import tick
from tests.index.packages import indexed_hashes, indexed_mirror, make_specs, put_package


def _manifest(cache, spec) -> str:
    return cache.backend._path(cache.manifest_path(spec.name, spec.version, spec.hash))


def test_one_new_package_lists_only_its_directory(tmp_path):
    specs = make_specs([f"pkg{i:03d}" for i in range(40)])
    cache, by_hash = indexed_mirror(tmp_path / "m", specs[:-1])
    assert json.loads(cache.backend.read(LISTING_PATH))["dirs"] == 39
    put_package(cache, specs[-1], by_hash)
    tick()
    view, fetched = ix.update_index(cache)
    assert fetched == 1 and view.package_count() == 40
    assert cache.backend.listed == [f"{SPEC_MANIFESTS}/{specs[-1].name}"]
    assert indexed_hashes(cache) == {s.hash for s in specs}
    cache.backend.listed.clear()
    assert ix.update_index(cache)[1] == 0
    assert cache.backend.listed == []  # nothing changed: no manifest directory listed


def test_manifests_another_tool_wrote_are_picked_up(tmp_path):
    """Spack writes v3 manifests itself: a new version beside an existing one (written in
    place, no bincache temp file), and a name directory copied in with `cp -a` (old mtime)."""
    specs = make_specs(["zlib", "curl", "git", "cmake"], chain=1)
    extra = make_specs(["ninja", "zlib"], chain=9)  # another zlib (other version and hash)
    cache, by_hash = indexed_mirror(tmp_path / "m", specs)
    by_hash.update({s.hash: s for s in extra})

    other = LayoutV3Cache(DirectoryBackend(str(tmp_path / "other")))
    for s in extra:
        put_package(other, s, by_hash)
    zlib2 = extra[1]
    with open(_manifest(cache, zlib2), "wb") as f:  # into the existing zlib directory
        f.write(open(_manifest(other, zlib2), "rb").read())
    ninja_dir = os.path.dirname(_manifest(other, extra[0]))
    os.utime(ninja_dir, (1_000_000_000, 1_000_000_000))  # an mtime long before the last listing
    shutil.copytree(os.path.join(other.backend.root, "blobs"), os.path.join(cache.backend.root, "blobs"),
                    dirs_exist_ok=True)
    os.rename(ninja_dir, os.path.join(cache.backend.root, *SPEC_MANIFESTS.split("/"), "ninja"))

    view, fetched = ix.update_index(cache)
    assert fetched == 2
    assert indexed_hashes(cache) == {s.hash for s in specs + extra}
    assert sorted(cache.backend.listed) == [f"{SPEC_MANIFESTS}/ninja", f"{SPEC_MANIFESTS}/zlib"]


def test_what_prune_removes_leaves_the_index(tmp_path):
    """prune deletes manifests and a name's emptied directory, then updates the index: a
    removed directory is not in the listing of changed ones, so the update lists them all."""
    specs = make_specs(["zlib", "curl", "git", "cmake", "ninja"], chain=9)  # independent
    cache, _ = indexed_mirror(tmp_path / "m", specs)
    api.prune([str(tmp_path / "m")], keep=["zlib", "git"], yes=True, grace=0.0)
    assert indexed_hashes(cache) == {specs[0].hash, specs[2].hash}
    assert not os.path.exists(os.path.dirname(_manifest(cache, specs[1])))
    # And a manifest removed by hand from a directory that stays.
    os.unlink(_manifest(cache, specs[2]))
    view, _ = ix.update_index(cache)
    assert [e.spec.name for e in view.packages()] == ["zlib"]
    assert indexed_hashes(cache) == {specs[0].hash}


def test_a_listing_goes_with_its_root_only(tmp_path):
    """The listing names the root it was made with: a root written by anything else (an older
    bincache, write_index) makes the next update list every directory."""
    specs = make_specs(["zlib", "curl", "git"], chain=9)
    cache, by_hash = indexed_mirror(tmp_path / "m", specs[:-1])
    idx = ix.read_index(cache)
    del idx.entries[specs[1].hash]
    ix.write_index(cache, idx)  # another root (curl left out), with no listing of its own
    put_package(cache, specs[-1], by_hash)
    tick()
    assert ix.update_index(cache)[1] == 2
    assert cache.backend.listed == [SPEC_MANIFESTS]
    assert indexed_hashes(cache) == {s.hash for s in specs}


def test_full_lists_every_directory_whatever_the_recorded_clock(tmp_path):
    """A listing recorded with a clock that was ahead (a server's clock stepped back) hides
    directories changed since; `update-index --full` lists them all. (A directory added or
    removed is found even so: the count of directories the root records differs.)"""
    specs = make_specs(["zlib", "curl", "zlib"], chain=9)  # a second zlib, in its directory
    cache, by_hash = indexed_mirror(tmp_path / "m", specs[:-1])
    listing = json.loads(cache.backend.read(LISTING_PATH))
    listing["listed_at"] += 3600
    cache.backend.write(LISTING_PATH, json.dumps(listing).encode())
    blobs = BlobState.from_bytes(cache.backend.read(STATE_PATH))
    blobs.listed_at += 3600
    cache.backend.write(STATE_PATH, blobs.to_bytes())
    put_package(cache, specs[-1], by_hash)
    assert ix.update_index(cache)[1] == 0
    assert indexed_hashes(cache) == {s.hash for s in specs[:-1]}
    out = run_cli("update-index", "--full", str(tmp_path / "m"), check=True).stdout
    assert out.strip() == "index updated: 3 packages (1 new)"
    assert indexed_hashes(cache) == {s.hash for s in specs}
