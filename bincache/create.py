"""Create binary packages from installed prefixes and push them to a mirror.

Per package: pack the prefix (native one-pass writer) into a staging file next to the mirror,
then the mirror's cache writes blobs first and the manifest last. Dependencies go first.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _native
from .errors import BincacheError, MirrorError, NoSpaceError, SpecError, UsageError
from .mirror.base import BuildCache
from .pipeline import DependencyFailed, Pipeline
from .presence import present
from .spec import Spec, read_prefix_specfile, specfile_dict
from .staging import remove_base
from .tar.pack import buildinfo, pack_prefix, write_buildinfo
from .tree import InstalledSpec, InstallTree, prefix_tree, recorded_dependency_prefixes

if TYPE_CHECKING:
    from .mirror.config import MirrorRef


@dataclass
class PackedPackage:
    """A package tarball ready to upload."""

    spec: Spec
    nodes: tuple[Spec, ...]
    prefix: str
    specfile: bytes  # the DAG spec file JSON (uncompressed)
    tarball: str  # path of the gzip (or zstd) tarball
    result: _native.TarResult
    buildinfo: dict
    files: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    compression: str = "gzip"  # or "zstd"


@dataclass
class PushResult:
    pushed: list[PackedPackage] = field(default_factory=list)
    skipped: list[Spec] = field(default_factory=list)
    seconds: float = 0.0
    index_updated: bool = False

    @property
    def bytes_in(self) -> int:
        return sum(p.bytes_in for p in self.pushed)

    @property
    def bytes_out(self) -> int:
        return sum(p.result.compressed_size for p in self.pushed)


def old_prefixes(inst: InstalledSpec, tree: InstallTree) -> tuple[list[str], dict[str, str]]:
    """The prefixes to look for in a package: its own, each dependency's, then the store root.

    Externals are left out, as Spack leaves them out of ``hash_to_prefix``: ``/usr`` is never
    an old prefix to relocate.
    """
    hash_to_prefix = tree.dependency_prefixes(inst)
    # Dependencies the tree does not hold: where registration recorded them.
    known = {n.hash for n in inst.nodes} | {d.hash for d in inst.spec.deps}
    for h, p in recorded_dependency_prefixes(inst.prefix).items():
        if h in known and not tree.is_external_dependency(inst, h):
            hash_to_prefix.setdefault(h, p)
    prefixes = sorted(set(hash_to_prefix.values()), key=lambda p: (-len(p), p))
    root = tree.root
    if root not in prefixes:
        prefixes.append(root)
    return prefixes, hash_to_prefix


class Cancel:
    """Stops a push: workers check it between files, and the C writers of the packages being
    packed stop after the block they read (a large file does not make Ctrl-C wait)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._writers: set = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            for w in self._writers:
                w.cancel()

    def watch(self, writer) -> None:
        with self._lock:
            self._writers.add(writer)
            if self._event.is_set():
                writer.cancel()

    def unwatch(self, writer) -> None:
        with self._lock:
            self._writers.discard(writer)


