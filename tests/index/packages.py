"""Tiny packages put straight into a layout v3 mirror, for index tests that need many of them.

Each has a real spec blob (gzipped spec file), a tarball blob and a manifest written by the
mirror's own record functions: what `create` leaves, without packing a prefix.
"""

from __future__ import annotations

import json

from bincache import index as ix
from bincache.mirror.directory import DirectoryBackend
from bincache.mirror.layout_v3 import (
    MT_SPEC_PREFIX,
    MT_TARBALL,
    LayoutV3Cache,
    gzip_bytes,
    manifest_bytes,
)
from bincache.spec import Spec, make_node, specfile_bytes
from tests.index.conftest import tick

ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}


def make_specs(names: list[str], chain: int = 3) -> list[Spec]:
    """One spec per name; every ``chain``-th depends on the one before (a DAG with sharing)."""
    specs: list[Spec] = []
    for i, name in enumerate(names):
        deps = [specs[-1]] if specs and i % chain == 0 else []
        specs.append(Spec.from_node(make_node(name, f"1.{i}", deps, arch=ARCH)))
    return specs


def closure(spec: Spec, by_hash: dict[str, Spec]) -> list[Spec]:
    out, todo = [], [spec]
    while todo:
        s = todo.pop()
        if s.hash in {o.hash for o in out}:
            continue
        out.append(s)
        todo.extend(by_hash[d.hash] for d in s.deps if d.hash in by_hash)
    return out


def put_package(cache: LayoutV3Cache, spec: Spec, by_hash: dict[str, Spec]) -> None:
    tar = cache.put_blob_bytes(f"tarball of {spec.name}".encode(), MT_TARBALL, "gzip")
    data = specfile_bytes(closure(spec, by_hash))
    version = json.loads(data)["spec"]["_meta"]["version"]
    rec = cache.put_blob_bytes(gzip_bytes(data), f"{MT_SPEC_PREFIX}{version}+json", "gzip")
    cache.backend.write(cache.manifest_path(spec.name, spec.version, spec.hash),
                        manifest_bytes([tar, rec]))


class WatchedBackend(DirectoryBackend):
    """A directory mirror that remembers what was listed and how often every per-name
    directory was swept."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.listed: list[str] = []
        self.swept = 0

    def list(self, rel_dir):
        self.listed.append(rel_dir)
        return super().list(rel_dir)

    def list_dirs(self, rel_dir, since=float("-inf"), clock_dir=None):
        self.swept += 1
        return super().list_dirs(rel_dir, since, clock_dir)


def indexed_mirror(path, specs: list[Spec]) -> tuple[LayoutV3Cache, dict[str, Spec]]:
    """A watched mirror holding ``specs``, indexed once (a sweep), its watch reset."""
    cache = LayoutV3Cache(WatchedBackend(str(path)))
    by_hash = {s.hash: s for s in specs}
    for s in specs:
        put_package(cache, s, by_hash)
    tick()
    ix.update_index(cache)
    cache.backend.listed.clear()
    cache.backend.swept = 0
    return cache, by_hash


def indexed_hashes(cache: LayoutV3Cache) -> set[str]:
    """The hashes the mirror's index says are in the build cache."""
    doc = json.loads(cache.read_index_bytes())["database"]["installs"]
    return {h for h, r in doc.items() if r["in_buildcache"]}
