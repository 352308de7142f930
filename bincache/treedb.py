"""The install tree's database: Spack's ``.spack-db/index.json`` plus an append-only journal.

Spack keeps one JSON document per tree and rewrites it whole for every install; recording a
package that way costs the size of the tree (at 50,000 prefixes, seconds and ~1 GB per
package). bincache appends each record as one line to ``.spack-db/bincache-journal.jsonl``
(O(1)) and folds the journal into ``index.json`` now and then ("compaction"):

* when the journal has grown to 1/8 of ``index.json`` (so each byte of the database is
  rewritten a bounded number of times: recording N packages costs O(N) in all);
* when ``index.json`` does not exist yet (its version is then chosen);
* at the end of every install (:meth:`TreeDatabase.settle` with ``always``), so Spack, which
  reads only ``index.json``, lists every package an install put in any tree once the command
  ends. The fold parses nothing: the records the new lines touch are found in ``index.json``'s
  text and rewritten there (:mod:`bincache.treetext`), new ones put last; a text that cannot
  be edited exactly is parsed and dumped whole. The cost is a copy of the unchanged bytes by
  the kernel, file to file (21 MB at 50,000 records: ~12 ms; Python never reads them), not a
  parse or a dump: install into a tree of N stays within the growth bound;
* at the end of a ``register`` in a tree Spack uses (Spack leaves its ``.spack-db/lock``
  there). ``register`` runs once per prefix and never parses ``index.json``; folding there
  would make N registers O(N^2) again. So only a tree that Spack never opened and that only
  ``register`` recorded into keeps up to 1/8 of its records in the journal: bincache reads
  them; Spack sees them after the next install, or once Spack has opened the tree.

Readers get ``index.json`` with the journal replayed over it. A journal line is applied once:
it carries its record's ``installation_time``, and a record already holding that time and path
is not applied again (a compaction killed between writing ``index.json`` and emptying the
journal loses and doubles nothing). A line cut short by a crash is ignored, and the next
append starts on a line of its own. Writers hold the directory lock (:func:`locks.dir_lock`);
readers read the journal before ``index.json`` (which is replaced by rename), so a concurrent
compaction never hides a record from them.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .atomic import atomic_file, write_atomic
from .errors import SpecError
from .locks import dir_lock
from .treetext import DatabaseText, Unsure
from .unbuffered import UnbufferedWriter

INDEX = "index.json"
JOURNAL = "bincache-journal.jsonl"
SPACK_LOCK = "lock"  # Spack's lock file: Spack has opened this database
COMPACT_RATIO = 8
#: Records looked up in the text, each a search of the whole of it; past this many, one parse
#: of the document costs less (a DAG of hundreds of packages into a big tree).
TEXT_LOOKUPS = 32


class TreeDatabase:
    """``index.json`` and its journal in one ``.spack-db`` directory."""

    def __init__(self, db_dir: str):
        self.dir = db_dir
        self.index_path = os.path.join(db_dir, INDEX)
        self.journal_path = os.path.join(db_dir, JOURNAL)
        # The document read or written last: a fold reuses it, parsing nothing.
        self._kept: _Kept | None = None
        self._text: DatabaseText | None = None  # index.json's bytes, for lookups and folds
        self._lookups = 0
        # The whole document parsed for lookups the text could not answer: (identity of
        # index.json, journal size, installs).
        self._whole: tuple[tuple | None, int, dict] | None = None

    def exists(self) -> bool:
        return os.path.exists(self.index_path) or _size(self.journal_path) > 0

    # -- reading ------------------------------------------------------------------------------
    def _journal_bytes(self, start: int = 0) -> bytes:
        try:
            with open(self.journal_path, "rb") as f:
                if start:
                    f.seek(start)
                return f.read()
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise SpecError(f"{self.journal_path}: cannot read the database journal "
                            f"({e.strerror})") from None

    def _journal_lines(self) -> list[dict]:
        return _lines(self._journal_bytes())

    def _read_index(self) -> tuple[dict, tuple[int, int, int] | None]:
        """index.json parsed, and the identity of the file read (None: there is none)."""
        try:
            # Text, not bytes: json.load of bytes holds them and their decoded copy at once
            # (2 x 21 MB at 50,000 packages, over the parsed records).
            with open(self.index_path, encoding="utf-8") as f:
                db = json.load(f)
                identity = _identity(os.fstat(f.fileno()))
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError) as e:
            raise SpecError(f"{self.index_path}: not a readable Spack database ({e}); "
                            "restore it or remove it (a scan then finds the prefixes)") from None
        if not isinstance(db, dict) or not isinstance(db.get("database"), dict) or \
                not isinstance(db["database"].get("installs", {}), dict):
            raise SpecError(f"{self.index_path}: not a Spack database (no database.installs)")
        return db, identity

    def read(self) -> dict:
        """The whole document (``{"database": {"version", "installs"}}``), journal applied."""
        before = _identity_of(self.index_path)
        raw = self._journal_bytes()  # first: see the module's note on concurrent compaction
        entries = _lines(raw)
        db, identity = self._read_index()
        db.setdefault("database", {}).setdefault("installs", {})
        if entries:
            database = db.setdefault("database", {})
            database.setdefault("version", entries[0].get("version", "7"))
            _apply(database.setdefault("installs", {}), entries)
        # Kept for a fold when no compaction ran while it was read (a compaction replaces
        # index.json before it empties the journal): the journal's first len(raw) bytes are
        # then applied to it, the later ones not yet.
        if identity is not None and identity == before and (not raw or raw.endswith(b"\n")):
            self._kept = _Kept(identity, db, len(raw))
        return db

    def journal_records(self) -> dict[str, dict]:
        """hash -> the record its last journal line holds."""
        return {e["hash"]: e["record"] for e in self._journal_lines()}

    def index_text(self) -> str | None:
        """index.json as text (None: there is none)."""
        try:
            with open(self.index_path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SpecError(f"{self.index_path}: not a readable Spack database ({e}); "
                            "restore it or remove it (a scan then finds the prefixes)") from None

    def text(self) -> DatabaseText | None:
        """index.json's bytes, read once (again when the file was replaced); None: no file."""
        identity = _identity_of(self.index_path)
        if identity is None:
            self._text = None
        elif self._text is None or self._text.identity != identity:
            try:
                self._text = DatabaseText.read(self.index_path)
            except OSError as e:
                raise SpecError(f"{self.index_path}: cannot read the database ({e.strerror})") from None
        return self._text

    def lookup(self, h: str) -> dict | None:
        """The record of ``h`` (journal applied), reading only the records involved: see
        :mod:`bincache.treetext`. The whole document is parsed only when the text cannot tell,
        or after TEXT_LOOKUPS lookups."""
        raw = self._journal_bytes()  # first: see the module's note on concurrent compaction
        entries = _lines(raw)
        # The hash, and those whose lines count a reference to it (to know whether each line
        # was applied already, their records are needed too).
        hashes = {h} | {e["hash"] for e in entries if h in (e.get("deps") or ())}
        relevant = [e for e in entries if e["hash"] in hashes or h in (e.get("deps") or ())]
        try:
            if self._lookups >= TEXT_LOOKUPS:
                raise Unsure("many lookups")
            text = self.text()
            installs = {}
            for x in hashes:
                rec = text.record(x) if text is not None else None
                if rec is not None:
                    installs[x] = rec
            self._lookups += len(hashes)
        except Unsure:
            return self._whole_installs(len(raw)).get(h)
        _apply(installs, relevant)
        return installs.get(h)

    def _whole_installs(self, journal_size: int) -> dict:
        identity = _identity_of(self.index_path)
        if self._whole is None or self._whole[:2] != (identity, journal_size):
            self._whole = (identity, journal_size, self.read()["database"]["installs"])
        return self._whole[2]

    def known_paths(self) -> set[bytes]:
        """The prefixes the database records, as bytes (a superset: any ``"path"`` in its
        text), so a scan of the tree skips them."""
        records = [e["record"] for e in self._journal_lines()]
        text = self.text()
        known = text.paths() if text is not None and text.compact else set()
        if text is not None and not text.compact:
            records += self._whole_installs(_size(self.journal_path)).values()
        return known | {os.fsencode(p) for r in records
                        if isinstance(r, dict) and isinstance(p := r.get("path"), str)}

    def _kept_index(self) -> _Kept | None:
        """The kept document, if index.json is still the file it was read from or written as
        (call under the lock)."""
        if self._kept is None or _identity_of(self.index_path) != self._kept.identity:
            return None
        return self._kept

    # -- writing ------------------------------------------------------------------------------
    def append(self, entries: Iterable[dict]) -> None:
        """Record ``entries`` (``{"hash", "record", "deps", "version"}``, see :func:`entry`),
        compacting when the journal is due."""
        lines = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
        if not lines:
            return
        with dir_lock(self.dir):
            if not os.path.exists(self.index_path):
                self._compact_locked(extra=lines)
                return
            fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    lines = b"\n" + lines  # after a line a crash cut short
                os.write(fd, lines)
                size += len(lines)
            finally:
                os.close(fd)
            if size * COMPACT_RATIO >= _size(self.index_path):
                self._compact_locked()

    def pending(self) -> bool:
        """Whether the journal holds records ``index.json`` does not."""
        return _size(self.journal_path) > 0

    def settle(self, *, always: bool) -> None:
        """At the end of a command: fold the journal in (``always``: an install), or when
        Spack uses this tree (see the module's note)."""
        if self.pending() and (always or os.path.exists(os.path.join(self.dir, SPACK_LOCK))):
            self.compact()

    def compact(self) -> None:
        with dir_lock(self.dir):
            self._compact_locked()

    def _compact_locked(self, extra: bytes = b"") -> None:
        if os.path.exists(self.index_path) and self._fold_text(extra):
            return
        kept = self._kept_index()
        if kept is not None:
            db = kept.db
            entries = _lines(self._journal_bytes(kept.applied))  # the lines it does not hold yet
        else:
            entries = self._journal_lines()
        if extra:
            entries += [json.loads(line) for line in extra.splitlines() if line.strip()]
        if not entries and os.path.exists(self.index_path) and not _size(self.journal_path):
            return
        if kept is None:
            db = self._read_index()[0]
        database = db.setdefault("database", {})
        if entries:
            database.setdefault("version", entries[0].get("version", "7"))
        _apply(database.setdefault("installs", {}), entries)
        write_atomic(self.index_path, json.dumps(db, separators=(",", ":")).encode())
        if os.path.exists(self.journal_path):
            # Emptied, not removed: an appender holding the lock next finds the file as it is.
            os.truncate(self.journal_path, 0)
        identity = _identity_of(self.index_path)
        self._kept = _Kept(identity, db, 0) if identity is not None else None

    def _fold_text(self, extra: bytes) -> bool:
        """The journal folded into index.json's text: only the records the lines change are
        decoded and rewritten, new ones put last (call under the lock). False: the text
        cannot be edited exactly (then the document is parsed and dumped)."""
        text = self.text()
        if text is None or not text.compact:
            return False
        entries = self._journal_lines()
        if extra:
            entries += [json.loads(line) for line in extra.splitlines() if line.strip()]
        touched = list(dict.fromkeys(h for e in entries for h in (e["hash"], *(e.get("deps") or ()))))
        try:
            found = {h: text.span(h) for h in touched}
        except Unsure:
            return False
        before = {h: f[2] for h, f in found.items() if f is not None and f[2]}
        installs = copy.deepcopy(before)
        _apply(installs, entries)
        changes: dict[str, tuple[int, int] | None] = {}
        for h in touched:
            rec = installs.get(h)
            if h in before:
                if rec != before[h]:
                    changes[h] = found[h][:2]  # type: ignore[index]
            elif isinstance(rec, dict) and rec:
                changes[h] = None
        if changes:
            with atomic_file(self.index_path) as f:
                _write_pieces(f.fileno(), self.index_path, text, text.spliced(changes, installs))
        if os.path.exists(self.journal_path):
            os.truncate(self.journal_path, 0)  # emptied, not removed: see _compact_locked
        self._text = None
        self._kept = None
        self._whole = None
        return True

    def version(self, default: str) -> str:
        """The database's version (``default`` for a new one), without parsing the records:
        bincache writes ``{"database":{"version":"N",...``, Spack ``...,"version":"N"}}``."""
        try:
            with open(self.index_path, "rb") as f:
                head = f.read(256)
                f.seek(max(0, os.fstat(f.fileno()).st_size - 256))
                tail = f.read()
        except FileNotFoundError:
            entries = self._journal_lines()
            return str(entries[0].get("version", default)) if entries else default
        except OSError:
            return default
        m = _HEAD_VERSION.match(head) or _TAIL_VERSION.search(tail)
        if m:
            return m.group(1).decode()
        return str(self.read().get("database", {}).get("version", default))


