"""The paths an ELF file's loader reads: DT_RPATH, DT_RUNPATH and PT_INTERP.

Read from the program headers and the dynamic segment (so stripped files with no section
headers work too): by :mod:`.elffast` with ``struct`` when it can, else with pyelftools.
Rewritten in place when the new value fits where the old one was; when it does not, the
dynamic string table has to grow, which means moving it into a new loadable segment and,
usually, moving the program header table too. That layout surgery is what `patchelf` does
well, so growth is delegated to it (and only growth): a missing `patchelf` is a clear
:class:`~bincache.errors.RelocationError` at planning time, before anything is written.

The linker merges strings with common tails in ``.dynstr`` (a ``DT_NEEDED`` or symbol name
can point into the middle of another string). An in-place rewrite that would change bytes
another reference reads is not done blindly: such a string gets the same-length,
slash-padded form (``//`` resolves as ``/``), which keeps every tail where it was.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RelocationError
from . import elffast

if TYPE_CHECKING:
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
# pyelftools is imported where it is used: most files are read by elffast, and importing it
# costs ~60 ms of every command's start.

ELF_MAGIC = b"\x7fELF"

# Dynamic tags whose value is an offset into the dynamic string table.
_STRING_TAGS = {
    "DT_NEEDED",
    "DT_SONAME",
    "DT_RPATH",
    "DT_RUNPATH",
    "DT_AUXILIARY",
    "DT_FILTER",
    "DT_CONFIG",
    "DT_DEPAUDIT",
    "DT_AUDIT",
}


class ElfFormatError(RelocationError):
    """An ELF file cannot be read or rewritten safely."""


@dataclass(frozen=True)
class ElfString:
    """One path field of an ELF file, where it lives in the file and how much room it has."""

    kind: str  # "rpath", "runpath" or "interp"
    offset: int  # file offset of the first byte
    capacity: int  # bytes available for the value and its NUL terminator
    value: bytes
    tail_shared: bool = False  # another string reference points inside this one

    @property
    def end(self) -> int:
        return self.offset + self.capacity

    def fits(self, new: bytes) -> bool:
        return len(new) + 1 <= self.capacity


@dataclass(frozen=True)
class ElfEdit:
    """A planned change of one field: written in place, or grown by patchelf."""

    field: ElfString
    new: bytes
    grow: bool


def is_elf(path: str) -> bool:
    """True if ``path`` starts with the ELF magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _file_offset(elf: ELFFile, vaddr: int) -> int:
    offsets = list(elf.address_offsets(vaddr))
    if not offsets:
        raise ElfFormatError(f"address {vaddr:#x} is in no loadable segment")
    return offsets[0]


