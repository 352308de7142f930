"""Relocation: make an extracted prefix work at its new path.

Two steps, so that a whole install can be checked before anything is written:

1. :func:`plan_relocation` reads the buildinfo (``.spack/binary_distribution``) and every file it
   lists, checks each recorded binary offset still holds its old prefix (scanning the file again
   when it does not), reads ELF RPATH/RUNPATH/interpreter fields, and lists every problem (a
   string that would have to grow, an ELF field that needs `patchelf` when it is missing, a listed
   file that is missing) without changing anything.
2. :func:`apply_relocation` carries the plan out: text files with Spack's boundary rule and any
   change of length, binaries in place through the native core with Spack's slash-padding rule,
   ELF fields through :mod:`bincache.elf`, symlinks re-pointed. Each file is rewritten into a
   temporary file beside it and renamed over it (mode kept), once per hardlink group, whose
   other names are then linked to the new inode.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import _native
from ..errors import CannotGrowString, RelocationError
from ..limits import MAX_BUILDINFO, load_json, load_yaml
from ..tar.extract import ExtractedPackage
from . import elf
from .text import TextRelocator

BUILDINFO = ".spack/binary_distribution"
# Linux reads at most this much of a `#!` line on older kernels (BINPRM_BUF_SIZE 128,
# including the NUL); Spack uses the same limit before it falls back to sbang.
SHEBANG_LIMIT = 127

Pairs = list[tuple[bytes, bytes]]


# -- buildinfo ----------------------------------------------------------------------------------
@dataclass
class BuildInfo:
    """The relocation record a package carries (Spack's keys plus bincache's)."""

    old_prefix: str
    store_root: str
    hash_to_prefix: dict[str, str]
    textfiles: list[str]
    binaries: list[str]
    links: list[str]
    prefixes: list[str] = field(default_factory=list)  # index = prefix_index of offsets
    offsets: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    hardlinks: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping, *, old_prefix: str | None = None) -> BuildInfo:
        """Parse a buildinfo mapping; ``old_prefix`` is needed for Spack's own (no ``bincache:``)."""
        if not isinstance(d, Mapping):
            raise RelocationError("the package's buildinfo is not a mapping")
        try:
            return cls._from_dict(d, old_prefix)
        except (TypeError, ValueError, AttributeError) as e:
            # Package data: any field of the wrong shape is a damaged buildinfo, not a crash.
            raise RelocationError(f"{BUILDINFO} is not a valid buildinfo ({type(e).__name__}: "
                                  f"{str(e)[:200]})") from None

    @classmethod
    def _from_dict(cls, d: Mapping, old_prefix: str | None) -> BuildInfo:
        ours = d.get("bincache") or {}
        prefix = ours.get("prefix") or old_prefix
        store = ours.get("store_root") or d.get("buildpath") or ""
        if not prefix:
            rel = d.get("relative_prefix")
            if rel and store:
                prefix = os.path.join(store, rel)
        if not prefix:
            raise RelocationError("the package's buildinfo does not say where it was installed")
        return cls(
            old_prefix=str(prefix).rstrip("/") or "/",
            store_root=str(store).rstrip("/"),
            # Spack <= 0.21 wrote prefix_to_hash (prefix -> hash) instead.
            hash_to_prefix={str(k): str(v) for k, v in (
                d.get("hash_to_prefix")
                or {h: p for p, h in (d.get("prefix_to_hash") or {}).items()}).items()},
            textfiles=[str(p) for p in d.get("relocate_textfiles") or []],
            binaries=[str(p) for p in d.get("relocate_binaries") or []],
            links=[str(p) for p in d.get("relocate_links") or []],
            prefixes=[str(p) for p in ours.get("prefixes") or []],
            offsets={
                str(k): [(int(i), int(o)) for i, o in v] for k, v in (ours.get("offsets") or {}).items()
            },
            kinds={str(k): str(v) for k, v in (ours.get("kinds") or {}).items()},
            hardlinks={str(k): str(v) for k, v in (ours.get("hardlinks") or {}).items()},
        )

    @classmethod
    def load(cls, prefix_dir: str, *, old_prefix: str | None = None) -> BuildInfo:
        """Read ``<prefix_dir>/.spack/binary_distribution``."""
        path = os.path.join(prefix_dir, BUILDINFO)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_BUILDINFO + 1)
            data = _load_buildinfo(raw)
        except FileNotFoundError:
            raise RelocationError(
                f"the package has no {BUILDINFO}: it was not made by bincache or Spack"
            ) from None
        except yaml.YAMLError as e:
            raise RelocationError(f"{BUILDINFO} is not valid YAML: {e}") from None
        return cls.from_dict(data, old_prefix=old_prefix)


