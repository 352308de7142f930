"""Autopush: send each package to the ``autopush: true`` mirrors right after it is built.

A build system calls :func:`on_build_finished` once per successful build (after the prefix is
registered). The package alone is pushed (its dependencies were pushed when they were built),
signed or not as each mirror says, and the call never fails the build: whatever goes wrong is
a warning that says which mirror and why.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from .create import push_prefix
from .mirror.config import MirrorRef, autopush_mirrors


class AutopushWarning(UserWarning):
    """A package could not be pushed to an autopush mirror (the build goes on)."""


@dataclass(frozen=True)
class AutopushResult:
    """What happened at one autopush mirror."""

    mirror: str  # the mirror's name (or masked URL)
    pushed: bool  # True: the package was written; False: already there, or failed
    error: str | None = None  # why it failed; None on success

    @property
    def ok(self) -> bool:
        return self.error is None


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    """The stacklevel (for a warn call made here) of the first caller outside bincache, so a
    warning points at the build system's line rather than at bincache's own."""
    level = 2
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


def _warn(message: str) -> None:
    try:
        warnings.warn(message, AutopushWarning, stacklevel=_outside_stacklevel())
    except Exception:
        # -W error turns the warning into an exception; the build must still succeed.
        print(f"warning: {message}", file=sys.stderr)


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


def on_build_finished(
    prefix: str,
    *,
    root: str | None = None,
    key: str | None = None,
    mirrors: Sequence[MirrorRef] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[AutopushResult]:
    """Push the package installed at ``prefix`` to every autopush mirror. Never raises.

    Args:
        prefix: an installed prefix holding ``.spack/spec.json`` (``bincache register`` or
            :func:`bincache.api.register` writes it; this function registers nothing).
        root: the install tree holding the prefix (default: ``--root``/``BINCACHE_ROOT``/config;
            a prefix outside any tree is pushed with its parent directory as store root).
        key: the GnuPG key to sign with, for mirrors that are signed (the default).
        mirrors: the mirrors to push to (default: the configured ``autopush: true`` ones).
        warn: called with each warning (default: ``warnings.warn`` with AutopushWarning,
            which the CLI prints as ``warning: ...``).

    Returns:
        One :class:`AutopushResult` per mirror (empty when none is configured).
    """
    warn = warn or _warn
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            refs = list(autopush_mirrors()) if mirrors is None else list(mirrors)
    except Exception as e:  # a broken mirrors.yaml must not fail a build
        warn(f"autopush skipped: the mirror configuration cannot be read: {_reason(e)}")
        return []
    for w in caught:  # e.g. an unset credential variable: through the caller's channel too
        warn(f"autopush: {w.message}")
    if not refs:
        return []

    label = os.path.basename(os.path.normpath(prefix)) or prefix
    if not os.path.isfile(os.path.join(prefix, ".spack", "spec.json")):
        reason = f"{prefix} is not registered (no .spack/spec.json); run bincache register first"
        for ref in refs:
            warn(f'autopush: {label} was not pushed to "{ref.display}": {reason}')
        return [AutopushResult(ref.display, False, reason) for ref in refs]

    results = []
    for ref in refs:
        try:
            pushed = push_prefix(ref, prefix, include_deps=False, key=key, root=root)
            results.append(AutopushResult(ref.display, bool(pushed.pushed)))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            reason = _reason(e)
            warn(f'autopush: {label} was not pushed to "{ref.display}": {reason}')
            results.append(AutopushResult(ref.display, False, reason))
    return results