def pack(inst: InstalledSpec, tree: InstallTree, out_path: str, level: int | None = None,
         threads: int = 0, tick: Callable[[int], None] | None = None,
         cancel: Cancel | None = None, compression: str = "gzip",
         pool: _native.CompressPool | None = None, diff_id: bool = True,
         direct_io: str = "never") -> PackedPackage:
    """Write the tarball of one installed prefix to ``out_path``.

    ``tick`` is called with the size of each file once it is packed; it may raise to stop.
    ``level`` None: the codec's default. ``pool``: compression threads shared with other
    packs (``threads`` is then ignored). ``diff_id=False``: ``result.diff_id`` is "" (only
    OCI layers need it). ``direct_io``: see :func:`tarball_direct_io`.
    """
    t0 = time.perf_counter()
    prefixes, hash_to_prefix = old_prefixes(inst, tree)
    try:
        with open(out_path, "wb") as out:
            # The core writes to the descriptor itself: no Python buffer on the hot path.
            writer = _native.TarWriter(out.fileno(), prefixes=[p.encode() for p in prefixes],
                                       level=level, threads=threads, codec=compression,
                                       pool=pool, diff_id=diff_id, direct_io=direct_io)
            if cancel is not None:
                cancel.watch(writer)
            try:
                report = pack_prefix(writer, inst.prefix, prefixes, tick=tick)
                info = buildinfo(report, inst.prefix, tree.root, prefixes, hash_to_prefix)
                write_buildinfo(writer, inst.prefix, info)
                result = writer.finish()
            except BaseException:
                if cancel is not None:
                    cancel.unwatch(writer)  # first: no cancel() may reach a freed writer
                writer.close()  # its deflate threads stop now, not when the exit collects it
                raise
            if cancel is not None:
                cancel.unwatch(writer)
    except OSError as e:
        if e.errno == 28:
            raise NoSpaceError(f"no space left while writing {out_path}; free some space and run again") from None
        raise MirrorError(f"cannot write {out_path}: {e.strerror}") from None
    except NoSpaceError:
        raise NoSpaceError(f"no space left while writing {out_path}; free some space and run again") from None
    nodes = inst.nodes or (inst.spec,)
    return PackedPackage(
        # The prefix's own spec file describes it (a database record may hold it converted).
        spec=nodes[0], nodes=tuple(nodes), prefix=inst.prefix,
        specfile=_buildcache_specfile(nodes, result.digest), tarball=out_path, result=result,
        buildinfo=info, files=report.files, bytes_in=report.bytes_in,
        seconds=time.perf_counter() - t0, compression=compression,
    )


def tarball_direct_io(cache: BuildCache) -> str:
    """How packed tarballs are written (TarWriter's ``direct_io``), ``BINCACHE_DIRECT_IO``
    unset or ``auto``: around the page cache (O_DIRECT) when they are staged on a local
    mirror's disk, as they are linked into the mirror and never read back (on a VM a fresh
    page-cache page is expensive: the write copy was a third of create's CPU); through it
    when an upload reads them back (S3, OCI), or on a network file system (direct writes are
    synchronous there). ``1``: around it on any file system that allows it; ``0``: never.
    """
    from .unbuffered import direct_io_setting

    setting = direct_io_setting()
    if setting != "local":
        return setting
    return "local" if cache.backend is not None and cache.backend.root is not None else "never"


def _buildcache_specfile(nodes, tarball_digest: str) -> bytes:
    import json

    # The nodes stay in the format the prefix's spec file has (a v4 tree gives v4 documents);
    # a layout that needs another format converts them as Spack does (mirror/layout_v3.py).
    # The document is serialised once: it was written, parsed back and written again (the
    # same bytes: it holds only what JSON gives; only its top level is added to here).
    doc = specfile_dict(nodes)
    # Spack keeps these keys in spec files of build caches (layout v3 still writes 2 here).
    doc["buildcache_layout_version"] = 2
    doc["binary_cache_checksum"] = {"hash_algorithm": "sha256", "hash": tarball_digest}
    return json.dumps(doc, separators=(",", ":")).encode()


def resolve_compression(ref: MirrorRef, cache: BuildCache, compression: str | None) -> str:
    """The codec given, else the mirror's ``compression``, else gzip (the one Spack reads).

    zstd where Spack reads the cache: refused on layout v2 (Spack 0.2x's layout, gzip only),
    a warning on layout v3 and OCI (the packages are for bincache clients and, on OCI,
    container runtimes; Spack does not install them).
    """
    codec = compression or ref.compression or "gzip"
    if codec not in _native.CODECS:
        raise UsageError(f"unknown compression {codec!r}: use gzip or zstd")
    if codec not in cache.compressions:
        raise UsageError(f"{ref.display} is a layout v2 build cache, which Spack 0.2x reads, "
                         f"and it reads gzip tarballs only: push with --compression gzip, or to "
                         "a layout v3 or OCI mirror")
    if codec == "zstd":
        available, *_ = _native.codec_info("zstd")
        if not available:
            raise UsageError("zstd is not available in this build: install libzstd-dev and "
                             "rebuild bincache (pip install -e .), or push with gzip")
        warnings.warn(f"pushing zstd tarballs to {ref.display}: bincache installs them, Spack "
                      "does not (it reads gzip only)", UserWarning, stacklevel=2)
    return codec


