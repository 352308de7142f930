"""Mirrors: resolution of names and URLs, and the build caches behind them."""

from .base import BuildCache
from .config import MirrorRef, autopush_mirrors, configured_mirrors, resolve, resolve_legacy

__all__ = ["BuildCache", "MirrorRef", "resolve", "resolve_legacy", "configured_mirrors",
           "autopush_mirrors", "open_cache"]


def open_cache(ref: MirrorRef, layout: str | None = None, push: bool = False) -> BuildCache:
    """The build cache a mirror reference points at (layout v3 or v2 over a byte backend, or
    OCI); ``layout`` and ``push`` choose the layout written (see backends._layout_cache)."""
    from .backends import open_cache as _open

    return _open(ref, layout, push)
