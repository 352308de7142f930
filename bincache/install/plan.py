"""Install planning: the records of a plan, manifest verification, the mirrors' catalog,
and the checks a package must pass before it is staged."""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .. import index as _index
from ..errors import (
    BincacheError,
    IndexVersionError,
    InstallError,
    MirrorError,
    SpecError,
)
from ..mirror.base import BuildCache, Manifest
from ..relocate.plan import (
    BuildInfo,
    RelocationPlan,
    RelocationReport,
    Unrelocated,
)
from ..spec import (
    DEFAULT_PROJECTION,
    PackageId,
    Spec,
    host_arch,
    parse_specfile,
)
from ..spec import (
    matches as _matches,
)
from ..tar.extract import ExtractedPackage
from ..tree import InstalledSpec

log = logging.getLogger("bincache.install")


def _fail(problems: Sequence[tuple[str, type]]) -> BincacheError:
    """One error naming every problem: of the problems' own class when they share one (so a
    caller can tell a signature failure from a damaged tarball), else :class:`InstallError`."""
    messages = [m for m, _ in problems]
    kinds = {k for _, k in problems}
    if len(kinds) == 1:
        kind = kinds.pop()
        if issubclass(kind, BincacheError) and kind not in (BincacheError, InstallError):
            err = InstallError(messages)
            try:
                typed = kind(str(err))
            except TypeError:
                return err
            typed.problems = messages  # type: ignore[attr-defined]
            return typed
    return InstallError(messages)


def _problem(plan: PackagePlan, e: BaseException) -> tuple[str, type]:
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return f"{plan.spec.short()}: {text}", type(e) if isinstance(e, BincacheError) else InstallError


# -- the signing hook -------------------------------------------------------------------------
def verify_manifest(raw: bytes, mirror_ref, allow_unsigned: bool, *, source: str = "manifest") -> bytes:
    """The manifest text that may be trusted, from a fetched manifest.

    Signed: the text gpg returned as verified (:func:`bincache.signing.verify_manifest_bytes`),
    the only text later decisions are read from.
    """
    from ..signing import verify_manifest_bytes

    return verify_manifest_bytes(raw, not allow_unsigned, source=source)


# -- records ----------------------------------------------------------------------------------
@dataclass
class PackagePlan:
    """One package of an install plan and what has been learned about it so far."""

    spec: Spec
    cache: BuildCache
    manifest: Manifest
    prefix: str  # the new prefix
    explicit: bool
    nodes: list[Spec] = field(default_factory=list)
    specfile: bytes = b""
    tarball: str | None = None
    staged: str | None = None
    extracted: ExtractedPackage | None = None
    buildinfo: BuildInfo | None = None
    relocation: RelocationPlan | None = None
    report: RelocationReport | None = None
    replace: bool = False  # --force over an existing prefix
    tarball_file: BinaryIO | None = None  # an open, checked blob of a local mirror (not copied)

    @property
    def cache_url(self) -> str:
        return self.cache.url


@dataclass
class InstalledPackage:
    spec: Spec
    prefix: str
    size: int  # compressed bytes fetched
    files: int
    report: RelocationReport


@dataclass
class InstallResult:
    installed: list[InstalledPackage] = field(default_factory=list)
    skipped: list[InstalledSpec] = field(default_factory=list)
    unrelocated: list[tuple[str, Unrelocated]] = field(default_factory=list)  # prefix, string
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_fetched: int = 0
    bytes_extracted: int = 0


@dataclass
class DownloadedPackage:
    spec: Spec
    tarball: str
    specfile: str
    size: int


