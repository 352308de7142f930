"""`prune`: mark and sweep a build cache from explicit roots.

Mark: every package reachable from a root through its link/run dependencies (the DAG of the
mirrors' indexes, brought up to date first) is kept. Roots are specs matched in the mirrors
(``name``, ``name@version``, ``/hash``), files listing hashes, Spack environment lockfiles
(``spack.lock``), and the N newest packages of each name. Sweep: the manifests of the other
packages are deleted first, then each blob that no remaining manifest names (spec, index and
key manifests alike). Nothing younger than the grace period is deleted: a push writes its
blobs before its manifest, so a push running during the prune keeps what it uploaded, and a
package whose manifest is that young is kept as a root (with its dependencies). A registry
tells no ages: there only the re-reading of every manifest before blobs are unlinked protects
a concurrent push.

Layout v3 mirrors (directory, s3) and OCI registries (see :mod:`.prune_stores`); a registry
that refuses deletes is said before anything changes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from ..config import mask_url
from ..errors import MirrorError, SpecError, UsageError
from ..index import update_index
from ..mirror import open_cache
from ..mirror.layout_v2 import LayoutV2Cache
from ..mirror.layout_v3 import LayoutV3Cache
from ..mirror.oci import OciCache
from ..spec import Spec, matches
from .catalog import closure, current_index
from .prune_stores import store_of

DEFAULT_GRACE = 3600.0


@dataclass
class PrunedMirror:
    url: str
    kept: list = field(default_factory=list)  # Spec
    deleted: list = field(default_factory=list)  # Spec (to delete, on a dry run)
    blobs_deleted: int = 0
    bytes_freed: int = 0
    blobs_young: int = 0  # unreferenced, but younger than the grace period


@dataclass
class PruneResult:
    mirrors: list[PrunedMirror]
    roots: list  # Spec
    dry_run: bool
    young: list = field(default_factory=list)  # Spec: kept as roots, pushed within the grace


def _cache(ref):
    cache = open_cache(ref)
    if isinstance(cache, OciCache):
        return cache
    if not isinstance(cache, LayoutV3Cache):
        kind = "a layout v2 cache" if isinstance(cache, LayoutV2Cache) else "this kind of mirror"
        raise UsageError(f"{mask_url(cache.url)}: prune works on layout v3 mirrors (directory, "
                         f"s3) and OCI registries; {kind} is not pruned (migrate it first)")
    root = cache.backend.root
    if root is not None and not os.path.isdir(root):
        if os.path.exists(root):
            raise UsageError(f"{root} is a file, not a mirror directory")
        raise MirrorError(f"no mirror at {root} (the directory does not exist)")
    return cache


def _lockfile_hashes(path: str) -> list[str] | None:
    """The hashes of a Spack environment lockfile, or None when the file is not one."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or "concrete_specs" not in doc:
        return None
    hashes = [r.get("hash") for r in doc.get("roots") or [] if isinstance(r, dict)]
    hashes += list((doc.get("concrete_specs") or {}).keys())
    return [h for h in hashes if isinstance(h, str)]


