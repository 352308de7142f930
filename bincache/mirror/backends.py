"""Which build cache a mirror URL opens: one backend per transport."""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from ..errors import MirrorError
from .config import MirrorRef
from .layout_v3 import LayoutV3Cache


def _layout_cache(backend, ref: MirrorRef):
    """Layout v3, or Spack's older layout v2 (read only) when the mirror holds only that."""
    from .layout_v2 import LayoutV2Cache, is_layout_v2

    if is_layout_v2(backend):
        return LayoutV2Cache(backend, ref)
    return LayoutV3Cache(backend, ref)


def open_cache(ref: MirrorRef):
    url = ref.url
    scheme = urlparse(url).scheme
    if scheme in ("", "file"):
        from .directory import DirectoryBackend

        path = unquote(urlparse(url).path) if scheme == "file" else url
        return _layout_cache(DirectoryBackend(path), ref)
    if scheme in ("http", "https"):
        from .http import HttpBackend

        auth = (ref.username, ref.password) if ref.username else None
        return _layout_cache(HttpBackend(url, auth=auth, insecure=ref.insecure), ref)
    if scheme == "s3":
        try:
            from .s3 import S3Backend
        except ImportError as e:
            raise MirrorError(f"s3 mirrors need boto3 ({e}); pip install boto3") from None
        return _layout_cache(S3Backend(url), ref)
    if scheme in ("oci", "oci+http"):
        try:
            from .oci import OciCache
        except ImportError as e:
            raise MirrorError(f"OCI support is not available: {e}") from None
        return OciCache(ref)
    raise MirrorError(f"{url}: unknown kind of mirror; use a path, file://, http(s)://, s3:// or oci://")
