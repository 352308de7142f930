"""The Python API build systems import: register, push, update_index, list, install.

Everything the CLI does goes through here; nothing here prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .lazy import exports
from .root import optional_root, resolve_root

if TYPE_CHECKING:
    from . import create as _create
    from . import index as _index
    from .autopush import AutopushResult
    from .create import PushInterrupted, PushProgress, PushResult
    from .lifecycle.browse import PageResult
    from .lifecycle.migrate import MigrateResult
    from .mirror import BuildCache, MirrorRef
    from .mirror.base import Signer
    from .tree import InstalledSpec

# Each function imports what it runs, when it runs (a command imports its own code, `bincache
# --version` none); the names this module re-exports are imported when first asked for.
_EXPORTED = {"AutopushResult": "autopush", "PushInterrupted": "create", "PushProgress": "create",
             "PushResult": "create", "BuildCache": "mirror", "MirrorRef": "mirror",
             "open_cache": "mirror", "resolve": "mirror", "Signer": "mirror.base",
             "InstalledSpec": "tree", "InstallTree": "tree", "register_prefix": "tree"}


__getattr__ = exports(globals(), _EXPORTED)

__all__ = ["register", "push", "push_prefix", "update_index", "list_mirror", "install", "download",
           "on_build_finished", "check", "migrate", "write_cache_page", "prune", "sync", "resolve_root", "UsageError", "PushInterrupted", "PushProgress",
           "PushResult", "AutopushResult"]


def _mirror(mirror: str | MirrorRef, direction: str) -> MirrorRef:
    from .mirror import MirrorRef, resolve

    if isinstance(mirror, MirrorRef):
        return mirror
    if not isinstance(mirror, (str, os.PathLike)):
        raise UsageError(f"a mirror is a name, path or URL (str), not {type(mirror).__name__}")
    return resolve(os.fspath(mirror), direction)


def _mirrors(mirrors: Sequence[str | MirrorRef] | str | MirrorRef | None, direction: str) -> list[MirrorRef]:
    return [_mirror(m, direction) for m in _as_list(mirrors, "mirrors")]


def _refuse_unknown(function: str, unknown: dict[str, object], known: Sequence[str]) -> None:
    """An option the function does not take is a mistake to name, not something to ignore."""
    if not unknown:
        return
    import difflib

    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise UsageError(f"{function}() got unknown option{'s' if len(parts) > 1 else ''}: {', '.join(parts)}; "
                     f"it takes {', '.join(known)}")



def register(prefix: str, name: str, version: str, deps: Sequence[str] | str = (),
             arch: dict[str, str] | None = None, root: str | None = None,
             parameters: dict[str, Any] | None = None, compiler: str | None = None,
             hash_inputs: Sequence[str] | str = (), **unknown: object) -> InstalledSpec:
    """Write ``<prefix>/.spack/spec.json`` (Spack's format and hash) and record it in the tree.

    Args:
        prefix: the installed prefix.
        name, version: the package.
        deps: prefixes of registered dependencies; where each one (and each of theirs) is
            installed is recorded with the package, so it can be pushed from outside any tree.
        arch: ``{"platform", "platform_os", "target"}`` (default: this machine).
        root: the install tree whose database records the prefix (default: ``BINCACHE_ROOT`` or
            config; none: the prefix stands alone).
        parameters: Spack variants to record.
        compiler: ``NAME@VERSION`` of the compiler: a v4 spec file, which Spack < 1.0 installs.
        hash_inputs: build inputs folded into the spec's ``package_hash`` (so into its hash):
            values, or ``@FILE`` for a file's content.
    """
    _refuse_unknown("register", unknown, ("deps", "arch", "root", "parameters", "compiler", "hash_inputs"))
    from .tree import register_prefix

    tree_root = optional_root(root)
    return register_prefix(prefix, name, version, _as_list(deps, "deps"), arch=arch, parameters=parameters,
                           root=tree_root, compiler=compiler, hash_inputs=_as_list(hash_inputs, "hash_inputs"))


def _as_list(value: object, what: str) -> list[Any]:
    """A list argument; one string is one item (never its characters)."""
    from .mirror import MirrorRef

    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike, MirrorRef)):
        return [value]
    if not isinstance(value, Iterable):
        raise UsageError(f"{what} takes a list, not {type(value).__name__}")
    return list(value)


_PUSH_OPTIONS = ("root", "include_deps", "include_roots", "force", "jobs", "level", "compression",
                 "signed", "key", "update_index", "progress", "layout", "base_image", "tag",
                 "verify_present")


def push(mirror: str | MirrorRef, specs: Sequence[str] | str = (), *, root: str | None = None,
         include_deps: bool = True, include_roots: bool = True, force: bool = False,
         jobs: int | None = None, level: int | None = None, compression: str | None = None,
         signed: bool | None = None, key: str | None = None, update_index: bool = False,
         progress: PushProgress | Callable[[_create.PackedPackage], None] | None = None,
         layout: str | None = None, base_image: str | None = None, tag: str | None = None,
         verify_present: bool = False, **unknown: object) -> PushResult:
    """Push installed specs (all when ``specs`` is empty) and their dependencies to a mirror.

    Args:
        mirror: a configured name, a path or a URL, or a :class:`MirrorRef`.
        specs: selectors (``name``, ``name@version``, ``/hash``); one string is one selector.
        layout: "v2" (for Spack < 1.0) or "v3": the layout of a directory, http or s3 mirror;
            by default the one the mirror already holds, v3 on an empty mirror.
        base_image, tag: OCI mirrors only: put each package on this base image; also tag all
            the selected specs as one image.
        verify_present: a package the mirror's index lists is skipped only after its manifest
            is found (by default the index is believed: no request per package).
        compression: "gzip" or "zstd" tarballs; default: the mirror's ``compression``, else
            gzip (what Spack reads). Layout v2 refuses zstd.
        (the others as ``bincache create`` spells them)

    Raises:
        UsageError: an unknown option, or an option that does not apply to this mirror.
    """
    _refuse_unknown("push", unknown, _PUSH_OPTIONS)
    from . import create as _create
    from .create import PushInterrupted
    from .mirror import open_cache
    from .tree import InstallTree

    ref = _mirror(mirror, "push")
    cache = open_cache(ref, layout, push=True)
    cache.configure_push(base_image=base_image, tag=tag)  # an option it does not take: named
    tree = InstallTree(resolve_root(root))
    selected = _create.select_specs(tree, _as_list(specs, "specs"))
    codec = _create.resolve_compression(ref, cache, compression)
    signer = _create.resolve_signer(ref, signed, key)
    try:
        result = _create.push(tree, selected, cache, include_deps=include_deps,
                              include_roots=include_roots, force=force, jobs=jobs, level=level,
                              compression=codec, signer=signer, progress=progress,
                              verify_present=verify_present)
    except PushInterrupted as e:
        _publish_key(cache, signer, e.result)  # the packages pushed whole can be verified
        raise
    _publish_key(cache, signer, result)
    cache.finish_push(result)  # OCI: --tag covers every selected package, pushed or present
    if update_index:
        # Imported here, not with the rest: a push without --rebuild-index never loads it.
        from . import index as _index

        _index.update_index(cache, signer=signer)  # a signed push signs the index root
        result.index_updated = True
    return result


def _publish_key(cache: BuildCache, signer: Signer | None, result: PushResult) -> None:
    # As Spack does: a signed cache carries the public key that verifies it. An OCI registry
    # has no place for keys (its signatures are verified against the keyring).
    if signer is not None and result.pushed and cache.backend is not None:
        from .mirror.keys import publish_keys

        publish_keys(cache, [signer.fingerprint])


def push_prefix(mirror: str | MirrorRef, prefix: str, *, include_deps: bool = False,
                signed: bool | None = None, key: str | None = None, root: str | None = None) -> PushResult:
    """Push the package installed at ``prefix`` (used by autopush after each build)."""
    from . import create as _create

    return _create.push_prefix(_mirror(mirror, "push"), prefix, include_deps=include_deps,
                               signed=signed, key=key, root=root)


def update_index(mirror: str | MirrorRef, jobs: int = 8, warn: Callable[[str], None] | None = None,
                 layout: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 db_version: str | None = None, key: str | None = None,
                 full: bool = False) -> tuple[Any, int]:
    """Rebuild the mirror's index from its manifests (only new ones are read); ``layout`` as
    for :func:`push`; ``progress(done, total)`` as manifests are read; in Spack database
    version ``db_version`` (default: the version the index has; see index.choose_db_version);
    ``key``: clearsign the sharded index's root with this GnuPG key (layout v3); ``full``:
    list every manifest directory, not only those changed since the last update (directory)."""
    from . import index as _index
    from .mirror import open_cache

    signer = None
    if key:
        from .signing import Signer

        signer = Signer(key)
    try:
        return _index.update_index(open_cache(_mirror(mirror, "push"), layout, push=True), jobs=jobs,
                                   warn=warn, progress=progress, db_version=db_version, signer=signer,
                                   full=full)
    finally:
        if signer is not None:
            signer.close()


def list_mirror(mirror: str | MirrorRef, specs: Sequence[str] = ()) -> tuple[list[_index.IndexEntry], bool]:
    """What a mirror holds, from its index; (entries, from_index). Without an index, manifests.

    With ``specs`` (selectors), only the packages they match: on a sharded index, each named
    one reads the root and its name's shard, not the whole index.
    """
    from . import index as _index
    from .mirror import open_cache

    cache = open_cache(_mirror(mirror, "fetch"))
    idx = _index.open_index(cache)
    if idx is not None:
        if not specs:
            return idx.packages(), True
        found: dict[str, _index.IndexEntry] = {}
        for sel in specs:
            for e in idx.find(sel):
                found.setdefault(e.spec.hash, e)
        return sorted(found.values(), key=lambda e: (e.spec.name, e.spec.version, e.spec.hash)), True
    from .spec import Spec

    entries = [
        _index.IndexEntry(Spec(r.name, r.version, r.hash, {"name": r.name, "version": r.version, "hash": r.hash}))
        for r in cache.list_package_refs()
    ]
    entries.sort(key=lambda e: (e.spec.name, e.spec.version, e.spec.hash))
    return entries, False


def install(specs: Sequence[str] | str, *, mirrors: Sequence[str | MirrorRef] | str | MirrorRef = (),
            root: str | None = None, unsigned: bool | None = None, force: bool = False, jobs: int = 1,
            allow_unrelocated: bool = False, projection: str | None = None,
            progress: Callable[[str, Any], None] | None = None, otherarch: bool = False,
            **unknown: object) -> Any:
    """Install specs and their dependencies from mirrors into an install tree.

    ``specs`` and ``mirrors`` take lists; one string is one item. The options are those of
    :func:`bincache.install.stage.install`; an unknown one is a :class:`UsageError`.
    Returns a :class:`bincache.install.plan.InstallResult`.
    """
    _refuse_unknown("install", unknown, ("mirrors", "root", "unsigned", "force", "jobs",
                                         "allow_unrelocated", "projection", "progress",
                                         "otherarch"))
    from .install import stage as _install

    return _install.install(_as_list(specs, "specs"), mirrors=_mirrors(mirrors, "fetch"),
                            root=resolve_root(root), unsigned=unsigned, force=force, jobs=jobs,
                            allow_unrelocated=allow_unrelocated, projection=projection, progress=progress,
                            otherarch=otherarch)


def download(specs: Sequence[str] | str, dest: str = ".", *,
             mirrors: Sequence[str | MirrorRef] | str | MirrorRef = (), unsigned: bool | None = None,
             jobs: int = 1, with_dependencies: bool = True,
             progress: Callable[[str, Any], None] | None = None, **unknown: object) -> list[Any]:
    """Fetch and verify packages into ``dest`` without installing (see :func:`bincache.install.stage.download`)."""
    _refuse_unknown("download", unknown, ("mirrors", "unsigned", "jobs", "with_dependencies", "progress"))
    from .install import stage as _install

    return _install.download(_as_list(specs, "specs"), dest, mirrors=_mirrors(mirrors, "fetch"),
                             unsigned=unsigned, jobs=jobs, with_dependencies=with_dependencies,
                             progress=progress)


def on_build_finished(prefix: str, *, root: str | None = None, key: str | None = None,
                      mirrors: Sequence[MirrorRef] | None = None,
                      warn: Callable[[str], None] | None = None) -> list[AutopushResult]:
    """Autopush hook: push a freshly built prefix to every autopush mirror; never raises.

    Returns one :class:`bincache.autopush.AutopushResult` per autopush mirror.
    """
    from . import autopush as _autopush

    refs = None if mirrors is None else _mirrors(mirrors, "push")
    return _autopush.on_build_finished(prefix, root=root, key=key, mirrors=refs, warn=warn)


def check(specs: Sequence[str] | str = (), *, mirrors: Sequence[str | MirrorRef] | str | MirrorRef = (),
          root: str | None = None, unsigned: bool | None = None, jobs: int = 4) -> Any:
    """Which specs the mirrors lack (or hold without a verifiable signature); see
    :mod:`bincache.lifecycle.check`. With no specs: every installed spec of the tree."""
    from .lifecycle import check as _check
    from .mirror import configured_mirrors

    tree_root = optional_root(root)
    targets = _check.select_targets(_as_list(specs, "specs"), tree_root)
    refs = _mirrors(mirrors, "fetch") or configured_mirrors("fetch")
    return _check.check(targets, refs, unsigned=unsigned, jobs=jobs)


def migrate(mirror: str | MirrorRef, dest: str | MirrorRef | None = None, *, key: str | None = None,
            unsigned: bool = False, delete_old: bool = False, jobs: int = 4) -> MigrateResult:
    """A Spack layout v2 cache to layout v3, in place or into ``dest``; see
    :mod:`bincache.lifecycle.migrate`."""
    from .lifecycle.migrate import migrate as _migrate

    return _migrate(_mirror(mirror, "fetch"), _mirror(dest, "push") if dest is not None else None,
                    key=key, unsigned=unsigned, delete_old=delete_old, jobs=jobs)


def write_cache_page(mirror: str | MirrorRef, out_dir: str | None = None, *,
                     url: str | None = None, jobs: int = 8) -> PageResult:
    """The static HTML page of a mirror's packages, into the mirror or ``out_dir``; see
    :mod:`bincache.lifecycle.browse`."""
    from .lifecycle.browse import write_page
    from .mirror import open_cache

    direction = "push" if out_dir is None else "fetch"
    return write_page(open_cache(_mirror(mirror, direction)), out_dir, mirror_url=url, jobs=jobs)


def prune(mirrors: Sequence[str | MirrorRef] | str | MirrorRef, keep: Sequence[str] | str = (), *,
          newest: int = 0, yes: bool = False, grace: float = 3600.0, jobs: int = 8) -> Any:
    """Mark and sweep mirrors from roots; a dry run unless ``yes``. See
    :mod:`bincache.lifecycle.prune`."""
    from .lifecycle.prune import prune as _prune

    return _prune(_mirrors(mirrors, "push"), _as_list(keep, "keep"), newest=newest, yes=yes,
                  grace=grace, jobs=jobs)


def sync(source: str | MirrorRef, dest: str | MirrorRef, specs: Sequence[str] | str = (), *,
         only_package: bool = False, jobs: int = 4, update_index: bool = True,
         resign: str | None = None, planned: Any = None, copied: Any = None) -> Any:
    """Copy packages (and their dependencies) between mirrors (layout v3, OCI; layout v2 as a
    source), signatures as they are unless ``resign`` names a key; see
    :mod:`bincache.lifecycle.sync`."""
    from .lifecycle.sync import sync as _sync

    return _sync(_mirror(source, "fetch"), _mirror(dest, "push"), _as_list(specs, "specs"),
                 only_package=only_package, jobs=jobs, update_dest_index=update_index,
                 resign=resign, planned=planned, copied=copied)
