"""Spack's single index.json beside the sharded index: the shards' record fragments joined.

    {"database":{"version":"8","installs":{<shard 00>,<shard 01>,...}},
     "bincache":{"version":1,"sizes":{<shard 00>,<shard 01>,...}}}

Each shard holds the same two fragments in the same shape (bincache.index_shards), so an
update writes the fragments of the shards that changed and takes every other one from the
previous index.json, by the byte lengths the root records per shard ("spans"). On a directory
mirror the new file is written in chunks, unbuffered (bincache.unbuffered), its digest computed
on the way. The previous file is read twice, on purpose: its digest is checked first, on a
thread beside the update's sweep (OldIndex: only the bytes the root named are spliced in), then
its pieces are read again, from the page cache, as they are spliced; one pass that hashed while
splicing put the 20 MB digest after the sweep instead of beside it. When the file's identity is
the one the last update recorded (bincache.index_blobs: it wrote or hashed that file), the
digest is not computed again: a write to it would have moved its ctime.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Union

from .errors import MirrorError

HEAD = '{"database":{"version":"%s","installs":{'
MID = '}},"bincache":{"version":1,"sizes":{'
TAIL = "}}}"

#: A shard's (installs, sizes) text.
Fragment = tuple[Union[bytes, memoryview], Union[bytes, memoryview]]
#: A piece of a new index.json: bytes, or (offset, length) in the previous one.
Piece = Union[bytes, tuple[int, int]]
Span = tuple[int, int]

_CHUNK = 1 << 20


class OldIndexChanged(MirrorError):
    """The previous index.json is not the file the root names (then the shards are joined)."""


def shard_bytes(db_version: str, installs: str, sizes: str) -> bytes:
    return (HEAD % db_version + installs + MID + sizes + TAIL).encode()


def cut(data: bytes, db_version: str, spans: tuple[int, int]) -> tuple[bytes, bytes]:
    """The two fragments of a shard's bytes."""
    start = len(HEAD % db_version)
    installs = data[start:start + spans[0]]
    mid = start + spans[0] + len(MID)
    return installs, data[mid:mid + spans[1]]


def old_layout(db_version: str, spans: Mapping[str, Span]) -> tuple[dict[str, tuple[Span, Span]], int, int]:
    """Where each shard's fragments are in an index.json whose shards had these ``spans`` (the
    byte lengths of their two fragments, as the root records them): ({key: ((offset, length)
    of installs, of sizes)}, offset of MID, offset of TAIL)."""
    out: dict[str, list[Span]] = {k: [] for k in spans}
    pos = len(HEAD % db_version)
    mid = 0
    keys = sorted(spans)
    for side in (0, 1):
        first = True
        for k in keys:
            n = spans[k][side]
            if n:
                pos += 0 if first else 1
                first = False
            out[k].append((pos, n))
            pos += n
        if side == 0:
            mid = pos
            pos += len(MID)
    return {k: (v[0], v[1]) for k, v in out.items()}, mid, pos


def pieces(db_version: str, keys: list[str], new: Mapping[str, Fragment],
           old: Mapping[str, tuple[Span, Span]]) -> list[Piece]:
    """The new index.json: for each key (sorted), its fragments from ``new``, else where they are
    in the previous file (``old``); empty fragments take no comma."""
    out: list[Piece] = [(HEAD % db_version).encode()]
    for side, end in ((0, MID.encode()), (1, TAIL.encode())):
        first = True
        for k in keys:
            piece: Piece = bytes(new[k][side]) if k in new else old[k][side]
            if not (piece[1] if isinstance(piece, tuple) else len(piece)):
                continue
            if not first:
                out.append(b",")
            first = False
            out.append(piece)
        out.append(end)
    return out


def fresh_pieces(db_version: str, keys: list[str], new: Mapping[str, Fragment]) -> list[bytes]:
    """:func:`pieces` when every key's fragments are in ``new``."""
    # With no previous file every piece is bytes (a key missing from ``new`` is a KeyError).
    return [p for p in pieces(db_version, keys, new, {}) if isinstance(p, bytes)]


def check_old(data: bytes, mid: int, tail: int) -> None:
    if data[mid:mid + len(MID)] != MID.encode() or data[tail:] != TAIL.encode():
        raise OldIndexChanged("index.json does not match the index root")


def joined(parts: list[Piece], old: bytes | None) -> bytes:
    """One join of every piece (slices of the old file included): the one copy in memory."""
    view = memoryview(old) if old is not None else None
    out: list[bytes | memoryview] = []
    for p in parts:
        if isinstance(p, tuple):
            assert view is not None
            out.append(view[p[0]:p[0] + p[1]])
        else:
            out.append(p)
    return b"".join(out)


