"""Finding the packages pushed to a directory mirror since the last update by the blobs they
added, without a stat of every per-name manifest directory (docs/internals.md, "Finding new
packages by their blobs").

Every push writes its spec file's blob (``blobs/sha256/<xx>/<sha256>``) before its manifest, and
a package's spec file names it: so the blobs added since the last update name the directories
to list. The update records, after its root, the names in each of the 256 blob directories
(``STATE_PATH``: 8 bytes of each digest); the next one stats those 256 directories, reads again
only the ones changed since, and reads only the blobs they gained. Whatever it cannot explain
that way (a blob removed, a blob it cannot read, a per-name directory removed or added with no
blob to say why, too much changed) sends the update to the sweep of the per-name directories
(bincache.index_listing), so a mirror changed in another way is still indexed right.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import index_listing
from .errors import BincacheError

log = logging.getLogger(__name__)

#: After the root it goes with, outside v3/manifests (prune reads every file there as a
#: manifest); a dot file, being state.
STATE_PATH = "v3/.bincache-blobs"
BLOBS = "blobs/sha256"
SPEC_MANIFESTS = "v3/manifests/spec"
#: Where the file system's clock is read (a touch): the index lock's directory, which every
#: update holds; not a directory whose change time the shortcut watches.
CLOCK_DIR = "v3/manifests/index"
KEYS = [f"{i:02x}" for i in range(256)]
_MAGIC = b"bincache-blobs 1\n"
_HEAD = struct.Struct("<32sdq5Q32s256I")
_PREFIX = 8  # bytes of a digest kept per blob: a collision within one directory is ~2**-50
#: More blobs gained than this (and than 1/8 of all) are not read one by one: the sweep of
#: the per-name directories costs less (a mirror copied in, a big push).
MAX_READ = 4096


@dataclass
class BlobState:
    """The names the last update saw in each blob directory, with the root it wrote."""

    root: str  # SHA-256 of the root's bytes: the state counts only with that root
    listed_at: float  # the file system's clock just before that update looked
    dirs: int  # per-name manifest directories then (the link count's), -1 when not known
    names: dict[str, bytes]  # blob directory -> its names' prefixes, sorted, joined
    #: Blob directories holding a blob left out of ``names`` (a spec blob whose package is not
    #: indexed yet): read again by the next update whether they changed or not.
    again: set[str] = field(default_factory=set)
    #: (device, inode, size, mtime, ctime in ns) of the index.json the root names, as this
    #: state's update knew it to hold the root's digest (it wrote it, or hashed it); all 0 when
    #: not known. Unchanged, it stands for the digest (index_spack.OldIndex).
    spack: tuple[int, ...] = (0, 0, 0, 0, 0)

    def to_bytes(self) -> bytes:
        counts = [len(self.names.get(k, b"")) // _PREFIX for k in KEYS]
        bits = sum(1 << i for i, k in enumerate(KEYS) if k in self.again).to_bytes(32, "little")
        return b"".join([_MAGIC, _HEAD.pack(bytes.fromhex(self.root), self.listed_at, self.dirs, *self.spack, bits,
                                    *counts),
                         *(self.names.get(k, b"") for k in KEYS)])

    @classmethod
    def from_bytes(cls, data: bytes) -> BlobState | None:
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _HEAD.size:
            return None
        root, listed_at, dirs, *rest = _HEAD.unpack_from(data, len(_MAGIC))
        spack, bits, counts = tuple(rest[:5]), rest[5], rest[6:]
        pos = len(_MAGIC) + _HEAD.size
        if len(data) != pos + _PREFIX * sum(counts):
            return None
        names = {}
        for k, n in zip(KEYS, counts):
            names[k] = data[pos:pos + n * _PREFIX]
            pos += n * _PREFIX
        flags = int.from_bytes(bits, "little")
        return cls(root.hex(), listed_at, dirs, names, {k for i, k in enumerate(KEYS) if flags >> i & 1},
                   spack)


def _prefixes(joined: bytes) -> set[bytes]:
    return {joined[i:i + _PREFIX] for i in range(0, len(joined), _PREFIX)}


def _join(prefixes: Iterable[bytes]) -> bytes:
    return b"".join(sorted(prefixes))


def _prefix(name: str) -> bytes | None:
    """The kept part of a blob's file name; None for what is no blob (a writer's temp file)."""
    if len(name) != 64 or name[0] == ".":
        return None
    try:
        return bytes.fromhex(name[:2 * _PREFIX])
    except ValueError:
        return None


def _blob_files(names: Iterable[str]) -> dict[bytes, str]:
    """{prefix: file name} of the blobs among a directory's entries (100,000 at 50,000
    packages after a sweep: one pass, no per-name check beyond the length and the hex)."""
    out = {}
    for n in names:
        if len(n) == 64 and n[0] != ".":
            try:
                out[bytes.fromhex(n[:2 * _PREFIX])] = n
            except ValueError:
                pass
    return out


def read_state(cache) -> BlobState | None:
    """The last record, whichever root it goes with (None: none, or unreadable)."""
    try:
        return BlobState.from_bytes(cache.backend.read(STATE_PATH))
    except (BincacheError, struct.error, ValueError):
        return None


def goes_with(state: BlobState | None, root_bytes: bytes) -> BlobState | None:
    """``state`` when it was recorded with this root (only then does the index hold what its
    blobs say), else None: the sweep."""
    if state is None or state.root != hashlib.sha256(root_bytes).hexdigest():
        return None
    return state


def clock(cache) -> float | None:
    """The file system's clock (the ctime of a touch), None when the mirror is not ours to
    touch (then only the sweep of every directory is trusted)."""
    path = os.path.join(cache.backend.root, *CLOCK_DIR.split("/"))
    try:
        os.utime(path)
        return os.stat(path).st_ctime
    except OSError as e:
        if e.errno in (errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOENT):
            return None
        raise


def _name_dirs(root: str) -> tuple[int, float]:
    """(per-name directories by the link count, -1 where the file system does not keep it;
    the spec directory's change time)."""
    try:
        st = os.stat(os.path.join(root, *SPEC_MANIFESTS.split("/")))
    except FileNotFoundError:
        return 0, 0.0  # no package yet, or prune removed the last one with the directory
    # A directory's link count is 2 + its subdirectories on ext4 (below 65,000), xfs, tmpfs;
    # btrfs and ext4 past that report 1.
    return (st.st_nlink - 2 if st.st_nlink >= 2 else -1), st.st_ctime


@dataclass
class SpecBlob:
    key: str  # its blob directory
    prefix: bytes
    name: str
    hash: str


@dataclass
class Scan:
    """What the blobs gained since the last update say: the per-name directories to list."""

    clock: float
    dirs: int
    names: set[str]  # per-name directories to list
    read: dict[str, set[bytes]] = field(default_factory=dict)  # directories read again: names now
    specs: list[SpecBlob] = field(default_factory=list)  # spec blobs gained (recorded once indexed)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _spec_root(path: str) -> tuple[str, str] | None | bool:
    """(name, hash) of the package a spec blob is the spec file of; None for another blob
    (a tarball, an index shard, a key); False when it cannot be read (then nothing is known)."""
    from .signing.cleartext import clearsigned_text, is_clearsigned
    from .spec import parse_specfile

    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if head[:2] == b"\x1f\x8b":
                text = zlib.decompressobj(31).decompress(head, 64)
                if not (text.startswith(b"{") or text.startswith(b"-----BEGIN PGP SIGNED")):
                    return None  # a tarball (a spec file is JSON, clearsigned or not)
                from .limits import MAX_SPECFILE

                data = gzip.decompress(head + f.read(MAX_SPECFILE))
            elif head.startswith(b'{"spec"') or head.startswith(b"-----BEGIN PGP SIGNED"):
                data = head + f.read()
            else:
                return None  # zstd tarball, index shard or index.json, key
        if is_clearsigned(data):
            data = clearsigned_text(data, path)
        root = parse_specfile(data, path)[0]
        return root.name, root.hash
    except (OSError, EOFError, zlib.error, BincacheError, ValueError) as e:
        log.info("%s: cannot tell which package it belongs to (%s)", path, e)
        return False


def _read_dir(top: int, key: str, was: set[bytes], since: float) -> tuple[set[bytes], list[str]] | None:
    """(the blobs a directory holds now, those gained or written again since); None when one
    it held is gone."""
    fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY, dir_fd=top)
    try:
        files = _blob_files(os.listdir(fd))
        if not was <= files.keys():
            return None
        new = [n for p, n in files.items() if p not in was]
        if not new:
            # Changed yet no blob gained or lost: a blob written again (a push of a package
            # whose blobs were there, or an update's shard). Those changed since are read.
            for n in files.values():
                try:
                    if os.stat(n, dir_fd=fd, follow_symlinks=False).st_ctime >= since:
                        new.append(n)
                except FileNotFoundError:
                    return None
        return set(files), new
    finally:
        os.close(fd)


