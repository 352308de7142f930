"""The Python API build systems import: register, push, update_index, list, install.

Everything the CLI does goes through here; nothing here prints.
"""

from __future__ import annotations

import os

from . import create as _create
from . import index as _index
from .errors import SpecError, UsageError
from .mirror import MirrorRef, open_cache, resolve
from .spec import InstalledSpec, InstallTree, register_prefix


def resolve_root(root: str | None = None) -> str:
    """The install tree: the argument, else ``BINCACHE_ROOT``, else config ``install_tree:root``."""
    if root:
        return os.path.abspath(os.path.expanduser(root))
    env = os.environ.get("BINCACHE_ROOT")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    try:
        from . import config

        value = config.get_value("install_tree:root")
    except (ImportError, AttributeError):
        value = None
    if value:
        return os.path.abspath(os.path.expanduser(os.path.expandvars(str(value))))
    raise UsageError("no install tree given: use --root ROOT, set BINCACHE_ROOT, or set install_tree:root in config")


def _mirror(mirror: str | MirrorRef, direction: str) -> MirrorRef:
    return mirror if isinstance(mirror, MirrorRef) else resolve(mirror, direction)


def register(prefix: str, name: str, version: str, deps: list[str] = (), arch: dict | None = None,
             root: str | None = None, parameters: dict | None = None,
             compiler: str | None = None) -> InstalledSpec:
    """Write ``<prefix>/.spack/spec.json`` (Spack's format and hash) and record it in the tree.

    The prefix is recorded in the install tree's database when a tree is known (``root``,
    ``BINCACHE_ROOT`` or config), so that ``create`` finds it and its dependencies.
    """
    try:
        tree_root = resolve_root(root)
    except UsageError:
        tree_root = None
    return register_prefix(prefix, name, version, deps, arch=arch, parameters=parameters, root=tree_root,
                           compiler=compiler)


def push(mirror: str | MirrorRef, specs: list[str] = (), *, root: str | None = None,
         include_deps: bool = True, include_roots: bool = True, force: bool = False,
         jobs: int | None = None, level: int | None = None, signed: bool | None = None,
         key: str | None = None, update_index: bool = False, progress=None, layout: str | None = None,
         **backend_options) -> _create.PushResult:
    """Push installed specs (all when ``specs`` is empty) and their dependencies to a mirror.

    ``layout`` ("v2" for Spack < 1.0, "v3") chooses the layout of a directory, http or s3
    mirror; by default the one the mirror already holds, v3 on an empty mirror.
    """
    ref = _mirror(mirror, "push")
    tree = InstallTree(resolve_root(root))
    selected = _create.select_specs(tree, list(specs))
    cache = open_cache(ref, layout, push=True)
    for k, v in backend_options.items():
        setattr(cache, k, v)
    signer = _create.resolve_signer(ref, signed, key)
    result = _create.push(tree, selected, cache, include_deps=include_deps,
                          include_roots=include_roots, force=force, jobs=jobs, level=level,
                          signer=signer, progress=progress)
    if signer is not None and result.pushed and hasattr(cache, "backend"):
        # As Spack does: a signed cache carries the public key that verifies it.
        from .mirror.keys import publish_keys

        publish_keys(cache, [signer.fingerprint])
    if hasattr(cache, "finish_push"):
        cache.finish_push(result)  # OCI: --tag covers every selected package, pushed or present
    if update_index:
        _index.update_index(cache)
        result.index_updated = True
    return result


def push_prefix(mirror: str | MirrorRef, prefix: str, *, include_deps: bool = False,
                signed: bool | None = None, key: str | None = None, root: str | None = None) -> _create.PushResult:
    """Push the package installed at ``prefix`` (used by autopush after each build)."""
    from .spec import read_prefix_specfile

    nodes = read_prefix_specfile(prefix)
    try:
        tree = InstallTree(resolve_root(root))
        inst = tree.get(nodes[0].hash)
    except (UsageError, SpecError):
        tree, inst = None, None
    if tree is None or inst is None:
        # A prefix outside any tree: its parent directory stands in for the store root.
        tree = InstallTree(os.path.dirname(os.path.abspath(prefix)))
        inst = InstalledSpec(nodes[0], os.path.abspath(prefix), tuple(nodes))
        tree._specs = {inst.hash: inst}
    ref = _mirror(mirror, "push")
    cache = open_cache(ref, push=True)
    signer = _create.resolve_signer(ref, signed, key)
    return _create.push(tree, [inst], cache, include_deps=include_deps, signer=signer)


