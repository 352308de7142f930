"""`sync`: copy packages between two mirrors (directory, file://, s3://, oci://; http(s) as a
source), dependencies included, signatures carried as they are.

Blobs first (each checked against its record; a blob the destination already has is not copied
again; between repositories of one registry it is mounted, not downloaded and uploaded), then
each package's commit point: its manifest in a directory mirror, its tag in a registry (see
:mod:`.sync_sides` for how a signed manifest lives in a registry). A run that was interrupted
is resumed by running it again: what is complete is skipped, what is partial is finished. A
layout v3 source's public keys (key manifests) go along to a layout v3 destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import mask_url
from ..errors import BincacheError, MirrorError, SpecError, UsageError
from ..index import update_index
from ..mirror import open_cache
from ..mirror.layout_v2 import LayoutV2Cache
from ..mirror.layout_v3 import (
    LayoutV3Cache,
    clearsigned_payload,
    is_clearsigned,
    parse_manifest,
    verify_blob_file,
)
from ..mirror.oci import OciCache
from ..spec import matches
from .catalog import closure, current_index
from .sync_sides import (
    Carried,
    DirSide,
    OciSide,
    layer_facts,
    layer_of,
    own_specfile,
    specfile_bytes,
)
from .sync_v2 import V2Side
from .sync_v2 import resign as resign_package


@dataclass
class SyncResult:
    source: str
    dest: str
    copied: list = field(default_factory=list)  # Spec
    present: list = field(default_factory=list)  # Spec
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    resigned: int = 0
    index_updated: bool = False
    requests: Counter = field(default_factory=Counter)  # registry requests by kind


def _side(ref, role: str, scratch: str, signer=None):
    cache = open_cache(ref)
    if isinstance(cache, OciCache):
        return OciSide(cache)
    if isinstance(cache, LayoutV2Cache) and role == "source":
        return V2Side(cache, scratch, signer)
    if not isinstance(cache, LayoutV3Cache):
        hint = (" (bincache migrate converts a layout v2 cache in place)"
                if isinstance(cache, LayoutV2Cache) else "")
        raise UsageError(f"{mask_url(cache.url)}: sync writes layout v3 mirrors and OCI "
                         f"registries; this {role} is neither{hint}")
    root = cache.backend.root
    if root is not None and os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"{root} is a file, not a mirror directory; name a directory (or a "
                         "new path) as the {role}".replace("{role}", role))
    if role == "source" and root is not None and not os.path.isdir(root):
        raise MirrorError(f"no mirror at {root} (the directory does not exist)")
    return DirSide(cache)


class _Copier:
    def __init__(self, src, dst, scratch: str, result: SyncResult):
        self.src, self.dst, self.scratch, self.result = src, dst, scratch, result
        self.lock = threading.Lock()
        self.done: set[str] = set()
        self.mountable = isinstance(dst, OciSide) and dst.same_registry(src)

    def blob(self, rec, want_diff_id: bool = False) -> tuple[str, bytes | None] | None:
        """Copy one blob unless the destination has it; its :func:`layer_facts` when asked (a
        tarball that becomes an image layer)."""
        with self.lock:
            first = rec.path not in self.done
            self.done.add(rec.path)
        if not first and not want_diff_id:
            return None
        if not first or self.dst.has_blob(rec):
            if first:
                with self.lock:
                    self.result.blobs_present += 1
            return self._diff_id_at_source(rec) if want_diff_id else None
        if self.mountable and self.dst.mount(rec, self.src):
            with self.lock:
                self.result.blobs_mounted += 1
            return None
        where = f"{mask_url(self.src.url)}/{rec.path}"
        local = self.src.local_path(rec)
        tmp = None
        try:
            if local is not None:
                with open(local, "rb") as f:
                    verify_blob_file(f, rec, where)
                path = local
            else:
                path = tmp = os.path.join(self.scratch, rec.checksum + f".{threading.get_ident()}")
                self.src.fetch_blob(rec, tmp)  # checked against the record
            found = layer_facts(path, rec.compression) if want_diff_id else None
            self.dst.put_blob(rec, path)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
        with self.lock:
            self.result.blobs_copied += 1
            self.result.bytes_copied += rec.content_length
        return found

    def _diff_id_at_source(self, rec) -> tuple[str, bytes | None]:
        local = self.src.local_path(rec)
        if local is not None:
            return layer_facts(local, rec.compression)
        tmp = os.path.join(self.scratch, rec.checksum + f".{threading.get_ident()}")
        try:
            self.src.fetch_blob(rec, tmp)
            return layer_facts(tmp, rec.compression)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def package(self, carried: Carried) -> None:
        """Every blob the destination's copy of the package names."""
        tar_spec = None
        for rec in self.dst.blobs_for(carried):
            if self.dst.wants_image(carried) and rec == carried.tarball:
                facts = self.blob(rec, want_diff_id=True)
                if facts is not None:
                    carried.diff_id, tar_spec = facts
            else:
                self.blob(rec)
        if self.dst.wants_image(carried):
            # The image config holds the spec file the package was built with (a layout v3
            # cache holds it converted to v5, which Spack 0.2x cannot read from a registry);
            # install takes the signed spec blob, not the config, when the package is signed.
            rec = carried.spec_record
            carried.specfile = (own_specfile(tar_spec, carried.spec)
                                or specfile_bytes(self.src.read_blob(rec), rec))

    def manifest(self, rel: str, raw: bytes) -> None:
        """A key manifest of a layout v3 mirror: its blobs, then itself."""
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        for rec in parse_manifest(payload, raw, rel).records:
            self.blob(rec)
        self.dst.cache.backend.write(rel, raw)


