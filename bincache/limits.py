"""Limits on what untrusted input can make bincache hold in memory or write to disk.

A few bytes of a hostile document must not cost gigabytes: a PAX header that claims to be
huge, YAML aliases that expand exponentially, an http server that streams an endless manifest.
Every limit is named in the error that enforces it (docs/internals.md lists them); real Spack and
bincache data stay far below each one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import LimitError

LIMITS = {
    # A build cache manifest: clearsigned JSON of three records (~2 KB).
    "MAX_MANIFEST": 1 << 20,
    # A spec file (the DAG of one package; large DAGs are ~1 MB).
    "MAX_SPECFILE": 64 << 20,
    # A mirror's index (Spack's index.json of a mirror of 100,000 specs is a few hundred MB).
    "MAX_INDEX": 1 << 30,
    # An OCI image manifest or index (GHCR refuses 4 MiB and more), or a signature document.
    "MAX_OCI_MANIFEST": 4 << 20,
    # A package's .spack/binary_distribution (offsets of every relocatable binary).
    "MAX_BUILDINFO": 256 << 20,
    # One PAX extended header or GNU long name/link member of a tarball.
    "MAX_PAX_HEADER": 1 << 20,
    # A member name or link target (PATH_MAX).
    "MAX_NAME": 4096,
    # Nesting of JSON/YAML documents (lists and mappings inside each other).
    "MAX_NESTING": 64,
    # The window a zstd frame may make its decoder hold (bincache writes 1 MiB frames; zstd
    # -19 uses 8 MiB; only --long or --ultra go further).
    "MAX_ZSTD_WINDOW": 32 << 20,
}

MAX_MANIFEST = LIMITS["MAX_MANIFEST"]
MAX_SPECFILE = LIMITS["MAX_SPECFILE"]
MAX_INDEX = LIMITS["MAX_INDEX"]
MAX_OCI_MANIFEST = LIMITS["MAX_OCI_MANIFEST"]
MAX_BUILDINFO = LIMITS["MAX_BUILDINFO"]
MAX_PAX_HEADER = LIMITS["MAX_PAX_HEADER"]
MAX_NAME = LIMITS["MAX_NAME"]
MAX_NESTING = LIMITS["MAX_NESTING"]
MAX_ZSTD_WINDOW = LIMITS["MAX_ZSTD_WINDOW"]


def _name(limit: int) -> str:
    return next((k for k, v in LIMITS.items() if v == limit), "")


def too_large(what: str, limit: int, *, name: str | None = None) -> LimitError:
    """The error for ``what`` going over ``limit`` bytes."""
    label = name or _name(limit)
    named = f"limit {label} = {limit} bytes" if label else f"limit {limit} bytes"
    return LimitError(f"{what} is larger than {limit} bytes ({named}): refusing it")


def check_size(size: int, limit: int, what: str, *, name: str | None = None) -> None:
    if size > limit:
        raise too_large(what, limit, name=name)


def read_bounded(chunks: Iterable[bytes], limit: int, what: str, *, name: str | None = None) -> bytes:
    """Join ``chunks`` (a stream), cut with an error as soon as they pass ``limit`` bytes."""
    parts = []
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise too_large(what, limit, name=name)
        parts.append(chunk)
    return b"".join(parts)


def check_nesting(data, what: str, limit: int = MAX_NESTING) -> None:
    """Refuse a parsed JSON/YAML value nested deeper than ``limit`` (no recursion used)."""
    # One level at a time, holding only the containers of the next one: every spec file of
    # a tree is checked before a push starts, and pushing each scalar with its depth was
    # half of reading one (3.4 of 7.4 ms for 19 files of a chain DAG).
    level = [data] if isinstance(data, (dict, list)) else []
    depth = 1
    while level:
        if depth > limit:
            raise LimitError(f"{what} is nested deeper than {limit} levels "
                             f"(limit MAX_NESTING = {limit}): refusing it")
        below = []
        for value in level:
            for child in (value.values() if isinstance(value, dict) else value):
                if isinstance(child, (dict, list)):
                    below.append(child)
        level = below
        depth += 1


def load_json(data: bytes | str, what: str, limit: int) -> Any:
    """``json.loads`` with a size limit and a nesting limit; ValueError for bad JSON. Its shape
    is the caller's to check (Any, as json.loads: a KeyError or TypeError is a bad document)."""
    import json

    check_size(len(data), limit, what)
    try:
        value = json.loads(data)
    except RecursionError:
        raise LimitError(f"{what} is nested too deeply (limit MAX_NESTING = {MAX_NESTING}): "
                         "refusing it") from None
    check_nesting(value, what)
    return value


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _flow_depth(data: bytes) -> int:
    depth = deepest = 0
    for c in data.translate(None, _NOT_BRACKETS):
        depth += 1 if c in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _max_indent(data: bytes) -> int:
    import re

    return max((len(m.group(1)) for m in re.finditer(rb"\n([ \t]*)", data)), default=0)


def load_yaml(data: bytes, what: str, limit: int) -> Any:
    """YAML through the safe loader, with a size limit, no aliases (they can expand a 1 KB
    document into gigabytes) and a nesting limit; yaml.YAMLError for bad YAML."""
    import yaml

    check_size(len(data), limit, what)
    # libyaml's composer recurses in C: 100,000 "[" crash the process (measured), so depth is
    # bounded before parsing (an over-estimate: brackets in plain scalars count too).
    if _flow_depth(data) > MAX_NESTING or _max_indent(data) > 4 * MAX_NESTING:
        raise LimitError(f"{what} is nested deeper than {MAX_NESTING} levels "
                         f"(limit MAX_NESTING = {MAX_NESTING}): refusing it")
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class NoAliasLoader(base):  # type: ignore[misc, valid-type]
        def construct_object(self, node, deep=False):
            if node in self.constructed_objects or node in self.recursive_objects:
                raise LimitError(f"{what} uses YAML aliases (*anchor), which bincache does not "
                                 "accept in untrusted documents: refusing it")
            return super().construct_object(node, deep=deep)

    try:
        value = yaml.load(data, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise LimitError(f"{what} is nested too deeply (limit MAX_NESTING = {MAX_NESTING}): "
                         "refusing it") from None
    check_nesting(value, what)
    return value