def scan(cache, state: BlobState, now: float, known: set[str],
         indexed: Callable[[str, str], bool], name_indexed: Callable[[str], bool]) -> Scan | None:
    """The per-name directories to list for the blobs gained since ``state``; None when the
    mirror changed in a way blobs do not explain (then the caller sweeps the directories).

    ``known``: digests the current root names (its shards, index.json), not read.
    ``indexed(name, hash)``: the package is in the index; ``name_indexed(name)``: some package
    of that name is (its directory was there).
    """
    root = cache.backend.root
    since = state.listed_at - index_listing.CLOCK_SLACK
    dirs, spec_ctime = _name_dirs(root)
    out = Scan(now, dirs, set())
    gained: list[tuple[str, str]] = []
    try:
        top = os.open(os.path.join(root, *BLOBS.split("/")), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        for k in KEYS:
            # Relative to the directory's descriptor: 256 stats, no path walked each time.
            try:
                ctime = os.stat(k, dir_fd=top).st_ctime
            except FileNotFoundError:
                if state.names.get(k):
                    return None  # a blob directory removed
                continue
            if ctime < since and k not in state.again:
                continue  # unchanged since the last update read it (or carried it forward)
            try:
                got = _read_dir(top, k, _prefixes(state.names.get(k, b"")), since)
            except OSError as e:  # removed meanwhile, unreadable: the sweep says what it can
                log.info("%s: cannot list blobs/sha256/%s (%s); sweeping", cache.url, k, e)
                return None
            if got is None:
                log.info("%s: blobs removed from %s since the last update; sweeping", cache.url, k)
                return None
            out.read[k], new = got
            gained.extend((k, n) for n in new if n not in known)
    finally:
        os.close(top)
    if len(gained) > max(64, min(MAX_READ, sum(len(v) for v in state.names.values()) // (8 * _PREFIX))):
        log.info("%s: %d blobs gained since the last update; sweeping", cache.url, len(gained))
        return None
    new_dirs = set()
    for k, n in gained:
        spec = _spec_root(os.path.join(root, "blobs", "sha256", k, n))
        if spec is False:
            return None
        if spec is None or spec is True:
            continue
        name, h = spec
        out.specs.append(SpecBlob(k, _prefix(n) or b"", name, h))
        if indexed(name, h):
            continue
        out.names.add(name)
        if not name_indexed(name) and os.path.isdir(os.path.join(root, *SPEC_MANIFESTS.split("/"), name)):
            new_dirs.add(name)
    # Per-name directories are added with a package's first push (a new spec blob, above) and
    # removed with its last (prune, by hand): the count must be the last one plus the new.
    if dirs >= 0 and state.dirs >= 0:
        if dirs != state.dirs + len(new_dirs):
            log.info("%s: %d per-name directories, %d expected; sweeping", cache.url, dirs,
                     state.dirs + len(new_dirs))
            return None
    elif spec_ctime >= since:
        return None  # the count is not kept here, and the spec directory changed
    return out


def updated_state(state: BlobState, found: Scan, root_bytes: bytes,
                  indexed: Callable[[str, str], bool]) -> BlobState:
    """``state`` moved forward by ``found``: a spec blob whose package is not indexed yet (its
    manifest not written yet: a push in progress) is left out, so the next update reads it again."""
    names = dict(state.names)
    skip: dict[str, set[bytes]] = {}
    for s in found.specs:
        if not indexed(s.name, s.hash):
            skip.setdefault(s.key, set()).add(s.prefix)
    for k, now in found.read.items():
        names[k] = _join(now - skip.get(k, set()))
    again = (state.again - found.read.keys()) | set(skip)
    return BlobState(hashlib.sha256(root_bytes).hexdigest(), found.clock, found.dirs, names, again)


def full_state(cache, now: float, root_bytes: bytes, prior: BlobState | None = None) -> BlobState:
    """Every blob directory's names, for an update that swept the per-name directories: those
    unchanged since ``prior`` (a record of any root: a directory's names do not depend on it)
    as it has them, the others read. A blob new since ``prior`` and changed within CLOCK_SLACK
    of ``now`` is left out (the next update reads it): its push may write its manifest after
    the sweep looked."""
    root = cache.backend.root
    recent = now - index_listing.CLOCK_SLACK
    before = prior.listed_at - index_listing.CLOCK_SLACK if prior is not None else -math.inf
    names = {}
    again = set()
    for k in KEYS:
        d = os.path.join(root, "blobs", "sha256", k)
        try:
            ctime = os.stat(d).st_ctime
        except FileNotFoundError:
            continue
        if prior is not None and ctime < before and k not in prior.again:
            names[k] = prior.names.get(k, b"")
            continue
        files = _blob_files(_listdir(d))
        if ctime >= recent:
            # A blob ``prior`` recorded was explained then (or older than the slack): kept.
            was = _prefixes(prior.names.get(k, b"")) if prior is not None else set()
            for p, n in list(files.items()):
                if p in was:
                    continue
                try:
                    young = os.stat(os.path.join(d, n)).st_ctime >= recent
                except FileNotFoundError:
                    young = True
                if young:
                    del files[p]
                    again.add(k)
        names[k] = _join(files)
    dirs, _ = _name_dirs(root)
    return BlobState(hashlib.sha256(root_bytes).hexdigest(), now, dirs, names, again)


def write_state(cache, state: BlobState) -> None:
    from .errors import MirrorError

    try:
        cache.backend.write(STATE_PATH, state.to_bytes())
    except MirrorError as e:
        log.warning("%s: cannot record the blobs (%s); the next update sweeps every directory",
                    cache.url, e)


def written_identity(cache, root, now: float) -> tuple[int, ...]:
    """The identity of the index.json ``root`` names when it is the file this update wrote
    (renamed into place after ``now``); () when a file of that name was there already."""
    from .index_spack import _identity
    from .mirror.layout_v3 import BlobRecord

    checksum, size = root.spack_index
    path = cache.backend.local_path(BlobRecord(size, "", "none", checksum).path)
    try:
        st = os.stat(path) if path else None
    except OSError:
        return ()
    return _identity(st) if st is not None and st.st_ctime >= now else ()


def record(cache, root_bytes: bytes, now: float, state: BlobState | None, found: Scan | None,
           spack: tuple[int, ...], indexed: Callable[[str, str], bool],
           prior: BlobState | None = None) -> None:
    """What the next update compares the blob directories with, written after the root it
    names: ``state`` moved forward by ``found``, else every directory read afresh (after a
    sweep); and, for a sweep that did not run, the per-name directories' listing."""
    from .mirror.base import DirListing

    if found is not None and state is not None:
        new = updated_state(state, found, root_bytes, indexed)
        if found.dirs >= 0:
            # The sweep's listing, were the next update to sweep: the count is the link count's.
            index_listing.write_listing(cache, root_bytes, DirListing(now, found.dirs, 0.0, now, []))
    else:
        new = full_state(cache, now, root_bytes, prior)
    if spack:
        new.spack = spack
    write_state(cache, new)