def _select(idx, specs: list[str], only_package: bool) -> list:
    packages = {e.spec.hash: e.spec for e in idx.packages()}
    if not specs:
        return sorted(packages.values(), key=lambda s: (s.name, s.version, s.hash))
    roots = []
    for sel in specs:
        found = [s for s in packages.values() if matches(s, sel)]
        if not found:
            raise SpecError(f'"{sel}" is not in the source mirror; nothing was copied')
        roots += found
    if only_package:
        chosen = {r.hash for r in roots}
    else:
        chosen = closure(roots, {h: e.spec for h, e in idx.entries.items()})
    return sorted((packages[h] for h in chosen if h in packages),
                  key=lambda s: (s.name, s.version, s.hash))


def sync(source, dest, specs: Sequence[str] = (), *, only_package: bool = False, jobs: int = 4,
         update_dest_index: bool = True, resign: str | None = None, planned=None,
         copied=None) -> SyncResult:
    """``planned(n)`` is told how many packages are looked at, ``copied(spec)`` each one copied.
    ``resign``: a key of the local keyring that signs every signed package again (verified
    first); without it signatures are carried byte for byte."""
    signer = None
    if resign is not None:
        from ..signing import Signer

        signer = Signer(resign)
    scratch = tempfile.mkdtemp(prefix="bincache-sync-")
    try:
        return _sync(source, dest, list(specs), only_package, jobs, update_dest_index, signer,
                     scratch, planned, copied)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _carry_all(pool, src, todo: list, signer) -> list[Carried]:
    """Every package to copy, read (and re-signed) before anything is written: one that
    cannot be read is reported and nothing is copied."""
    def carry(spec):
        try:
            carried = src.carried(spec)
            if signer is not None:
                resign_package(carried, signer, f"{mask_url(src.url)} {spec.short()}")
            return carried
        except BincacheError as e:
            return e

    got = list(pool.map(carry, todo))
    problems = [(s, e) for s, e in zip(todo, got) if isinstance(e, BincacheError)]
    if problems:
        (spec, first), more = problems[0], len(problems) - 1
        text = str(first) if spec.hash[:7] in str(first) else f"{spec.short()}: {first}"
        raise type(first)(f"{text}" + (f" (and {more} more)" if more else "")
                          + "; nothing was copied")
    return got


def _sync(source, dest, specs, only_package, jobs, update_dest_index, signer, scratch,
          planned, copied) -> SyncResult:
    src = _side(source, "source", scratch, signer)
    dst = _side(dest, "destination", scratch)
    if src.url == dst.url:
        raise UsageError("the source and the destination are the same mirror")
    idx = current_index(src.cache, jobs)
    chosen = _select(idx, specs, only_package)
    result = SyncResult(mask_url(src.url), mask_url(dst.url))
    if planned:
        planned(len(chosen))
    copier = _Copier(src, dst, scratch, result)
    workers = max(1, jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        there = list(pool.map(dst.has, chosen))
        result.present = [s for s, t in zip(chosen, there) if t]
        todo = _carry_all(pool, src, [s for s, t in zip(chosen, there) if not t], signer)
        if todo:
            dst.check_writable()
        list(pool.map(copier.package, todo))
        # Commit points last, once every blob of the run is in (an image names its
        # dependencies' layers).
        layers = {c.spec.hash: layer_of(c) for c in todo if c.diff_id}

        def commit(carried: Carried) -> None:
            dst.commit(carried, layers)
            if copied:
                copied(carried.spec)

        list(pool.map(commit, todo))
    result.copied = [c.spec for c in todo]
    result.resigned = sum(c.resigned for c in todo)
    dst.finish(src, todo, copier.manifest)
    if signer is not None and result.resigned and isinstance(dst, DirSide):
        from ..mirror.keys import publish_keys

        publish_keys(dst.cache, [signer.fingerprint])
    if update_dest_index:
        update_index(dst.cache, jobs=jobs)
        result.index_updated = True
    for side in (src, dst):
        if isinstance(side, OciSide):
            result.requests.update(side.client.stats)
    return result
