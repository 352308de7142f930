"""Packing one installed prefix into a deterministic, scanned, compressed tarball.

The walk is Spack's: a directory, then its non-directory entries sorted by name, then its
subdirectories. The native writer does the bytes (read, tar framing, both SHA-256s, the prefix
scan, deflate) in one pass; this module decides what goes in and records what the scan found.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import NativeError, PrefixError

BUILDINFO = ".spack/binary_distribution"
_BUILDINFO_DIR, _BUILDINFO_NAME = BUILDINFO.rsplit("/", 1)  # the native walk skips it by name
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass
class PackReport:
    """What the walk and the scan found, as relative paths inside the prefix."""

    textfiles: list[str] = field(default_factory=list)
    binaries: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    offsets: dict[str, list[list[int]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    hardlinks: dict[str, str] = field(default_factory=dict)
    files: int = 0
    bytes_in: int = 0


def _member(path: str) -> str:
    return path.lstrip("/")


def _parents(prefix: str) -> list[str]:
    parts = prefix.strip("/").split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def pack_prefix(writer, prefix: str, prefixes: list[str], tick: Callable[[int], None] | None = None) -> PackReport:
    """Add the parent directories, then the prefix, to ``writer``; return what the scan found.

    ``prefixes`` are the old prefixes (the writer was created with them, same order): a symlink
    whose target contains one of them is listed for relocation. ``tick`` is called with the
    bytes of each directory's files once they are added (progress; it may raise to stop the
    walk). A writer with ``add_entries`` (the C core's) packs each directory in one call; the
    others get ``add_file_at`` per file, so a wrapper that changes what that does must not
    pass ``add_entries`` through.
    """
    prefix = os.path.abspath(prefix)
    report = PackReport()
    for parent in _parents(prefix):
        writer.add_dir(parent, 0o755)
    if not os.path.isdir(prefix):
        raise PrefixError(f"prefix {prefix} does not exist or is not a directory")
    tick = tick or (lambda _n: None)
    if hasattr(writer, "add_entries"):
        _walk_native(writer, prefix, prefix, report, tick)
    else:
        _walk(writer, prefix, prefix, prefixes, report, _Links(), tick)
    return report


def _open_dir(directory: str) -> int:
    try:
        return os.open(directory, _DIR_FLAGS)
    except OSError as e:
        raise PrefixError(f"cannot read directory {directory}: {e.strerror}") from None


def _walk_native(writer, prefix: str, directory: str, report: PackReport,
                 tick: Callable[[int], None]) -> None:
    """The C core's walk (TarWriter.add_entries, one call per directory), the same tarball as
    _walk's: the 415 MB benchmark tree's 20,000 files go through Python no longer one by one."""
    dirfd = _open_dir(directory)
    base = directory if directory.endswith("/") else directory + "/"
    rel_dir = base[len(prefix) + 1:]  # "" for the prefix itself
    try:
        found = writer.add_entries(_member(base), dirfd, directory,
                                   _BUILDINFO_NAME if rel_dir == _BUILDINFO_DIR + "/" else None)
    except NativeError as e:
        raise PrefixError(str(e)) from None
    finally:
        os.close(dirfd)  # before the subdirectories: a deep tree holds one descriptor at a time
    for name, scan in found.files_of_note:
        _record(report, rel_dir + name, scan)
    for name in found.symlinks_to_prefixes:
        report.links.append(rel_dir + name)
    if found.hardlinks:
        cut = len(_member(prefix)) + 1
        for name, first in found.hardlinks:
            report.hardlinks[rel_dir + name] = first[cut:]
    report.files += found.files
    report.bytes_in += found.bytes
    tick(found.bytes)
    for sub in found.subdirs:
        _walk_native(writer, prefix, base + sub, report, tick)


class _Links:
    """The files with several links packed so far: their other names become hard links.

    Which entry may be one is told by its inode number from the directory (d_ino, no stat):
    only an entry whose number is that of such a file is stat'ed for its device. Should a file
    system give d_ino other than st_ino, every file is stat'ed once one with links was seen.
    """

    def __init__(self) -> None:
        self.first: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> the path packed
        self.numbers: set[int] = set()
        self.dirent_ino_ok = True

    def must_stat(self, entry: os.DirEntry) -> bool:
        return bool(self.first) and (not self.dirent_ino_ok or entry.inode() in self.numbers)

    def packed(self, entry: os.DirEntry, inode: tuple[int, int], path: str) -> None:
        if inode[1] != entry.inode():
            self.dirent_ino_ok = False
        self.first.setdefault(inode, path)
        self.numbers.add(inode[1])


def spack_mode(st_mode: int) -> int:
    """A file's mode in the tarball, normalized as Spack does: 0755 when the owner may execute
    it, else 0644. A package then installs with modes its user can work with, whatever the
    builder's umask or a file's read-only bits were."""
    return 0o755 if st_mode & stat.S_IXUSR else 0o644


def _walk(writer, prefix: str, directory: str, prefixes: list[str], report: PackReport,
          links: _Links, tick: Callable[[int], None]) -> None:
    # The directory is opened once and its entries are read, stat'ed and opened relative to
    # it: the kernel no longer looks up every component of every file's whole path (20,000
    # files in the 415 MB benchmark tree), nor does this loop build a path per file.
    dirfd = _open_dir(directory)
    try:
        subdirs = _walk_entries(writer, prefix, directory, dirfd, prefixes, report, links, tick)
    finally:
        os.close(dirfd)  # before the subdirectories: a deep tree holds one descriptor at a time
    for sub in subdirs:
        _walk(writer, prefix, sub, prefixes, report, links, tick)


def _walk_entries(writer, prefix: str, directory: str, dirfd: int, prefixes: list[str],
                  report: PackReport, links: _Links, tick: Callable[[int], None]) -> list[str]:
    try:
        entries = sorted(os.scandir(dirfd), key=lambda e: os.fsencode(e.name))
    except OSError as e:
        raise PrefixError(f"cannot read directory {directory}: {e.strerror}") from None
    writer.add_dir(_member(directory), 0o755)  # whatever its mode, as Spack writes directories
    subdirs = []
    base = directory if directory.endswith("/") else directory + "/"
    member_dir = _member(base)
    rel_dir = base[len(prefix) + 1:]  # "" for the prefix itself
    cut = len(prefix) + 1  # a path is prefix + "/" + rel
    # Once per file (50,000 in the 1 GiB benchmark tree): what is looked up once is kept here.
    add_file_at, first_links = writer.add_file_at, links.first
    files = nbytes = 0
    for entry in entries:
        name = entry.name
        rel = rel_dir + name
        if rel == BUILDINFO:
            continue  # written anew, last
        # The entry's type comes from the directory itself (d_type): no stat per file. The
        # writer's own fstat gives the mode and the link count, so a stat is needed only
        # for what may be another name of a file with several links (see _Links).
        try:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(base + name)
                continue
            is_link = entry.is_symlink()
            is_file = not is_link and entry.is_file(follow_symlinks=False)
            st = entry.stat(follow_symlinks=False) if (is_file and first_links and links.must_stat(entry)) or not (
                is_link or is_file) else None
        except OSError as e:
            raise PrefixError(f"cannot stat {base + name}: {e.strerror}") from None
        if is_link:
            try:
                target = os.readlink(name, dir_fd=dirfd)
            except OSError as e:
                raise PrefixError(f"cannot read the symlink {base + name}: {e.strerror}") from None
            writer.add_symlink(member_dir + name, target)
            if any(p in target for p in prefixes):
                report.links.append(rel)
        elif is_file:
            if st is not None and (st.st_dev, st.st_ino) in first_links:
                first = first_links[(st.st_dev, st.st_ino)]
                writer.add_hardlink(member_dir + name, _member(first), spack_mode(st.st_mode))
                report.hardlinks[rel] = first[cut:]
                continue
            try:
                scan = add_file_at(member_dir + name, dirfd, directory, name, -1)  # -1: spack_mode
            except NativeError as e:
                raise PrefixError(str(e)) from None
            if scan.links > 1:
                links.packed(entry, scan.inode, base + name)
            files += 1
            nbytes += scan.size
            if scan.hits or scan.kind == "elf":
                _record(report, rel, scan)
            tick(scan.size)
        else:
            assert st is not None
            mode = st.st_mode
            kind = ("fifo" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                    else "device file")
            raise PrefixError(f"{base + name} is a {kind}; a binary package cannot hold one. Remove it from the prefix")
    report.files += files
    report.bytes_in += nbytes
    return subdirs


def _record(report: PackReport, rel: str, scan) -> None:
    if scan.kind == "elf":
        report.binaries.append(rel)
        report.kinds[rel] = "elf"
        if scan.hits:
            report.offsets[rel] = [[i, off] for i, off in scan.hits]
    elif scan.hits:
        report.kinds[rel] = scan.kind
        if scan.kind == "text":
            report.textfiles.append(rel)
        else:
            report.binaries.append(rel)
            report.offsets[rel] = [[i, off] for i, off in scan.hits]


def buildinfo(report: PackReport, prefix: str, store_root: str, prefixes: list[str],
              hash_to_prefix: dict[str, str]) -> dict:
    """The ``.spack/binary_distribution`` document: Spack's keys, then bincache's."""
    rel_prefix = os.path.relpath(prefix, store_root) if store_root else prefix
    return {
        "relocate_textfiles": report.textfiles,
        "relocate_binaries": report.binaries,
        "relocate_links": report.links,
        "hardlinks_deduped": True,
        "buildpath": store_root,
        "sbang_install_path": os.path.join(store_root, "bin", "sbang"),
        "spackprefix": store_root,
        "relative_prefix": rel_prefix,
        "relative_rpaths": False,
        "hash_to_prefix": dict(hash_to_prefix),
        "bincache": {
            "version": 1,
            "prefix": prefix,
            "store_root": store_root,
            "prefixes": list(prefixes),
            "offsets": report.offsets,
            "kinds": report.kinds,
            "hardlinks": report.hardlinks,
        },
    }


# What json.dumps leaves raw that a YAML reader would not take back as it was: C1 controls and
# DEL (non-printable to PyYAML, NEL a line break), YAML 1.1's other line breaks (U+2028/9,
# folded inside a quoted scalar), a BOM and the non-characters U+FFFE/F.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def buildinfo_bytes(info: dict) -> bytes:
    """The buildinfo as JSON, which is YAML (1.2, and 1.1 as PyYAML and ruamel read it: Spack's
    syaml.load and bincache's loaders take it as it is).

    Not yaml.dump: PyYAML represents every node in Python, 40 ms of CPU for the 19 packages of
    the 415 MB benchmark tree (200 KB of buildinfo) plus 10-15 ms to import it, on the packing
    threads; json.dumps takes 2-3 ms. Characters outside the BMP are written as they are, not
    as the surrogate pairs of ensure_ascii, which YAML readers do not join into one character.
    """
    text = json.dumps(info, ensure_ascii=False, separators=(",", ":"))
    try:
        return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()
    except UnicodeEncodeError as e:
        # A lone surrogate: a name that is not UTF-8 (os.fsdecode's surrogateescape). No YAML
        # reader takes one back, escaped or not.
        bad = text[max(0, e.start - 40):e.end + 40]
        raise PrefixError(f"a path to relocate is not valid UTF-8 (near {bad!r}): the package's "
                          "buildinfo cannot name it; rename it to UTF-8") from None


def write_buildinfo(writer, prefix: str, info: dict):
    return writer.add_bytes(_member(os.path.join(prefix, BUILDINFO)), buildinfo_bytes(info), 0o644)
