"""Image references: `host[:port]/path/name[:tag][@digest]`, parsed per the distribution grammar.

Every registry URL bincache uses is built here (`manifest_url()`, `blob_url()`, ...), so no
caller assembles `/v2/...` paths by hand.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

from ..errors import UsageError
from ..redact import redact_url

# The grammar of github.com/distribution/reference, with uppercase accepted in names: CI systems
# interpolate `Org/Repo` into image names, and Docker itself lowercases them (we do too).
_ALNUM = r"[a-zA-Z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<name>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_PATTERN = re.compile(rf"^{_TAG}$")

#: Docker Hub: the name users write, and the host that serves its API.
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


def check_digest(digest: str) -> str:
    """`digest` if it is a `sha256:<64 lowercase hex>` digest, else a UsageError."""
    if not _SHA256.match(digest):
        raise UsageError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    return digest


class ImageReference:
    """A parsed image reference; `tag` defaults to `latest`, `digest` wins over `tag`."""

    __slots__ = ("scheme", "domain", "name", "tag", "digest")

    def __init__(
        self,
        *,
        domain: str,
        name: str,
        tag: str = "latest",
        digest: str | None = None,
        scheme: str = "https",
    ) -> None:
        self.scheme = scheme
        self.domain = domain
        self.name = name
        self.tag = tag
        self.digest = digest

    @classmethod
    def from_string(cls, string: str, *, scheme: str = "https") -> ImageReference:
        """Parse `[domain/]name[:tag][@digest]`, expanding Docker Hub short names.

        `ubuntu` -> `docker.io/library/ubuntu:latest`; `user/repo` -> `docker.io/user/repo`.
        The first component is a domain only if it holds a `.` or `:` or is `localhost`,
        exactly as docker decides it.
        """
        match = _REFERENCE.match(string)
        if not match:
            raise UsageError(
                f"invalid image reference {string!r}: expected host[:port]/name[:tag][@digest]"
            )
        domain, name, tag, digest = match.group("domain", "name", "tag", "digest")
        if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
            name = f"{domain}/{name}"
            domain = None
        if domain is None or domain in ("index.docker.io", DOCKER_HUB_API):
            domain = DOCKER_HUB
            if "/" not in name:
                name = f"library/{name}"
        if digest is not None:
            digest = check_digest(digest.lower())
        return cls(domain=domain, name=name.lower(), tag=tag or "latest", digest=digest,
                   scheme=scheme)

    @classmethod
    def from_url(cls, url: str, *, insecure: bool = False) -> ImageReference:
        """Parse `oci://...` (https) or `oci+http://...` (plain http: only for insecure mirrors).

        A bare reference (`ubuntu:24.04`) and `docker://...` are accepted too, as https.
        """
        schemes = {"oci://": "https", "oci+http://": "http", "docker://": "https"}
        prefix = next((p for p in schemes if url.startswith(p)), None)
        if prefix is None and "://" in url:
            raise UsageError(f"not an OCI registry URL: {redact_url(url)!r} (use oci://host/name)")
        rest = url[len(prefix):] if prefix else url
        scheme = schemes[prefix] if prefix else "https"
        if insecure:
            scheme = "http"
        first, slash, _ = rest.partition("/")
        if slash and "@" in first:  # user info (`name@sha256:...` alone is a digest)
            # Never echoed: it may hold a password.
            raise UsageError(f"{redact_url(url)}: an OCI URL takes no user name or password; "
                             "configure them with `bincache mirror add --oci-username NAME "
                             "--oci-password-variable VAR`")
        return cls.from_string(rest.rstrip("/"), scheme=scheme)

    # --- derived references -------------------------------------------------------------
    def with_tag(self, tag: str) -> ImageReference:
        return ImageReference(domain=self.domain, name=self.name, tag=tag, digest=None,
                              scheme=self.scheme)

    def with_digest(self, digest: str) -> ImageReference:
        return ImageReference(domain=self.domain, name=self.name, tag=self.tag,
                              digest=check_digest(digest), scheme=self.scheme)

    def with_name(self, name: str) -> ImageReference:
        return ImageReference(domain=self.domain, name=name, tag=self.tag, digest=self.digest,
                              scheme=self.scheme)

    # --- URLs ---------------------------------------------------------------------------
    @property
    def api_host(self) -> str:
        """The host[:port] that serves the registry API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def registry_url(self) -> str:
        return f"{self.scheme}://{self.api_host}"

    def endpoint(self, path: str = "") -> str:
        """An absolute URL for `path`, which may be absolute, host-relative or `/v2/`-relative."""
        return urljoin(f"{self.registry_url}/v2/", path)

    def manifest_url(self) -> str:
        return f"{self.registry_url}/v2/{self.name}/manifests/{self.digest or self.tag}"

    def blob_url(self, digest: str) -> str:
        return f"{self.registry_url}/v2/{self.name}/blobs/{check_digest(digest)}"

    def uploads_url(self) -> str:
        return f"{self.registry_url}/v2/{self.name}/blobs/uploads/"

    def tags_url(self) -> str:
        return f"{self.registry_url}/v2/{self.name}/tags/list"

    def referrers_url(self, digest: str) -> str:
        return f"{self.registry_url}/v2/{self.name}/referrers/{check_digest(digest)}"

    # --- display ------------------------------------------------------------------------
    def __str__(self) -> str:
        text = f"{self.domain}/{self.name}:{self.tag}"
        return f"{text}@{self.digest}" if self.digest else text

    def __repr__(self) -> str:
        return f"ImageReference({self.scheme}://{self})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageReference):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, s) for s in self.__slots__))
