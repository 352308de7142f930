"""The compiled C core (csrc/, built by _build.py), behind the same names as _pure.py.

This is the only module that touches the cffi library: it owns the buffers, checks every return
code and turns it into a :mod:`bincache.errors` exception carrying the core's own message.
cffi releases the GIL during each call, so threads that pack different packages run in parallel.
"""

from __future__ import annotations

import errno as _errno
import math
import os
from typing import BinaryIO

from ..errors import CannotGrowString, IntegrityError, NativeError, NoSpaceError

if os.environ.get("BINCACHE_SANITIZE", "") not in ("", "0"):
    # The ASan/UBSan build of the same sources (scripts/test-asan); never a silent fallback.
    from ._lib_asan import ffi, lib
else:
    from ._lib import ffi, lib
from ._records import (
    KIND_BINARY,
    KIND_ELF,
    KIND_TEXT,
    DirEntries,
    FileScan,
    TarResult,
    check_direct_io,
)

_ABI_VERSION = 11
if lib.bc_abi_version() != _ABI_VERSION:
    raise NativeError(
        f"the compiled C core is stale (ABI {lib.bc_abi_version()}, this code needs "
        f"{_ABI_VERSION}); rebuild it with `pip install -e .` or "
        "`python setup.py build_ext --inplace`"
    )


def _info() -> tuple[str, int, int]:
    backend = ffi.new("const char **")
    level = ffi.new("int *")
    chunk = ffi.new("size_t *")
    lib.bc_info(backend, level, chunk)
    return ffi.string(backend[0]).decode(), level[0], chunk[0]


BACKEND, DEFAULT_LEVEL, CHUNK_SIZE = _info()
_CODECS = {"gzip": lib.BC_CODEC_GZIP, "zstd": lib.BC_CODEC_ZSTD}


def codec_info(codec: str) -> tuple[bool, int, int, int]:
    """(available in this build, default level, lowest level, highest level) of a codec."""
    if codec not in _CODECS:
        raise NativeError(f"unknown compression {codec!r}: use gzip or zstd")
    out = [ffi.new("int *") for _ in range(4)]
    lib.bc_codec_info(_CODECS[codec], *out)
    return bool(out[0][0]), out[1][0], out[2][0], out[3][0]


def _codec(codec: str, level: int | None) -> tuple[int, int]:
    """The core's codec number, and the level (the codec's default for None)."""
    _available, default, _lo, _hi = codec_info(codec)
    return _CODECS[codec], default if level is None else int(level)
_KINDS = {lib.BC_KIND_TEXT: KIND_TEXT, lib.BC_KIND_BINARY: KIND_BINARY, lib.BC_KIND_ELF: KIND_ELF}
_ERRLEN = 2048

__all__ = [
    "BACKEND",
    "DEFAULT_LEVEL",
    "CompressPool",
    "FileScan",
    "Inflater",
    "TarResult",
    "TarWriter",
    "apply_patches",
    "codec_info",
    "compress_buffer",
    "list_dirs",
    "relocate_buffer",
    "scan_buffer",
]


def _raise(rc: int, message: str, sys_errno: int = 0) -> None:
    """Turn a core status into the exception a user can act on."""
    message = message or ffi.string(lib.bc_strerror(rc)).decode()
    if rc == lib.BC_ECANNOTGROW:
        raise CannotGrowString(message)
    if rc == lib.BC_EIO and sys_errno in (_errno.ENOSPC, _errno.EDQUOT):
        raise NoSpaceError(message)
    if rc in (lib.BC_EDATA, lib.BC_ETRUNC):
        raise IntegrityError(message)
    raise NativeError(message)


def _check_err(rc: int, err) -> None:
    if rc != 0:
        _raise(rc, ffi.string(err).decode("utf-8", "replace"))


def _name(name: str | bytes) -> bytes:
    if isinstance(name, str):
        return name.encode("utf-8", "surrogateescape")
    return bytes(name)


