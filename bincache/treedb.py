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
  ends. An install has parsed ``index.json`` when it opened the tree; that document (journal
  applied) is kept with the identity of the file it came from (inode, size, mtime), so the fold
  parses nothing: the records the new lines changed are rewritten in the file's text
  (:func:`_spliced`), or the document is dumped whole, unless another process replaced the file
  meanwhile (then it is read again). The cost is copying bytes (~4 MB at 10,000 records), not a
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
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .atomic import write_atomic
from .errors import SpecError
from .locks import dir_lock

INDEX = "index.json"
JOURNAL = "bincache-journal.jsonl"
SPACK_LOCK = "lock"  # Spack's lock file: Spack has opened this database
COMPACT_RATIO = 8


class TreeDatabase:
    """``index.json`` and its journal in one ``.spack-db`` directory."""

    def __init__(self, db_dir: str):
        self.dir = db_dir
        self.index_path = os.path.join(db_dir, INDEX)
        self.journal_path = os.path.join(db_dir, JOURNAL)
        # The document read or written last: a fold reuses it, parsing nothing.
        self._kept: _Kept | None = None

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
            self._kept = _Kept(identity, db, len(raw), pristine=not entries)
        return db

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
        installs = database.setdefault("installs", {})
        # The records as index.json has them, of every hash the new lines touch.
        touched = list(dict.fromkeys(h for e in entries for h in (e["hash"], *(e.get("deps") or ()))))
        before = {h: copy.deepcopy(installs[h]) for h in touched if installs.get(h)}
        _apply(installs, entries)
        text = None
        if kept is not None and kept.pristine:
            text = self._pristine_text(kept)
            if text is not None:
                text = _spliced(text, installs, touched, before)
        if text is None:
            text = json.dumps(db, separators=(",", ":"))
        write_atomic(self.index_path, text.encode())
        if os.path.exists(self.journal_path):
            # Emptied, not removed: an appender holding the lock next finds the file as it is.
            os.truncate(self.journal_path, 0)
        identity = _identity_of(self.index_path)
        self._kept = _Kept(identity, db, 0, pristine=True) if identity is not None else None

    def _pristine_text(self, kept: _Kept) -> str | None:
        """index.json's text, if it is still the file the kept document was parsed from (read
        again rather than held: a tree of 50,000 is 20 MB of it, for every command)."""
        try:
            with open(self.index_path, "rb") as f:
                if _identity(os.fstat(f.fileno())) != kept.identity:
                    return None
                return f.read().decode()
        except (OSError, UnicodeDecodeError):
            return None

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
    """A document in memory: the identity of the index.json it came from, the journal bytes
    applied to it since, and whether it is still exactly that file (no line applied: a fold
    then rewrites only the records that changed, in the file's text)."""

    identity: tuple[int, int, int]
    db: dict
    applied: int
    pristine: bool


# Where the records begin, in the compact form bincache and Spack write.
_INSTALLS = re.compile(r'\{"database":\{(?:"version":"\d+",)?"installs":\{')
_DECODER = json.JSONDecoder()


def _spliced(text: str, installs: dict, touched: list[str], before: dict) -> str | None:
    """``text`` (index.json as it is) with the records of ``touched`` as ``installs`` now has
    them: a changed record rewritten where it is, a new one put first; None when the text is
    not in the compact form or a record is not found as it was parsed (then dump it whole).

    A record is taken only where its key is followed by exactly the record parsed from this
    text, so a nested object that happens to carry a record's key is never edited instead."""
    m = _INSTALLS.match(text)
    if m is None:
        return None
    start = m.end()
    edits: list[tuple[int, int, str]] = []
    new: list[str] = []
    for h in touched:
        rec = installs.get(h)
        key = json.dumps(h) + ":"
        if h not in before:
            if isinstance(rec, dict) and rec:
                new.append(key + json.dumps(rec, separators=(",", ":")))
            continue
        if rec == before[h]:
            continue
        span = _find_record(text, start, key, before[h])
        if span is None:
            return None
        edits.append((*span, json.dumps(rec, separators=(",", ":"))))
    edits.sort()
    if any(a[1] > b[0] for a, b in zip(edits, edits[1:])):
        return None
    pieces = [text[:start]]
    if new:
        pieces.append(",".join(new) + ("" if text[start] == "}" else ","))
    at = start
    for begin, end, value in edits:
        pieces += [text[at:begin], value]
        at = end
    pieces.append(text[at:])
    return "".join(pieces)


def _find_record(text: str, start: int, key: str, expected: dict) -> tuple[int, int] | None:
    p = text.find(key, start)
    while p >= 0:
        value = p + len(key)
        if text.startswith("{", value):
            try:
                obj, end = _DECODER.raw_decode(text, value)
            except ValueError:
                obj, end = None, value
            if obj == expected:
                return value, end
        p = text.find(key, p + 1)
    return None


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


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
