"""Which install tree a command works on: the argument, else ``BINCACHE_ROOT``, else config."""

from __future__ import annotations

import os

from .errors import UsageError


def resolve_root(root: str | None = None) -> str:
    """The install tree: the argument, else ``BINCACHE_ROOT``, else config ``install_tree:root``."""
    if root:
        return os.path.abspath(os.path.expanduser(root))
    env = os.environ.get("BINCACHE_ROOT")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    try:
        from . import config

        value = config.get_value("install_tree:root")
    except (ImportError, AttributeError):
        value = None
    if value:
        return os.path.abspath(os.path.expanduser(os.path.expandvars(str(value))))
    raise UsageError("no install tree given: use --root ROOT, set BINCACHE_ROOT, or set install_tree:root in config")


def optional_root(root: str | None = None) -> str | None:
    """The install tree when one is known, else None (a prefix may stand alone)."""
    try:
        return resolve_root(root)
    except UsageError:
        return None