def _bufs(items: list[bytes]):
    """A bc_buf[] over the given byte strings; the second value keeps them alive."""
    keep = [ffi.from_buffer("unsigned char[]", _name(b)) for b in items]
    arr = ffi.new("bc_buf[]", max(len(keep), 1))
    for i, b in enumerate(keep):
        arr[i].ptr = b
        arr[i].len = len(b)
    return arr, keep


def _hits(ptr, n: int) -> list[tuple[int, int]]:
    return [(int(ptr[i].prefix), int(ptr[i].offset)) for i in range(n)]


class CompressPool:
    """Compression threads shared by several TarWriters (a push packs packages concurrently:
    one set of threads for all of them instead of one per writer). ``threads=0``: one per
    online CPU. Threads start with the first piece queued; :meth:`close` stops them, and must
    come after every writer using the pool is finished or closed (each writer keeps the pool
    alive until then)."""

    def __init__(self, threads: int = 0):
        handle = ffi.new("bc_pool **")
        err = ffi.new("char[]", _ERRLEN)
        _check_err(lib.bc_pool_new(handle, int(threads), err, _ERRLEN), err)
        self._p = ffi.gc(handle[0], lib.bc_pool_free)

    def close(self) -> None:
        if self._p is not None:
            ffi.release(self._p)
            self._p = None

    def __enter__(self) -> CompressPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TarWriter:
    """Streaming deterministic tar -> gzip writer, hashing and scanning in the same pass.

    ``out`` is a file descriptor (written directly by the C core, never closed) or a binary
    file object (written after each call). ``threads=0`` uses every online CPU; the output
    bytes are the same for any number of threads. ``level``: 0 stores; 1-3 are ISA-L's igzip
    levels (zlib's when built without ISA-L); 4-9 are zlib's. The default, 2 with ISA-L and 1
    with zlib, stays within 1.2x of gzip -6. ``codec="zstd"`` writes zstd frames instead
    (levels 1-19), when the core was built with libzstd. ``pool``: compress on a
    :class:`CompressPool`'s threads (``threads`` is then ignored). ``diff_id=False`` skips the
    SHA-256 of the uncompressed stream (only OCI layers need it): the result's ``diff_id`` is
    then "". ``direct_io`` (output to a descriptor of a regular file): ``"local"`` writes it
    with O_DIRECT, around the page cache, when the file is on a local disk file system
    (ext2/3/4, xfs, btrfs), ``"any"`` on any file system that takes O_DIRECT, ``"never"``
    through the page cache; the bytes are the same, and the result's ``direct_bytes`` says how
    many went out directly.
    """

    def __init__(
        self,
        out: int | BinaryIO,
        *,
        prefixes: list[bytes],
        level: int | None = None,
        threads: int = 0,
        codec: str = "gzip",
        pool: CompressPool | None = None,
        diff_id: bool = True,
        direct_io: str = "never",
    ):
        check_direct_io(direct_io)
        if isinstance(out, int):
            fd, self._out = out, None
        else:
            fd, self._out = -1, out
        arr, keep = _bufs(list(prefixes))
        handle = ffi.new("bc_writer **")
        err = ffi.new("char[]", _ERRLEN)
        se = ffi.new("int *")
        codec_id, level = _codec(codec, level)
        if pool is not None and pool._p is None:
            raise NativeError("the compression pool is closed")
        flags = lib.BC_WRITER_DIFF_ID if diff_id else 0
        if direct_io != "never" and fd >= 0:
            flags |= lib.BC_WRITER_DIRECT | (lib.BC_WRITER_DIRECT_ANY if direct_io == "any" else 0)
        rc = lib.bc_writer_new(
            handle, fd, arr, len(keep), codec_id, level, int(threads),
            pool._p if pool is not None else ffi.NULL, flags, err, _ERRLEN, se
        )
        del keep
        if rc != 0:
            _raise(rc, ffi.string(err).decode("utf-8", "replace"), se[0])
        self._w = ffi.gc(handle[0], lib.bc_writer_free)
        self._pool = pool  # freed after this writer
        self._scan = ffi.new("bc_filescan *")
        self._walk = ffi.new("bc_dirwalk *")
        self._data = ffi.new("const unsigned char **")
        self._len = ffi.new("size_t *")
        self._drain()

    def _check(self, rc: int) -> None:
        if rc != 0:
            msg = ffi.new("const char **")
            se = ffi.new("int *")
            lib.bc_writer_error(self._w, msg, se)
            _raise(rc, ffi.string(msg[0]).decode("utf-8", "replace"), se[0])

    def _drain(self) -> None:
        if self._out is None:
            return
        lib.bc_writer_take_output(self._w, self._data, self._len)
        if self._len[0]:
            # A copy: the core reuses that memory on its next call.
            data = memoryview(ffi.buffer(self._data[0], self._len[0])[:])
            while data:
                n = self._out.write(data)
                if n is None:
                    raise NativeError("cannot write the output: it is a non-blocking stream")
                if n >= len(data):  # buffered files write everything
                    break
                data = data[n:]  # a raw file may take part of it

    def _filescan(self) -> FileScan:
        s = self._scan
        return FileScan(_KINDS[s.kind], int(s.size), _hits(s.hits, s.nhits), int(s.links),
                        (int(s.dev), int(s.ino)))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        n = _name(name)
        self._check(lib.bc_writer_add_dir(self._w, n, len(n), mode))
        self._drain()

    def add_symlink(self, name: str, target: str) -> None:
        n, t = _name(name), _name(target)
        self._check(lib.bc_writer_add_symlink(self._w, n, len(n), t, len(t)))
        self._drain()

    def add_hardlink(self, name: str, target: str, mode: int = 0o644) -> None:
        n, t = _name(name), _name(target)
        self._check(lib.bc_writer_add_hardlink(self._w, n, len(n), t, len(t), mode))
        self._drain()

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> FileScan:
        n = _name(name)
        buf = ffi.from_buffer("unsigned char[]", data)
        self._check(lib.bc_writer_add_bytes(self._w, n, len(n), buf, len(buf), mode, self._scan))
        self._drain()
        return self._filescan()

    def add_file(self, name: str, path: str | bytes | os.PathLike, mode: int) -> FileScan:
        p = os.fsencode(path)
        if b"\0" in p:
            raise NativeError(f"cannot read {os.fsdecode(p)!r}: the path holds a NUL byte")
        n = _name(name)
        self._check(lib.bc_writer_add_file(self._w, n, len(n), p, mode, self._scan))
        self._drain()
        return self._filescan()

    def add_file_at(self, name: str, dirfd: int, directory: str, base: str, mode: int) -> FileScan:
        """``add_file`` of the entry ``base`` of the directory open as ``dirfd`` (``directory``
        names it in messages): the walk's form, without a whole path looked up per file."""
        # Once per file of a package (50,000 in the 1 GiB benchmark tree): the checks and the
        # scan's fields inline, not through _check, _drain and _filescan.
        n = _name(name)
        b = _name(base)
        if b"\0" in b:
            raise NativeError(f"cannot read {directory}/{os.fsdecode(b)!r}: the name holds a NUL byte")
        s = self._scan
        rc = lib.bc_writer_add_file_at(self._w, n, len(n), dirfd, _name(directory), b, mode, s)
        if rc:
            self._check(rc)
        if self._out is not None:
            self._drain()
        nhits = s.nhits
        return FileScan(_KINDS[s.kind], s.size, _hits(s.hits, nhits) if nhits else [], s.links,
                        (s.dev, s.ino))

    def add_entries(self, member_dir: str, dirfd: int, directory: str,
                    skip: str | None) -> DirEntries:
        """One directory open as ``dirfd``: its header (``member_dir`` ends in "/"), then its
        other entries, sorted by name as bytes (a file with several links already packed by
        this writer becomes a hard link to it; ``skip`` is left out). ``directory`` names it in
        messages. What the caller must record comes back: see :class:`DirEntries`."""
        n = _name(member_dir)
        d = _name(directory)
        if b"\0" in d:
            raise NativeError(f"cannot read directory {directory!r}: the path holds a NUL byte")
        out = self._walk
        rc = lib.bc_writer_add_entries(self._w, dirfd, d, n, len(n),
                                       _name(skip) if skip is not None else ffi.NULL, out)
        if rc:
            self._check(rc)
        if self._out is not None:
            self._drain()
        found = DirEntries(int(out.files), int(out.bytes))
        entries, hits = out.entries, out.hits
        for i in range(out.nentries):
            e = entries[i]
            name = ffi.string(e.name).decode("utf-8", "surrogateescape")
            what = e.what
            if what == lib.BC_ENTRY_DIR:
                found.subdirs.append(name)
            elif what == lib.BC_ENTRY_FILE:
                found.files_of_note.append(
                    (name, FileScan(_KINDS[e.kind], int(e.size), _hits(hits + e.hit, e.nhits))))
            elif what == lib.BC_ENTRY_SYMLINK:
                found.symlinks_to_prefixes.append(name)
            else:
                found.hardlinks.append(
                    (name, ffi.string(e.target).decode("utf-8", "surrogateescape")))
        return found

    def cancel(self) -> None:
        """From any thread: a running ``add_file`` stops after the block it reads (NativeError)."""
        if self._w is not None:
            lib.bc_writer_cancel(self._w)

    def close(self) -> None:
        """Free the writer now (its compression threads stop after the piece each is on), not
        when the garbage collector gets to it; for an abandoned stream (finish frees too)."""
        if self._w is not None:
            ffi.release(self._w)
            self._w = None

    def finish(self) -> TarResult:
        res = ffi.new("bc_result *")
        self._check(lib.bc_writer_finish(self._w, res))
        self._drain()
        if self._out is not None:
            self._out.flush()
        return TarResult(
            ffi.string(res.diff_id).decode(),
            ffi.string(res.digest).decode(),
            int(res.compressed_size),
            int(res.uncompressed_size),
            int(res.direct_bytes),
        )