def _string_refs(elf: ELFFile, dyn: DynamicSegment) -> set[int]:
    """Every offset into ``.dynstr`` that something reads, as far as it can be found."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

    refs: set[int] = set()
    for tag in dyn.iter_tags():
        if tag.entry.d_tag in _STRING_TAGS:
            refs.add(tag.entry.d_val)
    dynsym = next((sec for sec in elf.iter_sections() if sec.header.sh_type == "SHT_DYNSYM"), None)
    if dynsym is not None and dynsym.header.sh_entsize:
        # st_name is the first 4-byte field of both Elf32_Sym and Elf64_Sym: read them raw,
        # pyelftools' per-symbol parsing costs seconds on a large library.
        fmt = ("<" if elf.little_endian else ">") + "I"
        data = dynsym.data()
        step = dynsym.header.sh_entsize
        refs.update(struct.unpack_from(fmt, data, i)[0] for i in range(0, len(data) - 3, step))
    else:
        try:
            for sym in dyn.iter_symbols():
                refs.add(sym.entry.st_name)
        except (ELFError, ValueError, KeyError, AttributeError):
            pass  # no symbol hash table; the tags above still count
    for section in elf.iter_sections():
        try:
            if isinstance(section, GNUVerNeedSection):
                for verneed, auxes in section.iter_versions():
                    refs.add(verneed.entry.vn_file)
                    for aux in auxes:
                        refs.add(aux.entry.vna_name)
            elif isinstance(section, GNUVerDefSection):
                for _verdef, auxes in section.iter_versions():
                    for aux in auxes:
                        refs.add(aux.entry.vda_name)
        except (ELFError, ValueError, KeyError, AttributeError):
            continue
    return refs


def _parse_errors() -> tuple[type[BaseException], ...]:
    """What pyelftools raises on a malformed file besides ELFError (found by the fuzz test:
    sizes past the end, impossible offsets, a header field of the wrong width...)."""
    from elftools.common.exceptions import ELFError
    from elftools.construct.core import ConstructError

    return (ELFError, ConstructError, ValueError, AssertionError, struct.error, KeyError,
            IndexError, AttributeError, TypeError, OverflowError, MemoryError)


# No path field is longer than this; a header claiming more is not read whole.
_MAX_FIELD = 1 << 20


def read_elf_strings(path: str) -> list[ElfString]:
    """The RPATH, RUNPATH and interpreter of an ELF file (those it has).

    Raises:
        ElfFormatError: the file is not a well-formed ELF file.
    """
    fast = elffast.read_fields(path)
    if fast is not None:
        return [ElfString(*f) for f in fast]
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            out: list[ElfString] = []
            for seg in elf.iter_segments():
                if seg.header.p_type == "PT_INTERP":
                    f.seek(seg.header.p_offset)
                    raw = f.read(min(seg.header.p_filesz, _MAX_FIELD))
                    value = raw.split(b"\0", 1)[0]
                    out.append(ElfString("interp", seg.header.p_offset, seg.header.p_filesz, value))
            dyn = next((s for s in elf.iter_segments() if isinstance(s, DynamicSegment)), None)
            if dyn is None:
                return out
            strtab = strsz = None
            paths = []
            for tag in dyn.iter_tags():
                t = tag.entry.d_tag
                if t == "DT_STRTAB":
                    strtab = tag.entry.d_val
                elif t == "DT_STRSZ":
                    strsz = tag.entry.d_val
                elif t in ("DT_RPATH", "DT_RUNPATH"):
                    paths.append((t[3:].lower(), tag.entry.d_val))
            if not paths:
                return out
            if strtab is None or strsz is None:
                raise ElfFormatError(f"{path}: dynamic segment without DT_STRTAB/DT_STRSZ")
            base = _file_offset(elf, strtab)
            refs = _string_refs(elf, dyn)
            for kind, index in paths:
                if index >= strsz:
                    raise ElfFormatError(f"{path}: {kind} string offset {index} past the string table")
                f.seek(base + index)
                raw = f.read(min(strsz - index, _MAX_FIELD))
                if b"\0" not in raw:
                    raise ElfFormatError(f"{path}: {kind} string is not NUL-terminated")
                value = raw.split(b"\0", 1)[0]
                shared = any(index < r < index + len(value) for r in refs)
                out.append(ElfString(kind, base + index, len(value) + 1, value, shared))
            return out
    except OSError as e:
        raise ElfFormatError(f"{path}: {e.strerror}") from None
    except _parse_errors() as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ElfFormatError(f"{path}: not a valid ELF file ({why})") from None


def unloaded_sections(path: str) -> list[tuple[int, int, str]]:
    """(start, end, name) file ranges of the sections the loader never maps (debug info,
    ``.comment``, symbol tables): a stale path there does not change what the program does."""
    from elftools.elf.elffile import ELFFile

    malformed = _parse_errors()
    try:
        with open(path, "rb") as f:
            out = []
            for sec in ELFFile(f).iter_sections():
                h = sec.header
                if h.sh_type in ("SHT_NULL", "SHT_NOBITS") or h.sh_size == 0:
                    continue
                if not h.sh_flags & 0x2:  # SHF_ALLOC
                    out.append((h.sh_offset, h.sh_offset + h.sh_size, sec.name))
            return out
    except OSError:
        return []
    except malformed:
        return []


def plan_edit(field: ElfString, new: bytes, padded: bytes | None) -> ElfEdit | None:
    """Choose how to set ``field`` to ``new``.

    ``padded`` is the same-length, slash-padded form of ``new`` (None when some prefix would
    have to grow); it is used when other strings share this one's tail.
    """
    if new == field.value:
        return None
    if b"\0" in new:
        raise ElfFormatError(f"new {field.kind} holds a NUL byte")
    if field.fits(new) and not field.tail_shared:
        return ElfEdit(field, new, grow=False)
    if field.tail_shared and padded is not None and len(padded) == len(field.value):
        return ElfEdit(field, padded, grow=False)
    return ElfEdit(field, new, grow=True)


def patchelf_program() -> str | None:
    """Path of the `patchelf` program, or None."""
    configured = os.environ.get("BINCACHE_PATCHELF")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("patchelf")


def write_in_place(path: str, edits: list[ElfEdit]) -> None:
    """Write the edits that fit, each NUL-padded to its field's old size."""
    with open(path, "r+b") as f:
        for e in edits:
            if e.grow:
                continue
            if not e.field.fits(e.new):
                raise ElfFormatError(f"{path}: new {e.field.kind} does not fit in place")
            f.seek(e.field.offset)
            f.write(e.new + b"\0" * (e.field.capacity - len(e.new)))


