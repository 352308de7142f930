"""Rows that change a cached benchmark mirror do it in place and put it back afterwards.

A copy would not measure an update-index as users see it: every directory of a copy (even a
hard-linked one) is new, so its change time is after the listing the index root recorded, and
the update lists all of them (bincache.index_listing.changed_names). So a row adds its package to the
cached mirror, runs, then removes that package's manifests and directory and the blobs the run
added, and writes the index files back as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

INDEX_FILES = ("v3/manifests/index/index.manifest.json",
               "v3/manifests/index/bincache-index.manifest.json", "v3/.bincache-listing.json",
               "v3/.bincache-blobs")


def record_listing(mirror: str) -> None:
    """An update-index after the mirror's last change by more than the clock slack (up to two
    minutes' wait for a mirror just made), so it records a listing every directory predates
    (once per cached mirror)."""
    from bincache import index as ix
    from bincache import index_blobs, index_listing, index_shards
    from bincache.mirror.directory import DirectoryBackend
    from bincache.mirror.layout_v3 import LayoutV3Cache

    cache = LayoutV3Cache(DirectoryBackend(mirror))
    got = cache.backend.read_tagged(index_shards.ROOT_PATH)
    if got is None or got[0] is None:
        return
    sweep = cache.spec_dirs()
    clock, newest = (sweep.clock, sweep.newest) if sweep else (0.0, 0.0)
    listing = index_listing.read_listing(cache, got[0])
    blobs = index_blobs.goes_with(index_blobs.read_state(cache), got[0])
    if (listing is not None and listing.listed_at - index_listing.CLOCK_SLACK > newest
            and blobs is not None and not blobs.again):
        return  # recorded already, after every directory's last change
    # Wait until the newest directory is older than the slack, as in a mirror in use.
    time.sleep(max(0.0, newest + index_listing.CLOCK_SLACK + 1 - clock))
    ix.update_index(cache, full=True)


def _blobs(mirror: str, rel: str) -> set[str]:
    try:
        doc = json.loads(Path(mirror, rel).read_bytes())
    except (OSError, ValueError):
        return set()
    return {f"blobs/sha256/{d['checksum'][:2]}/{d['checksum']}" for d in doc.get("data", [])}


def index_objects(mirror: str) -> list[str]:
    """The files of a mirror's index (root, Spack's manifest, the blobs they name) and its
    layout.json: what an S3 copy needs for a create that believes the index."""
    rels = [rel for rel in INDEX_FILES[:2] if Path(mirror, rel).exists()]
    blobs = set().union(*(_blobs(mirror, rel) for rel in rels))
    return ["v3/layout.json", *rels, *sorted(blobs)]


@contextlib.contextmanager
def restored(mirror: str, names: list[str]) -> Iterator[None]:
    """Put the mirror back as it was after the block: the packages of ``names`` (directories
    under v3/manifests/spec that were not there) and the blobs the block's index update added."""
    saved = {rel: Path(mirror, rel).read_bytes() for rel in INDEX_FILES if Path(mirror, rel).exists()}
    before = set().union(*(_blobs(mirror, rel) for rel in INDEX_FILES))
    try:
        yield
    finally:
        added = set().union(*(_blobs(mirror, rel) for rel in INDEX_FILES)) - before
        for name in names:
            d = Path(mirror, "v3/manifests/spec", name)
            for m in d.glob("*.spec.manifest.json") if d.is_dir() else ():
                added |= _blobs(mirror, str(m.relative_to(mirror)))
            shutil.rmtree(d, ignore_errors=True)
        for rel in added:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(Path(mirror, rel))
        for rel, data in saved.items():
            p = Path(mirror, rel)
            tmp = p.with_name(".tmp-restore")
            tmp.write_bytes(data)
            os.replace(tmp, p)


def record_listing_in_child(mirror: str) -> None:
    """record_listing in a child process: a benchmark's parent stays small, because a child it
    starts counts the parent's memory at the fork in its own peak RSS (Linux keeps the old
    address space's high-water mark across exec)."""
    import subprocess

    subprocess.run([sys.executable, __file__, "record", mirror], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["record"] and len(sys.argv) == 3:
        record_listing(sys.argv[2])
    else:
        sys.exit(f"usage: {sys.argv[0]} record MIRROR")