def scan_buffer(data: bytes, prefixes: list[bytes]) -> list[tuple[int, int]]:
    """Every non-overlapping occurrence of any prefix: leftmost first, longest at a position."""
    arr, keep = _bufs(list(prefixes))
    buf = ffi.from_buffer("unsigned char[]", data)
    hits = ffi.new("bc_hit **")
    n = ffi.new("size_t *")
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.bc_scan_buffer(buf, len(buf), arr, len(keep), hits, n, err, _ERRLEN)
    _check_err(rc, err)
    try:
        return _hits(hits[0], n[0])
    finally:
        lib.bc_free(hits[0])


def _scan_pieces(data: bytes, prefixes: list[bytes], cuts: list[int]) -> list[tuple[int, int]]:
    """scan_buffer through the streaming scanner, fed in pieces cut at ``cuts`` (for tests)."""
    arr, keep = _bufs(list(prefixes))
    buf = ffi.from_buffer("unsigned char[]", data)
    c = ffi.new("size_t[]", max(len(cuts), 1))
    for i, v in enumerate(cuts):
        c[i] = v
    hits = ffi.new("bc_hit **")
    n = ffi.new("size_t *")
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.bc_scan_pieces(buf, len(buf), arr, len(keep), c, len(cuts), hits, n, err, _ERRLEN)
    _check_err(rc, err)
    try:
        return _hits(hits[0], n[0])
    finally:
        lib.bc_free(hits[0])