def _load_buildinfo(raw: bytes) -> Any:
    # bincache writes JSON (tar/pack.py: buildinfo_bytes), which json.loads reads 30x faster
    # than load_yaml (90 KB, 1,100 paths: 2.6 against 79 ms); Spack writes block YAML, and a
    # flow document that is not JSON is still YAML.
    if raw[:1] == b"{":
        try:
            return load_json(raw, BUILDINFO, MAX_BUILDINFO)
        except ValueError:
            pass
    # libyaml's loader (the offsets of a large package make a big document), without aliases:
    # a 1 KB document of nested aliases expands into gigabytes.
    return load_yaml(raw, BUILDINFO, MAX_BUILDINFO)


# -- prefix maps --------------------------------------------------------------------------------
def prefix_pairs(old_to_new: Mapping[str, str]) -> Pairs:
    """Old -> new prefixes as bytes, identities dropped, longest old first (ties: stable)."""
    pairs = []
    for old, new in old_to_new.items():
        old_b, new_b = os.fsencode(old.rstrip("/") or "/"), os.fsencode(new.rstrip("/") or "/")
        if old_b != new_b:
            pairs.append((old_b, new_b))
    pairs.sort(key=lambda p: -len(p[0]))
    return pairs


def fix_shebang(data: bytes) -> tuple[bytes, bool]:
    """Shorten a `#!` line the kernel would cut (over 127 bytes) to `/usr/bin/env NAME`.

    The interpreter is then found on PATH, which is the best a script can do without a helper
    such as Spack's sbang. Returns the new data and whether it changed.
    """
    if not data.startswith(b"#!"):
        return data, False
    end = data.find(b"\n")
    line = data if end < 0 else data[:end]
    if len(line) <= SHEBANG_LIMIT:
        return data, False
    words = line[2:].strip().split()
    if not words:
        return data, False
    name = os.path.basename(words[0])
    if name == b"env" and len(words) > 1:
        words = [w for w in words[1:] if w != b"-S"]
        name = os.path.basename(words[0])
    args = words[1:]
    new = b"#!/usr/bin/env " + (b"-S " + b" ".join([name] + args) if args else name)
    return new + (b"" if end < 0 else data[end:]), True


# -- plans --------------------------------------------------------------------------------------
@dataclass
class Unrelocated:
    """A string left at its old value: with ``allow_unrelocated``, or without it when the
    string lies in an ELF section the program never loads (debug info, ``.comment``)."""

    path: str  # relative to the prefix
    offset: int
    old: str
    new: str
    section: str = ""  # the unloaded ELF section it is in ("" = loaded, or not ELF)

    @property
    def blocking(self) -> bool:
        """Whether leaving it breaks the program (so it needs ``allow_unrelocated``)."""
        return not self.section

    def __str__(self) -> str:
        where = f" (in {self.section}, not loaded at run time)" if self.section else ""
        return (
            f"{self.path}: offset {self.offset}: {self.old} ({len(self.old)} bytes) left as is, "
            f"{self.new} needs {len(self.new)}{where}"
        )


@dataclass
class FilePlan:
    """What to do to one file (the first name of its hardlink group)."""

    rel: str
    kind: str  # "text", "binary" or "elf"
    aliases: list[str] = field(default_factory=list)
    patches: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    elf_edits: list[elf.ElfEdit] = field(default_factory=list)
    unrelocated: list[Unrelocated] = field(default_factory=list)
    rescanned: bool = False  # recorded offsets did not match: the file was scanned again


@dataclass
class RelocationPlan:
    """Every change to make to one staged prefix, and every reason it cannot be made."""

    root: str  # the staging directory that becomes the prefix
    pairs: Pairs
    files: list[FilePlan] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # rel, new target
    problems: list[str] = field(default_factory=list)
    unrelocated: list[Unrelocated] = field(default_factory=list)
    text: TextRelocator | None = field(default=None, repr=False)  # built once, for every file

    def relocator(self) -> TextRelocator:
        if self.text is None:
            self.text = TextRelocator(self.pairs)
        return self.text


@dataclass
class RelocationReport:
    """What :func:`apply_relocation` did."""

    text_files: int = 0
    binary_files: int = 0
    elf_fields: int = 0
    grown: int = 0
    links: int = 0
    patches: int = 0
    unrelocated: list[Unrelocated] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _padded(value: bytes, pairs: Pairs) -> bytes | None:
    buf = bytearray(value)
    try:
        _native.relocate_buffer(buf, pairs)
    except CannotGrowString:
        return None
    return bytes(buf)


