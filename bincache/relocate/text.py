"""Text relocation (Spack's rule) without a regular expression built from the prefixes.

Spack relocates text with one regular expression made of every old prefix of the package's
closure (``relocate_text.py``); compiling it costs ~50 ms for a closure of 100 prefixes, and it
was compiled per package and again per ELF file: more than half of an install's CPU. Here the
prefixes are found with ``bytes.find`` on the few anchors they share (in practice the old store
root), and the prefix at a candidate is the longest one found in a set per length; the rule
around it is checked by hand. The result is the regular expression's, byte for byte
(``tests/property/test_text_relocation.py`` compares them on random input):

    (?<![\\w\\-_/])([\\w\\-_]*?)(PREFIX_1|PREFIX_2|...)([\\w\\-_/]*)  ->  \\1 NEW \\3

that is, a prefix counts only when the run of word characters and ``-`` before it is not
preceded by ``/`` (``-I/old/prefix`` is relocated, ``/other/old/prefix`` is not), the longest
prefix at a position wins, and the path after it (word characters, ``-``, ``/``) is kept and
skipped, so a prefix inside it is not relocated again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

# Bytes patterns are ASCII: \w is [A-Za-z0-9_].
_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_TAIL = re.compile(rb"[\w\-/]*")


def _anchors(olds: Sequence[bytes]) -> list[bytes]:
    """Strings every old prefix starts with one of: the common prefix of each group of prefixes
    sharing a first path component (one anchor for a usual store root)."""
    groups: dict[bytes, list[bytes]] = {}
    for old in olds:
        groups.setdefault(old.split(b"/", 2)[1] if old.startswith(b"/") else old[:1], []).append(old)
    anchors = sorted({os.path.commonprefix(g) for g in groups.values()}, key=len)
    kept: list[bytes] = []
    for a in anchors:
        if a and not any(a.startswith(k) for k in kept):
            kept.append(a)
    return kept


class TextRelocator:
    """Replace old prefixes in text (any change of length), as Spack's text relocation does."""

    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]):
        self.map = {old: new for old, new in pairs if old}
        self._by_len: list[tuple[int, frozenset[bytes]]] = []
        lengths: dict[int, set[bytes]] = {}
        for old in self.map:
            lengths.setdefault(len(old), set()).add(old)
        self._by_len = [(n, frozenset(s)) for n, s in sorted(lengths.items(), reverse=True)]
        anchors = _anchors(list(self.map))
        self._anchor: bytes | None = anchors[0] if len(anchors) == 1 else None
        self._search = (None if len(anchors) <= 1 else
                        re.compile(b"|".join(re.escape(a) for a in anchors)).search)

    def _find(self, data: bytes, start: int) -> int:
        if self._anchor is not None:
            return data.find(self._anchor, start)
        assert self._search is not None
        m = self._search(data, start)
        return -1 if m is None else m.start()

    def _longest_at(self, data: bytes, i: int) -> bytes | None:
        for n, olds in self._by_len:
            piece = data[i:i + n]
            if piece in olds:
                return piece
        return None

    def __call__(self, data: bytes) -> bytes:
        if not self.map:
            return data
        out: list[bytes] = []
        pos = 0
        i = self._find(data, 0)
        while i >= 0:
            old = self._longest_at(data, i)
            if old is not None:
                # The run of word characters and '-' right before the prefix belongs to it
                # (``-I``); what precedes the run must not be '/' (another path).
                s = i
                while s > 0 and data[s - 1] in _WORD:
                    s -= 1
                if s == 0 or data[s - 1] != 0x2F:
                    start = i + len(old)
                    end = _TAIL.match(data, start).end()  # type: ignore[union-attr]
                    out += (data[pos:i], self.map[old], data[start:end])
                    pos = end
                    i = self._find(data, end)
                    continue
            i = self._find(data, i + 1)
        if not out:
            return data
        out.append(data[pos:])
        return b"".join(out)
