"""Install packages from build caches: plan, verify, extract, relocate, rename into place.

The order of work (DESIGN.md, "Install and relocation"):

1. resolve the requested specs against the mirrors' indexes (their manifests when a mirror has
   no index) and close over link/run dependencies, skipping what the install tree already has;
2. fetch every manifest and verify it (signature, unless unsigned) before any blob is fetched;
3. fetch every blob and check its size and SHA-256;
4. extract each tarball into a staging directory inside the install root (same file system, so
   the final rename is atomic) and plan its relocation;
5. only if every package of the plan can be installed: relocate, write ``.spack/spec.json``,
   rename each prefix into place (dependencies first) and record it in the database.

Steps 2-4 collect the problems of every package and report them together, so a user fixes them
in one go; until step 5 nothing is visible in the install tree, and any failure removes the
staging directory (and the root itself, when the install created it).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..atomic import write_atomic
from ..errors import (
    BincacheError,
    InstallError,
    MirrorError,
    RelocationError,
    SpecError,
    UsageError,
)
from ..mirror.layout_v3 import verify_blob_file
from ..relocate.plan import (
    BuildInfo,
    apply_relocation,
    plan_relocation,
)
from ..spec import (
    SPEC_DIR,
    SPEC_JSON,
    Spec,
    specfile_dict,
)
from ..staging import PrivateDir, make_private_dir, remove_base, remove_tree
from ..tar.extract import extract_package
from ..tar.inflate import Expected
from ..tree import InstalledSpec, InstallTree
from .plan import (
    DownloadedPackage,
    InstalledPackage,
    InstallResult,
    PackagePlan,
    _Catalog,
    _fail,
    _fetch_specfile,
    _filed_as,
    _links_outside,
    _other_arch,
    _plain_prefix,
    _problem,
    _projection,
    verify_manifest,
)
from .workers import stage_all

log = logging.getLogger("bincache.install")

STAGING_DIR = ".bincache-staging"

# -- the install ------------------------------------------------------------------------------
class _Installer:
    def __init__(self, root: str, *, force: bool, jobs: int, allow_unrelocated: bool,
                 projection: str | None, progress: Callable | None):
        self.root = os.path.abspath(root)
        self.force = force
        self.jobs = max(1, jobs)
        self.allow_unrelocated = allow_unrelocated
        self.template = _projection(projection)
        self.progress = progress or (lambda *_: None)
        self.tree = InstallTree(self.root)
        self.root = self.tree.root  # Spack's configured root: its padded store below it
        self.created_dirs: list[str] = []  # deepest first
        self.local_blobs = True  # extract local mirrors' blobs in place (download copies them)
        self.otherarch = False  # packages of another platform/OS are refused at plan time
        self.staging_base: str | None = None
        self.staging: str | None = None
        self.staging_dir: PrivateDir | None = None
        self.externals: dict[str, Spec] = {}  # external dependencies to record, by hash
        # Where the packages' old prefixes were (their directory), learned from the first one
        # extracted: see extract().
        self.old_store_dir: str | None = None

    # -- staging ---------------------------------------------------------------------------
    def open_staging(self) -> str:
        # Every directory made for the root is remembered, so a failed install removes them all.
        path = self.root
        while not os.path.exists(path):
            self.created_dirs.append(path)
            path = os.path.dirname(path)
        if self.created_dirs:
            os.makedirs(self.root)
        self.staging_base = os.path.join(self.root, STAGING_DIR)
        os.makedirs(self.staging_base, mode=0o700, exist_ok=True)
        st = os.lstat(self.staging_base)
        # Verified packages wait here before the final rename: nobody else may swap them.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise MirrorError(f"{self.staging_base} is not a private directory of this user "
                              "(a link, another owner, or group/world-writable); remove it and retry")
        # Locked while this run lives; directories of runs that died (killed, power cut) are
        # removed here by the next install into the same root.
        self.staging_dir = make_private_dir(self.staging_base, "install-")
        self.staging = self.staging_dir.path
        return self.staging

    def close_staging(self) -> None:
        if self.staging:
            remove_tree(self.staging)
        if self.staging_dir is not None:
            self.staging_dir.close()
        if self.staging_base:
            remove_base(self.staging_base)
            if os.path.isdir(self.staging_base):
                return  # another install's staging is there
        for d in self.created_dirs:
            if d:
                try:
                    os.rmdir(d)
                except OSError:
                    break  # not empty: an install landed there

    def installed(self) -> _Lookup:
        """What the tree has, looked up by hash (a DAG's worth of records, not the tree's)."""
        return _Lookup(self.tree if os.path.isdir(self.root) else None, self.expected_prefix)

    def expected_prefix(self, spec: object) -> str | None:
        """Where this install would put ``spec`` (None: not known from what is given)."""
        if not isinstance(spec, Spec):
            return None
        try:
            return self.target(spec)
        except BincacheError:
            return None

    # -- planning --------------------------------------------------------------------------
    def resolve(self, selectors: Sequence[str], mirrors: Sequence, scratch: str,
                allow_unsigned: bool | None) -> tuple[list[PackagePlan], list[InstalledSpec]]:
        """The packages to install, dependencies first, each with its verified manifest and its
        spec file (which names its dependencies); and the dependencies already installed."""
        catalog = _Catalog(mirrors)
        installed = self.installed()
        roots = [catalog.select(s) for s in selectors]
        explicit = {item.hash for item, _ in roots}
        plans: dict[str, PackagePlan] = {}
        skipped: dict[str, InstalledSpec] = {}
        problems: list[tuple[str, type]] = []
        order: list[str] = []
        visiting: set[str] = set()
        missing_externals: dict[str, tuple[str, str | None, list]] = {}
        prefetched = self._prefetch(catalog, roots, installed, explicit, scratch, allow_unsigned)

        def visit(h: str, name: str, needed_by: str | None, node: Spec | None = None) -> None:
            if h in plans or h in skipped or h in visiting:
                return
            entry = catalog.lookup(h, name)
            # What the mirror says the package is tells where it would go: an unrecorded prefix
            # is looked for there; the whole tree is scanned only when no mirror has it.
            known = node if node is not None else entry[0] if entry is not None else None
            inst = installed.find(h, known if entry is not None else None)
            if inst is not None and not (self.force and h in explicit):
                skipped[h] = inst
                return
            if node is not None and node.is_external:
                # As Spack does: an external is never fetched; it is there, or the install stops.
                path = node.external_path
                if path and os.path.isdir(path):
                    self.externals[h] = node
                else:
                    missing_externals.setdefault(h, (name, path, []))[2].append(needed_by)
                return
            if entry is None:
                problems.append((f"{name}/{h[:7]} (needed by {needed_by}) is neither installed "
                                 f"in {self.root} nor in any mirror", SpecError))
                return
            item, cache = entry
            visiting.add(h)
            try:
                plan = prefetched.pop(h, None)
                if isinstance(plan, BincacheError):
                    raise plan
                if plan is None:
                    plan = self.plan_package(item, cache, h in explicit, scratch, allow_unsigned)
            except BincacheError as e:
                problems.append((f"{item.name}@{item.version}/{h[:7]}: {e}", type(e)))
                return
            finally:
                visiting.discard(h)
            if plan.spec.name != name:
                problems.append((f"{name}/{h[:7]} (needed by {needed_by}): the mirror's package "
                                 f"with that hash is {plan.spec.short()}: refusing a substituted "
                                 "package", SpecError))
                return
            other = None if self.otherarch else _other_arch(plan.spec)
            if other is not None:
                problems.append((f"{plan.spec.short()}: {other}; install it anyway with "
                                 "-o/--otherarch", SpecError))
                return
            plan.replace = inst is not None
            nodes = {n.hash: n for n in plan.nodes}
            for dep in plan.spec.link_run_deps():
                visit(dep.hash, dep.name, plan.spec.short(), nodes.get(dep.hash))
            plans[h] = plan
            order.append(h)

        for item, _ in roots:
            visit(item.hash, item.name, None)
        for h, (name, path, needed_by) in missing_externals.items():
            problems.append((f"{name}/{h[:7]} (needed by {', '.join(needed_by)}) is an external "
                             f"expected at {path or '(no path: a module)'}, which does not exist "
                             "here; install it there, or install from a cache built against this "
                             "system's packages", SpecError))
        if problems:
            raise _fail(problems)
        return [plans[h] for h in order], list(skipped.values())

    def _prefetch(self, catalog, roots, installed, explicit, scratch, allow_unsigned) -> dict:
        """Manifests of the whole DAG fetched and verified in parallel (one gpg run each), when
        the index already tells the DAG; ``visit`` then only walks. Without an index, nothing."""
        todo: list[str] = []
        seen: set[str] = set()
        stack = [(item.hash, item.name) for item, _ in roots]
        while stack:
            h, name = stack.pop()
            if h in seen:
                continue
            seen.add(h)
            entry = catalog.lookup(h, name)
            if entry is None or (installed.find(h, entry[0]) is not None and
                                 not (self.force and h in explicit)):
                continue
            item = entry[0]
            if not isinstance(item, Spec):
                return {}  # manifests listed without an index: dependencies are not known yet
            todo.append(h)
            stack.extend((d.hash, d.name) for d in item.link_run_deps())
        if len(todo) < 2:
            return {}

        def job(h: str):
            item, cache = catalog.entries[h]
            try:
                return self.plan_package(item, cache, h in explicit, scratch, allow_unsigned)
            except BincacheError as e:
                return e

        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            return dict(zip(todo, pool.map(job, todo)))

    def plan_package(self, item, cache, explicit: bool, scratch: str,
                     allow_unsigned: bool | None) -> PackagePlan:
        """Manifest (signature checked before any blob is fetched), then the spec file."""
        manifest = cache.fetch_manifest(item)
        # Problems are reported as "<spec>: <label>: ...": the label names the mirror only.
        label = cache.url
        mirror_ref = cache.ref
        allow = allow_unsigned if allow_unsigned is not None else (
            mirror_ref is not None and mirror_ref.signed is False)
        verified = verify_manifest(manifest.raw, mirror_ref, allow, source=label)
        # Only what the signature covered is used: the records come from the verified text
        # (layout v3: the manifest; layout v2: the signed spec file; OCI: the signature
        # document of an image).
        manifest = cache.manifest_from_verified(verified, manifest, label)
        specfile, nodes = _fetch_specfile(cache, manifest, scratch, label)
        spec = nodes[0]
        if not _filed_as(spec, item):
            # A signature says who built a package, not which one it is: a signed manifest
            # filed under another name or version would install as the one asked for.
            raise SpecError(f"{label}: the signed spec file describes {spec.short()}, not "
                            f"{item.name}@{item.version}/{item.hash[:7]} that the mirror files it "
                            "as: refusing a substituted package")
        return PackagePlan(spec, cache, manifest, self.target(spec), explicit,
                           nodes=nodes, specfile=specfile)

    def target(self, spec: Spec) -> str:
        path = os.path.normpath(os.path.join(self.root, spec.projection(self.template)))
        if not path.startswith(self.root.rstrip("/") + "/"):
            raise UsageError(f"{spec.short()} would be installed at {path}, outside the install "
                             f"root {self.root}; use a relative projection")
        return path

    def fetch(self, plan: PackagePlan) -> None:
        """The tarball, size and SHA-256 checked (no partial file is left).

        A blob of a mirror on the local file system is not copied: it is opened, its size
        checked, and extracted from the same open file later, hashed as it is extracted (it
        could be rewritten in place between a check and a later read: finding 3 of issue 10).
        """
        assert self.staging is not None
        record = plan.manifest.tarball
        path = plan.cache.local_blob_path(record) if self.local_blobs else None
        if path is None:
            work = tempfile.mkdtemp(prefix=f"{plan.spec.hash[:7]}-", dir=self.staging)
            plan.tarball = os.path.join(work, "package.tar.gz")
            plan.cache.fetch_blob(record, plan.tarball)
            return
        f = open(path, "rb")
        try:
            verify_blob_file(f, record, path, checksum=not self.local_blobs)
        except BaseException:
            f.close()
            raise
        plan.tarball_file = f

    def extract(self, plan: PackagePlan, new_prefixes: dict[str, str]) -> None:
        assert plan.tarball is not None or plan.tarball_file is not None
        assert self.staging is not None
        # Staged in the run's directory under the package's hash (unique in a plan): a fetched
        # tarball's scratch directory is not needed once it is extracted.
        plan.staged = os.path.join(self.staging, f"{plan.spec.hash}.prefix")
        os.mkdir(plan.staged)

        dependencies: dict[str, str] = {}  # old prefix -> new prefix, of the verified DAG

        def dependency_prefixes(staged: str) -> list[str]:
            plan.buildinfo = BuildInfo.load(staged)
            dependencies.update(self.dependency_prefixes(plan, new_prefixes))
            return list(dependencies)

        source = plan.tarball_file if plan.tarball_file is not None else plan.tarball
        assert source is not None
        where = getattr(source, "name", None) or f"{plan.cache_url}/{plan.manifest.tarball.path}"

        # The old prefix is learned from the last member (the buildinfo): see extract_package.
        # Packages built in one store sit side by side: the previous package's directory and
        # this one's name-version-hash are where it most likely was (a hint, checked).
        hint = None
        if self.old_store_dir is not None:
            hint = os.path.join(self.old_store_dir, _dag_dir(plan.spec))
        try:
            plan.extracted = extract_package(source, None, plan.staged,
                                             external_prefixes=dependency_prefixes,
                                             expect=Expected.of(plan.manifest.tarball, where),
                                             prefix_hint=hint)
        finally:
            if plan.tarball_file is not None:
                plan.tarball_file.close()
                plan.tarball_file = None
            elif plan.tarball is not None and os.path.exists(plan.tarball):
                os.unlink(plan.tarball)
        if os.path.basename(plan.extracted.old_prefix) == _dag_dir(plan.spec):
            self.old_store_dir = os.path.dirname(plan.extracted.old_prefix)
        info = plan.buildinfo
        assert info is not None
        if os.path.normpath(info.old_prefix) != plan.extracted.old_prefix:
            raise RelocationError(f"the buildinfo says the prefix was {info.old_prefix} but the "
                                  f"tarball holds {plan.extracted.old_prefix}")
        old_to_new = dict(dependencies)
        old_to_new[info.old_prefix] = plan.prefix
        if info.store_root and _plain_prefix(info.store_root):
            old_to_new.setdefault(info.store_root, self.root)
        plan.relocation = plan_relocation(plan.extracted, info, old_to_new, display_root=plan.prefix)
        plan.relocation.problems += _links_outside(plan, plan.relocation,
                                                   [plan.prefix, *dependencies.values()])

    def dependency_prefixes(self, plan: PackagePlan, new_prefixes: dict[str, str]) -> dict[str, str]:
        """Old -> new prefix of each dependency of the VERIFIED spec file's DAG.

        The new prefix is where this install puts (or found) the dependency inside the root;
        the buildinfo only tells its old prefix, used for matching, and only when that is a
        plain absolute path (not "/", "//" or one with "..": links into it are accepted).
        """
        info = plan.buildinfo
        assert info is not None
        out: dict[str, str] = {}
        for node in plan.nodes[1:]:
            old = info.hash_to_prefix.get(node.hash)
            if node.hash == plan.spec.hash or old is None or not _plain_prefix(old):
                continue
            external = node.node.get("external")
            path = external.get("path") if isinstance(external, dict) else None
            if isinstance(path, str) and _plain_prefix(path):
                out[old] = path  # a system prefix Spack did not build: it stays where it is
            else:
                out[old] = new_prefixes.get(node.hash) or self.target(node)
        return out

    def check_target(self, plan: PackagePlan) -> str | None:
        escape = self.leaves_root(plan.prefix)
        if escape:
            return escape
        if not os.path.lexists(plan.prefix):
            return None
        if plan.replace or self.force and plan.explicit:
            plan.replace = True
            return None
        return (f"{plan.prefix} already exists and is not a recorded install of "
                f"{plan.spec.short()}; remove it or use --force")

    def leaves_root(self, prefix: str) -> str | None:
        """Why ``prefix`` would not be inside the root once links are followed (an installed
        prefix may hold a link that a later projection runs through), else None."""
        real_root = os.path.realpath(self.root)
        parent = os.path.dirname(prefix)
        while not os.path.lexists(parent) and parent != os.path.dirname(parent):
            parent = os.path.dirname(parent)
        real = os.path.realpath(parent)
        if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
            return None
        return (f"{prefix} would be installed through {real}, outside the install root "
                f"{self.root} (a symbolic link on the way)")

    # -- writing ---------------------------------------------------------------------------
    def finish(self, plan: PackagePlan) -> None:
        assert plan.staged and plan.relocation is not None and plan.extracted is not None
        plan.report = apply_relocation(plan.relocation, allow_unrelocated=self.allow_unrelocated)
        spec_dir = os.path.join(plan.staged, SPEC_DIR)
        os.makedirs(spec_dir, exist_ok=True)
        # Written under an unpredictable name: the package may have planted a link at any fixed
        # one. Compact, as Spack writes it (json's C encoder: indent=2 runs the Python one).
        write_atomic(os.path.join(spec_dir, SPEC_JSON),
                     json.dumps(specfile_dict(plan.nodes), separators=(",", ":")).encode())
        plan.extracted.apply_dir_modes()

    def publish(self, plan: PackagePlan) -> None:
        assert plan.staged is not None
        parent = os.path.dirname(plan.prefix)
        escape = self.leaves_root(plan.prefix)
        if escape:
            raise InstallError([escape])
        os.makedirs(parent, mode=0o755, exist_ok=True)
        old = None
        if plan.replace and os.path.lexists(plan.prefix):
            old = os.path.join(self.staging or parent, f"replaced-{plan.spec.hash}")
            os.rename(plan.prefix, old)
        try:
            os.rename(plan.staged, plan.prefix)
        except OSError:
            if old is not None:
                os.rename(old, plan.prefix)
            raise
        if old is not None:
            remove_tree(old)
        self.tree.record(InstalledSpec(plan.spec, plan.prefix, tuple(plan.nodes)),
                         explicit=plan.explicit)



def install(
    specs: Sequence[str],
    *,
    mirrors: Sequence = (),
    root: str,
    unsigned: bool | None = None,
    force: bool = False,
    jobs: int = 1,
    allow_unrelocated: bool = False,
    projection: str | None = None,
    progress: Callable[[str, PackagePlan], None] | None = None,
    otherarch: bool = False,
) -> InstallResult:
    """Install ``specs`` (selectors: ``name``, ``name@version``, ``/hash``) and their link/run
    dependencies from ``mirrors`` into the install tree ``root``.

    Args:
        unsigned: True installs without checking signatures; None follows each mirror's
            ``signed`` setting (signatures required unless it says ``signed: false``).
        force: reinstall the requested specs even when the tree has them.
        jobs: packages fetched, extracted and relocated at once (forked workers when > 1).
        allow_unrelocated: install even when a string embedding an old prefix cannot grow to
            the new one; those strings are listed in the result.
        projection: the layout of prefixes under ``root`` (default
            ``{platform}-{target}/{name}-{version}-{hash}``, or config
            ``install_tree:projections:all``).
        progress: called with (step, package plan) as work goes on: "planned" for each package
            to install, then "fetch", "fetched", "extract", "relocate", "installed".
        otherarch: install packages built for another platform or OS (as Spack, refused
            otherwise: such a binary rarely runs here).

    Raises:
        InstallError: listing every problem of the plan; the install tree is unchanged.
        CannotGrowString: the only problems are strings that cannot grow (one line per file).
    """
    with _fewer_collections():
        return _install(specs, mirrors=mirrors, root=root, unsigned=unsigned, force=force,
                        jobs=jobs, allow_unrelocated=allow_unrelocated, projection=projection,
                        progress=progress, otherarch=otherarch)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The cyclic collector run every 100,000 allocations instead of 700 while installing.

    A plan holds every package's parsed spec file (a 500-package DAG: a few million dicts and
    strings, none of them garbage), which the default thresholds traverse again and again:
    a third of the CPU of a 500-package install. Garbage cycles still go, later."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], 100_000), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _install(specs, *, mirrors, root, unsigned, force, jobs, allow_unrelocated, projection,
             progress, otherarch) -> InstallResult:
    t0 = time.perf_counter()
    if not specs:
        raise SpecError("nothing to install: give one or more specs (name, name@version, /hash)")
    if not mirrors:
        from ..mirror.config import configured_mirrors

        mirrors = configured_mirrors("fetch")
    inst = _Installer(root, force=force, jobs=jobs, allow_unrelocated=allow_unrelocated,
                      projection=projection, progress=progress)
    inst.otherarch = otherarch
    with tempfile.TemporaryDirectory(prefix="bincache-specs-") as scratch:
        plans, skipped = inst.resolve(specs, mirrors, scratch, unsigned)
    result = InstallResult(skipped=skipped)
    if not plans:
        result.seconds = time.perf_counter() - t0
        return result
    for plan in plans:
        inst.progress("planned", plan)
    inst.open_staging()
    try:
        stage_all(inst, plans)
        for node in inst.externals.values():
            # Recorded as Spack records an external: its own path, installed, implicit.
            inst.tree.record(InstalledSpec(node, node.external_path or "", (node,)), explicit=False)
        for plan in plans:
            inst.publish(plan)
            assert plan.report is not None and plan.extracted is not None
            size = plan.manifest.tarball.content_length
            result.installed.append(InstalledPackage(plan.spec, plan.prefix, size,
                                                     len(plan.extracted.files), plan.report))
            result.unrelocated += [(plan.prefix, u) for u in plan.report.unrelocated]
            result.warnings += [f"{plan.prefix}/{w}" for w in plan.report.warnings]
            result.bytes_fetched += size
            result.bytes_extracted += plan.extracted.size
            inst.progress("installed", plan)
    finally:
        for plan in plans:
            if plan.tarball_file is not None:
                plan.tarball_file.close()
        inst.close_staging()
        if result.installed or inst.externals:
            inst.tree.settle(always=True)  # index.json lists every package (bincache.treedb)
    result.seconds = time.perf_counter() - t0
    return result


class _Lookup:
    """The install tree looked up by hash, each record made when asked for (None: no tree)."""

    def __init__(self, tree: InstallTree | None, where: Callable[[object], str | None]):
        self.tree = tree
        self.where = where

    def find(self, h: str, spec: object = None) -> InstalledSpec | None:
        """The installed ``h``; ``spec`` (what it is, when known) tells where this install
        would put it, the one place an unrecorded prefix of it is looked for
        (:meth:`InstallTree.get`); without it, the whole tree is scanned for one."""
        if self.tree is None:
            return None
        return self.tree.get(h, self.where(spec))


def _dag_dir(spec: Spec) -> str:
    """The directory name Spack's default projection gives a prefix."""
    return f"{spec.name}-{spec.version}-{spec.hash}"