# -- resolution -------------------------------------------------------------------------------
class _Catalog:
    """What the mirrors hold, by hash: the first mirror that has a package wins.

    A sharded index is not read whole: a package is looked up in its name's shard
    (``lookup(hash, name)``), so installing one package reads the shards of its DAG's names.
    """

    def __init__(self, refs: Sequence) -> None:
        from ..mirror import open_cache

        if not refs:
            raise SpecError("no mirror to install from: give --mirror, or configure one "
                            "with `bincache mirror add NAME URL`")
        self.entries: dict[str, tuple[PackageId, BuildCache]] = {}  # hash -> (Spec|SpecRef, cache)
        self.sources: list[tuple[Any, BuildCache]] = []  # (dict of hash -> item | index view, cache)
        self.caches = []
        errors = []
        for ref in refs:
            cache = open_cache(ref)
            self.caches.append(cache)
            try:
                idx = _index.open_index(cache)
            except IndexVersionError:
                raise  # listing the manifests would hide that a newer tool owns this cache
            except BincacheError as e:
                log.warning("%s: index unreadable (%s); reading its manifests", cache.url, e)
                idx = None
            if idx is not None and not isinstance(idx, _index.Index):  # sharded: looked up lazily
                self.sources.append((idx, cache))
                continue
            try:
                items = ([e.spec for e in idx.packages()] if idx is not None
                         else cache.list_package_refs())
            except BincacheError as e:
                errors.append(str(e))
                continue
            self.sources.append(({item.hash: item for item in items}, cache))
        if errors and not self.sources:
            raise MirrorError("; ".join(errors))

    def lookup(self, h: str, name: str):
        """(item, cache) of the package with hash ``h`` (named ``name``), or None."""
        found = self.entries.get(h)
        if found is not None:
            return found
        for source, cache in self.sources:
            if isinstance(source, dict):
                item = source.get(h)
            else:
                e = source.get(h, name)
                item = e.spec if e is not None and e.in_buildcache else None
            if item is not None:
                self.entries[h] = (item, cache)
                return self.entries[h]
        return None

    def _candidates(self, selector: str):
        seen = set()
        for source, cache in self.sources:
            items = (source.values() if isinstance(source, dict)
                     else (e.spec for e in source.find(selector)))
            for item in items:
                if item.hash not in seen and _matches(item, selector):
                    seen.add(item.hash)
                    yield item, cache

    def select(self, selector: str):
        if selector.startswith("/"):
            # A whole hash (a DAG's worth of them is N lookups, not N^2 matches), from the first
            # mirror that lists it, while the mirrors before it are whole indexes too.
            for source, cache in self.sources:
                if not isinstance(source, dict):
                    break
                item = source.get(selector[1:])
                if item is not None:
                    self.entries.setdefault(item.hash, (item, cache))
                    return self.entries[item.hash]
        matches = list(self._candidates(selector))
        if not matches:
            names = sorted({item.name for source, _ in self.sources
                            for item in (source.values() if isinstance(source, dict)
                                         else (e.spec for e in source.packages()))})
            hint = f" Available: {', '.join(names[:20])}" if names else " The mirrors are empty."
            raise SpecError(f'no package matches "{selector}" in the mirrors.{hint}')
        if len(matches) > 1:
            listing = ", ".join(sorted(f"{i.name}@{i.version}/{i.hash[:7]}" for i, _ in matches))
            raise SpecError(f'"{selector}" matches {len(matches)} packages: {listing}. '
                            "Add @version or /hash.")
        item, cache = matches[0]
        self.entries.setdefault(item.hash, (item, cache))
        return self.entries[item.hash]


def _fetch_specfile(cache, manifest, dest_dir: str, label: str) -> tuple[bytes, list[Spec]]:
    # In memory (size and SHA-256 checked by the cache): a temporary file per package costs a
    # create and an unlink, milliseconds each on disks with slow unlinks.
    record = manifest.spec
    data = cache.get_blob_bytes(record)
    if record.compression == "gzip" or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data, parse_specfile(data, f"{label} spec file")


def _projection(template: str | None) -> str:
    if template:
        return template
    try:
        from .. import config

        value = config.get_value("install_tree:projections")
    except (ImportError, AttributeError, BincacheError):
        value = None
    if isinstance(value, dict) and isinstance(value.get("all"), str):
        return value["all"]
    return DEFAULT_PROJECTION




def _other_arch(spec: Spec) -> str | None:
    """Why ``spec`` is not for this machine (Spack's rule: platform and OS), or None."""
    here = host_arch()
    arch = spec.arch
    theirs = [str(arch.get(k)) for k in ("platform", "platform_os") if arch.get(k) is not None]
    mine = [here[k] for k in ("platform", "platform_os") if arch.get(k) is not None]
    if theirs == mine:
        return None
    return f"built for {'-'.join(theirs)}, this machine is {'-'.join(mine)}"


def _filed_as(spec: Spec, item) -> bool:
    """Whether the verified root node is the package the mirror listed (name, version, hash)."""
    if spec.hash != item.hash:
        return False
    if (spec.name, spec.version) == (item.name, item.version):
        return True
    if isinstance(item, Spec):
        return False
    # A ref listed from file names: "name-version" split at a guessed dash, and OCI tags
    # sanitized to the distribution grammar; what was filed is the whole stem.
    filed = f"{item.name}-{item.version}"
    return f"{spec.name}-{spec.version}" == filed or _oci_stem(spec) == filed


def _oci_stem(spec: Spec) -> str:
    from ..oci.image import sanitize_tag

    return sanitize_tag(f"{spec.dag_name}.spack")[: -len(f"-{spec.hash}.spack")]


def _plain_prefix(path: str) -> bool:
    """An absolute, normalized path below "/" (no "..", no "//"): safe to match links against."""
    return (isinstance(path, str) and path.startswith("/") and not path.startswith("//")
            and path != "/" and os.path.normpath(path) == path and "\0" not in path)


def _links_outside(plan: PackagePlan, relocation: RelocationPlan, allowed: list[str]) -> list[str]:
    """Every absolute symlink as it will be once relocated, if it lands outside the package's
    prefix and its dependencies' prefixes (checked on the final paths, by construction)."""
    assert plan.extracted is not None
    final = {rel: t for rel, t in plan.extracted.symlinks.items() if t.startswith("/")}
    final.update(relocation.links)
    problems = []
    for rel, target in sorted(final.items()):
        parts = target.split("/")
        inside = ".." not in parts and any(
            target == p or target.startswith(p.rstrip("/") + "/") for p in allowed)
        if not inside:
            problems.append(f"{plan.prefix}/{rel}: symlink to {target} would point outside the "
                            "package and its dependencies")
    return problems
