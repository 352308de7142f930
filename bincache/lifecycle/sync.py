"""`sync`: copy packages between two layout v3 mirrors (directory, file://, s3://; http(s) as
a source), dependencies included, signatures carried as they are.

Per package, as a push does: blobs first (each checked against its record; a blob the
destination already has is not copied again), the manifest last, byte for byte, so a signed
manifest stays valid. The manifest is the commit point, so a run that was interrupted is
resumed by running it again: what is complete is skipped, what is partial is finished. The
source's public keys (key manifests) go along, so the destination verifies as the source did.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import mask_url
from ..errors import BincacheError, MirrorError, SpecError, UsageError
from ..index import update_index
from ..mirror import open_cache
from ..mirror.layout_v3 import (
    LAYOUT_JSON,
    LayoutV3Cache,
    clearsigned_payload,
    is_clearsigned,
    parse_manifest,
    verify_blob_file,
)
from ..spec import matches
from .catalog import closure, current_index

KEY_MANIFESTS = "v3/manifests/key"


@dataclass
class SyncResult:
    source: str
    dest: str
    copied: list = field(default_factory=list)  # Spec
    present: list = field(default_factory=list)  # Spec
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_present: int = 0
    index_updated: bool = False


def _layout(ref, role: str) -> LayoutV3Cache:
    cache = open_cache(ref)
    if not isinstance(cache, LayoutV3Cache):
        kind = getattr(cache, "kind", "")
        hint = " (bincache migrate SRC DST copies a layout v2 cache)" if kind == "layout-v2" else ""
        raise UsageError(f"{mask_url(cache.url)}: sync copies between layout v3 mirrors (directory, "
                         f"s3, http as a source); this {role} is not one{hint}")
    root = getattr(cache.backend, "root", None)
    if root is not None and os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"{root} is a file, not a mirror directory")
    if role == "source" and root is not None and not os.path.isdir(root):
        raise MirrorError(f"no mirror at {root} (the directory does not exist)")
    return cache


class _Copier:
    def __init__(self, src: LayoutV3Cache, dst: LayoutV3Cache, scratch: str, result: SyncResult):
        self.src, self.dst, self.scratch, self.result = src, dst, scratch, result
        self.lock = threading.Lock()
        self.done: set[str] = set()

    def blob(self, rec) -> None:
        with self.lock:
            if rec.path in self.done:
                return
            self.done.add(rec.path)
        if self.dst.backend.exists(rec.path):
            with self.lock:
                self.result.blobs_present += 1
            return
        where = f"{mask_url(self.src.url)}/{rec.path}"
        local = self.src.backend.local_path(rec.path)
        if local is not None:
            with open(local, "rb") as f:
                verify_blob_file(f, rec, where)
            self.dst.backend.put_file(rec.path, local)
        else:
            tmp = os.path.join(self.scratch, rec.checksum)
            self.src.fetch_blob(rec, tmp)  # checked against the record
            try:
                self.dst.backend.put_file(rec.path, tmp)
            finally:
                os.unlink(tmp)
        with self.lock:
            self.result.blobs_copied += 1
            self.result.bytes_copied += rec.content_length

    def manifest(self, rel: str, raw: bytes) -> None:
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        for rec in parse_manifest(payload, raw, rel).records:
            self.blob(rec)
        self.dst.backend.write(rel, raw)


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


def sync(source, dest, specs: list[str] = (), *, only_package: bool = False, jobs: int = 4,
         update_dest_index: bool = True, planned=None, copied=None) -> SyncResult:
    """``planned(n)`` is told how many packages are looked at, ``copied(spec)`` each one copied."""
    src, dst = _layout(source, "source"), _layout(dest, "destination")
    if src.url == dst.url:
        raise UsageError("the source and the destination are the same mirror")
    idx = current_index(src, jobs)
    chosen = _select(idx, list(specs), only_package)
    result = SyncResult(mask_url(src.url), mask_url(dst.url))
    dst.backend.check_writable()
    scratch = tempfile.mkdtemp(prefix="bincache-sync-")
    copier = _Copier(src, dst, scratch, result)
    if planned:
        planned(len(chosen))

    def one(spec):
        rel = dst.manifest_path(spec.name, spec.version, spec.hash)
        if dst.backend.exists(rel):  # written last: the package is complete there
            return spec, False
        copier.manifest(rel, src.fetch_manifest_raw(spec))
        if copied:
            copied(spec)
        return spec, True

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for spec, was_copied in pool.map(one, chosen):
                (result.copied if was_copied else result.present).append(spec)
        for rel in src.backend.list(KEY_MANIFESTS) if _listable(src) else []:
            if not dst.backend.exists(rel):
                copier.manifest(rel, src.backend.read(rel))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        layout = src.backend.read(LAYOUT_JSON)
    except BincacheError:
        layout = None
    if layout is not None and not dst.backend.exists(LAYOUT_JSON):
        dst.backend.write(LAYOUT_JSON, layout)
    if update_dest_index:
        update_index(dst, jobs=jobs)
        result.index_updated = True
    return result


def _listable(cache: LayoutV3Cache) -> bool:
    try:
        cache.backend.list(KEY_MANIFESTS)
        return True
    except BincacheError:
        return False  # http: the keys stay where they are (install them from the source)