def _hash_file(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("/")
        if line:
            out.append(line)
    return out


def select_roots(keep: list[str], packages: dict[str, Spec], newest: int,
                 pushed: dict[str, float]) -> list[Spec]:
    """The root specs: each ``--keep`` value, then the ``newest`` packages of each name."""
    roots: dict[str, Spec] = {}
    specs = list(packages.values())
    for value in keep:
        if os.path.isfile(value):
            hashes = _lockfile_hashes(value)
            if hashes is not None:
                # An environment's specs that were never pushed (build tools, externals) are
                # not an error: the ones the mirror holds are kept.
                found = [packages[h] for h in hashes if h in packages]
                if not found:
                    raise SpecError(f"{value}: none of the lockfile's specs is in the mirror")
            else:
                found = []
                for h in _hash_file(value):
                    hit = [s for s in specs if s.hash.startswith(h.lower())]
                    if not hit:
                        raise SpecError(f"{value}: root /{h} is not in the mirror; nothing was deleted")
                    found += hit
        else:
            found = [s for s in specs if matches(s, value)]
            if not found:
                raise SpecError(f'root "{value}" is not in the mirror; nothing was deleted')
        for s in found:
            roots[s.hash] = s
    if newest:
        by_name: dict[str, list] = {}
        for s in specs:
            by_name.setdefault(s.name, []).append(s)
        for group in by_name.values():
            group.sort(key=lambda s: (pushed.get(s.hash, 0.0), s.version), reverse=True)
            for s in group[:newest]:
                roots[s.hash] = s
    return sorted(roots.values(), key=lambda s: (s.name, s.version, s.hash))


def prune(mirrors: list, keep: list[str], *, newest: int = 0, yes: bool = False,
          grace: float = DEFAULT_GRACE, jobs: int = 8) -> PruneResult:
    """Keep what the roots reach in every mirror; delete the rest when ``yes``."""
    if not keep and not newest:
        raise UsageError("give roots to keep (--keep SPEC|FILE, --keep-newest N): pruning without "
                         "roots would delete everything")
    if grace < 0:
        raise UsageError("--grace takes a number of seconds >= 0")
    stores = [store_of(_cache(ref)) for ref in mirrors]
    indexes = [current_index(st.cache, jobs) for st in stores]
    packages: dict[str, Spec] = {}
    nodes: dict[str, Spec] = {}
    pushed: dict[str, float] = {}
    for st, idx in zip(stores, indexes):
        times = st.push_times()
        for h, e in idx.entries.items():
            nodes.setdefault(h, e.spec)
        for e in idx.packages():
            packages.setdefault(e.spec.hash, e.spec)
            pushed[e.spec.hash] = max(pushed.get(e.spec.hash, 0.0), times.get(e.spec.hash, 0.0))
    roots = select_roots(keep, packages, newest, pushed)
    # A package pushed within the grace period is a root too: a push running now is not
    # undone, and neither are the dependencies its packages need.
    now = time.time()
    named = {r.hash for r in roots}
    young = sorted((packages[h] for h, t in pushed.items()
                    if t and now - t < grace and h not in named and h in packages),
                   key=lambda s: (s.name, s.version, s.hash))
    kept = closure(roots + young, nodes)
    result = PruneResult([], roots, not yes, young)
    outs = []
    for st, idx in zip(stores, indexes):
        out = PrunedMirror(mask_url(st.url))
        for e in idx.packages():
            (out.kept if e.spec.hash in kept else out.deleted).append(e.spec)
        outs.append(out)
    if yes:
        for st in stores:  # a mirror that refuses deletes is said before any mirror changes
            st.check_deletable()
    for st, out in zip(stores, outs):
        if yes:
            _sweep(st, out, grace, jobs)
        else:
            _count_blobs(st, out, grace)
        result.mirrors.append(out)
    return result


def _count_blobs(store, out: PrunedMirror, grace: float) -> None:
    """What a real run would free: blobs named only by the manifests it deletes."""
    still = store.referenced(out.deleted)
    now = time.time()
    for rel, mtime, size in store.candidates(out.deleted):
        if rel in still:
            continue
        if mtime is not None and now - mtime < grace:
            out.blobs_young += 1
        else:
            out.blobs_deleted += 1
            out.bytes_freed += size


def _sweep(store, out: PrunedMirror, grace: float, jobs: int) -> None:
    store.referenced(out.deleted)  # every manifest must be readable, before any delete
    # Manifests first: a reader never finds a manifest whose blobs are gone.
    store.delete_packages(out.deleted)
    update_index(store.cache, jobs=jobs)
    blobs = store.candidates(out.deleted)
    # Read after the blobs were listed: a push that landed meanwhile, naming a blob that was
    # already there, is seen (a newer blob is protected by the grace period).
    referenced = store.referenced()
    now = time.time()
    for rel, mtime, size in blobs:
        if rel in referenced:
            continue
        if mtime is not None and now - mtime < grace:
            out.blobs_young += 1
            continue
        store.delete_blob(rel)
        out.blobs_deleted += 1
        out.bytes_freed += size