def download(
    specs: Sequence[str],
    dest: str,
    *,
    mirrors: Sequence = (),
    unsigned: bool | None = None,
    jobs: int = 1,
    with_dependencies: bool = True,
    progress: Callable[[str, PackagePlan], None] | None = None,
) -> list[DownloadedPackage]:
    """Fetch and verify packages (signature, size, SHA-256) into ``dest`` without installing.

    Writes ``<name>-<version>-<hash>.tar.gz`` and ``.spec.json`` per package (dependencies
    too, unless ``with_dependencies`` is false); nothing is left for a package that fails.
    """
    if not specs:
        raise SpecError("nothing to download: give one or more specs (name, name@version, /hash)")
    if not mirrors:
        from ..mirror.config import configured_mirrors

        mirrors = configured_mirrors("fetch")
    dest = os.path.abspath(dest)
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bincache-download-", dir=dest) as scratch:
        # An empty root: nothing counts as installed, so the whole closure is fetched.
        inst = _Installer(os.path.join(scratch, "root"), force=False, jobs=jobs,
                          allow_unrelocated=True, projection=None, progress=progress)
        inst.local_blobs = False
        inst.otherarch = True  # fetching for another machine is what download is for
        plans, _ = inst.resolve(specs, mirrors, scratch, unsigned)
        if not with_dependencies:
            plans = [p for p in plans if p.explicit]
        inst.staging = scratch
        for plan in plans:
            inst.progress("planned", plan)

        def one(plan: PackagePlan) -> tuple[str, type] | None:
            inst.progress("fetch", plan)
            try:
                inst.fetch(plan)
            except (BincacheError, OSError) as e:
                return _problem(plan, e)
            inst.progress("fetched", plan)
            inst.progress("downloaded", plan)
            return None

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            problems = [p for p in pool.map(one, plans) if p]
        if problems:
            raise _fail(problems)
        out = []
        for plan in plans:
            assert plan.tarball is not None
            base = os.path.join(dest, plan.spec.dag_name)
            os.replace(plan.tarball, base + ".tar.gz")
            write_atomic(base + ".spec.json", plan.specfile)
            out.append(DownloadedPackage(plan.spec, base + ".tar.gz", base + ".spec.json",
                                         plan.manifest.tarball.content_length))
        return out
