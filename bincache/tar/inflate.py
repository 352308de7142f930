"""Inflating a package tarball's stream (gzip or zstd) for extraction, with its recorded
size and checksum checked on the compressed bytes as they are read."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import stat
import threading
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from .._native import IS_NATIVE as _NATIVE_INFLATE
from .._native import Inflater
from ..errors import BincacheError, ExtractError, IntegrityError
from .zstd import chunks as zstd_chunks

# Big reads: the cost of this path is inflate + write; small buffers add Python overhead per call.
CHUNK = 1 << 20
INFLATE_SLICE = 256 << 10

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Expected:
    """The compressed blob's recorded size and checksum, checked on the bytes extraction reads
    (a blob checked first and read again later could have been rewritten in between)."""

    __slots__ = ("size", "algorithm", "checksum", "where")

    def __init__(self, size: int, algorithm: str, checksum: str, where: str):
        self.size, self.algorithm, self.checksum, self.where = size, algorithm, checksum, where

    @classmethod
    def of(cls, record, where: str) -> Expected:
        """From a manifest's blob record (``content_length`` -1: size unknown)."""
        return cls(record.content_length, record.checksum_algorithm, record.checksum, where)

    def check(self, size: int, digest: str) -> None:
        if self.size >= 0 and size != self.size:
            raise IntegrityError(f"{self.where}: {size} compressed bytes read but the manifest "
                                 f"says {self.size} (truncated, or replaced after it was fetched)")
        if digest != self.checksum:
            raise IntegrityError(f"{self.where}: checksum mismatch ({self.algorithm} {digest[:12]}..., "
                                 f"expected {self.checksum[:12]}...): the blob is corrupt or was "
                                 "replaced after it was fetched")


class _HashingReader:
    """Reads through to ``raw``, hashing and counting every byte handed out."""

    def __init__(self, raw: BinaryIO, algorithm: str):
        self._raw = raw
        self.hash = hashlib.new(algorithm)
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _ThreadedInflater:
    """A file object over a decompressed stream, inflated in a background thread.

    zlib and zstandard release the GIL while they work, so inflating the next chunk overlaps
    with parsing and writing the previous one: the same pipelining `tar -xzf` gets from its
    separate gzip process.
    """

    def __init__(self, raw: BinaryIO, kind: str, threaded: bool = True,
                 expect: Expected | None = None):
        self._raw = raw
        self._kind = kind
        self._expect = expect
        self._q: queue.Queue[bytes | memoryview | None] = queue.Queue(maxsize=8)
        self._buf = memoryview(b"")
        self._eof = False
        self._error: BaseException | None = None
        self._stop = False
        self._gen: Iterator[bytes | memoryview] | None = None
        self._pos = 0
        if threaded:
            self._thread = threading.Thread(target=self._run, name="bincache-inflate", daemon=True)
            self._thread.start()
        else:
            self._gen = self._chunks()

    def _next_block(self) -> bytes | memoryview | None:
        if self._gen is None:
            return self._q.get()
        try:
            return next(self._gen)
        except StopIteration:
            return None
        except BaseException as e:
            self._error = e
            return None

    def _chunks(self) -> Iterator[bytes | memoryview]:
        expect = self._expect
        fd = _descriptor(self._raw) if self._kind == "gzip" else None
        if fd is not None and (expect is None or expect.algorithm == "sha256"):
            yield from self._native_chunks(fd)
            return
        if expect is None:
            yield from self._python_chunks(self._raw)
            return
        hashing = _HashingReader(self._raw, expect.algorithm)
        yield from self._python_chunks(hashing)
        hashing.drain()  # bytes after the compressed stream are part of the blob too
        expect.check(hashing.size, hashing.hash.hexdigest())

    def _python_chunks(self, raw) -> Iterator[bytes]:
        if self._kind == "zstd":
            # Every frame (bincache writes one per 1 MiB), bounded, truncation an error.
            yield from zstd_chunks(raw, CHUNK)
            return
        d = zlib.decompressobj(wbits=31)
        pending = memoryview(b"")
        while True:
            if not pending:
                pending = memoryview(raw.read(CHUNK))
                if not pending:
                    if not d.eof:
                        raise ExtractError("truncated gzip stream (the tarball is incomplete)")
                    return
            if d.eof:
                # Concatenated gzip members are one stream (RFC 1952, and what pigz writes).
                d = zlib.decompressobj(wbits=31)
            # Bounded input and output per call: the data before a damaged spot still comes out
            # (so the error names the member it hit), and a bomb of zeros cannot fill memory.
            piece, pending = pending[:INFLATE_SLICE], pending[INFLATE_SLICE:]
            try:
                out = d.decompress(piece, CHUNK)
                while out:
                    yield out
                    out = d.decompress(d.unconsumed_tail, CHUNK) if d.unconsumed_tail else b""
            except zlib.error as e:
                raise ExtractError(f"damaged gzip stream: {e}") from None
            if d.eof and d.unused_data:
                pending = memoryview(d.unused_data + bytes(pending))

    def _native_chunks(self, fd: int) -> Iterator[memoryview]:
        """gzip through the core's Inflater (ISA-L when built with it): it reads the descriptor
        itself and checks every member's CRC and length, and hashes the compressed bytes it
        reads when a checksum is expected: the bytes checked are then the bytes extracted,
        whatever happens to the file meanwhile, in the same pass (no second read)."""
        expect = self._expect
        inflater = Inflater(fd, offset=0, digest=expect is not None)
        while True:
            # A fresh buffer per block: the reading thread may still hold the previous one.
            buf = bytearray(CHUNK)
            try:
                n = inflater.readinto(buf)
            except BincacheError as e:
                raise ExtractError(str(e)) from None
            if not n:
                break
            yield memoryview(buf)[:n]
        if expect is not None:
            read = inflater.compressed_size
            try:
                size = os.fstat(fd).st_size
            except OSError:
                size = read
            if size != read:
                # Bytes after the last gzip member: not inflated, yet part of the blob.
                raise IntegrityError(f"{expect.where}: {size - read} bytes after the end of the "
                                     "compressed stream: refusing a blob that is not one stream")
            expect.check(read, inflater.hexdigest())

    def _put(self, item: bytes | memoryview | None) -> bool:
        """Hand a block over; False once the reader has gone (it closed the stream)."""
        while not self._stop:
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for block in self._chunks():
                if not self._put(block):
                    return
            self._put(None)
        except BaseException as e:  # handed to the reading thread, which raises it
            self._error = e
            self._put(None)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        """Forward only (what tarfile needs to skip padding): reads and drops the bytes."""
        if whence != 0 or pos < self._pos:
            raise ExtractError("damaged tarball: a member points backwards in the stream")
        while self._pos < pos:
            if not self.read(min(CHUNK, pos - self._pos)):
                break
        return self._pos

    def _fill(self) -> bool:
        """Make the current block non-empty; False at the end of the stream (an error that
        ended the stream is raised here, after the data before it was handed out)."""
        if self._buf:
            return True
        if self._eof:
            return False
        block = self._next_block()
        if block is None:
            self._eof = True
            if self._error is not None:
                raise self._error
            return False
        self._buf = memoryview(block)
        return True

    def write_to(self, fd: int, size: int) -> int:
        """Copy the next ``size`` bytes of the stream to ``fd`` straight from the inflated
        blocks (no bytes object per member); returns how many there were (fewer at the end)."""
        left = size
        while left and self._fill():
            piece = self._buf[:left]
            self._buf = self._buf[len(piece):]
            left -= len(piece)
            self._pos += len(piece)
            while piece:
                piece = piece[os.write(fd, piece):]
        return size - left

    def read(self, size: int = -1) -> bytes:
        buf = self._buf
        if size is not None and 0 <= size <= len(buf):
            # The common case (tar headers, small files): one slice of the current block.
            self._buf = buf[size:]
            self._pos += size
            return buf[:size].tobytes()
        if size is None or size < 0:
            chunks: list[bytes] = []
            while True:
                chunk = self.read(CHUNK)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        # Exactly ``size`` bytes unless the stream ends: tarfile takes a short read of a header
        # for the end of the archive.
        parts: list[memoryview] = []
        want = size
        while want and self._fill():
            piece = self._buf[:want]
            self._buf = self._buf[len(piece):]
            parts.append(piece)
            want -= len(piece)
        out = parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._stop = True
        # Unblock the producer if it waits on a full queue, and let it finish its slice before
        # the caller closes the file it reads.
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        if self._gen is None:
            self._thread.join(timeout=10)