_HEAD_VERSION = re.compile(rb'\s*\{\s*"database"\s*:\s*\{\s*"version"\s*:\s*"(\d+)"')
_TAIL_VERSION = re.compile(rb'\}\s*,\s*"version"\s*:\s*"(\d+)"\s*\}\s*\}\s*$')


def entry(h: str, record: dict, deps: Iterable[str], version: str) -> dict:
    """A journal line: ``record`` for hash ``h``; ``deps`` get a reference each (Spack's
    ``ref_count``: how many installed packages depend on one)."""
    return {"hash": h, "record": record, "deps": list(deps), "version": version}


def _apply(installs: dict, entries: list[dict]) -> None:
    for e in entries:
        h, rec = e["hash"], dict(e["record"])
        old = installs.get(h)
        if isinstance(old, dict) and old.get("installation_time") == rec.get("installation_time") \
                and old.get("path") == rec.get("path"):
            continue  # applied before a compaction was cut short
        rec["ref_count"] = old.get("ref_count", 0) if isinstance(old, dict) else 0
        installs[h] = rec
        for dep in e.get("deps") or ():
            d = installs.get(dep)
            if isinstance(d, dict):
                d["ref_count"] = d.get("ref_count", 0) + 1


@dataclass
class _Kept:
    """A document in memory (parsed where the text could not be edited): the identity of the
    index.json it came from and the journal bytes applied to it since."""

    identity: tuple[int, int, int]
    db: dict
    applied: int


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _identity_of(path: str) -> tuple[int, int, int] | None:
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _lines(raw: bytes) -> list[dict]:
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line a crash cut short: its record was never acknowledged
        if isinstance(entry, dict) and isinstance(entry.get("hash"), str) and \
                isinstance(entry.get("record"), dict):
            out.append(entry)
    return out


