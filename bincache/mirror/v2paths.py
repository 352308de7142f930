"""Where a layout v2 cache (Spack < 1.0) keeps its files, and whether a mirror holds one.

Opening a mirror asks this of every directory, http and s3 mirror; the v2 reader and writer
(``layout_v2``) are imported only for a mirror that is v2: importing them was ~2.5 ms of every
push's start to a v3 mirror, before its first byte was packed.
"""

from __future__ import annotations

import os

from ..errors import BincacheError
from .base import ByteBackend
from .layout_v3 import LAYOUT_JSON

BUILD_CACHE = "build_cache"
INDEX_JSON = f"{BUILD_CACHE}/index.json"
INDEX_HASH = f"{BUILD_CACHE}/index.json.hash"
KEYS_DIR = f"{BUILD_CACHE}/_pgp"
KEY_INDEX = f"{KEYS_DIR}/index.json"


def is_layout_v2(backend: ByteBackend) -> bool:
    """A mirror holding Spack's ``build_cache/`` and no ``v3/layout.json``.

    A directory is recognised by ``build_cache/`` itself; http and s3, which cannot cheaply
    list, by ``build_cache/index.json`` or the key index. A mirror migrated to v3 in place
    keeps both layouts and has ``v3/layout.json``: it opens as v3. Transport errors are left
    for the v3 code path to report with its own messages.
    """
    try:
        return not backend.exists(LAYOUT_JSON) and holds_v2(backend)
    except BincacheError:
        return False


def holds_v2(backend: ByteBackend) -> bool:
    """Whether a mirror holds a layout v2 cache (``build_cache/``), whatever else it holds."""
    root = backend.root
    if root is not None:
        return os.path.isdir(os.path.join(root, BUILD_CACHE))
    return backend.exists(INDEX_JSON) or backend.exists(KEY_INDEX)
