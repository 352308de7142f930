"""update-index on a directory mirror finds the packages pushed since the last update by the
blobs they added (no stat of every per-name directory), and sweeps the directories instead
whenever the mirror changed in a way those blobs do not explain."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time

from bincache import index as ix
from bincache import index_listing
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.layout_v3 import (
    MT_SPEC_PREFIX,
    MT_TARBALL,
    SPEC_MANIFESTS,
    LayoutV3Cache,
    gzip_bytes,
    manifest_bytes,
)
from bincache.spec import specfile_bytes
from tests.conftest import run_cli
from tests.index.conftest import tick
from tests.index.packages import closure, indexed_hashes, indexed_mirror, make_specs, put_package


def _mirror(path, specs):
    cache, by_hash = indexed_mirror(path, specs)  # the first update records the blob directories
    tick()
    return cache, by_hash


def _blob(cache, rec) -> str:
    return cache.backend._path(rec.path)


def test_a_new_package_is_found_by_its_blobs_alone(tmp_path):
    specs = make_specs([f"pkg{i:03d}" for i in range(40)] + ["pkg007"])  # a new name, a new version
    cache, by_hash = _mirror(tmp_path / "m", specs[:39])
    put_package(cache, specs[39], by_hash)
    put_package(cache, specs[40], by_hash)
    tick()
    view, fetched = ix.update_index(cache)
    assert fetched == 2 and view.package_count() == 41
    assert cache.backend.swept == 0  # no per-name directory stat'ed
    assert sorted(cache.backend.listed) == [f"{SPEC_MANIFESTS}/pkg007", f"{SPEC_MANIFESTS}/pkg039"]
    assert indexed_hashes(cache) == {s.hash for s in specs}
    cache.backend.listed.clear()
    tick()
    assert ix.update_index(cache)[1] == 0
    assert cache.backend.listed == [] and cache.backend.swept == 0


def test_a_push_caught_between_its_blobs_and_its_manifest_is_indexed_once_it_lands(tmp_path):
    specs = make_specs(["zlib", "curl", "git", "cmake"], chain=9)
    cache, by_hash = _mirror(tmp_path / "m", specs[:3])
    cmake = specs[3]
    tar = cache.put_blob_bytes(b"tarball of cmake", MT_TARBALL, "gzip")
    data = specfile_bytes(closure(cmake, by_hash))
    rec = cache.put_blob_bytes(gzip_bytes(data), f"{MT_SPEC_PREFIX}5+json", "gzip")
    tick()
    assert ix.update_index(cache)[1] == 0  # blobs there, no manifest yet
    cache.backend.write(cache.manifest_path(cmake.name, cmake.version, cmake.hash), manifest_bytes([tar, rec]))
    tick()
    assert ix.update_index(cache)[1] == 1
    assert cache.backend.swept == 0
    assert indexed_hashes(cache) == {s.hash for s in specs}


def test_a_name_directory_removed_by_hand_sends_the_update_to_the_sweep(tmp_path):
    """`rm -rf v3/manifests/spec/curl` (its blobs left): no blob says so, the count of per-name
    directories does, and the sweep takes curl out of the index."""
    specs = make_specs(["zlib", "curl", "git", "cmake"], chain=9)
    cache, by_hash = _mirror(tmp_path / "m", specs)
    shutil.rmtree(os.path.dirname(cache.backend._path(cache.manifest_path(specs[1].name, specs[1].version, specs[1].hash))))
    tick()
    view, _ = ix.update_index(cache)
    assert cache.backend.swept == 1
    assert sorted(e.spec.name for e in view.packages()) == ["cmake", "git", "zlib"]


def test_blobs_another_writer_removed_or_wrote_unreadable_send_the_update_to_the_sweep(tmp_path):
    """A package deleted with its blobs by another tool, and at the same time a blob nobody can
    read (a writer that writes in place, caught mid-write) beside a new version of git: the
    update cannot tell what changed from the blobs, sweeps, and gets the index right."""
    specs = make_specs(["zlib", "curl", "git", "cmake", "git"], chain=9)
    cache, by_hash = _mirror(tmp_path / "m", specs[:4])
    curl = specs[1]
    manifest = cache.backend._path(cache.manifest_path(curl.name, curl.version, curl.hash))
    for d in json.loads(open(manifest, "rb").read())["data"]:
        os.unlink(cache.backend._path(f"blobs/sha256/{d['checksum'][:2]}/{d['checksum']}"))
    os.unlink(manifest)
    tick()
    view, _ = ix.update_index(cache)
    assert cache.backend.swept == 1
    assert sorted(e.spec.name for e in view.packages()) == ["cmake", "git", "zlib"]

    cache.backend.swept = 0
    tick()
    put_package(cache, specs[4], by_hash)
    torn = gzip.compress(b'{"spec":{"_meta":{"version":5},"nodes":[{"name":"half')[:20]
    bad = "ab" * 32
    cache.backend.write(f"blobs/sha256/{bad[:2]}/{bad}", torn)
    tick()
    view, fetched = ix.update_index(cache)
    assert fetched == 1 and cache.backend.swept == 1
    assert indexed_hashes(cache) == {s.hash for s in specs if s is not curl}


def test_a_manifest_removed_by_hand_needs_the_full_listing(tmp_path):
    """What the shortcut trusts: a package leaves with its blobs or its directory. A manifest
    deleted alone from a directory that stays is seen only by `update-index --full`."""
    specs = make_specs(["zlib", "curl", "zlib"], chain=9)
    cache, _ = _mirror(tmp_path / "m", specs)
    z = specs[2]
    os.unlink(cache.backend._path(cache.manifest_path(z.name, z.version, z.hash)))
    tick()
    ix.update_index(cache)
    assert z.hash in indexed_hashes(cache)
    ix.update_index(cache, full=True)
    assert indexed_hashes(cache) == {specs[0].hash, specs[1].hash}


def test_after_a_sweep_the_next_push_is_found_by_its_blobs_again(tmp_path):
    """A sweep records the blob directories afresh: the shortcut is back for the next update."""
    specs = make_specs(["zlib", "curl", "git", "cmake", "ninja"], chain=9)
    cache, by_hash = _mirror(tmp_path / "m", specs[:4])
    shutil.rmtree(os.path.dirname(cache.backend._path(cache.manifest_path(specs[1].name, specs[1].version, specs[1].hash))))
    tick()
    ix.update_index(cache)
    assert cache.backend.swept == 1
    cache.backend.swept = 0
    tick()
    put_package(cache, specs[4], by_hash)
    tick()
    assert ix.update_index(cache)[1] == 1
    assert cache.backend.swept == 0
    assert indexed_hashes(cache) == {s.hash for s in specs if s is not specs[1]}


def test_every_package_gone_with_the_spec_directory_empties_the_index(tmp_path):
    specs = make_specs(["zlib", "curl"], chain=9)
    cache, _ = _mirror(tmp_path / "m", specs)
    shutil.rmtree(cache.backend._path(SPEC_MANIFESTS))
    tick()
    view, _ = ix.update_index(cache)
    assert view.package_count() == 0 and indexed_hashes(cache) == set()


def test_pushers_writing_beside_updates_lose_nothing(tmp_path, monkeypatch):
    """Three pushers write blobs, then (a moment later) manifests, while updates run one after
    another: the last plain update indexes every package, whatever each update caught
    between a push's blobs and its manifest."""
    import random
    import threading

    # The trust: a push writes its manifest within CLOCK_SLACK of its spec blob (here 50 ms).
    monkeypatch.setattr(index_listing, "CLOCK_SLACK", 1.0)

    base = make_specs([f"base{i:03d}" for i in range(60)], chain=10 ** 9)
    cache, _ = _mirror(tmp_path / "m", base)
    batches = [make_specs([f"p{j}x{i:02d}" for i in range(12)], chain=10 ** 9) for j in range(3)]
    done = threading.Event()

    def push(specs, seed):
        rnd = random.Random(seed)
        mine = LayoutV3Cache(DirectoryBackend(cache.backend.root))
        for s in specs:
            tar = mine.put_blob_bytes(f"tarball of {s.name}".encode(), MT_TARBALL, "gzip")
            rec = mine.put_blob_bytes(gzip_bytes(specfile_bytes([s])), f"{MT_SPEC_PREFIX}5+json", "gzip")
            time.sleep(rnd.random() * 0.05)  # an update may look in between
            mine.backend.write(mine.manifest_path(s.name, s.version, s.hash), manifest_bytes([tar, rec]))
            time.sleep(rnd.random() * 0.02)

    def update():
        while not done.is_set():
            ix.update_index(LayoutV3Cache(DirectoryBackend(cache.backend.root)))

    updater = threading.Thread(target=update)
    updater.start()
    pushers = [threading.Thread(target=push, args=(b, j)) for j, b in enumerate(batches)]
    for t in pushers:
        t.start()
    for t in pushers:
        t.join()
    done.set()
    updater.join()
    tick()
    ix.update_index(cache)
    assert indexed_hashes(cache) == {s.hash for s in base + [s for b in batches for s in b]}


def test_installing_a_package_whose_manifest_went_by_hand_says_what_to_run(tmp_path):
    specs = make_specs(["zlib", "curl"], chain=9)
    cache, _ = _mirror(tmp_path / "m", specs)
    z = specs[0]
    os.unlink(cache.backend._path(cache.manifest_path(z.name, z.version, z.hash)))
    out = run_cli("--root", str(tmp_path / "root"), "install", "--unsigned", "-m", str(tmp_path / "m"), "zlib")
    assert out.returncode == 1
    assert "run bincache update-index --full" in out.stderr
