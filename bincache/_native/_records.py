"""What both backends of the native core hand back (records and checks), without either's
machinery: the C core's wrapper imports these, and the pure twin (zlib, hashlib, the tar code)
is not imported with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import NativeError

KIND_TEXT = "text"
KIND_BINARY = "binary"
KIND_ELF = "elf"


@dataclass
class FileScan:
    """What the packer learned about one member while writing it."""

    kind: str  # "text", "binary" or "elf"
    size: int
    hits: list = field(default_factory=list)  # [(prefix_index, offset)], ascending offsets
    links: int = 1  # a file's link count, and its (st_dev, st_ino); (0, 0) for bytes
    inode: tuple[int, int] = (0, 0)


@dataclass
class TarResult:
    diff_id: str  # sha256 hex of the uncompressed tar stream
    digest: str  # sha256 hex of the gzip stream
    compressed_size: int
    uncompressed_size: int
    direct_bytes: int = 0  # of compressed_size, written around the page cache (O_DIRECT)


@dataclass
class DirEntries:
    """What :meth:`TarWriter.add_entries` packed of one directory that its caller records:
    the subdirectories to walk next (names, in order), the files that are ELF or hold a prefix
    (name and scan), the symlinks whose target holds one, and the hard links (name, and the
    member name of the file first packed). ``files`` and ``bytes``: the regular files packed
    with their contents."""

    files: int
    bytes: int
    subdirs: list[str] = field(default_factory=list)
    files_of_note: list[tuple[str, FileScan]] = field(default_factory=list)
    symlinks_to_prefixes: list[str] = field(default_factory=list)
    hardlinks: list[tuple[str, str]] = field(default_factory=list)


#: TarWriter(direct_io=...): write a descriptor's output with O_DIRECT never, on a local disk
#: file system only (ext2/3/4, xfs, btrfs), or on any file system that takes it.
DIRECT_IO = ("never", "local", "any")


def check_direct_io(direct_io: str) -> None:
    if direct_io not in DIRECT_IO:
        raise NativeError(f"direct_io must be one of {', '.join(DIRECT_IO)}, not {direct_io!r}")
