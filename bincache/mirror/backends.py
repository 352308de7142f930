"""Which build cache a mirror URL opens: one backend per transport."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from ..errors import BincacheError, ConfigError, MirrorError, OptionNotTaken, UsageError
from .base import BuildCache, ByteBackend
from .config import MirrorRef
from .layout_v3 import LayoutV3Cache
from .urls import refuse_settings

LAYOUTS = ("v2", "v3")


def _layout_cache(backend: ByteBackend, ref: MirrorRef, layout: str | None = None,
                  push: bool = False) -> BuildCache:
    """The cache of a byte backend in the layout asked for, else the one the mirror holds.

    Reading: layout v2 only when the mirror holds v2 and no v3 (a mirror migrated in place
    keeps both and reads as v3). Writing without a layout: v2 when the mirror holds only v2,
    v3 when it holds only v3 or nothing, and an error when it holds both, because either
    choice would leave one kind of client with a stale cache.
    """
    from .layout_v3 import LAYOUT_JSON
    from .v2paths import holds_v2, is_layout_v2

    if layout == "v2":
        return _v2_cache(backend, ref)
    if layout == "v3":
        return LayoutV3Cache(backend, ref)
    if layout is not None:
        raise UsageError(f"unknown layout {layout!r}: use v2 (Spack < 1.0) or v3 (Spack >= 1.0)")
    if push:
        try:
            v2, v3 = holds_v2(backend), backend.exists(LAYOUT_JSON)
        except BincacheError:
            v2 = v3 = False  # the push itself reports the transport error
        if v2 and v3:
            raise MirrorError(f"{backend.url} holds both a layout v2 cache (build_cache/, Spack < 1.0) "
                             "and a layout v3 cache (v3/, Spack >= 1.0): choose one with --layout v2 "
                             "or --layout v3")
        return _v2_cache(backend, ref) if v2 else LayoutV3Cache(backend, ref)
    if is_layout_v2(backend):
        return _v2_cache(backend, ref)
    return LayoutV3Cache(backend, ref)


def _v2_cache(backend: ByteBackend, ref: MirrorRef) -> BuildCache:
    from .layout_v2 import LayoutV2Cache  # a v3 mirror never needs the v2 reader and writer

    return LayoutV2Cache(backend, ref)


def open_cache(ref: MirrorRef, layout: str | None = None, push: bool = False) -> BuildCache:
    """The build cache of a mirror; ``layout`` ("v2", "v3") and ``push`` choose between the
    layouts of a directory, http or s3 mirror (see :func:`_layout_cache`)."""
    url = ref.url
    try:
        refuse_settings(url, {"s3_profile": ref.s3_profile, "s3_endpoint_url": ref.s3_endpoint_url},
                        ref.display)
    except OptionNotTaken as e:
        # From mirrors.yaml (the CLI refuses it at `mirror add`): named as the file spells it.
        key = {"s3_profile": "profile", "s3_endpoint_url": "endpoint_url"}[e.options[0]]
        raise ConfigError(f"mirror {ref.display}: {key} {e.use}, and this is {e.what}; remove "
                          "it from mirrors.yaml or give the mirror an s3:// URL") from None
    scheme = urlparse(url).scheme
    if scheme in ("", "file"):
        from .directory import DirectoryBackend

        path = unquote(urlparse(url).path) if scheme == "file" else url
        return _layout_cache(DirectoryBackend(path), ref, layout, push)
    if scheme in ("http", "https"):
        from .http import HttpBackend

        auth = (ref.username, ref.password or "") if ref.username else None
        return _layout_cache(HttpBackend(url, auth=auth, insecure=ref.insecure), ref, layout, push)
    if scheme == "s3":
        try:
            from .s3 import S3Backend
        except ImportError as e:
            raise MirrorError(f"s3 mirrors need boto3 ({e}); pip install boto3") from None
        keys = (ref.username, ref.password or "") if ref.username else None
        backend = S3Backend(url, endpoint_url=ref.s3_endpoint_url, profile=ref.s3_profile,
                            access_key=keys)
        return _layout_cache(backend, ref, layout, push)
    if scheme in ("oci", "oci+http"):
        if layout is not None:
            raise OptionNotTaken(["layout"], "is for directory, http and s3 mirrors", ref.display,
                                 "an OCI mirror has one layout, which Spack 0.2x and 1.x both read")
        try:
            from .oci import OciCache
        except ImportError as e:
            raise MirrorError(f"OCI support is not available: {e}") from None
        return OciCache(ref)
    raise MirrorError(f"{url}: unknown kind of mirror; use a path, file://, http(s)://, s3:// or oci://")
