"""Pure-Python twin of the C core: same signatures, same bytes out, slower.

Used when the compiled module is missing or ``BINCACHE_NATIVE=python``, and as the reference the
property tests compare the C code with.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import struct
import zlib

from ..errors import CannotGrowString, IntegrityError, NativeError
from ._records import KIND_BINARY, KIND_ELF, KIND_TEXT, FileScan, TarResult, check_direct_io

_O_NOATIME = getattr(os, "O_NOATIME", 0)  # Linux only; elsewhere the open goes without it


BACKEND = "python-zlib"
DEFAULT_LEVEL = 6
BLOCK = 512
ZSTD_LEVELS = (3, 1, 19)  # default, lowest, highest (as the C core)


def codec_info(codec: str) -> tuple[bool, int, int, int]:
    """(available, default level, lowest level, highest level) of a codec."""
    if codec == "gzip":
        return True, DEFAULT_LEVEL, 0, 9
    if codec == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            return False, *ZSTD_LEVELS
        return True, *ZSTD_LEVELS
    raise NativeError(f"unknown compression {codec!r}: use gzip or zstd")


class _Zstd:
    """zstd with the calls of zlib's compressobj (one frame, content checksum)."""

    def __init__(self, level: int):
        import zstandard

        lo, hi = ZSTD_LEVELS[1:]
        if not lo <= level <= hi:
            raise NativeError(f"zstd compression level must be {lo}-{hi}, not {level}")
        self._c = zstandard.ZstdCompressor(level=level, write_checksum=True).compressobj()

    def compress(self, data) -> bytes:
        return self._c.compress(bytes(data))

    def flush(self) -> bytes:
        return self._c.flush()


def classify(data: bytes) -> str:
    if data[:4] == b"\x7fELF":
        return KIND_ELF
    if b"\0" in data:
        return KIND_BINARY
    return KIND_TEXT


def _prefix_regex(prefixes):
    # Leftmost match, and at one position the longest prefix: alternation tried longest first.
    order = sorted(range(len(prefixes)), key=lambda i: (-len(prefixes[i]), i))
    pattern = b"|".join(b"(" + re.escape(prefixes[i]) + b")" for i in order)
    return re.compile(pattern), order


def scan_buffer(data: bytes, prefixes: list[bytes]) -> list[tuple[int, int]]:
    """Every non-overlapping occurrence of any prefix: leftmost first, longest at a position."""
    # An empty prefix would match everywhere: it never matches (as in the C core).
    live = [i for i, p in enumerate(prefixes) if p]
    if not live or not data:
        return []
    regex, order = _prefix_regex([prefixes[i] for i in live])
    order = [live[i] for i in order]
    hits = []
    for m in regex.finditer(data):
        group = m.lastindex - 1
        hits.append((order[group], m.start()))
    return hits


def relocate_buffer(data: bytearray, pairs: list[tuple[bytes, bytes]]) -> int:
    """Rewrite old prefixes to new ones in place, keeping the length (Spack's rule).

    At each occurrence of ``old`` write ``b"/" * (len(old) - len(new)) + new``. A new prefix
    longer than the old one cannot fit: :class:`CannotGrowString`. Returns the number of
    replacements.
    """
    olds = [old for old, _ in pairs]
    hits = scan_buffer(bytes(data), olds)
    for idx, _ in hits:
        old, new = pairs[idx]
        if len(new) > len(old):
            raise CannotGrowString(
                f"cannot grow a string from {len(old)} to {len(new)} bytes ({old!r} -> {new!r})"
            )
    for idx, off in hits:
        old, new = pairs[idx]
        data[off : off + len(old)] = b"/" * (len(old) - len(new)) + new
    return len(hits)


def apply_patches(path: str, patches: list[tuple[int, bytes, bytes]]) -> None:
    """Apply (offset, old, new) patches to a file in place; check every one before writing."""
    try:
        f = open(path, "r+b")
    except OSError as e:
        raise NativeError(f"cannot open {os.fsdecode(path)}: {e.strerror}") from None
    with f:
        data = bytearray(f.read())
        for off, old, new in patches:
            if len(new) > len(old):
                raise CannotGrowString(
                    f"{path}: cannot grow a string from {len(old)} to {len(new)} bytes"
                )
            if data[off : off + len(old)] != old:
                raise NativeError(
                    f"{path}: offset {off} does not hold {old.decode(errors='replace')}"
                )
        for off, old, new in patches:
            data[off : off + len(old)] = b"/" * (len(old) - len(new)) + new
        f.seek(0)
        f.write(data)