def _binary_hits(
    data: bytes, rel: str, info: BuildInfo, pairs: Pairs
) -> tuple[list[tuple[int, bytes]], bool]:
    """(offset, old) of each old prefix in ``data``: the recorded ones if they all still hold,
    else a fresh scan (a file changed since packing, or a package made by Spack)."""
    recorded = info.offsets.get(rel)
    if recorded is not None and info.prefixes:
        hits = []
        ok = True
        for index, offset in recorded:
            if not 0 <= index < len(info.prefixes):
                ok = False
                break
            old = os.fsencode(info.prefixes[index])
            if data[offset : offset + len(old)] != old:
                ok = False
                break
            hits.append((offset, old))
        if ok:
            return hits, False
    olds = [o for o, _ in pairs]
    return [(off, olds[i]) for i, off in _native.scan_buffer(data, olds)], recorded is not None


def _relocate_path_field(text: TextRelocator, value: bytes) -> bytes:
    """An RPATH/RUNPATH (a ``:``-separated list) or interpreter, relocated entry by entry.

    An entry may start with several slashes: Spack's same-length relocation pads a path on
    the left with ``/``. Text relocation does not count a prefix preceded by ``/`` (it is inside
    another path there), so such an entry is read with one leading slash.
    """
    out = []
    for entry in value.split(b":"):
        core = entry.lstrip(b"/")
        if entry.startswith(b"//") and core:
            moved = text(b"/" + core)
            out.append(moved if moved != b"/" + core else entry)
        else:
            out.append(text(entry))
    return b":".join(out)


def plan_relocation(
    pkg: ExtractedPackage,
    info: BuildInfo,
    old_to_new: Mapping[str, str],
    *,
    display_root: str | None = None,
) -> RelocationPlan:
    """Check every change relocation would make to ``pkg``, and write nothing.

    Args:
        pkg: the extracted package (its staging directory).
        info: its buildinfo.
        old_to_new: every old prefix (the package's, its dependencies', the old store root) to
            its new path.
        display_root: the final prefix, used in messages instead of the staging path.
    """
    pairs = prefix_pairs(old_to_new)
    mapping = dict(pairs)
    plan = RelocationPlan(root=pkg.staging, pairs=pairs)
    shown = display_root or pkg.staging
    if not pairs:
        return plan
    groups = pkg.hardlink_groups()
    seen: set[str] = set()

    # Only files this extraction wrote are ever opened: the buildinfo is package data, and an
    # absolute, "../" or linked path in it must not reach anything outside the staging directory.
    extracted = set(pkg.files) | set(pkg.hardlinks)

    def leader(rel: str) -> str:
        return pkg.hardlinks.get(rel, rel)

    listed: list[tuple[str, str]] = [(r, "text") for r in info.textfiles]
    listed += [(r, info.kinds.get(r, "binary")) for r in info.binaries]
    # The buildinfo itself names the old prefixes: relocated as text so it describes the new place.
    if os.path.isfile(pkg.path(BUILDINFO)):
        listed.append((BUILDINFO, "text"))
    for rel, kind in listed:
        if rel not in extracted:
            plan.problems.append(f"{shown}/{rel}: listed for relocation but not in the package")
            continue
        first = leader(rel)
        if first in seen:
            continue
        seen.add(first)
        path = pkg.path(first)
        if not os.path.isfile(path) or os.path.islink(path):
            plan.problems.append(f"{shown}/{rel}: listed for relocation but not in the package")
            continue
        fp = FilePlan(first, kind, aliases=groups.get(first, []))
        if kind == "text":
            plan.files.append(fp)
            continue
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] == elf.ELF_MAGIC:
            fp.kind = "elf"
        hits, fp.rescanned = _binary_hits(data, rel, info, pairs)
        fields: list[elf.ElfString] = []
        sections: list[tuple[int, int, str]] | None = None

        def unloaded(offset: int, path: str = path) -> str:
            nonlocal sections
            if sections is None:
                sections = elf.unloaded_sections(path)
            return next((name for start, end, name in sections if start <= offset < end), "")

        # A path field holding an old prefix is a hit too: without hits there is nothing to read.
        if fp.kind == "elf" and hits:
            try:
                fields = elf.read_elf_strings(path)
            except elf.ElfFormatError as e:
                plan.problems.append(f"{shown}/{rel}: {e}".replace(path + ": ", ""))
                continue
            text = plan.relocator()
            for fld in fields:
                edit = elf.plan_edit(fld, _relocate_path_field(text, fld.value),
                                     _padded(fld.value, pairs))
                if edit is not None:
                    fp.elf_edits.append(edit)
            problem = elf.growth_problem(path, fp.elf_edits)
            if problem:
                plan.problems.append(f"{shown}/{rel}: {problem}")
        for offset, old in hits:
            if any(f.offset <= offset < f.end for f in fields):
                continue  # an ELF field: rewritten whole above
            new = mapping.get(old)
            if new is None:
                continue
            if len(new) > len(old):
                section = unloaded(offset) if fp.kind == "elf" else ""
                u = Unrelocated(rel, offset, os.fsdecode(old), os.fsdecode(new), section)
                fp.unrelocated.append(u)
                plan.unrelocated.append(u)
                continue
            fp.patches.append((offset, old, new))
        if fp.patches or fp.elf_edits or fp.unrelocated:
            plan.files.append(fp)
    for rel, target in sorted(pkg.symlinks.items()):
        if not target.startswith("/"):
            continue
        t = os.fsencode(target)
        for old, new in pairs:
            if t == old or t.startswith(old + b"/"):
                plan.links.append((rel, os.fsdecode(new + t[len(old) :])))
                break
    return plan