def relocate_buffer(data: bytearray, pairs: list[tuple[bytes, bytes]]) -> int:
    """Rewrite old prefixes to new ones in place, keeping the length (Spack's rule).

    At each occurrence of ``old`` write ``b"/" * (len(old) - len(new)) + new``; nothing is
    written when an occurrence would need to grow (:class:`CannotGrowString`). Returns the
    number of replacements.
    """
    olds, keep_o = _bufs([old for old, _ in pairs])
    news, keep_n = _bufs([new for _, new in pairs])
    buf = ffi.from_buffer("unsigned char[]", data, require_writable=True)
    count = ffi.new("size_t *")
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.bc_relocate_buffer(buf, len(buf), olds, news, len(keep_o), count, err, _ERRLEN)
    _check_err(rc, err)
    return int(count[0])


def apply_patches(path: str | bytes | os.PathLike, patches: list[tuple[int, bytes, bytes]]) -> None:
    """Apply (offset, old, new) patches to a file in place; check every one before writing."""
    p = os.fsencode(path)
    arr = ffi.new("bc_patch[]", max(len(patches), 1))
    keep = []
    for i, (off, old, new) in enumerate(patches):
        if off < 0:
            raise NativeError(f"{os.fsdecode(p)}: negative patch offset {off}")
        o = ffi.from_buffer("unsigned char[]", _name(old))
        w = ffi.from_buffer("unsigned char[]", _name(new))
        keep += [o, w]
        arr[i].offset = off
        arr[i].old_bytes.ptr, arr[i].old_bytes.len = o, len(o)
        arr[i].new_bytes.ptr, arr[i].new_bytes.len = w, len(w)
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.bc_apply_patches(p, arr, len(patches), err, _ERRLEN)
    _check_err(rc, err)