def list_dirs(path, skip_prefix: str = "", since: float = -math.inf,
              threads: int = 1) -> tuple[int, float, list[tuple[str, float]]]:
    """(how many directories are right below ``path``, not counting symlinks to them; their
    newest st_ctime, 0 without any; [(name, st_ctime)] of those changed at or after ``since``,
    in the directory's order); names starting with ``skip_prefix`` left out, and an entry
    removed while listing. ``threads``: the C core's (here one)."""
    count, newest, changed = 0, 0.0, []
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(fd):
            if skip_prefix and name.startswith(skip_prefix):
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                count += 1
                newest = max(newest, st.st_ctime)
                if st.st_ctime >= since:
                    changed.append((name, st.st_ctime))
    finally:
        os.close(fd)
    return count, newest, changed


def compress_buffer(data: bytes, level: int | None = None, threads: int = 0,
                    codec: str = "gzip") -> bytes:
    """One whole gzip member (or zstd frame) of ``data`` (single-threaded; ``threads`` is
    ignored)."""
    _available, default, _lo, _hi = codec_info(codec)
    level = default if level is None else level
    if codec == "zstd":
        zc = _Zstd(level)
        return zc.compress(data) + zc.flush()
    comp = zlib.compressobj(level, zlib.DEFLATED, 31, 9)
    return comp.compress(data) + comp.flush()


def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\0"


def _pax_record(key: str, value: bytes) -> bytes:
    body = f" {key}=".encode() + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def tar_header(name: str, typeflag: bytes, mode: int, size: int = 0, linkname: str = "") -> bytes:
    """A ustar header (with a PAX header before it when a field does not fit)."""
    bname = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
    blink = (
        linkname.encode("utf-8", "surrogateescape")
        if isinstance(linkname, str)
        else bytes(linkname)
    )
    if b"\0" in bname or b"\0" in blink:
        raise NativeError("a member name or link target holds a NUL byte")
    pax = b""
    prefix = b""
    field_name = bname
    if len(bname) > 100:
        # ustar can split at a '/' into a 155-byte prefix and a 100-byte name.
        split = None
        for i in range(len(bname) - 1, 0, -1):
            # The name part must not be empty (a directory's trailing "/" is no split point).
            if bname[i : i + 1] == b"/" and i <= 155 and 0 < len(bname) - i - 1 <= 100:
                split = i
                break
        if split is not None:
            prefix, field_name = bname[:split], bname[split + 1 :]
        else:
            pax += _pax_record("path", bname)
            field_name = bname[:100]
    if len(blink) > 100:
        pax += _pax_record("linkpath", blink)
        blink = blink[:100]
    if size >= 8**11:
        pax += _pax_record("size", str(size).encode())
        size_field = _octal(0, 12)
    else:
        size_field = _octal(size, 12)
    out = b""
    if pax:
        out += _raw_header(b"././@PaxHeader", b"x", 0o644, _octal(len(pax), 12), b"", b"")
        out += pax + b"\0" * (-len(pax) % BLOCK)
    out += _raw_header(field_name, typeflag, mode, size_field, blink, prefix)
    return out


