"""A client of the OCI distribution API (blobs, manifests, tags, referrers), on requests.

Each public operation is one retryable unit: `RetryPolicy` wraps it once (see `retrying`), so
an upload interrupted by a connection reset starts again from its POST, which is what a
registry that lost its upload session needs. Authentication is the `Authenticator`'s business;
this module only passes 401 answers to it.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlparse, urlunparse

import requests
import requests.adapters

from ..atomic import atomic_file
from ..errors import AuthError, BlobNotFound, IntegrityError, RegistryError, UsageError
from ..limits import MAX_OCI_MANIFEST, read_bounded
from .auth import Authenticator, Credentials, resolve_verify
from .reference import ImageReference, check_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# distribution 2.8 answers 404 to a GET of an OCI manifest unless Accept names the OCI type.
ACCEPT_ALL = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

#: Statuses that say "try again later" rather than "this is wrong".
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Error codes of a manifest PUT's 400 that a concurrent upload of one of its blobs causes
#: (an empty link read as an invalid digest, or as no blob): retried like a 5xx.
LINK_RACE_CODES = frozenset({"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "DIGEST_INVALID"})
_CHUNK = 1 << 20

T = TypeVar("T")


class TransientError(RegistryError):
    """A failure that may go away when retried (429, 5xx, connection reset or refused)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    The delays double from `base_delay` up to `max_delay`, with jitter so that parallel
    workers do not hammer a recovering registry in lockstep; a `Retry-After` from the registry
    replaces the computed delay (capped at `max_retry_after`).
    """

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    @classmethod
    def from_environment(cls) -> RetryPolicy:
        """The default policy; `BINCACHE_OCI_RETRIES=N` sets the number of attempts."""
        value = os.environ.get("BINCACHE_OCI_RETRIES")
        if value:
            try:
                return cls(attempts=max(1, int(value)))
            except ValueError:
                raise UsageError(f"BINCACHE_OCI_RETRIES={value!r} is not a number") from None
        return cls()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except TransientError as exc:
                if attempt == self.attempts:
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 0.75 + random.random() / 2
                if exc.retry_after is not None:
                    delay = min(self.max_retry_after, exc.retry_after)
                time.sleep(delay)
        raise AssertionError("unreachable")


def retrying(fn: Callable[..., T]) -> Callable[..., T]:
    """Wrap a RegistryClient method so that its whole operation is retried on TransientError."""

    @functools.wraps(fn)
    def wrapper(self: RegistryClient, *args: Any, **kwargs: Any) -> T:
        return self.retry_policy.call(fn, self, *args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says about a blob."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        try:
            return cls(str(data["mediaType"]), check_digest(str(data["digest"])),
                       int(data["size"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f"invalid descriptor in a manifest: {data!r}") from exc


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest (or index) as the registry served it, verified against its digest."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise RegistryError(f"manifest {self.digest} is not JSON") from exc
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


@dataclass(frozen=True)
class Platform:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None

    def matches(self, data: dict[str, Any]) -> bool:
        if data.get("architecture") != self.architecture or data.get("os") != self.os:
            return False
        return self.variant is None or data.get("variant") in (None, self.variant)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(`sha256:<hex>`, size) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class RegistryClient:
    """Talks to one registry (one scheme + host); operations take an ImageReference on it.

    Thread-safe for parallel uploads and fetches: one connection pool, one Authenticator.
    `stats` counts requests by kind (`"GET manifest"`, `"HEAD blob"`, ...) so tests and
    benchmarks can show what an operation really cost.
    """

    def __init__(
        self,
        registry: ImageReference,
        credentials: Credentials | None = None,
        *,
        verify: bool | str | None = None,
        timeout: float = 120.0,
        retry_policy: RetryPolicy | None = None,
        pool_size: int = 16,
        single_post_limit: int = 0,
    ) -> None:
        if registry.scheme not in ("https", "http"):
            raise UsageError(f"unsupported registry scheme {registry.scheme!r}")
        self.scheme = registry.scheme
        self.host = registry.api_host
        self.verify = resolve_verify(verify)
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy.from_environment()
        # Blobs up to this size go in one `POST ?digest=` (a MAY of the spec; distribution
        # 2.8 does not do it, so it is off unless asked for).
        self.single_post_limit = single_post_limit
        self.auth = Authenticator(self.host, credentials, insecure=self.scheme == "http",
                                  verify=self.verify, timeout=min(timeout, 60.0))
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers["User-Agent"] = "bincache"
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    # --- one request, with auth ---------------------------------------------------------
    def _request(self, method: str, url: str, *, kind: str, scope: tuple[str, ...],
                 headers: dict[str, str] | None = None, data: Any = None,
                 stream: bool = False, allow_redirects: bool = True,
                 rewind: Callable[[], Any] | None = None) -> requests.Response:
        """Send one request, authenticating as the registry asks; never retries transients."""
        if urlparse(url).netloc.lower() != self.host.lower():
            raise RegistryError(f"refusing to follow registry {self.host} to another host: {url}")
        for _ in range(3):
            hdrs = dict(headers or {})
            sent = self.auth.authorization(url, scope)
            if sent:
                hdrs["Authorization"] = sent
            with self._stats_lock:
                self.stats[f"{method} {kind}"] += 1
            try:
                response = self.session.request(method, url, headers=hdrs, data=data,
                                                stream=stream, verify=self.verify,
                                                timeout=(10.0, self.timeout),
                                                allow_redirects=allow_redirects)
            except requests.exceptions.SSLError as exc:
                if "WRONG_VERSION_NUMBER" in str(exc) or "record layer failure" in str(exc):
                    raise RegistryError(
                        f"registry {self.host} does not speak TLS: if it is a plain-http "
                        "registry you trust (a test registry), use oci+http:// or mark the "
                        "mirror insecure") from exc
                raise RegistryError(f"TLS error talking to registry {self.host}: "
                                    f"{_reason(exc)} (is its CA in REQUESTS_CA_BUNDLE?)") from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(f"cannot reach registry {self.host}: {_reason(exc)}") from exc
            if response.status_code == 401:
                response.close()
                self.auth.handle_unauthorized(response, scope, sent)
                if rewind is not None:
                    data = rewind()
                continue
            if response.status_code in TRANSIENT_STATUSES:
                response.close()
                raise TransientError(
                    f"registry {self.host} answered HTTP {response.status_code} to {method} "
                    f"{urlparse(url).path}", _retry_after(response))
            if response.status_code == 403:
                response.close()
                raise AuthError(f"registry {self.host} denied {method} {urlparse(url).path}"
                                f"{_error_detail(response)}")
            return response
        raise AuthError(f"registry {self.host} kept asking for credentials")

    @staticmethod
    def _pull(ref: ImageReference) -> tuple[str, ...]:
        return (f"repository:{ref.name}:pull",)

    @staticmethod
    def _push(ref: ImageReference) -> tuple[str, ...]:
        return (f"repository:{ref.name}:pull,push",)

    # --- registry -----------------------------------------------------------------------
    def _ping(self) -> None:
        """Check that the registry answers the v2 API and accepts our credentials."""
        url = f"{self.scheme}://{self.host}/v2/"
        r = self._request("GET", url, kind="ping", scope=())
        if r.status_code != 200:
            raise RegistryError(f"{self.scheme}://{self.host} is not an OCI registry "
                                f"(GET /v2/ answered HTTP {r.status_code})")

    # --- blobs --------------------------------------------------------------------------
    def _blob_exists(self, ref: ImageReference, digest: str) -> bool:
        r = self._request("HEAD", ref.blob_url(digest), kind="blob", scope=self._pull(ref))
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        raise _unexpected(r, f"checking blob {digest} in {ref.name}")

    def _fetch_blob(self, ref: ImageReference, digest: str, dest: str | os.PathLike[str],
                   size: int | None = None) -> None:
        """Download a blob to `dest`, verifying size and digest; nothing is left on failure."""
        r = self._request("GET", ref.blob_url(digest), kind="blob", scope=self._pull(ref),
                          stream=True)
        with r:
            if r.status_code == 404:
                raise BlobNotFound(f"registry {self.host} has no blob {digest} in "
                                   f"repository {ref.name}")
            if r.status_code != 200:
                raise _unexpected(r, f"fetching blob {digest} from {ref.name}")
            h = hashlib.sha256()
            got = 0
            with atomic_file(os.fspath(dest), 0o600, prefix=".part-") as out:
                try:
                    for chunk in r.iter_content(_CHUNK):
                        h.update(chunk)
                        got += len(chunk)
                        out.write(chunk)
                        if size is not None and got > size:
                            break
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                    raise TransientError(f"download of blob {digest} from registry "
                                         f"{self.host} broke off: {_reason(exc)}") from exc
                _check_blob(ref, self.host, digest, "sha256:" + h.hexdigest(), got, size)

    def _fetch_blob_bytes(self, ref: ImageReference, digest: str, size: int | None = None,
                         max_size: int = 64 << 20) -> bytes:
        """A small blob (config, index, signature) in memory, verified."""
        r = self._request("GET", ref.blob_url(digest), kind="blob", scope=self._pull(ref),
                          stream=True)
        with r:
            if r.status_code == 404:
                raise BlobNotFound(f"registry {self.host} has no blob {digest} in "
                                   f"repository {ref.name}")
            if r.status_code != 200:
                raise _unexpected(r, f"fetching blob {digest} from {ref.name}")
            chunks: list[bytes] = []
            total = 0
            try:
                # Read to the end through iter_content: only a consumed response gives its
                # connection back to the pool (a raw read makes the next request reconnect).
                for chunk in r.iter_content(1 << 16):
                    total += len(chunk)
                    if total > max_size:
                        raise RegistryError(f"blob {digest} in {ref.name} is larger than "
                                            f"{max_size} bytes")
                    chunks.append(chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise TransientError(f"download of blob {digest} from registry {self.host} "
                                     f"broke off: {_reason(exc)}") from exc
            data = b"".join(chunks)
        _check_blob(ref, self.host, digest, sha256_digest(data), len(data), size)
        return data

    def _upload_blob(self, ref: ImageReference, source: str | os.PathLike[str] | bytes,
                    digest: str, *, check_exists: bool = True,
                    mount_from: Iterable[str] = ()) -> str:
        """Put a blob in `ref`'s repository unless it is there already.

        Tries, in order: HEAD (skip), cross-repository mount from each of `mount_from`
        (repository names on the same registry), then a monolithic upload: POST (a 201 means
        done) then PUT to the Location, which may be relative or absolute.

        Returns "exists", "mounted" or "uploaded".
        """
        check_digest(digest)
        if check_exists and self._blob_exists(ref, digest):
            return "exists"
        size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
        location = None
        for repo in mount_from:
            if repo == ref.name:
                continue
            url = _add_query(ref.uploads_url(), [("mount", digest), ("from", repo)])
            scope = self._push(ref) + (f"repository:{repo}:pull",)
            r = self._request("POST", url, kind="upload", scope=scope,
                              headers={"Content-Length": "0"})
            r.close()
            if r.status_code == 201:
                return "mounted"
            if r.status_code == 202 and r.headers.get("Location"):
                location = r.headers["Location"]  # the registry opened an upload instead
                break
        if location is None:
            if size <= self.single_post_limit:
                url = _add_query(ref.uploads_url(), [("digest", digest)])
                # Small blobs only: read into memory so a retry after a 401 can resend it.
                data = source if isinstance(source, bytes) else open(source, "rb").read()
                r = self._request("POST", url, kind="upload", scope=self._push(ref),
                                  data=data, rewind=lambda: data,
                                  headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(size)})
            else:
                r = self._request("POST", ref.uploads_url(), kind="upload",
                                  scope=self._push(ref), headers={"Content-Length": "0"})
            r.close()
            if r.status_code == 201:
                return "uploaded"
            if r.status_code != 202 or not r.headers.get("Location"):
                raise _unexpected(r, f"starting an upload to {ref.name}")
            location = r.headers["Location"]
        put_url = _add_query(ref.endpoint(location), [("digest", digest)])
        opened: list[Any] = []

        def body() -> Any:
            opened.append(_body(source))
            return opened[-1]

        try:
            r = self._request("PUT", put_url, kind="upload", scope=self._push(ref), data=body(),
                              headers={"Content-Type": "application/octet-stream",
                                       "Content-Length": str(size)}, rewind=body)
        finally:
            for f in opened:
                if hasattr(f, "close"):
                    f.close()
        r.close()
        if r.status_code != 201:
            raise _unexpected(r, f"uploading blob {digest} to {ref.name}")
        return "uploaded"

    def _mount_blob(self, ref: ImageReference, digest: str, from_repo: str) -> bool:
        """Cross-repository mount of `digest` from `from_repo` (same registry); True if done.

        A registry that cannot mount answers 202 with a fresh upload session, which is
        cancelled here: the caller uploads the blob itself.
        """
        url = _add_query(ref.uploads_url(), [("mount", digest), ("from", from_repo)])
        scope = self._push(ref) + (f"repository:{from_repo}:pull",)
        r = self._request("POST", url, kind="upload", scope=scope, headers={"Content-Length": "0"})
        r.close()
        if r.status_code == 201:
            return True
        if r.status_code == 202 and r.headers.get("Location"):
            cancel = self._request("DELETE", ref.endpoint(r.headers["Location"]), kind="upload",
                                   scope=self._push(ref))
            cancel.close()
            return False
        raise _unexpected(r, f"mounting blob {digest} from {from_repo} into {ref.name}")

    # --- manifests ----------------------------------------------------------------------
    def _fetch_manifest(self, ref: ImageReference, accept: str = ACCEPT_ALL) -> FetchedManifest:
        """GET a manifest or index by tag or digest; a digest reference is verified."""
        r = self._request("GET", ref.manifest_url(), kind="manifest", scope=self._pull(ref),
                          headers={"Accept": accept}, stream=True)
        with r:
            if r.status_code == 404:
                what = f"digest {ref.digest}" if ref.digest else f"tag {ref.tag!r}"
                raise BlobNotFound(f"registry {self.host} has no image with {what} in "
                                   f"repository {ref.name}{_error_detail(r)}")
            if r.status_code != 200:
                raise _unexpected(r, f"fetching manifest {ref}")
            data = read_bounded(r.iter_content(1 << 16), MAX_OCI_MANIFEST,
                                f"manifest {ref} from registry {self.host}")
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise IntegrityError(f"manifest {ref.digest} from registry {self.host} does not "
                                 f"match its digest (got {digest})")
        media_type = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        try:
            media_type = json.loads(data).get("mediaType") or media_type
        except (ValueError, AttributeError):
            pass
        return FetchedManifest(data, media_type, digest)

    def _manifest_digest(self, ref: ImageReference, accept: str = ACCEPT_ALL) -> str | None:
        """The digest a tag points at, or None when the tag does not exist (one HEAD)."""
        r = self._request("HEAD", ref.manifest_url(), kind="manifest", scope=self._pull(ref),
                          headers={"Accept": accept})
        r.close()
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise _unexpected(r, f"checking manifest {ref}")
        return r.headers.get("Docker-Content-Digest") or self._fetch_manifest(
            ref, accept).digest

    def _put_manifest(self, ref: ImageReference, data: bytes, media_type: str) -> tuple[str, bool]:
        """PUT a manifest at `ref` (its tag, or its digest when it has one).

        Returns (digest, subject_understood): the second is True when the registry answered
        with `OCI-Subject`, i.e. it indexes referrers itself (OCI 1.1).
        """
        r = self._request("PUT", ref.manifest_url(), kind="manifest", scope=self._push(ref),
                          data=data, headers={"Content-Type": media_type})
        r.close()
        if r.status_code == 400 and _error_codes(r) & LINK_RACE_CODES:
            # distribution 2.8 rewrites a blob's link in place (truncate, then write) when the
            # same blob is uploaded again, e.g. by another pusher of the same bytes: a manifest
            # PUT that reads the link in between finds it empty. The blob is there a moment later.
            raise TransientError(str(_unexpected(r, f"pushing manifest {ref}")))
        if r.status_code != 201:
            raise _unexpected(r, f"pushing manifest {ref}")
        return sha256_digest(data), "OCI-Subject" in r.headers

    def resolve_image(self, ref: ImageReference, platform: Platform | None = None,
                      depth: int = 3) -> FetchedManifest:
        """The image manifest of `ref`, descending through image indexes for `platform`."""
        platform = platform or Platform()
        fetched = self.fetch_manifest(ref)
        for _ in range(depth):
            if fetched.media_type not in INDEX_TYPES:
                break
            index = fetched.json()
            candidates = [m for m in index.get("manifests", [])
                          if platform.matches(m.get("platform") or {})]
            if not candidates:
                offered = sorted({"{}/{}".format((m.get("platform") or {}).get("os"),
                                                 (m.get("platform") or {}).get("architecture"))
                                  for m in index.get("manifests", [])})
                raise RegistryError(f"image {ref} has no {platform.os}/{platform.architecture} "
                                    f"variant (it has: {', '.join(offered) or 'none'})")
            fetched = self.fetch_manifest(ref.with_digest(candidates[0]["digest"]))
        if fetched.media_type not in MANIFEST_TYPES:
            raise RegistryError(f"{ref} is a {fetched.media_type or 'untyped'} document, "
                                "not an image manifest")
        return fetched

    def fetch_image(self, ref: ImageReference, platform: Platform | None = None
                    ) -> tuple[FetchedManifest, dict[str, Any]]:
        """(manifest, parsed config) of an image, both verified."""
        manifest = self.resolve_image(ref, platform)
        config_desc = Descriptor.from_json(manifest.json().get("config") or {})
        raw = self.fetch_blob_bytes(ref, config_desc.digest, config_desc.size)
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"the config of image {ref} is not JSON") from exc
        return manifest, config

    # --- tags and referrers -------------------------------------------------------------
    def _list_tags(self, ref: ImageReference, page_size: int = 1000) -> list[str]:
        """Every tag of `ref`'s repository, following `Link: <...>; rel="next"` pages.

        distribution 2.8 ignores `n` and returns everything at once; others paginate.
        """
        tags: set[str] = set()
        url: str | None = _add_query(ref.tags_url(), [("n", str(page_size))])
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            r = self._request("GET", url, kind="tags", scope=self._pull(ref))
            with r:
                if r.status_code == 404:
                    return []  # a repository that does not exist yet has no tags
                if r.status_code != 200:
                    raise _unexpected(r, f"listing tags of {ref.name}")
                try:
                    tags.update((r.json() or {}).get("tags") or [])
                except ValueError as exc:
                    raise RegistryError(f"registry {self.host} sent a tag list that is not "
                                        "JSON") from exc
                url = _next_link(r.headers.get("Link"), ref)
        return sorted(tags)

    def _referrers(self, ref: ImageReference, digest: str,
                  artifact_type: str | None = None) -> list[dict[str, Any]] | None:
        """Descriptors of manifests whose `subject` is `digest`; None without a referrers API."""
        url = ref.referrers_url(digest)
        if artifact_type:
            url = _add_query(url, [("artifactType", artifact_type)])
        r = self._request("GET", url, kind="referrers", scope=self._pull(ref),
                          headers={"Accept": OCI_INDEX})
        with r:
            if r.status_code == 404:
                return None
            if r.status_code != 200:
                raise _unexpected(r, f"listing referrers of {digest}")
            try:
                manifests = r.json().get("manifests") or []
            except (ValueError, AttributeError):
                return None
        return [m for m in manifests
                if artifact_type is None or m.get("artifactType") == artifact_type]

    # Each operation is retried as a whole, added here once.
    # --- deletes (a registry may refuse them: distribution's storage.delete.enabled) ------
    def _delete(self, ref: ImageReference, url: str, what: str) -> bool:
        """DELETE a manifest or a blob link; False when it is not there. A registry that does
        not allow deletes is a RegistryError that says so."""
        r = self._request("DELETE", url, kind=what, scope=(f"repository:{ref.name}:delete",))
        r.close()
        if r.status_code in (200, 202, 204):
            return True
        if r.status_code == 404:
            return False
        if r.status_code == 405:
            raise RegistryError(f"registry {self.host} does not allow deletes (HTTP 405 to DELETE "
                                f"{urlparse(url).path}); ask its administrator to enable them "
                                "(docker-registry: storage: delete: enabled: true)")
        raise _unexpected(r, f"deleting {what} {urlparse(url).path}")

    def _delete_manifest(self, ref: ImageReference, digest: str) -> bool:
        """Delete the manifest `digest` (and every tag naming it) from `ref`'s repository."""
        return self._delete(ref, ref.with_digest(digest).manifest_url(), "manifest")

    def _delete_blob(self, ref: ImageReference, digest: str) -> bool:
        """Unlink a blob from `ref`'s repository (the registry's garbage collector frees it)."""
        return self._delete(ref, ref.blob_url(digest), "blob")

    ping = retrying(_ping)
    delete_manifest = retrying(_delete_manifest)
    delete_blob = retrying(_delete_blob)
    blob_exists = retrying(_blob_exists)
    fetch_blob = retrying(_fetch_blob)
    fetch_blob_bytes = retrying(_fetch_blob_bytes)
    upload_blob = retrying(_upload_blob)
    mount_blob = retrying(_mount_blob)
    fetch_manifest = retrying(_fetch_manifest)
    manifest_digest = retrying(_manifest_digest)
    put_manifest = retrying(_put_manifest)
    list_tags = retrying(_list_tags)
    referrers = retrying(_referrers)


