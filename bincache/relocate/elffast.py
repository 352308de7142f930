"""The loader's path fields of an ELF file read with ``struct`` from its headers.

pyelftools builds an object per header, segment, section and tag (~20 ms per small program
here, a third of a small package's install). This reads the same fields straight from the
program headers, the dynamic segment and the section headers it needs. It answers only for
the files it fully understands: anything unusual (no ``.dynsym`` section, an offset out of
range, an odd header size) is ``None``, and the caller reads the file with pyelftools, whose
answer (or error) then stands. ``tests/property/test_elf_fast.py`` checks both agree.
"""

from __future__ import annotations

import os
import struct

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 5, 10, 15, 29
SHT_DYNSYM, SHT_GNU_VERDEF, SHT_GNU_VERNEED = 11, 0x6FFFFFFD, 0x6FFFFFFE
# Dynamic tags whose value is an offset into the dynamic string table (elf.py's _STRING_TAGS).
STRING_TAGS = frozenset({1, 14, 15, 29, 0x7FFFFFFD, 0x7FFFFFFF, 0x6FFFFEFA, 0x6FFFFEFB, 0x6FFFFEFC})
MAX_FIELD = 1 << 20
MAX_ENTRIES = 1 << 16  # dynamic tags, version records: more is not a file to take a shortcut on


class _Unsure(Exception):
    pass


def _need(cond: bool) -> None:
    if not cond:
        raise _Unsure


