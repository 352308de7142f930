"""The install tree's database: Spack's ``.spack-db/index.json`` plus an append-only journal.

Spack keeps one JSON document per tree and rewrites it whole for every install; recording a
package that way costs the size of the tree (at 50,000 prefixes, seconds and ~1 GB per
package). bincache appends each record as one line to ``.spack-db/bincache-journal.jsonl``
(O(1)) and folds the journal into ``index.json`` now and then ("compaction"):

* when the journal has grown to 1/8 of ``index.json`` (so each byte of the database is
  rewritten a bounded number of times: recording N packages costs O(N) in all);
* when ``index.json`` does not exist yet (its version is then chosen);
* at the end of a command (:meth:`TreeDatabase.settle`) in a tree Spack uses (Spack leaves its
  ``.spack-db/lock`` there), so Spack, which reads only ``index.json``, sees every install; and
  at the end of an install also in any tree whose ``index.json`` is small (up to
  ``SETTLE_SIZE``: about two thousand records, a rewrite of a few milliseconds), so a tree
  Spack has not opened yet is complete too. ``register``, which runs once per prefix, does not
  (N registers would cost O(N^2) again). So only a tree Spack has never opened keeps up to 1/8
  of its records in the journal: bincache reads them; Spack sees them once bincache next
  records into the tree after Spack opened it.

Readers get ``index.json`` with the journal replayed over it. A journal line is applied once:
it carries its record's ``installation_time``, and a record already holding that time and path
is not applied again (a compaction killed between writing ``index.json`` and emptying the
journal loses and doubles nothing). A line cut short by a crash is ignored, and the next
append starts on a line of its own. Writers hold the directory lock (:func:`locks.dir_lock`);
readers read the journal before ``index.json`` (which is replaced by rename), so a concurrent
compaction never hides a record from them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

from .atomic import write_atomic
from .errors import SpecError
from .locks import dir_lock

INDEX = "index.json"
JOURNAL = "bincache-journal.jsonl"
SPACK_LOCK = "lock"  # Spack's lock file: Spack has opened this database
COMPACT_RATIO = 8
SETTLE_SIZE = 1 << 20


class TreeDatabase:
    """``index.json`` and its journal in one ``.spack-db`` directory."""

    def __init__(self, db_dir: str):
        self.dir = db_dir
        self.index_path = os.path.join(db_dir, INDEX)
        self.journal_path = os.path.join(db_dir, JOURNAL)

    def exists(self) -> bool:
        return os.path.exists(self.index_path) or _size(self.journal_path) > 0

    # -- reading ------------------------------------------------------------------------------
    def _journal_lines(self) -> list[dict]:
        try:
            with open(self.journal_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise SpecError(f"{self.journal_path}: cannot read the database journal "
                            f"({e.strerror})") from None
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

    def _read_index(self) -> dict:
        try:
            with open(self.index_path, "rb") as f:
                db = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise SpecError(f"{self.index_path}: not a readable Spack database ({e}); "
                            "restore it or remove it (a scan then finds the prefixes)") from None
        if not isinstance(db, dict) or not isinstance(db.get("database"), dict) or \
                not isinstance(db["database"].get("installs", {}), dict):
            raise SpecError(f"{self.index_path}: not a Spack database (no database.installs)")
        return db

    def read(self) -> dict:
        """The whole document (``{"database": {"version", "installs"}}``), journal applied."""
        entries = self._journal_lines()  # first: see the module's note on concurrent compaction
        db = self._read_index()
        db.setdefault("database", {}).setdefault("installs", {})
        if entries:
            database = db.setdefault("database", {})
            database.setdefault("version", entries[0].get("version", "7"))
            _apply(database.setdefault("installs", {}), entries)
        return db

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

    def settle(self, *, small: bool = True) -> None:
        """At the end of a command: fold the journal in when Spack uses this tree, or (with
        ``small``) when ``index.json`` is small enough that rewriting it costs little."""
        if self.pending() and (os.path.exists(os.path.join(self.dir, SPACK_LOCK))
                               or small and _size(self.index_path) <= SETTLE_SIZE):
            self.compact()

    def compact(self) -> None:
        with dir_lock(self.dir):
            self._compact_locked()

    def _compact_locked(self, extra: bytes = b"") -> None:
        entries = self._journal_lines()
        if extra:
            entries += [json.loads(line) for line in extra.splitlines() if line.strip()]
        if not entries and os.path.exists(self.index_path):
            return
        db = self._read_index()
        database = db.setdefault("database", {})
        if entries:
            database.setdefault("version", entries[0].get("version", "7"))
        database.setdefault("installs", {})
        _apply(database["installs"], entries)
        write_atomic(self.index_path, json.dumps(db, separators=(",", ":")).encode())
        if os.path.exists(self.journal_path):
            # Emptied, not removed: an appender holding the lock next finds the file as it is.
            os.truncate(self.journal_path, 0)

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


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