def _write_pieces(fd: int, path: str, text: DatabaseText, pieces: list) -> None:
    """``pieces`` (:meth:`DatabaseText.spliced`) written to ``fd``: the ranges of the text copied
    from ``path`` by the kernel (copy_file_range: the 21 MB of a tree of 50,000 are never read
    into Python; on a file system that shares blocks, XFS or btrfs, not even copied), the
    new bytes written. Where the kernel cannot copy (another file system, no support), the
    mapped text is written unbuffered: a fresh 21 MB file written from Python through the page
    cache cost 0.12-0.22 s here (new pages), ~0.02 s direct."""
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        src = -1
    try:
        if src >= 0 and text.identity == _identity(os.fstat(src)):
            try:
                for piece in pieces:
                    if isinstance(piece, tuple):
                        at, end = piece
                        while at < end:
                            n = os.copy_file_range(src, fd, end - at, at)
                            if n <= 0:
                                raise OSError(errno.EIO, "copy_file_range stopped short")
                            at += n
                    else:
                        view = memoryview(piece)
                        while view:
                            view = view[os.write(fd, view):]
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                   errno.EPERM, errno.EIO, errno.EBADF):
                    raise
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
    finally:
        if src >= 0:
            os.close(src)
    out = UnbufferedWriter(fd)
    try:
        for piece in pieces:
            out.write(memoryview(text.data)[piece[0]:piece[1]] if isinstance(piece, tuple) else piece)
    finally:
        out.close()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