def compress_buffer(data: bytes, level: int | None = None, threads: int = 0,
                    codec: str = "gzip") -> bytes:
    """One whole gzip member (or zstd stream) of ``data``, by the same chunked parallel engine
    as TarWriter."""
    codec_id, level = _codec(codec, level)
    buf = ffi.from_buffer("unsigned char[]", data)
    out = ffi.new("unsigned char **")
    n = ffi.new("size_t *")
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.bc_compress_buffer(buf, len(buf), codec_id, level, int(threads), out, n, err,
                                _ERRLEN)
    _check_err(rc, err)
    try:
        return ffi.buffer(out[0], n[0])[:]
    finally:
        lib.bc_free(out[0])


def list_dirs(path: str | bytes | os.PathLike, skip_prefix: str = "", since: float = -math.inf,
              threads: int = 1) -> tuple[int, float, list[tuple[str, float]]]:
    """(how many directories are right below ``path``, not counting symlinks to them; their
    newest st_ctime, 0 without any; [(name, st_ctime)] of those changed at or after ``since``,
    in the directory's order). Names starting with ``skip_prefix`` are left out. One call, the
    GIL released: readdir, a stat only of entries whose d_type may be a directory, shared by
    ``threads`` (0: one per CPU), and only the changed names come back to Python."""
    p = os.fsencode(path)
    if b"\0" in p:
        raise NativeError(f"cannot list {os.fsdecode(p)!r}: the path holds a NUL byte")
    count, newest = ffi.new("size_t *"), ffi.new("double *")
    names, names_len = ffi.new("char **"), ffi.new("size_t *")
    ctimes, nchanged = ffi.new("double **"), ffi.new("size_t *")
    se = ffi.new("int *")
    err = ffi.new("char[]", _ERRLEN)
    rc = lib.bc_list_dirs(p, _name(skip_prefix), float(since), int(threads), count, newest, names,
                          names_len, ctimes, nchanged, se, err, _ERRLEN)
    if rc != 0:
        _raise_os(rc, ffi.string(err).decode("utf-8", "replace"), se[0], p)
    try:
        n = nchanged[0]
        changed = []
        if n:
            text = ffi.buffer(names[0], names_len[0] - 1)[:]
            changed = list(zip(os.fsdecode(text).split("\0"), ffi.unpack(ctimes[0], n)))
        return int(count[0]), float(newest[0]), changed
    finally:
        lib.bc_free(names[0])
        lib.bc_free(ctimes[0])


def _raise_os(rc: int, message: str, sys_errno: int, path: bytes) -> None:
    """A system call's failure as the OSError Python's own call would raise (the twin's)."""
    if rc == lib.BC_EIO and sys_errno:
        raise OSError(sys_errno, os.strerror(sys_errno), os.fsdecode(path))
    _raise(rc, message, sys_errno)


