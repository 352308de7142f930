"""A tree's ``index.json`` read as text: one record found by its key, without parsing the rest.

Parsing the whole database to learn about one package costs the size of the tree (0.3 s and
80 MB of objects at 50,000 records). Here a record is found by searching the bytes for its key,
``"HASH":``, and only the value after it is decoded.

A match counts only where it is one of the installs map's own keys. A hash also appears as a
dependency's ``"hash":"HASH"``: a value, never followed by ``:``. It may also appear as a key
nested inside a record (a variant or an external's attribute named like a hash: a
look-alike). The installs map's keys are the keys at brace depth 3 (the document,
``database``, ``installs``). The depth of a position is the number of ``{`` before it minus the
number of ``}``, counted by ``bytes.count`` (C speed, once per document).

That count is exact unless the strings before the key hold unequal numbers of ``{`` and ``}``
(a string with balanced braces, ``"${prefix}"``, shifts nothing outside itself). A document
whose braces do not add up to zero, one with a backslash (an escaped quote would hide where
strings end) or one not in the compact form Spack and bincache write is not looked up here:
:class:`Unsure` sends the caller to a whole parse. What is left is a look-alike key plus
strings whose braces are unbalanced before it and balanced again after it.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterator
from json.decoder import scanstring  # type: ignore[attr-defined]  # (C; typeshed omits it)

CHUNK = 1 << 18  # depth marks every 256 KiB
WINDOW = 4096  # bytes decoded first for a record (most are well under 1 KiB)
SEARCH_WINDOW = 1 << 22  # a mapped text is searched 4 MiB at a time

# The compact form: where the records begin, and the end of the document after them.
_HEAD = re.compile(rb'\{"database":\{(?:"version":"\d+",)?"installs":\{')
_TAIL = re.compile(rb'\}(?:,"version":"\d+")?\}\}\s*\Z')
_DECODER = json.JSONDecoder()
_HEAD_TEXT = re.compile(_HEAD.pattern.decode())
_TAIL_TEXT = re.compile(_TAIL.pattern.decode())


class Unsure(Exception):
    """The text cannot answer exactly: parse the whole document instead."""


class DatabaseText:
    """The bytes of one ``index.json`` and the records found in them.

    ``data`` is the file mapped (read only), not read: a lookup searches the page cache's
    pages where they are, and a fold copies the unchanged ranges file to file (:meth:`spliced`),
    so Python never holds the 21 MB of a tree of 50,000 (reading them into a fresh buffer cost
    15-20 ms, more than the search). Every bincache and Spack writer replaces the file by a
    rename, so the mapped bytes never change under a reader."""

    def __init__(self, data: bytes | mmap.mmap, identity: tuple[int, int, int] | None = None):
        self.data = data
        self.identity = identity
        head = _HEAD.match(data)
        tail = _TAIL.search(data, max(0, len(data) - 64))
        #: Where the installs map's records begin and where its closing brace is.
        self.start = head.end() if head else -1
        self.end = tail.start() if tail else -1
        self.compact = head is not None and tail is not None and self.start <= self.end \
            and self._find(b"\\", 0, len(data)) < 0
        self._marks: list[int] | None = None
        self._spans: dict[str, int | None] = {}  # where each record looked up starts

    @classmethod
    def read(cls, path: str) -> DatabaseText | None:
        """The file's text (mapped), or None when there is none."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data: bytes | mmap.mmap = \
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if st.st_size else b""
        except FileNotFoundError:
            return None
        return cls(data, (st.st_ino, st.st_size, st.st_mtime_ns))

    def _depth(self, pos: int) -> int:
        # Counted a slice at a time: a mapped file has no count().
        if self._marks is None:
            marks, depth, data = [], 0, self.data
            for at in range(0, len(data), CHUNK):
                marks.append(depth)
                chunk = data[at:at + CHUNK]
                depth += chunk.count(b"{") - chunk.count(b"}")
                self._release(at, at + CHUNK)
            if depth != 0:
                raise Unsure("the braces do not add up")
            self._marks = marks
        at = pos // CHUNK * CHUNK
        part = self.data[at:pos]
        return self._marks[pos // CHUNK] + part.count(b"{") - part.count(b"}")

    def span(self, h: str) -> tuple[int, int, dict] | None:
        """(start, end, record) of the installs map's value for ``h``; None: not a key of it.

        Raises Unsure when the text cannot tell (see the module's note)."""
        if not self.compact:
            raise Unsure("not in the compact form")
        if h in self._spans:  # decoded again: the caller may change the record it gets
            at = self._spans[h]
            return None if at is None else self._decode(at)
        needle = b'"' + h.encode() + b'"'
        found = None
        p = self._find(needle, self.start, self.end)
        while p >= 0:
            after = p + len(needle)
            nxt = self.data[after:after + 1]
            if nxt == b":":
                if self._depth(p) == 3:
                    found = self._decode(after + 1)  # a repeated key: the last one wins, as in json
            elif nxt not in (b",", b"}", b"]"):
                raise Unsure("a key not in the compact form")
            p = self._find(needle, after, self.end)
        self._spans[h] = None if found is None else found[0]
        return found

    def _find(self, needle: bytes, start: int, end: int) -> int:
        """``data.find``; in a mapped file a window at a time, each window's pages unmapped
        once searched (they stay in the page cache): a search of the whole text would otherwise
        count all of its pages in the process's memory (21 MB at 50,000 records)."""
        if not isinstance(self.data, mmap.mmap):
            return self.data.find(needle, start, end)
        at = start
        while at < end:
            stop = min(end, at + SEARCH_WINDOW)
            p = self.data.find(needle, at, min(end, stop + len(needle) - 1))
            self._release(at, stop)
            if p >= 0:
                return p
            at = stop
        return -1

    def _release(self, start: int, end: int) -> None:
        if isinstance(self.data, mmap.mmap):
            first = start // mmap.PAGESIZE * mmap.PAGESIZE
            self.data.madvise(mmap.MADV_DONTNEED, first, min(end, len(self.data)) - first)

    def record(self, h: str) -> dict | None:
        found = self.span(h)
        return found[2] if found is not None else None

    def _decode(self, at: int) -> tuple[int, int, dict]:
        """The object at byte ``at`` and the byte where it ends."""
        if self.data[at:at + 1] != b"{":
            raise Unsure("a record that is not an object")
        size = WINDOW
        while True:
            window = self.data[at:at + size]
            text = window.decode("utf-8", "surrogateescape")
            try:
                obj, end = _DECODER.raw_decode(text)
            except ValueError:
                if at + size >= len(self.data):
                    raise Unsure("a record that does not decode") from None
                size *= 4
                continue
            stop = at + len(text[:end].encode("utf-8", "surrogateescape"))
            try:
                self.data[at:stop].decode("utf-8")
            except UnicodeDecodeError:
                raise Unsure("a record that is not UTF-8") from None
            if not isinstance(obj, dict) or self.data[stop:stop + 1] not in (b",", b"}"):
                raise Unsure("a record that is not an object")
            return at, stop, obj

    def paths(self) -> set[bytes]:
        """Every ``"path"`` value in the text, as bytes: the records' prefixes (and possibly
        more, an external's path for one), for a scan to skip what the database knows."""
        return set(re.findall(rb'"path":"([^"]*)"', self.data))

    def spliced(self, changes: dict[str, tuple[int, int] | None],
                records: dict[str, dict]) -> list[bytes | tuple[int, int]]:
        """The text with ``records`` put in: each hash of ``changes`` rewritten at its span, or
        put last in the installs map when its span is None. Pieces to write one after the
        other: new bytes, or a (start, end) range of this text to copy as it is (20 MB at
        50,000 records, before the new record: a copy file to file, see treedb)."""
        new = [json.dumps(h) + ":" + json.dumps(records[h], separators=(",", ":"))
               for h, span in changes.items() if span is None]
        edits = sorted((span[0], span[1], h) for h, span in changes.items() if span is not None)
        pieces: list[bytes | tuple[int, int]] = []
        at = 0
        for begin, end, h in edits:
            pieces += [(at, begin), json.dumps(records[h], separators=(",", ":")).encode()]
            at = end
        if new:
            empty = self.end == self.start
            pieces += [(at, self.end), (("" if empty else ",") + ",".join(new)).encode()]
            at = self.end
        pieces.append((at, len(self.data)))
        return [p for p in pieces if not isinstance(p, tuple) or p[1] > p[0]]


def records(text: str) -> Iterator[tuple[str, dict, int]]:
    """(hash, record, where the record starts in ``text``) of every record of the installs map,
    in order, one record decoded at a time: a tree of 50,000 never holds the 80 MB of the whole
    document's objects. Raises Unsure (possibly after some records) for a text not in the
    compact form: parse it whole then."""
    head = _HEAD_TEXT.match(text)
    if head is None or _TAIL_TEXT.search(text, max(0, len(text) - 64)) is None:
        raise Unsure("not in the compact form")
    at = head.end()
    if text.startswith("}", at):
        return
    while True:
        if not text.startswith('"', at):
            raise Unsure("not in the compact form")
        key, at = scanstring(text, at + 1)
        if not text.startswith(":{", at):
            raise Unsure("not in the compact form")
        try:
            rec, end = _DECODER.raw_decode(text, at + 1)
        except ValueError:
            raise Unsure("a record that does not decode") from None
        yield key, rec, at + 1
        if text.startswith(",", end):
            at = end + 1
        elif _TAIL_TEXT.match(text, end):
            return
        else:
            raise Unsure("not in the compact form")


def record_at(text: str, at: int) -> dict:
    """The record that starts at ``at`` (as :func:`records` gave it)."""
    return _DECODER.raw_decode(text, at)[0]
