"""`check`: which specs a mirror lacks, so CI knows what to rebuild (Spack's `buildcache check`).

A spec needs a rebuild on a mirror unless that mirror holds its package with a signature that
verifies against a trusted key (or unsigned packages are accepted) and every blob its verified
manifest names. As in Spack, the answer is per mirror: a spec missing from any mirror checked
needs a rebuild there. A mirror that cannot be read at all is an error, not a rebuild.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import mask_url
from ..errors import BincacheError, BlobNotFound, MirrorError, SignatureError, SpecError
from ..index import read_index
from ..mirror import BuildCache, open_cache
from ..mirror.base import PackageId
from ..mirror.layout_v2 import V2Record
from ..mirror.layout_v3 import is_clearsigned
from ..signing import clearsigned_text
from ..spec import Spec, parse_specfile
from ..tree import InstallTree
from .trust import UnsignedPackage, unsigned_allowed, verified_package

OK = "ok"
MISSING = "missing"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad-signature"
DAMAGED = "damaged"
_FULL_HASH = re.compile(r"/?([a-z2-7]{32})")


@dataclass(frozen=True)
class Target:
    """A spec to check. ``name`` and ``version`` are None for a bare hash not installed here:
    each mirror's own listing names it then."""

    hash: str
    name: str | None = None
    version: str | None = None
    spec: Spec | None = field(default=None, compare=False)

    def short(self) -> str:
        if self.name is None:
            return f"/{self.hash[:7]}"
        return f"{self.name}@{self.version}/{self.hash[:7]}"


@dataclass
class CheckResult:
    target: Target
    mirror: str  # URL
    mirror_name: str | None
    status: str
    reason: str = ""
    signer: str | None = None

    @property
    def needs_rebuild(self) -> bool:
        return self.status != OK

    def to_dict(self) -> dict:
        return {"name": self.target.name, "version": self.target.version, "hash": self.target.hash,
                "mirror": self.mirror, "mirror_name": self.mirror_name, "status": self.status,
                "needs_rebuild": self.needs_rebuild, "reason": self.reason, "signer": self.signer}


@dataclass
class CheckReport:
    results: list[CheckResult]

    @property
    def needs_rebuild(self) -> bool:
        return any(r.needs_rebuild for r in self.results)

    def rebuilds(self) -> dict:
        """Spack's ``--output-file`` document: per mirror URL, the specs it lacks."""
        out: dict[str, dict] = {}
        for r in self.results:
            if not r.needs_rebuild:
                continue
            entry = out.setdefault(r.mirror, {"mirrorName": r.mirror_name or r.mirror,
                                              "mirrorUrl": r.mirror, "rebuildSpecs": []})
            entry["rebuildSpecs"].append({"short_spec": r.target.short(), "hash": r.target.hash,
                                          "reason": r.reason})
        return out


# -- what to check ----------------------------------------------------------------------------
def _from_spec_file(path: str) -> Target:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SpecError(f"cannot read spec file {path}: {e.strerror}") from None
    if is_clearsigned(data):  # a layout v2 .spec.json.sig: only the name and hash are used
        data = clearsigned_text(data, path)
    root = parse_specfile(data, path)[0]
    return Target(root.hash, root.name, root.version, root)


def _is_external(spec: Spec) -> bool:
    return bool(spec.node.get("external"))


def select_targets(selectors: list[str], root: str | None) -> list[Target]:
    """Spec files (paths), installed specs (``name``, ``name@version``, ``/hash``), or full
    ``/hash`` values not installed here; every installed non-external spec when none given."""
    tree = InstallTree(root) if root else None
    if not selectors:
        if tree is None:
            raise SpecError("nothing to check: give specs, spec files or /hashes, or an install "
                            "tree with --root")
        specs = sorted((i.spec for i in tree.specs().values() if not _is_external(i.spec)),
                       key=lambda s: (s.name, s.version, s.hash))
        if not specs:
            raise SpecError(f"no installed packages in {tree.root}")
        return [Target(s.hash, s.name, s.version, s) for s in specs]
    targets: list[Target] = []
    for sel in selectors:
        if os.path.isfile(sel):
            target = _from_spec_file(sel)
        else:
            bare = _FULL_HASH.fullmatch(sel)
            installed = None
            if tree is not None and os.path.isdir(tree.root):
                try:
                    installed = tree.select([sel])[0]
                except SpecError:
                    if not bare:
                        raise
            elif not bare:
                raise SpecError(f'"{sel}" is neither a spec file nor a full /hash; to check '
                                "installed specs by name, give the install tree with --root")
            if installed is not None:
                s = installed.spec
                target = Target(s.hash, s.name, s.version, s)
            else:
                assert bare is not None  # else a branch above raised
                target = Target(bare.group(1))
        if target not in targets:
            targets.append(target)
    return targets


# -- checking ---------------------------------------------------------------------------------
def _listing(cache: BuildCache) -> dict[str, PackageId]:
    """hash -> the item naming it in the mirror (index first, else the manifests)."""
    try:
        idx = read_index(cache)
    except BincacheError:
        idx = None
    items = [e.spec for e in idx.packages()] if idx is not None else cache.list_package_refs()
    return {i.hash: i for i in items}


def _check_one(cache, target: Target, item, unsigned: bool) -> CheckResult:
    def result(status: str, reason: str = "", signer: str | None = None) -> CheckResult:
        return CheckResult(target, mask_url(cache.url), cache.ref.name if cache.ref else None, status,
                           reason, signer)

    if item is None:
        return result(MISSING, "not in the mirror")
    try:
        pkg = verified_package(cache, item, unsigned=unsigned)
    except BlobNotFound:
        return result(MISSING, "not in the mirror")
    except UnsignedPackage as e:
        return result(UNSIGNED, str(e))
    except SignatureError as e:
        return result(BAD_SIGNATURE, str(e))
    except BincacheError as e:
        return result(DAMAGED, str(e))
    backend = cache.backend
    if backend is not None:
        # A registry refuses a manifest whose blobs it lacks; files and buckets do not. (A v2
        # spec file was read to verify it: it is there.)
        for rec in pkg.manifest.records:
            if isinstance(rec, V2Record) and rec.data is not None:
                continue
            if not backend.exists(rec.path):
                return result(DAMAGED, f"its manifest names {rec.path}, which the mirror lacks")
    return result(OK, "signed by " + pkg.signer if pkg.signer else "unsigned, accepted", pkg.signer)


def _open(ref):
    cache = open_cache(ref)
    root = cache.backend.root if cache.backend is not None else None
    if root is not None and not os.path.isdir(root):
        raise MirrorError(f"no mirror at {root} (the directory does not exist)")
    return cache


def check(targets: list[Target], mirrors: list, *, unsigned: bool | None = None,
          jobs: int = 4) -> CheckReport:
    """Every target against every mirror (MirrorRef), in parallel."""
    if not mirrors:
        raise SpecError("no mirror to check against: give MIRROR or -m, or configure one with "
                        "`bincache mirror add NAME URL`")
    caches = [_open(ref) for ref in mirrors]
    jobs_list = []
    for cache in caches:
        by_hash = None
        if any(t.name is None for t in targets):
            by_hash = _listing(cache)
        for t in targets:
            item = t.spec if t.spec is not None else (by_hash or {}).get(t.hash)
            if t.name is None and item is not None:  # named by this mirror's listing
                t = Target(t.hash, item.name, item.version)
            jobs_list.append((cache, t, item, unsigned_allowed(cache, unsigned)))
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(jobs_list) or 1))) as pool:
        results = list(pool.map(lambda j: _check_one(*j), jobs_list))
    return CheckReport(results)