def read_fields(path: str) -> list[tuple[str, int, int, bytes, bool]] | None:
    """(kind, offset, capacity, value, tail_shared) of PT_INTERP, DT_RPATH and DT_RUNPATH, as
    :func:`bincache.relocate.elf.read_elf_strings` gives them; None when unsure."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read(fd)
    except (_Unsure, struct.error, OSError, ValueError, OverflowError, MemoryError):
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> list[tuple[str, int, int, bytes, bool]]:
    size = os.fstat(fd).st_size
    head = os.pread(fd, 64, 0)
    _need(len(head) >= 52 and head[:4] == b"\x7fELF" and head[4] in (1, 2) and head[5] in (1, 2)
          and head[6] == 1)
    wide = head[4] == 2
    end = "<" if head[5] == 1 else ">"
    if wide:
        _need(len(head) >= 64)
        phoff, shoff = struct.unpack_from(end + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 54)
        ph_fmt, ph_size = end + "IIQQQQQQ", 56
        sh_fmt, sh_size = end + "IIQQQQIIQQ", 64
        dyn_fmt, dyn_size = end + "qQ", 16
    else:
        phoff, shoff = struct.unpack_from(end + "II", head, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", head, 42)
        ph_fmt, ph_size = end + "IIIIIIII", 32
        sh_fmt, sh_size = end + "IIIIIIIIII", 40
        dyn_fmt, dyn_size = end + "iI", 8
    _need(phnum == 0 or phentsize == ph_size)
    _need(0xFFFF > phnum and phoff + phnum * ph_size <= size)
    table = os.pread(fd, phnum * ph_size, phoff)
    segments = []  # (type, offset, vaddr, filesz)
    for i in range(phnum):
        v = struct.unpack_from(ph_fmt, table, i * ph_size)
        if wide:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = v[:6]
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = v[:5]
        segments.append((p_type, p_offset, p_vaddr, p_filesz))
    out: list[tuple[str, int, int, bytes, bool]] = []
    for p_type, p_offset, _v, p_filesz in segments:
        if p_type == PT_INTERP:
            _need(p_offset + p_filesz <= size)
            raw = os.pread(fd, min(p_filesz, MAX_FIELD), p_offset)
            out.append(("interp", p_offset, p_filesz, raw.split(b"\0", 1)[0], False))
    dyn = next(((o, s) for t, o, _v, s in segments if t == PT_DYNAMIC), None)
    if dyn is None:
        return out
    d_off, d_len = dyn
    _need(d_off + d_len <= size and d_len // dyn_size <= MAX_ENTRIES)
    raw = os.pread(fd, d_len - d_len % dyn_size, d_off)
    strtab = strsz = None
    paths = []
    refs: set[int] = set()
    for i in range(0, len(raw), dyn_size):
        tag, val = struct.unpack_from(dyn_fmt, raw, i)
        if tag == DT_NULL:
            break
        if tag == DT_STRTAB:
            strtab = val
        elif tag == DT_STRSZ:
            strsz = val
        if tag in (DT_RPATH, DT_RUNPATH):
            paths.append(("rpath" if tag == DT_RPATH else "runpath", val))
        if tag in STRING_TAGS:
            refs.add(val)
    if not paths:
        return out
    _need(strtab is not None and strsz is not None)
    assert strtab is not None and strsz is not None
    loads = [(o, v, s) for t, o, v, s in segments if t == PT_LOAD]
    base = next((strtab - v + o for o, v, s in loads if v <= strtab and strtab + 1 <= v + s), None)
    _need(base is not None)
    assert base is not None
    refs |= _section_refs(fd, size, shoff, shentsize, shnum, sh_fmt, sh_size, end, wide)
    for kind, index in paths:
        _need(index < strsz and base + index < size)
        raw = os.pread(fd, min(strsz - index, MAX_FIELD), base + index)
        _need(b"\0" in raw)
        value = raw.split(b"\0", 1)[0]
        shared = any(index < r < index + len(value) for r in refs)
        out.append((kind, base + index, len(value) + 1, value, shared))
    return out


def _section_refs(fd: int, size: int, shoff: int, shentsize: int, shnum: int, sh_fmt: str,
                  sh_size: int, end: str, wide: bool) -> set[int]:
    """String offsets read by the symbols (st_name) and the version records."""
    _need(shnum > 0 and shentsize == sh_size and shoff + shnum * sh_size <= size)
    table = os.pread(fd, shnum * sh_size, shoff)
    refs: set[int] = set()
    dynsym = False
    for i in range(shnum):
        v = struct.unpack_from(sh_fmt, table, i * sh_size)
        _name, sh_type = v[0], v[1]
        if wide:
            sh_offset, sh_bytes, sh_info, sh_entsize = v[4], v[5], v[7], v[9]
        else:
            sh_offset, sh_bytes, sh_info, sh_entsize = v[4], v[5], v[7], v[9]
        if sh_type not in (SHT_DYNSYM, SHT_GNU_VERDEF, SHT_GNU_VERNEED):
            continue
        _need(sh_offset + sh_bytes <= size)
        data = os.pread(fd, sh_bytes, sh_offset)
        if sh_type == SHT_DYNSYM:
            _need(sh_entsize > 0 and not dynsym)
            dynsym = True
            refs.update(struct.unpack_from(end + "I", data, j)[0]
                        for j in range(0, len(data) - 3, sh_entsize))
        else:
            refs |= _version_refs(data, sh_info, end,
                                  _VERNEED if sh_type == SHT_GNU_VERNEED else _VERDEF)
    _need(dynsym)  # without it pyelftools reads the symbols through the hash table
    return refs


# (record format, index of its aux count, aux offset, next; aux format, index of its name, next)
_VERNEED = ("HHIII", 1, 3, 4, "IHHII", 3, 4)  # Elf_Verneed / Elf_Vernaux
_VERDEF = ("HHHHIII", 3, 5, 6, "II", 0, 1)  # Elf_Verdef / Elf_Verdaux


def _version_refs(data: bytes, count: int, end: str, shape: tuple) -> set[int]:
    """String offsets of a version section: vn_file and vna_name, or vda_name (walked as
    pyelftools walks them: ``count`` records, each with its aux entries, by the next fields)."""
    rec_fmt, cnt_i, aux_i, next_i, aux_fmt, name_i, aux_next_i = shape
    refs: set[int] = set()
    off = 0
    _need(count <= MAX_ENTRIES)
    for _ in range(count):
        rec = struct.unpack_from(end + rec_fmt, data, off)
        if shape is _VERNEED:
            refs.add(rec[2])  # vn_file: the library's name
        aux = off + rec[aux_i]
        _need(rec[cnt_i] <= MAX_ENTRIES)
        for _ in range(rec[cnt_i]):
            entry = struct.unpack_from(end + aux_fmt, data, aux)
            refs.add(entry[name_i])
            if not entry[aux_next_i]:
                break
            aux += entry[aux_next_i]
        if not rec[next_i]:
            break
        off += rec[next_i]
    return refs
