"""The paths an ELF file's loader reads: DT_RPATH, DT_RUNPATH and PT_INTERP.

Read with pyelftools from the program headers and the dynamic segment (so stripped files with
no section headers work too). Rewritten in place when the new value fits where the old one was;
when it does not, the dynamic string table has to grow, which means moving it into a new
loadable segment and, usually, moving the program header table too. That layout surgery is
what `patchelf` does well, so growth is delegated to it (and only growth): a missing `patchelf`
is a clear :class:`~bincache.errors.RelocationError` at planning time, before anything is
written.

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

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from .errors import RelocationError

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


# What pyelftools raises on a malformed file besides ELFError (found by the fuzz test: sizes
# past the end, impossible offsets, a header field of the wrong width...).
_PARSE_ERRORS = (ELFError, ConstructError, ValueError, AssertionError, struct.error, KeyError,
                 IndexError, AttributeError, TypeError, OverflowError, MemoryError)
# No path field is longer than this; a header claiming more is not read whole.
_MAX_FIELD = 1 << 20


def read_elf_strings(path: str) -> list[ElfString]:
    """The RPATH, RUNPATH and interpreter of an ELF file (those it has).

    Raises:
        ElfFormatError: the file is not a well-formed ELF file.
    """
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
    except _PARSE_ERRORS as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ElfFormatError(f"{path}: not a valid ELF file ({why})") from None


def unloaded_sections(path: str) -> list[tuple[int, int, str]]:
    """(start, end, name) file ranges of the sections the loader never maps (debug info,
    ``.comment``, symbol tables): a stale path there does not change what the program does."""
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
    except (OSError, *_PARSE_ERRORS):
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
    """Apply the edits that need more room with `patchelf`, then check the result."""
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
    """In-place edits first (growth may move the string table), then growth: by bincache's own
    segment rewrite when the file allows it, else by patchelf (``BINCACHE_ELF_GROW=patchelf``
    forces patchelf, ``native`` forbids it)."""
    write_in_place(path, edits)
    if not any(e.grow for e in edits):
        return
    how = os.environ.get("BINCACHE_ELF_GROW", "auto")
    if how != "patchelf" and grow_native(path, edits):
        _check_values(path, [e for e in edits if e.grow], display or path, "growing")
        return
    if how == "native":
        raise RelocationError(f"{display or path}: no room to grow its "
                              f"{[e for e in edits if e.grow][0].field.kind} without patchelf")
    grow(path, edits, display=display)


def growth_problem(path: str, edits: list[ElfEdit]) -> str | None:
    """Why the growing edits of ``path`` cannot be done (None: they can), before writing."""
    todo = [e for e in edits if e.grow]
    if not todo:
        return None
    how = os.environ.get("BINCACHE_ELF_GROW", "auto")
    if how != "patchelf":
        try:
            if grow_native(path, todo, dry_run=True):
                return None
        except (ElfFormatError, struct.error, ValueError):
            pass
    if how != "native" and patchelf_program() is not None:
        return None
    field = todo[0].field
    return (f"its {field.kind} must grow from {len(field.value)} to {len(todo[0].new)} bytes, "
            "the file has no room for a new segment and `patchelf` is not installed "
            "(apt-get install patchelf)")


def _check_values(path: str, edits: list[ElfEdit], name: str, how: str) -> None:
    got = {s.kind: s.value for s in read_elf_strings(path)}
    for e in edits:
        if got.get(e.field.kind) != e.new:
            raise RelocationError(f"{name}: after {how} the {e.field.kind} is "
                                  f"{got.get(e.field.kind)!r}, expected {e.new!r}")


# -- growth without patchelf --------------------------------------------------------------------
PT_NULL, PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE, PT_GNU_PROPERTY = 0, 1, 2, 3, 4, 0x6474E553
PF_R = 4
DT_NULL, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 5, 10, 15, 29


class _Layout:
    """The program headers and dynamic entries of an ELF image, as plain numbers."""

    def __init__(self, data: bytearray):
        if data[:4] != ELF_MAGIC or data[4] not in (1, 2) or data[5] not in (1, 2):
            raise ElfFormatError("not an ELF file")
        self.is64 = data[4] == 2
        self.end = "<" if data[5] == 1 else ">"
        e = self.end
        if self.is64:
            self.phoff, self.shoff = struct.unpack_from(e + "QQ", data, 0x20)
            self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx = \
                struct.unpack_from(e + "HHHHH", data, 0x36)
            self.ph_fmt = e + "IIQQQQQQ"  # type flags offset vaddr paddr filesz memsz align
            self.dyn_fmt = e + "qQ"
            self.sh_fmt = e + "IIQQQQIIQQ"
        else:
            self.phoff, self.shoff = struct.unpack_from(e + "II", data, 0x1C)
            self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx = \
                struct.unpack_from(e + "HHHHH", data, 0x2A)
            self.ph_fmt = e + "IIIIIIII"  # type offset vaddr paddr filesz memsz flags align
            self.dyn_fmt = e + "iI"
            self.sh_fmt = e + "IIIIIIIIII"
        if self.phentsize != struct.calcsize(self.ph_fmt):
            raise ElfFormatError("unexpected program header size")
        self.phdrs = [self._read_ph(data, i) for i in range(self.phnum)]

    def _read_ph(self, data: bytearray, i: int) -> dict:
        v = struct.unpack_from(self.ph_fmt, data, self.phoff + i * self.phentsize)
        if self.is64:
            t, flags, off, vaddr, paddr, filesz, memsz, align = v
        else:
            t, off, vaddr, paddr, filesz, memsz, flags, align = v
        return dict(type=t, flags=flags, offset=off, vaddr=vaddr, paddr=paddr, filesz=filesz,
                    memsz=memsz, align=align)

    def pack_ph(self, ph: dict) -> bytes:
        if self.is64:
            return struct.pack(self.ph_fmt, ph["type"], ph["flags"], ph["offset"], ph["vaddr"],
                               ph["paddr"], ph["filesz"], ph["memsz"], ph["align"])
        return struct.pack(self.ph_fmt, ph["type"], ph["offset"], ph["vaddr"], ph["paddr"],
                           ph["filesz"], ph["memsz"], ph["flags"], ph["align"])

    def offset_of(self, vaddr: int) -> int:
        for ph in self.phdrs:
            if ph["type"] == PT_LOAD and ph["vaddr"] <= vaddr < ph["vaddr"] + ph["filesz"]:
                return vaddr - ph["vaddr"] + ph["offset"]
        raise ElfFormatError(f"address {vaddr:#x} is in no loadable segment")


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def grow_native(path: str, edits: list[ElfEdit], *, dry_run: bool = False) -> bool:
    """Grow RPATH/RUNPATH/interpreter by adding a loadable segment at the end of the file.

    The new segment holds a copy of the dynamic string table with the new strings appended
    (every old offset stays valid, so symbols and version records need no change) and the new
    interpreter. Its program header takes the slot of a PT_NOTE (notes stay in their sections,
    and PT_GNU_PROPERTY still describes the property note the loader reads), so the program
    header table does not move; a segment added by an earlier growth is rebuilt in place.
    Returns False, changing nothing, when the layout offers no way (the caller uses patchelf);
    ``dry_run`` only says whether it would work.
    """
    todo = [e for e in edits if e.grow]
    if not todo:
        return True
    with open(path, "rb") as f:
        data = bytearray(f.read())
    lay = _Layout(data)
    loads = [ph for ph in lay.phdrs if ph["type"] == PT_LOAD]
    dyn = next((ph for ph in lay.phdrs if ph["type"] == PT_DYNAMIC), None)
    if not loads or dyn is None:
        return False
    dsize = struct.calcsize(lay.dyn_fmt)
    entries = []
    for i in range(dyn["filesz"] // dsize):
        tag, val = struct.unpack_from(lay.dyn_fmt, data, dyn["offset"] + i * dsize)
        entries.append([tag, val])
        if tag == DT_NULL:
            break
    tags = {t: v for t, v in entries}
    if DT_STRTAB not in tags or DT_STRSZ not in tags:
        return False
    strtab = bytes(data[lay.offset_of(tags[DT_STRTAB]):][: tags[DT_STRSZ]])
    page = max([0x1000] + [ph["align"] for ph in loads])

    # Reuse the segment of an earlier growth when it is the last thing in the file and memory.
    own = next((ph for ph in loads if ph["vaddr"] <= tags[DT_STRTAB] < ph["vaddr"] + ph["filesz"]), None)
    reuse = (own is not None and own["offset"] + own["filesz"] == len(data)
             and own["vaddr"] == max(ph["vaddr"] for ph in loads) and own["vaddr"] == tags[DT_STRTAB]
             and own["flags"] == PF_R)
    if reuse:
        assert own is not None
        new_off, new_vaddr, slot = own["offset"], own["vaddr"], lay.phdrs.index(own)
    else:
        notes = [i for i, ph in enumerate(lay.phdrs) if ph["type"] == PT_NOTE]
        nulls = [i for i, ph in enumerate(lay.phdrs) if ph["type"] == PT_NULL]
        if not notes and not nulls:
            return False
        slot = nulls[0] if nulls else notes[-1]
        new_off = _align(len(data), page)
        new_vaddr = _align(max(ph["vaddr"] + ph["memsz"] for ph in loads), page)

    table = bytearray(strtab)
    new_tags = {}
    interp = None
    for e in todo:
        if e.field.kind == "interp":
            interp = e
            continue
        new_tags[DT_RPATH if e.field.kind == "rpath" else DT_RUNPATH] = len(table)
        table += e.new + b"\0"
    segment = bytes(table)
    interp_at = None
    if interp is not None:
        interp_at = len(segment)
        segment += interp.new + b"\0"
    for tag in new_tags:
        if tag not in tags:
            return False
    if dry_run:
        return True

    # Everything is known: write. The program header slot becomes the new PT_LOAD, moved to
    # just after the last PT_LOAD (loadable segments must be sorted by address).
    new_ph = dict(type=PT_LOAD, flags=PF_R, offset=new_off, vaddr=new_vaddr, paddr=new_vaddr,
                  filesz=len(segment), memsz=len(segment), align=page)
    phdrs = [ph for i, ph in enumerate(lay.phdrs) if i != slot]
    last_load = max(i for i, ph in enumerate(phdrs) if ph["type"] == PT_LOAD)
    phdrs.insert(last_load + 1, new_ph)
    if interp_at is not None:
        for ph in phdrs:
            if ph["type"] == PT_INTERP:
                ph.update(offset=new_off + interp_at, vaddr=new_vaddr + interp_at,
                          paddr=new_vaddr + interp_at, filesz=len(interp.new) + 1,
                          memsz=len(interp.new) + 1)
    for i, ph in enumerate(phdrs):
        struct.pack_into(f"{lay.phentsize}s", data, lay.phoff + i * lay.phentsize, lay.pack_ph(ph))
    for i, (tag, val) in enumerate(entries):
        if tag == DT_STRTAB:
            val = new_vaddr
        elif tag == DT_STRSZ:
            val = len(table)
        elif tag in new_tags:
            val = new_tags[tag]
        struct.pack_into(lay.dyn_fmt, data, dyn["offset"] + i * dsize, tag, val)
    # The old strings are dead now (nothing reads the old table or the old interpreter slot):
    # blank them, in the old places and in the copy, so the file no longer names the old
    # prefix - unless another string shares a tail with one, which must keep its bytes.
    old_table = lay.offset_of(tags[DT_STRTAB])
    for e in todo:
        if e.field.tail_shared:
            continue
        blank = b"\0" * len(e.field.value)
        data[e.field.offset : e.field.offset + len(blank)] = blank
        if e.field.kind != "interp":
            at = e.field.offset - old_table
            if 0 <= at < len(strtab):
                table[at : at + len(blank)] = blank
    segment = bytes(table) + segment[len(table):]
    _update_sections(data, lay, new_off, new_vaddr, len(table), interp_at, interp)
    del data[new_off:]
    data += b"\0" * (new_off - len(data)) + segment
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    return True


def _update_sections(data: bytearray, lay: _Layout, off: int, vaddr: int, size: int,
                     interp_at: int | None, interp: ElfEdit | None) -> None:
    """Point the .dynstr (and .interp) section headers at the new copies, for tools that read
    sections; the loader does not."""
    if not lay.shoff or not lay.shnum or lay.shentsize != struct.calcsize(lay.sh_fmt):
        return
    if lay.shoff + lay.shnum * lay.shentsize > len(data) or lay.shstrndx >= lay.shnum:
        return
    headers = [list(struct.unpack_from(lay.sh_fmt, data, lay.shoff + i * lay.shentsize))
               for i in range(lay.shnum)]
    names_off = headers[lay.shstrndx][4]

    def name(h: list) -> bytes:
        start = names_off + h[0]
        return bytes(data[start:data.index(b"\0", start)])

    for i, h in enumerate(headers):
        n = name(h)
        # sh_addr, sh_offset, sh_size are fields 3, 4, 5 in both classes.
        if n == b".dynstr":
            h[3], h[4], h[5] = vaddr, off, size
        elif n == b".interp" and interp is not None and interp_at is not None:
            h[3], h[4], h[5] = vaddr + interp_at, off + interp_at, len(interp.new) + 1
        else:
            continue
        struct.pack_into(lay.sh_fmt, data, lay.shoff + i * lay.shentsize, *h)
