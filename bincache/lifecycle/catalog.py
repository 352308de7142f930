"""What a mirror holds as a DAG, for the verbs that select packages by reachability."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import BincacheError, MirrorError
from ..index import Index, IndexEntry, _fetch_entry, read_index

if TYPE_CHECKING:
    from ..spec import Spec


def closure(roots: list, nodes: dict[str, Spec]) -> set[str]:
    """Hashes reachable from the roots through link/run dependencies."""
    seen: set[str] = set()
    stack = [r.hash for r in roots]
    while stack:
        h = stack.pop()
        if h in seen:
            continue
        seen.add(h)
        spec = nodes.get(h)
        if spec is not None:
            stack.extend(d.hash for d in spec.link_run_deps())
    return seen


def current_index(cache, jobs: int = 8) -> Index:
    """The mirror's index as `update-index` would make it, in memory, written nowhere (a dry
    run changes nothing; a sync source may be read only). A mirror that cannot be listed
    (http) is taken at its index's word."""
    try:
        idx = read_index(cache) or Index()
    except BincacheError:
        idx = Index()
    try:
        refs = cache.list_package_refs()
    except MirrorError:
        if idx.entries:
            return idx
        raise
    present = {r.hash for r in refs}
    for h, e in list(idx.entries.items()):
        if e.in_buildcache and h not in present:
            idx.entries[h] = IndexEntry(e.spec, 0, False)
    for r in refs:
        if not (r.hash in idx.entries and idx.entries[r.hash].in_buildcache):
            nodes, size = _fetch_entry(cache, r)
            idx.add_specfile(nodes, size)
    return idx