def resolve_signer(ref: MirrorRef, signed: bool | None, key: str | None):
    """Tri-state: a flag given wins, else the mirror's ``signed`` (None: not configured),
    else signed."""
    if signed is None:
        signed = ref.signed if ref.signed is not None else True
    if not signed:
        return None
    from .signing import Signer

    return Signer(key)


@dataclass
class PushProgress:
    """What a caller watching a push is told (each callback optional; called from worker threads)."""

    planned: Callable[[list[tuple[InstalledSpec, int]]], None] | None = None  # (package, bytes) to pack
    started: Callable[[InstalledSpec], None] | None = None
    packed_bytes: Callable[[int], None] | None = None  # after each file
    pushed: Callable[[PackedPackage], None] | None = None


class PushInterrupted(KeyboardInterrupt):
    """Ctrl-C during a push: what was fully pushed (manifest written) and what was not."""

    def __init__(self, result: PushResult, not_pushed: list[Spec]):
        super().__init__("interrupted")
        self.result, self.not_pushed = result, not_pushed


class _Cancelled(Exception):
    """A worker stops at the next file: the push was interrupted."""


def _prefix_bytes(prefix: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(prefix):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def push(tree: InstallTree, specs: list[InstalledSpec], cache: BuildCache, *, include_deps: bool = True,
         include_roots: bool = True, force: bool = False, jobs: int | None = None, level: int | None = None,
         signer=None, progress: PushProgress | Callable[[PackedPackage], None] | None = None,
         verify_present: bool = False, compression: str = "gzip") -> PushResult:
    """Pack and upload ``specs`` (and their dependencies) to ``cache``; skip what is there.

    ``progress``: a :class:`PushProgress`, or a function called with each pushed package.
    What is there comes from the mirror's index (see :mod:`bincache.presence`);
    ``verify_present`` checks each package the index lists before skipping it.

    Raises:
        PushInterrupted: Ctrl-C. Queued packages are dropped, packing stops at the next file,
            partial tarballs are removed; the mirror keeps only packages pushed whole.
    """
    if progress is not None and not isinstance(progress, PushProgress):
        progress = PushProgress(pushed=progress)
    events = progress or PushProgress()
    t0 = time.perf_counter()
    todo = tree.closure(specs, include_deps=include_deps, include_roots=include_roots)
    result = PushResult()
    there = set() if force else present(cache, [i.spec for i in todo], verify=verify_present)
    pending = []
    for inst in todo:
        if inst.hash in there:
            result.skipped.append(inst.spec)
        else:
            pending.append(inst)
    if not pending:
        result.seconds = time.perf_counter() - t0
        return result
    direct_io = tarball_direct_io(cache)  # before staging: a bad setting leaves nothing behind
    staging = cache.staging_dir()
    lock = threading.Lock()
    cpus = os.cpu_count() or 1
    jobs = max(1, min(cpus, 8) if jobs is None else jobs)
    jobs = min(jobs, len(pending))
    # One set of deflate threads, one per core, for all the packages packed at once: the last
    # (often the largest) package still gets every core, and -j 2 on 2 cores runs 2 deflate
    # threads, not 4 (threads of their own per writer used 40% more CPU than -j 1 and were
    # slower). They start once per push, not once per package.
    pool = _native.CompressPool(cpus)

    if events.planned:
        events.planned([(inst, _prefix_bytes(inst.prefix)) for inst in pending])
    cancel = Cancel()

    def tick(nbytes: int) -> None:
        if cancel.is_set():
            raise _Cancelled()
        if events.packed_bytes:
            events.packed_bytes(nbytes)

    suffix = ".tar.zst" if compression == "zstd" else ".tar.gz"

    def tarball(inst: InstalledSpec) -> str:
        return os.path.join(staging, inst.spec.dag_name + suffix)

    def discard(inst: InstalledSpec, _packed) -> None:
        path = tarball(inst)
        if os.path.exists(path):
            os.unlink(path)

    def pack_one(inst: InstalledSpec) -> PackedPackage:
        try:
            if cancel.is_set():
                raise _Cancelled()
            if events.started:
                events.started(inst)
            return pack(inst, tree, tarball(inst), level=level, tick=tick, cancel=cancel,
                        compression=compression, pool=pool, diff_id=cache.needs_diff_id,
                        direct_io=direct_io)
        except BaseException:
            discard(inst, None)
            cache.push_failed(inst.spec)  # OCI: dependents stop waiting for this layer
            raise

    def commit_one(inst: InstalledSpec, packed: PackedPackage) -> None:
        # Only once every dependency pushed in this run is committed: the mirror never holds a
        # package whose dependency failed.
        try:
            if cancel.is_set():
                raise _Cancelled()  # before any blob: an interrupted push adds nothing partial
            cache.push_package(packed, signer)
        except BaseException:
            cache.push_failed(inst.spec)
            raise
        finally:
            discard(inst, packed)
        with lock:
            result.pushed.append(packed)
            if events.pushed:
                events.pushed(packed)

    # Workers do all the packing and uploading, even with -j 1: Ctrl-C reaches only the main
    # thread, which then stops them between files, never in the middle of writing a blob.
    pipe = Pipeline(pending, key=lambda i: i.hash,
                    deps=lambda i: [d.hash for d in i.spec.link_run_deps()],
                    pack=pack_one, commit=commit_one, jobs=jobs, discard=discard)
    try:
        outcomes = pipe.start()
        first_error: BaseException | None = None
        for inst, fut in zip(pending, outcomes):
            exc = fut.exception()  # waits; Ctrl-C interrupts it
            if isinstance(exc, DependencyFailed):
                dep = _spec_of(pending, exc.key)
                exc = BincacheError(f"{inst.spec.short()} was not pushed: its dependency "
                                    f"{dep.name}/{dep.hash[:7]} failed")
            if exc is not None and first_error is None:
                first_error = exc
        if first_error is not None:
            raise first_error
    except KeyboardInterrupt:
        cancel.set()
        pipe.stop()
        done = {p.spec.hash for p in result.pushed}
        raise PushInterrupted(result, [i.spec for i in pending if i.hash not in done]) from None
    finally:
        pipe.close()  # a failed package: the others still finish
        pool.close()  # after every writer: each pack finished or closed its own
        shutil.rmtree(staging, ignore_errors=True)
        _rmdir_quiet(os.path.dirname(staging))
    order = {inst.hash: i for i, inst in enumerate(pending)}
    result.pushed.sort(key=lambda p: order[p.spec.hash])
    result.seconds = time.perf_counter() - t0
    return result


def _spec_of(pending: list[InstalledSpec], key: object) -> Spec:
    return next(i.spec for i in pending if i.hash == key)


def push_prefix(ref, prefix: str, *, include_deps: bool = False, signed: bool | None = None,
                key: str | None = None, root: str | None = None) -> PushResult:
    """Push the package installed at ``prefix`` to the mirror ``ref`` (autopush, after a build).

    The prefix is looked up in the install tree when one is known (``root``, ``BINCACHE_ROOT``,
    config); outside any tree, its dependencies are the prefixes recorded by register.
    """
    from .mirror import open_cache
    from .root import optional_root

    nodes = read_prefix_specfile(prefix)
    tree_root = optional_root(root)
    tree, inst = None, None
    if tree_root is not None:
        tree = InstallTree(tree_root)
        try:
            inst = tree.get(nodes[0].hash)
        except SpecError:
            inst = None
    if tree is None or inst is None:
        tree, inst = prefix_tree(prefix)
    cache = open_cache(ref, push=True)
    return push(tree, [inst], cache, include_deps=include_deps, signer=resolve_signer(ref, signed, key),
                compression=resolve_compression(ref, cache, None))


def _rmdir_quiet(path: str) -> None:
    if os.path.basename(path) == ".bincache-staging":
        remove_base(path)


def select_specs(tree: InstallTree, selectors: list[str]) -> list[InstalledSpec]:
    if selectors:
        return tree.select(selectors)
    specs = list(tree.packages().values())
    if not specs:
        raise SpecError(f"no installed packages in {tree.root}: {tree.looked_for()}; give the "
                        "install tree (or Spack's config.yaml) with --root")
    return sorted(specs, key=lambda s: (s.name, s.spec.version, s.hash))