def _raw_header(
    name: bytes, typeflag: bytes, mode: int, size_field: bytes, linkname: bytes, prefix: bytes
) -> bytes:
    h = bytearray(BLOCK)
    h[0:100] = name.ljust(100, b"\0")
    h[100:108] = _octal(mode & 0o7777, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = size_field
    h[136:148] = _octal(0, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[157:257] = linkname.ljust(100, b"\0")
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    # uname/gname empty, devmajor/devminor zero
    h[329:337] = _octal(0, 8)
    h[337:345] = _octal(0, 8)
    h[345:500] = prefix.ljust(155, b"\0")
    chk = sum(h)
    h[148:156] = b"%06o\0 " % chk
    return bytes(h)


class CompressPool:
    """The C core's shared compression threads; the twin compresses on the calling thread."""

    def __init__(self, threads: int = 0):
        if threads < 0:
            raise NativeError(f"threads must be >= 0, not {threads}")
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> CompressPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TarWriter:
    """Streaming deterministic tar -> gzip writer, hashing and scanning in the same pass.

    ``out`` is a binary file object (or a file descriptor). Prefixes are the old prefixes to
    look for in every file; hits come back as ``(prefix_index, offset)`` per file.
    """

    def __init__(self, out, *, prefixes: list[bytes], level: int | None = None, threads: int = 0,
                 codec: str = "gzip", pool: CompressPool | None = None, diff_id: bool = True,
                 direct_io: str = "never"):
        check_direct_io(direct_io)  # the twin always writes through the page cache
        available, default, _lo, _hi = codec_info(codec)
        if not available:
            raise NativeError("zstd needs the zstandard module (pip install zstandard)")
        level = default if level is None else level
        self._gzip = codec == "gzip"
        if self._gzip and not 0 <= level <= 9:
            raise NativeError(f"compression level must be 0-9, not {level}")
        self._comp = (zlib.compressobj(level, zlib.DEFLATED, -15, 9) if self._gzip
                      else _Zstd(level))
        if isinstance(out, int):
            out = os.fdopen(os.dup(out), "wb")
            self._own = True
        else:
            self._own = False
        self._out = out
        self._prefixes = list(prefixes)
        if pool is not None and pool.closed:
            raise NativeError("the compression pool is closed")
        self._raw = hashlib.sha256() if diff_id else None
        self._gz = hashlib.sha256()
        self._usize = 0
        self._csize = 0
        self._crc = 0
        self._finished = False
        self._cancelled = False
        self._atime_kept = False  # O_NOATIME refused once (EPERM): not asked again
        if self._gzip:
            self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._gz.update(data)
            self._csize += len(data)

    def cancel(self) -> None:
        """From any thread: the next write stops with NativeError."""
        self._cancelled = True

    def close(self) -> None:
        """Abandon the stream (finish is not called)."""
        self._finished = True
        if self._own and not self._out.closed:
            self._out.close()

    def _feed(self, data: bytes | memoryview) -> None:
        if self._cancelled:
            raise NativeError("cancelled")
        if self._finished:
            raise NativeError("tar writer already finished")
        if self._raw is not None:
            self._raw.update(data)
        self._usize += len(data)
        if self._gzip:
            self._crc = zlib.crc32(data, self._crc)
        self._emit(self._comp.compress(data))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        if not name.endswith("/"):
            name += "/"
        self._feed(tar_header(name, b"5", mode))

    def add_symlink(self, name: str, target: str) -> None:
        self._feed(tar_header(name, b"2", 0o777, 0, target))

    def add_hardlink(self, name: str, target: str, mode: int = 0o644) -> None:
        self._feed(tar_header(name, b"1", mode, 0, target))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> FileScan:
        self._feed(tar_header(name, b"0", mode, len(data)))
        view = memoryview(data)
        for start in range(0, len(data), 1 << 20):  # slices: a cancel is seen within one
            self._feed(view[start:start + (1 << 20)])
        pad = -len(data) % BLOCK
        if pad:
            self._feed(b"\0" * pad)
        return FileScan(classify(data), len(data), scan_buffer(data, self._prefixes))

    def add_file(self, name: str, path: str, mode: int) -> FileScan:
        return self._add_open(name, path, None, os.fsdecode(path), mode)

    def add_file_at(self, name: str, dirfd: int, directory: str, base: str, mode: int) -> FileScan:
        return self._add_open(name, base, dirfd, f"{directory}/{os.fsdecode(base)}", mode)

    def _add_open(self, name: str, path, dirfd: int | None, shown: str, mode: int) -> FileScan:
        # O_NONBLOCK: opening a fifo must not hang; it is refused below. O_NOATIME as the C
        # core asks it, and without it once the kernel refuses (not the files' owner).
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:
                if self._atime_kept:
                    raise PermissionError
                fd = os.open(path, flags | _O_NOATIME, dir_fd=dirfd)
            except PermissionError:
                self._atime_kept = True
                fd = os.open(path, flags, dir_fd=dirfd)
        except OSError as e:
            raise NativeError(f"cannot read {shown}: {e.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            why = "Is a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise NativeError(f"cannot read {shown}: {why}")
        with open(fd, "rb") as f:
            try:
                data = f.read()
            except OSError as e:
                raise NativeError(f"cannot read {shown}: {e.strerror}") from None
        if mode < 0:
            mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        scan = self.add_bytes(name, data, mode)
        scan.links, scan.inode = st.st_nlink, (st.st_dev, st.st_ino)
        return scan

    def finish(self) -> TarResult:
        self._feed(b"\0" * (2 * BLOCK))
        self._emit(self._comp.flush())
        if self._gzip:
            self._emit(struct.pack("<II", self._crc & 0xFFFFFFFF, self._usize & 0xFFFFFFFF))
        self._out.flush()
        if self._own:
            self._out.close()
        self._finished = True
        return TarResult(self._raw.hexdigest() if self._raw is not None else "", self._gz.hexdigest(), self._csize, self._usize)


class Inflater:
    """Pure twin of the C core's Inflater: zlib (one decompressor per gzip member) + hashlib.

    Same surface and checks: one or more gzip members, each member's CRC-32 and length checked
    by zlib, nothing but another member after one, :class:`IntegrityError` on damaged or
    truncated data once the bytes before the damage were read.
    """

    _IN = 1 << 18

    def __init__(self, source, *, offset: int | None = 0, digest: bool = False):
        self._fd = source if isinstance(source, int) else source.fileno()
        self._offset = offset
        self._sha = hashlib.sha256() if digest else None
        self._d: zlib._Decompress | None = None  # the member being inflated
        self._members = 0
        self._member_start = 0
        self._in_total = 0
        self._pending = b""
        self._out = b""
        self._out_pos = 0
        self._error: IntegrityError | None = None
        self._done = False
        self._in_eof = False
        self._digest = ""
        self.closed = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        data = (os.pread(self._fd, self._IN, self._offset) if self._offset is not None
                else os.read(self._fd, self._IN))
        if not data:
            self._in_eof = True
            return
        if self._offset is not None:
            self._offset += len(data)
        if self._sha is not None:
            self._sha.update(data)
        self._in_total += len(data)
        self._pending += data

    def _fail(self, message: str) -> None:
        self._error = IntegrityError(message)

    def _inflate_some(self, want: int) -> bytes:
        """Up to ``want`` inflated bytes; b"" at the end or when an error is pending."""
        while self._error is None and not self._done:
            if len(self._pending) <= 8 and not self._in_eof:
                self._fill()
                continue
            if self._d is None:
                if not self._pending and self._in_eof:
                    if self._members == 0:
                        self._fail("empty input: not a gzip stream")
                        return b""
                    self._done = True
                    if self._sha is not None:
                        self._digest = self._sha.hexdigest()
                    return b""
                self._d = zlib.decompressobj(wbits=31)
                self._member_start = self._in_total - len(self._pending)
            d = self._d
            # The last 8 bytes (the trailer, when the member ends there) go in a call of their
            # own: zlib raises a bad CRC without the output of the call that found it, and the
            # data before the damage must come out first (as the C core does).
            pending = self._pending
            feed = pending[:-8] if len(pending) > 8 else pending
            try:
                out = d.decompress(feed, want)
            except zlib.error as e:
                self._pending = b""
                self._fail(self._message(str(e), d))
                return b""
            self._pending = (d.unused_data if d.eof else d.unconsumed_tail) + pending[len(feed):]
            if d.eof:
                self._members += 1
                self._d = None
            elif not out and not self._pending and self._in_eof:
                self._fail(f"truncated gzip stream: it ends inside member {self._members + 1} "
                           f"after {self._in_total} compressed bytes (the file is incomplete)")
                return b""
            if out:
                return out
        return b""

    def _message(self, why: str, d) -> str:
        member = self._members + 1
        if "incorrect data check" in why:
            return f"bad CRC in gzip member {member} (the compressed data is damaged)"
        if "incorrect length check" in why:
            return f"wrong length (ISIZE) in gzip member {member} (the compressed data is damaged)"
        if "header" in why or "method" in why:
            if self._members == 0:
                return f"not a gzip stream: bad header ({why})"
            return (f"unexpected data after gzip member {self._members} at byte "
                    f"{self._member_start}: not another gzip member ({why})")
        return f"damaged gzip stream: {why} in member {member}"

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts: list[bytes] = []
            while True:
                part = self.read(1 << 20)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        parts = []
        want = size
        while want > 0:
            if self._out_pos >= len(self._out):
                self._out = self._inflate_some(max(want, 1 << 16))
                self._out_pos = 0
                if not self._out:
                    break
            piece = self._out[self._out_pos:self._out_pos + want]
            self._out_pos += len(piece)
            parts.append(piece)
            want -= len(piece)
        if not parts and self._error is not None:
            raise self._error
        return b"".join(parts)

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        if not self._digest:
            raise NativeError("the compressed digest is known only after the whole stream was "
                              "read, and only when asked for with digest=True")
        return self._digest

    @property
    def compressed_size(self) -> int:
        return self._in_total

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Inflater:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