class OldIndex:
    """The previous index.json of a directory mirror, opened and checked against the digest the
    root names on a thread of its own: started before the sweep of the manifest directories,
    the check (a SHA-256 of 20 MB at 50,000 packages) runs beside it, both outside the GIL,
    instead of after it inside the splice. The splice then reads the same open file, and the
    file's identity (inode, size, mtime, ctime; a write in place moves the ctime) unchanged at
    its end stands for the digest (a file renamed over the path leaves this one as it was)."""

    def __init__(self, path: str, checksum: str, size: int, trusted: tuple[int, ...] = ()) -> None:
        self.path, self.checksum, self.size = path, checksum, size
        #: The identity the file had when the last update wrote or hashed it (index_blobs):
        #: found again, the digest is not computed again.
        self.trusted = trusted
        self._file: io.FileIO | None = None
        self._identity: tuple[int, ...] = ()
        self._error: OldIndexChanged | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._check, name="bincache-old-index", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            f = open(self.path, "rb", buffering=0)
        except OSError as e:
            self._error = OldIndexChanged(f"{self.path}: {e.strerror or e}")
            return
        try:
            st = os.fstat(f.fileno())
            if st.st_size != self.size:
                raise OldIndexChanged(f"{self.path} does not match the index root")
            if self.trusted and _identity(st) == self.trusted:
                self._file, self._identity = f, self.trusted
                return
            digest = hashlib.sha256()
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while not self._stop.is_set():
                got = f.readinto(buf)
                if not got:
                    break
                digest.update(view[:got])
            if self._stop.is_set():
                raise OldIndexChanged(f"{self.path}: not needed")
            if digest.hexdigest() != self.checksum:
                raise OldIndexChanged(f"{self.path}: checksum mismatch")
            self._file, self._identity = f, _identity(st)
        except OSError as e:
            f.close()
            self._error = OldIndexChanged(f"{self.path}: {e.strerror or e}")
        except OldIndexChanged as e:
            f.close()
            self._error = e

    def file(self) -> io.FileIO:
        """The open file, once its digest matched (else OldIndexChanged)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._file is not None  # the check ended without an error
        return self._file

    def check_unchanged(self) -> None:
        if _identity(os.fstat(self.file().fileno())) != self._identity:
            raise OldIndexChanged(f"{self.path} changed while it was read")

    def verified(self) -> tuple[int, ...]:
        """The file's identity once its digest matched (or its trusted identity did); ()."""
        self._thread.join()
        return self._identity if self._file is not None else ()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._file is not None:
            self._file.close()
            self._file = None


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def spliced_chunks(old: OldIndex, parts: list[Piece], mid: int,
                   tail: int) -> Iterator[bytes | memoryview]:
    """The new index.json in chunks, the previous one (``old``, already checked) read in order
    on the way.
    A chunk that is a view of the read buffer is valid until the next one is asked for (a
    writer copies it at once). Raises OldIndexChanged when the previous file was not what the
    root named, at the end when it changed while read: what was written from it must then be
    discarded (bincache.mirror.directory.put_hashed)."""
    f = old.file()
    fd = f.fileno()
    if (tail + len(TAIL) != old.size or os.pread(fd, len(MID), mid) != MID.encode()
            or os.pread(fd, len(TAIL), tail) != TAIL.encode()):
        raise OldIndexChanged(f"{old.path} does not match the index root")
    f.seek(0)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    start = end = 0  # the part of the old file in buf
    for p in parts:
        if not isinstance(p, tuple):
            yield p
            continue
        off, n = p
        while n:
            if off >= end:
                got = f.readinto(buf)
                if not got:
                    raise OldIndexChanged(f"{old.path} ended early")
                start, end = end, end + got
                continue
            if off < start:
                raise AssertionError("index.json pieces out of order")
            take = min(n, end - off)
            yield view[off - start:off - start + take]
            off += take
            n -= take
    old.check_unchanged()


@contextlib.contextmanager
def previous_index(cache, spack_index: tuple[str, int] | None,
                   trusted: tuple[int, ...] = ()) -> Iterator[OldIndex | None]:
    """The index.json a root names ((sha256, size)) when it is a local file, its check started
    (before the update looks at the mirror); ``trusted``: see :class:`OldIndex`."""
    from .mirror.layout_v3 import BlobRecord

    path = None
    if spack_index is not None:
        checksum, size = spack_index
        path = cache.backend.local_path(BlobRecord(size, "", "none", checksum).path)
    old = OldIndex(path, checksum, size, trusted) if path is not None else None
    try:
        yield old
    finally:
        if old is not None:
            old.close()