class Inflater:
    """A read-only binary file over a gzip stream (one or more members), inflated by the C core.

    ``source`` is a file descriptor or a file object with one; the core reads it itself with
    ``pread`` from ``offset`` (the file position is neither used nor moved), or with ``read``
    from the current position when ``offset`` is None (pipes). The descriptor is not closed.
    Every member's CRC-32 and length are checked; damaged or truncated data raises
    :class:`IntegrityError` once the bytes inflated before the damage have been read.
    ``digest=True`` hashes the compressed bytes as they stream through: :meth:`hexdigest`
    after the end. Each call releases the GIL.
    """

    def __init__(self, source, *, offset: int | None = 0, digest: bool = False):
        fd = source if isinstance(source, int) else source.fileno()
        handle = ffi.new("bc_inflater **")
        err = ffi.new("char[]", _ERRLEN)
        rc = lib.bc_inflater_new(handle, fd, -1 if offset is None else int(offset),
                                 1 if digest else 0, err, _ERRLEN)
        _check_err(rc, err)
        self._h = ffi.gc(handle[0], lib.bc_inflater_free)
        self._n = ffi.new("size_t *")
        self._buf = b""
        self._pos = 0  # into _buf
        self._eof = False
        self.closed = False

    def _check(self, rc: int) -> None:
        if rc != 0:
            msg = ffi.new("const char **")
            se = ffi.new("int *")
            lib.bc_inflater_error(self._h, msg, se)
            _raise(rc, ffi.string(msg[0]).decode("utf-8", "replace"), se[0])

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        """Fill ``b`` (any writable buffer) as far as the stream goes; 0 at its end."""
        view = memoryview(b).cast("B")
        done = 0
        if self._pos < len(self._buf):
            k = min(len(view), len(self._buf) - self._pos)
            view[:k] = self._buf[self._pos:self._pos + k]
            self._pos += k
            done = k
        if done == len(view) or self._eof:
            return done
        # Released explicitly: an exception's traceback would otherwise keep the export alive
        # in a reference cycle, which the garbage collector cannot clear from a memoryview.
        out = ffi.from_buffer("unsigned char[]", view, require_writable=True)
        rc = 0
        try:
            while done < len(view):
                rc = lib.bc_inflate_read(self._h, out + done, len(view) - done, self._n)
                if rc != 0 or self._n[0] == 0:
                    break
                done += self._n[0]
        finally:
            ffi.release(out)
        view.release()
        if rc != 0 and not done:
            self._check(rc)
        # rc != 0 with bytes: they are handed out first; the handle keeps the error for next time.
        if rc == 0 and self._n[0] == 0:
            self._eof = True
        return done

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (fewer only at the end); everything left when size < 0."""
        if size is None or size < 0:
            parts: list[bytes] = []
            while True:
                part = self.read(1 << 20)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        if self._pos < len(self._buf):
            # Small reads (tar headers) are served from one larger inflate call.
            piece = self._buf[self._pos:self._pos + size]
            self._pos += len(piece)
            if len(piece) == size or self._eof:
                return piece
            return piece + self.read(size - len(piece))
        if self._eof or size == 0:
            return b""
        if size < _SMALL_READ:
            buf = bytearray(_SMALL_READ)
            n = self.readinto(buf)
            self._buf, self._pos = bytes(buf[:n]), min(size, n)
            return self._buf[:self._pos]
        buf = bytearray(size)
        n = self.readinto(buf)
        del buf[n:]
        return bytes(buf)

    def hexdigest(self) -> str:
        """SHA-256 (hex) of the compressed bytes, once the stream was read to its end."""
        out = ffi.new("char[]", 65)
        if lib.bc_inflater_digest(self._h, out) != 0:
            raise NativeError("the compressed digest is known only after the whole stream was "
                              "read, and only when asked for with digest=True")
        return ffi.string(out).decode()

    @property
    def compressed_size(self) -> int:
        """Compressed bytes read so far."""
        c, u, m, f = (ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *"),
                      ffi.new("int *"))
        lib.bc_inflater_stats(self._h, c, u, m, f)
        return int(c[0])

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Inflater:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Reads smaller than this (tar headers) inflate this much at once and are served from it.
_SMALL_READ = 64 << 10