def _descriptor(f: BinaryIO) -> int | None:
    """The descriptor of a regular file the native inflater can pread, else None."""
    try:
        fd = f.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


_active_lock = threading.Lock()
_active = 0  # extractions running in this process (install -j N runs N at once)


def _extracting(delta: int = 0) -> int:
    global _active
    with _active_lock:
        _active += delta
        return _active


@contextlib.contextmanager
def _counted() -> Iterator[None]:
    _extracting(+1)
    try:
        yield
    finally:
        _extracting(-1)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Below this many compressed bytes a package is inflated in the thread that extracts it.
SMALL_BLOB = 1 << 20


def _open_stream(f: BinaryIO, expect: Expected | None = None) -> _ThreadedInflater:
    head = f.read(4)
    f.seek(0)
    # One inflater for gzip: the C core's (ISA-L when built with it) on a descriptor, zlib on a
    # stream without one. Where it runs: a thread while each running extraction can have two
    # CPUs, else inline. Measured on 1 GiB (2 CPUs, /dev/shm, ISA-L): -j 1 takes 5.0 s with a
    # thread, 5.9 s inline; -j 2 takes 5.3 s inline, 5.9 s with threads (four threads on two
    # CPUs only add handoffs). There is no switch: a `pigz -dc` child (it could not hash what
    # it read, so install never used it) and python-isal (as fast as the core: same ISA-L) are
    # not kept.
    if head[:2] == GZIP_MAGIC:
        native = _NATIVE_INFLATE and _descriptor(f) is not None
        # A threaded extraction keeps two CPUs busy (inflate, and parse + write); for a small
        # blob a thread's start and handoffs cost more than it saves.
        inline = native and (2 * _extracting() > _cpus()
                             or expect is not None and 0 <= expect.size < SMALL_BLOB)
        return _ThreadedInflater(f, "gzip", not inline, expect)
    if head == ZSTD_MAGIC:
        return _ThreadedInflater(f, "zstd", True, expect)
    raise ExtractError("not a gzip or zstd compressed tarball (unknown magic bytes)")
