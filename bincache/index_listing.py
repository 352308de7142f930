"""What an update of a directory mirror saw of its per-name manifest directories, so the next
one lists only those changed since (docs/internals.md, "Listing only what changed")."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import BincacheError, MirrorError
from .limits import MAX_MANIFEST, load_json
from .mirror.base import DirListing

if TYPE_CHECKING:
    from .mirror.layout_v3 import LayoutV3Cache

log = logging.getLogger(__name__)

#: Directory mirrors: what the last update saw of the per-name manifest directories (Listing).
#: Outside v3/manifests (prune reads every file there as a manifest); a dot file, being state.
LISTING_PATH = "v3/.bincache-listing.json"
#: Seconds before the last listing within which a directory's change time counts as after it:
#: timestamps are coarse (a clock tick; whole seconds on some file systems), and an NFS client
#: may show a directory's attributes up to acdirmax (60 s by default) old.
CLOCK_SLACK = 120.0


@dataclass
class Listing:
    """What the update that wrote a root saw of a directory mirror's per-name directories."""

    root: str  # SHA-256 of the root's bytes: a listing counts only with the root it went with
    listed_at: float  # the file system's clock just before it listed
    dirs: int  # how many per-name directories there were


def read_listing(cache: LayoutV3Cache, root_bytes: bytes) -> Listing | None:
    try:
        doc = load_json(cache.backend.read(LISTING_PATH, MAX_MANIFEST), LISTING_PATH, MAX_MANIFEST)
        listing = Listing(str(doc["root"]), float(doc["listed_at"]), int(doc["dirs"]))
    except (BincacheError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: every directory is listed
    return listing if listing.root == hashlib.sha256(root_bytes).hexdigest() else None


def write_listing(cache: LayoutV3Cache, root_bytes: bytes, sweep: DirListing) -> None:
    """Written after the root it names (a crash between them leaves an older listing, which
    only makes the next update list more)."""
    doc = {"root": hashlib.sha256(root_bytes).hexdigest(), "listed_at": sweep.clock, "dirs": sweep.count}
    try:
        cache.backend.write(LISTING_PATH, json.dumps(doc).encode())
    except MirrorError as e:
        log.warning("%s: cannot record the listing (%s); the next update lists every directory", cache.url, e)


def since(listing: Listing | None) -> float:
    """The change time from which a sweep must name the directories, for ``listing``."""
    return listing.listed_at - CLOCK_SLACK if listing is not None else math.inf


def changed_names(listing: Listing, sweep: DirListing, indexed: Callable[[str], bool]) -> set[str] | None:
    """The names whose manifest directories changed since ``listing``; None
    when every directory has to be listed (a directory was removed, or too many changed, or
    the sweep does not name every directory changed since then).

    A directory whose change time is older than that listing (by more than CLOCK_SLACK, for
    the clock's granularity) holds what the listing saw, which the shards hold. A new
    directory is changed (its ctime is its creation). A removed one (prune removes a name's
    last package and its directory) is found by the count: the directories there were, less
    the unchanged ones and the changed ones that were there already (``indexed``: their shards
    name them), must be none.
    """
    start = since(listing)
    if sweep.since > start:
        return None
    changed = {n for n, t in sweep.changed if t >= start}
    if len(changed) > max(64, sweep.count // 8):
        return None  # most shards would be read (a copied mirror): the whole listing costs less
    existed = sum(1 for n in changed if indexed(n))
    if listing.dirs - (sweep.count - len(changed)) - existed != 0:
        return None
    return changed