# --- helpers ----------------------------------------------------------------------------
def _body(source: str | os.PathLike[str] | bytes) -> Any:
    return source if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115


def _check_blob(ref: ImageReference, host: str, digest: str, got_digest: str, got_size: int,
                size: int | None) -> None:
    if size is not None and got_size != size:
        raise IntegrityError(f"blob {digest} from registry {host} ({ref.name}) has "
                             f"{got_size} bytes, expected {size}: refusing to use it")
    if got_digest != digest:
        raise IntegrityError(f"blob {digest} from registry {host} ({ref.name}) does not match "
                             f"its digest (got {got_digest}): refusing to use it")


def _add_query(url: str, params: list[tuple[str, str]]) -> str:
    parsed = urlparse(url)
    query = parse_qsl(parsed.query, keep_blank_values=True) + params
    return urlunparse(parsed._replace(query=urlencode(query)))


_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)')


def _next_link(header: str | None, ref: ImageReference) -> str | None:
    if not header:
        return None
    for m in _LINK.finditer(header):
        if re.search(r'rel\s*=\s*"?next"?', m.group(2)):
            url = urljoin(ref.registry_url + "/", m.group(1))
            # A next page on another host would receive our credentials: not followed.
            if urlparse(url).netloc.lower() != ref.api_host.lower():
                return None
            return url
    return None


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_codes(response: requests.Response) -> set[str]:
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return set()
    return {str(e.get("code")) for e in errors if isinstance(e, dict)}


def _error_detail(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return ""
    texts = [str(e.get("message") or e.get("code")) for e in errors if isinstance(e, dict)]
    return f" ({'; '.join(texts)})" if texts else ""


def _unexpected(response: requests.Response, doing: str) -> RegistryError:
    host = urlparse(response.url).netloc
    return RegistryError(f"registry {host} answered HTTP {response.status_code} when "
                         f"{doing}{_error_detail(response)}")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, short in (("Connection refused", "connection refused"),
                          ("Connection reset", "connection reset"),
                          ("RemoteDisconnected", "connection closed by the registry"),
                          ("timed out", "timed out"),
                          ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")):
        if needle in text:
            return short
    return text.splitlines()[0][:200] if text else type(exc).__name__