def cannot_grow_message(plan: RelocationPlan, display_root: str) -> str:
    """One line per file for the strings of ``plan`` that cannot grow."""
    by_file: dict[str, list[Unrelocated]] = {}
    for u in plan.unrelocated:
        if not u.blocking:
            continue
        by_file.setdefault(u.path, []).append(u)
    lines = []
    for rel, us in by_file.items():
        u = us[0]
        more = f" (and {len(us) - 1} more)" if len(us) > 1 else ""
        lines.append(
            f"{display_root}/{rel}: embeds {u.old} ({len(u.old)} bytes) at offset {u.offset}{more}; "
            f"the new prefix {u.new} needs {len(u.new)} bytes and a string cannot grow "
            "(install to a root no longer than the old one, or use --allow-unrelocated)"
        )
    return "\n".join(lines)


# -- applying -----------------------------------------------------------------------------------
def _relocate_text_file(root: str, fp: FilePlan, text: TextRelocator, report: RelocationReport) -> None:
    # Relocation runs in the staging directory, which is dropped whole on any failure, so files
    # are rewritten in place: no temporary file to create (a file creation costs ~0.4 ms on the
    # disks measured here), and hardlinks, which share the inode, are patched once for all.
    path = os.path.join(root, fp.rel)
    with open(path, "r+b") as f:
        data = f.read()
        new = text(data)
        new, shortened = fix_shebang(new)
        if shortened:
            report.warnings.append(
                f"{fp.rel}: the #! line is longer than {SHEBANG_LIMIT} bytes after relocation; "
                "it now runs its interpreter through /usr/bin/env (found on PATH)"
            )
        if new == data:
            return
        f.seek(0)
        f.write(new)
        f.truncate()
    report.text_files += 1


def _relocate_binary_file(root: str, fp: FilePlan, report: RelocationReport) -> None:
    path = os.path.join(root, fp.rel)
    if not fp.patches and not fp.elf_edits:
        return
    if fp.patches:
        _native.apply_patches(path, fp.patches)
    if fp.elf_edits:
        elf.apply_edits(path, fp.elf_edits, display=fp.rel)
    report.binary_files += 1
    report.patches += len(fp.patches)
    report.elf_fields += len(fp.elf_edits)
    report.grown += sum(1 for e in fp.elf_edits if e.grow)


@contextlib.contextmanager
def _owner_writable(path: str) -> Iterator[None]:
    """Owner-write on a file while it is patched, then its mode back (before the prefix is
    renamed into place). A package from any producer may hold read-only files (Spack's 0444,
    0555); only root with CAP_DAC_OVERRIDE could open those for writing as they are."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None  # the patch itself reports what is wrong with the file
    # Regular files only: chmod follows a symlink, which could lead out of the staging directory.
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_mode & stat.S_IWUSR:
        yield
        return
    mode = stat.S_IMODE(st.st_mode)
    os.chmod(path, mode | stat.S_IWUSR)
    try:
        yield
    finally:
        os.chmod(path, mode)


def apply_relocation(plan: RelocationPlan, *, allow_unrelocated: bool = False) -> RelocationReport:
    """Carry out ``plan`` in its staging directory.

    Raises:
        RelocationError: the plan has problems (or strings that cannot grow, unless
            ``allow_unrelocated``); nothing has been written then.
    """
    if plan.problems:
        raise RelocationError("; ".join(plan.problems))
    if any(u.blocking for u in plan.unrelocated) and not allow_unrelocated:
        raise CannotGrowString(cannot_grow_message(plan, plan.root))
    report = RelocationReport(unrelocated=list(plan.unrelocated))
    text = plan.relocator()
    for fp in plan.files:
        with _owner_writable(os.path.join(plan.root, fp.rel)):
            if fp.kind == "text":
                _relocate_text_file(plan.root, fp, text, report)
            else:
                _relocate_binary_file(plan.root, fp, report)
    for rel, target in plan.links:
        path = os.path.join(plan.root, rel)
        os.unlink(path)
        os.symlink(target, path)
        report.links += 1
    return report
