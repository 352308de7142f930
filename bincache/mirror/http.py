"""A read-only mirror served over http(s) (a build cache published by any web server)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import requests

from ..errors import BlobNotFound, MirrorError
from ..limits import MAX_INDEX, read_bounded, too_large

if TYPE_CHECKING:
    from .base import DirListing


class HttpBackend:
    """Fetches files of a mirror below a base URL. Writing is not possible over plain http."""

    transport: ClassVar[str] = "http"
    writable: ClassVar[bool] = False  # plain http has no way to write
    root = None  # not on the local file system

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout: float = 60.0,
                 insecure: bool = False):
        from ..config import mask_url

        self._base = url.rstrip("/")
        self.url = mask_url(self._base)  # for messages: never a password
        from urllib.parse import urlparse

        has_creds = bool(auth) or urlparse(self._base).password is not None
        if has_creds and self._base.startswith("http://") and not insecure:
            raise MirrorError(f"{self.url}: refusing to send credentials over plain http; "
                              "use https, or mark the mirror insecure")
        self._session = requests.Session()
        self._auth = auth
        self._timeout = timeout

    def _get(self, rel: str, stream: bool = False) -> requests.Response:
        url = f"{self.url}/{rel}"
        try:
            r = self._session.get(f"{self._base}/{rel}", auth=self._auth, timeout=self._timeout, stream=stream)
        except requests.RequestException as e:
            raise MirrorError(f"cannot reach {self.url}: {e.__class__.__name__}") from None
        if r.status_code == 404:
            raise BlobNotFound(f"{url} does not exist")
        if r.status_code in (401, 403):
            raise MirrorError(f"{self.url} refused access ({r.status_code}); check the mirror's credentials")
        if r.status_code >= 400:
            raise MirrorError(f"{url}: the server answered {r.status_code}")
        return r

    def check_writable(self) -> None:
        raise MirrorError(f"{self.url}: http(s) mirrors are read-only; push to a directory, s3:// or oci:// mirror")

    def exists(self, rel: str) -> bool:
        try:
            r = self._session.head(f"{self._base}/{rel}", auth=self._auth, timeout=self._timeout)
        except requests.RequestException as e:
            raise MirrorError(f"cannot reach {self.url}: {e.__class__.__name__}") from None
        return r.status_code == 200

    def read(self, rel: str, max_size: int | None = None) -> bytes:
        """The whole file, cut with an error past ``max_size`` (default: the index limit; a
        server may stream forever)."""
        limit = MAX_INDEX if max_size is None else max_size
        with self._get(rel, stream=True) as r:
            return read_bounded(r.iter_content(1 << 16), limit, f"{self.url}/{rel}")

    def read_tagged(self, rel: str, max_size: int | None = None,
                    known: str | None = None) -> tuple[bytes | None, str] | None:
        """(bytes, ETag or ""), None when absent; (None, ETag) when the server says 304 for
        ``known`` (a conditional GET: nothing but the headers crosses the network)."""
        headers = {"If-None-Match": known} if known else {}
        try:
            r = self._session.get(f"{self._base}/{rel}", auth=self._auth, timeout=self._timeout,
                                  stream=True, headers=headers)
        except requests.RequestException as e:
            raise MirrorError(f"cannot reach {self.url}: {e.__class__.__name__}") from None
        with r:
            if r.status_code == 304 and known:
                return None, known
            if r.status_code == 404:
                return None
            if r.status_code in (401, 403):
                raise MirrorError(f"{self.url} refused access ({r.status_code}); check the mirror's credentials")
            if r.status_code >= 400:
                raise MirrorError(f"{self.url}/{rel}: the server answered {r.status_code}")
            data = read_bounded(r.iter_content(1 << 16), MAX_INDEX if max_size is None else max_size,
                                f"{self.url}/{rel}")
            return data, r.headers.get("ETag", "")

    def get_file(self, rel: str, dest: str, max_size: int | None = None) -> None:
        """Stream to ``dest``; past ``max_size`` bytes (the manifest's size) it stops."""
        with self._get(rel, stream=True) as r, open(dest, "wb") as f:
            got = 0
            for chunk in r.iter_content(1 << 20):
                got += len(chunk)
                if max_size is not None and got > max_size:
                    raise too_large(f"{self.url}/{rel}", max_size, name="the manifest's size")
                f.write(chunk)

    def local_path(self, rel: str) -> str | None:
        return None

    def write(self, rel: str, data: bytes) -> None:
        self.check_writable()

    def write_if(self, rel: str, data: bytes, expect: str | None) -> bool:
        self.check_writable()
        return False

    def put_file(self, rel: str, src: str) -> None:
        self.check_writable()

    def list_stat(self, rel_dir: str) -> list[tuple[str, float, int]]:
        return [(rel, 0.0, 0) for rel in self.list(rel_dir)]

    def list_dirs(self, rel_dir: str, since: float = -math.inf,
                  clock_dir: str | None = None) -> DirListing | None:
        return None  # keys, not directories: no change time to compare

    def list(self, rel_dir: str) -> list[str]:
        raise MirrorError(f"{self.url}: an http mirror cannot be listed; it needs an index (bincache update-index)")

    def delete(self, rel: str) -> None:
        self.check_writable()