def update_index(mirror: str | MirrorRef, jobs: int = 8, warn=None,
                 layout: str | None = None) -> tuple[_index.Index, int]:
    """Rebuild the mirror's index from its manifests (only new ones are read); ``layout`` as
    for :func:`push`."""
    return _index.update_index(open_cache(_mirror(mirror, "push"), layout, push=True), jobs=jobs, warn=warn)


def list_mirror(mirror: str | MirrorRef) -> tuple[list[_index.IndexEntry], bool]:
    """What a mirror holds, from its index; (entries, from_index). Without an index, manifests."""
    cache = open_cache(_mirror(mirror, "fetch"))
    idx = _index.read_index(cache)
    if idx is not None:
        return idx.packages(), True
    from .spec import Spec

    entries = [
        _index.IndexEntry(Spec(r.name, r.version, r.hash, {"name": r.name, "version": r.version, "hash": r.hash}))
        for r in cache.list_package_refs()
    ]
    entries.sort(key=lambda e: (e.spec.name, e.spec.version, e.spec.hash))
    return entries, False


def install(specs: list[str], *, mirrors: list[str | MirrorRef] = (), root: str | None = None, **options):
    """Install specs from mirrors into an install tree (see :mod:`bincache.install`)."""
    from . import install as _install

    refs = [_mirror(m, "fetch") for m in mirrors]
    return _install.install(specs, mirrors=refs, root=resolve_root(root), **options)


def on_build_finished(prefix: str, **options):
    """Autopush hook: push a freshly built prefix to every autopush mirror; never raises.

    Returns one :class:`bincache.autopush.AutopushResult` per autopush mirror.
    """
    from .autopush import on_build_finished as _hook

    return _hook(prefix, **options)


def check(specs: list[str] = (), *, mirrors: list[str | MirrorRef] = (), root: str | None = None,
          unsigned: bool | None = None, jobs: int = 4):
    """Which specs the mirrors lack (or hold without a verifiable signature); see
    :mod:`bincache.lifecycle.check`. With no specs: every installed spec of the tree."""
    from .lifecycle import check as _check
    from .mirror import configured_mirrors

    try:
        tree_root = resolve_root(root)
    except UsageError:
        tree_root = None
    targets = _check.select_targets(list(specs), tree_root)
    refs = [_mirror(m, "fetch") for m in mirrors] or configured_mirrors("fetch")
    return _check.check(targets, refs, unsigned=unsigned, jobs=jobs)


def migrate(mirror: str | MirrorRef, dest: str | MirrorRef | None = None, *, key: str | None = None,
            unsigned: bool = False, delete_old: bool = False, jobs: int = 4):
    """A Spack layout v2 cache to layout v3, in place or into ``dest``; see
    :mod:`bincache.lifecycle.migrate`."""
    from .lifecycle.migrate import migrate as _migrate

    return _migrate(_mirror(mirror, "fetch"), _mirror(dest, "push") if dest is not None else None,
                    key=key, unsigned=unsigned, delete_old=delete_old, jobs=jobs)


def write_cache_page(mirror: str | MirrorRef, out_dir: str | None = None, *,
                     url: str | None = None, jobs: int = 8):
    """The static HTML page of a mirror's packages, into the mirror or ``out_dir``; see
    :mod:`bincache.lifecycle.browse`."""
    from .lifecycle.browse import write_page

    direction = "push" if out_dir is None else "fetch"
    return write_page(open_cache(_mirror(mirror, direction)), out_dir, mirror_url=url, jobs=jobs)