def grow(path: str, edits: list[ElfEdit], *, display: str | None = None) -> None:
    """Apply the edits that need more room with `patchelf`, then check the result.

    patchelf is the only way we grow (issue 12): our own segment rewrite, removed, passed the
    same cases (PIE and not, RPATH/RUNPATH, interpreter, shared library, 64 KiB pages, stripped)
    and patchelf is what Spack itself relocates with. What ours did better: growing a file twice
    reused its segment, where patchelf adds about 4 KiB and a LOAD segment each time (growth is
    rare: padded install paths make prefixes shrink), and it read files without section headers,
    which patchelf refuses (a clear error here; build tools do not produce such files).
    """
    todo = [e for e in edits if e.grow]
    if not todo:
        return
    name = display or path
    program = patchelf_program()
    if program is None:
        raise RelocationError(
            f"{name}: its {todo[0].field.kind} must grow and `patchelf` is not installed "
            "(apt-get install patchelf, or install to a prefix no longer than the old one)"
        )
    args = [program]
    for e in todo:
        if e.field.kind == "interp":
            args += ["--set-interpreter", os.fsdecode(e.new)]
        elif e.field.kind == "rpath":
            args += ["--force-rpath", "--set-rpath", os.fsdecode(e.new)]
        else:
            args += ["--set-rpath", os.fsdecode(e.new)]
    args.append(path)
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RelocationError(
            f"{name}: patchelf could not grow the {todo[0].field.kind}: "
            f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or 'unknown error'}"
        )
    # patchelf keeps DT_RPATH only with --force-rpath and DT_RUNPATH without: check both
    # the values and that the file still parses.
    got = {s.kind: s.value for s in read_elf_strings(path)}
    for e in todo:
        if got.get(e.field.kind) != e.new:
            raise RelocationError(
                f"{name}: after patchelf the {e.field.kind} is {got.get(e.field.kind)!r}, "
                f"expected {e.new!r}"
            )


def apply_edits(path: str, edits: list[ElfEdit], *, display: str | None = None) -> None:
    """In-place edits first (growth may move the string table), then growth by patchelf."""
    write_in_place(path, edits)
    grow(path, edits, display=display)


def growth_problem(path: str, edits: list[ElfEdit]) -> str | None:
    """Why the growing edits of ``path`` cannot be done (None: they can), before writing."""
    todo = [e for e in edits if e.grow]
    if not todo or patchelf_program() is not None:
        return None
    field = todo[0].field
    return (f"its {field.kind} must grow from {len(field.value)} to {len(todo[0].new)} bytes "
            "and `patchelf` is not installed (apt-get install patchelf)")
