"""The BuildCache protocol: what every build cache offers, and the records it returns.

Three kinds implement it: Spack's layout v3 (``layout_v3.LayoutV3Cache``) and layout v2
(``layout_v2.LayoutV2Cache``) over a :class:`ByteBackend` (``directory``, ``http``, ``s3``),
and an OCI registry (``oci.OciCache``). Callers use these members only. A capability a kind
lacks is still declared: a method that raises :class:`MirrorError` or :class:`UsageError`
saying so, a no-op where there is nothing to do, or an attribute (``backend`` is None on OCI,
``root`` None off the local file system); nothing is probed with ``hasattr``.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ..errors import MirrorError, OptionNotTaken
from ..spec import PackageId

if TYPE_CHECKING:
    from .._native import TarResult
    from ..spec import Spec
    from .config import MirrorRef

_SHA256_RE = re.compile(r"[0-9a-f]{64}")

#: Media types of a layout v3 manifest's records (OCI signatures use the same records).
MT_TARBALL = "application/vnd.spack.install.v2.tar+gzip"
# bincache's zstd tarball: a media type of its own, so a Spack that finds the tarball by
# MT_TARBALL says it has none rather than feeding zstd to gzip.
MT_TARBALL_ZSTD = "application/vnd.spack.install.v2.tar+zstd"
TARBALL_TYPES = {"gzip": MT_TARBALL, "zstd": MT_TARBALL_ZSTD}
MT_SPEC_PREFIX = "application/vnd.spack.spec.v"


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecRef:
    """A package a cache holds, as its listing names it (no spec read)."""

    name: str
    version: str
    hash: str

    @property
    def dag_name(self) -> str:
        return f"{self.name}-{self.version}-{self.hash}"


class Record(Protocol):
    """A file of a package (tarball or spec file) as a manifest records it."""

    @property
    def path(self) -> str: ...  # where the cache keeps it, for messages and local paths
    @property
    def content_length(self) -> int: ...  # -1: not recorded (layout v2 tarballs)
    @property
    def media_type(self) -> str: ...
    @property
    def compression(self) -> str: ...  # "gzip" or "none"
    @property
    def checksum(self) -> str: ...
    @property
    def checksum_algorithm(self) -> str: ...


@dataclass(frozen=True)
class BlobRecord:
    """One entry of a layout v3 manifest's ``data`` list (also an OCI package's records)."""

    content_length: int
    media_type: str
    compression: str
    checksum: str
    checksum_algorithm: str = "sha256"

    @property
    def path(self) -> str:
        return f"blobs/{self.checksum_algorithm}/{self.checksum[:2]}/{self.checksum}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "contentLength": self.content_length,
            "mediaType": self.media_type,
            "compression": self.compression,
            "checksumAlgorithm": self.checksum_algorithm,
            "checksum": self.checksum,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlobRecord:
        try:
            rec = cls(int(d["contentLength"]), str(d["mediaType"]), d.get("compression", "none"),
                      str(d["checksum"]), d.get("checksumAlgorithm", "sha256"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise MirrorError(f"manifest entry without a valid {e}") from None
        # The checksum becomes a path in the mirror: anything but 64 hex digits is refused.
        if rec.checksum_algorithm != "sha256" or not _SHA256_RE.fullmatch(rec.checksum):
            raise MirrorError(f"manifest entry with an unsupported checksum "
                              f"{rec.checksum_algorithm}:{rec.checksum[:70]!r} (only sha256 is read)")
        if rec.content_length < 0:
            raise MirrorError(f"manifest entry with a negative size {rec.content_length}")
        return rec


class Manifest(Protocol):
    """What a cache says about one package: its records, and the document a signature covers."""

    @property
    def records(self) -> Sequence[Record]: ...
    @property
    def tarball(self) -> Record: ...
    @property
    def spec(self) -> Record: ...
    raw: bytes  # as fetched: what install verifies (clearsigned when signed)
    signed: bool


@dataclass
class PackageManifest:
    """A package's manifest (layout v3, OCI): the tarball record and the spec file record."""

    records: list[BlobRecord]
    raw: bytes
    signed: bool
    #: OCI: the digest of the image manifest the records were read from (the signature's subject).
    subject: str | None = None

    @property
    def tarball(self) -> BlobRecord:
        for r in self.records:
            if r.media_type in (MT_TARBALL, MT_TARBALL_ZSTD):
                return r
        raise MirrorError("the manifest lists no package tarball")

    @property
    def spec(self) -> BlobRecord:
        specs = [r for r in self.records if r.media_type.startswith(MT_SPEC_PREFIX)]
        if not specs:
            raise MirrorError("the manifest lists no spec file")
        return specs[0]


class Packed(Protocol):
    """What a cache reads of a packed package (:class:`bincache.create.PackedPackage`)."""

    @property
    def spec(self) -> Spec: ...
    @property
    def nodes(self) -> Sequence[Spec]: ...  # the DAG, root first
    @property
    def prefix(self) -> str: ...
    @property
    def specfile(self) -> bytes: ...  # the DAG spec file JSON
    @property
    def tarball(self) -> str: ...  # path of the gzip (or zstd) tarball
    @property
    def result(self) -> TarResult: ...
    @property
    def buildinfo(self) -> Mapping[str, Any]: ...
    @property
    def compression(self) -> str: ...  # "gzip" or "zstd"


class PushOutcome(Protocol):
    """What a cache reads of a push run's result (:class:`bincache.create.PushResult`)."""

    @property
    def pushed(self) -> Sequence[Packed]: ...
    @property
    def skipped(self) -> Sequence[Spec]: ...


class Signer(Protocol):
    """What a cache needs of :class:`bincache.signing.Signer`."""

    @property
    def fingerprint(self) -> str: ...
    def clearsign(self, data: bytes) -> bytes: ...


# -- byte backends ---------------------------------------------------------------------------
@dataclass
class DirListing:
    """What a store's list_dirs saw of the directories right below a directory."""

    clock: float  # the store's clock just before it listed
    count: int  # how many directories there were
    newest: float  # the newest change time among them (0 without any)
    since: float  # the time ``changed`` goes back to
    changed: list[tuple[str, float]]  # (name, change time) of those changed at or after since


@runtime_checkable
class ByteBackend(Protocol):
    """Files at relative paths below a mirror URL: a directory, an http(s) server, an S3 bucket.

    Writes are atomic (a reader sees the old file or the new one). Errors are MirrorError;
    a missing file is BlobNotFound.
    """

    transport: ClassVar[str]  # "directory", "http" or "s3" (for messages)
    writable: ClassVar[bool]  # False: every write (and check_writable) raises MirrorError

    @property
    def url(self) -> str: ...  # for messages: never a password
    @property
    def root(self) -> str | None: ...  # the mirror's directory when it is local, else None

    def check_writable(self) -> None: ...  # http: MirrorError (read-only)
    def exists(self, rel: str) -> bool: ...
    def read(self, rel: str, max_size: int | None = None) -> bytes: ...
    def get_file(self, rel: str, dest: str, max_size: int | None = None) -> None: ...
    def local_path(self, rel: str) -> str | None: ...  # the file itself, when local
    def write(self, rel: str, data: bytes) -> None: ...
    def put_file(self, rel: str, src: str) -> None: ...
    def list_stat(self, rel_dir: str) -> list[tuple[str, float, int]]: ...  # list + (mtime, size)
    def list(self, rel_dir: str) -> list[str]: ...  # http: MirrorError (cannot list)
    def list_dirs(self, rel_dir: str, since: float = -math.inf,
                  clock_dir: str | None = None) -> DirListing | None:
        """The directories right below ``rel_dir``, by change time (the names only of those
        changed at or after ``since``), so an update lists only those changed since its last
        listing; None where a store has no directories (s3, http) or ``rel_dir`` does not
        exist. The clock is read by a touch of ``clock_dir`` (default ``rel_dir``)."""
        ...

    def delete(self, rel: str) -> None: ...  # a missing file is no error; http: MirrorError
    # Conditional reads and writes (the index): a tag is the ETag (s3, http) or the SHA-256 of
    # the bytes (directory, where every index update holds the index lock).
    def read_tagged(self, rel: str, max_size: int | None = None,
                    known: str | None = None) -> tuple[bytes | None, str] | None:
        """(bytes, tag); None when absent; (None, tag) when the tag is still ``known`` (http
        and s3 ask with If-None-Match: nothing but headers crosses the network)."""
        ...

    def write_if(self, rel: str, data: bytes, expect: str | None) -> bool:
        """Write only if the file still has tag ``expect`` (None: only if absent); False when it
        has not (s3: If-Match / If-None-Match); http: MirrorError (read-only)."""
        ...


# -- the build cache -------------------------------------------------------------------------
@runtime_checkable
class BuildCache(Protocol):
    """A build cache (see the module docstring for the kinds)."""

    kind: ClassVar[str]  # "layout-v3", "layout-v2" or "oci"
    #: Options of push this kind takes beyond the common ones (see :meth:`configure_push`).
    push_options: ClassVar[frozenset[str]]
    #: What to do about an unreadable index, for its error message.
    index_remedy: ClassVar[str]
    #: The tarball codecs it stores: ("gzip", "zstd"), or ("gzip",) on layout v2 (Spack 0.2x).
    compressions: ClassVar[tuple[str, ...]]
    #: Layout v3: a sharded index (bincache.index_shards) beside Spack's single one.
    sharded_index: ClassVar[bool]
    #: Whether write_index_if is a true compare-and-swap; False (OCI, where a tag cannot be
    #: swapped conditionally): an update also reads its write back and merges again.
    index_write_atomic: ClassVar[bool]
    #: Whether push_package needs each tarball's uncompressed digest (``result.diff_id``, an OCI
    #: layer's); create skips that SHA-256 pass over every input byte when not.
    needs_diff_id: ClassVar[bool]

    @property
    def url(self) -> str: ...  # for messages: never a password
    @property
    def ref(self) -> MirrorRef | None: ...  # the mirror's settings (install reads ``ref.signed``)
    @property
    def backend(self) -> ByteBackend | None: ...  # the files under a layout; None for OCI

    # -- pushing -------------------------------------------------------------------------------
    def configure_push(self, *, base_image: str | None = None, tag: str | None = None) -> None:
        """Set the kind-specific push options; one this kind does not take is a UsageError
        naming it (:func:`refuse_options`)."""
        ...

    def has_package(self, spec: PackageId) -> bool: ...
    def staging_dir(self) -> str: ...  # where packed tarballs wait (on the mirror's disk if local)
    def push_package(self, packed: Packed, signer: Signer | None = None) -> None:
        """Blobs first, the manifest (the commit point) last."""
        ...

    def push_failed(self, spec: PackageId) -> None:
        """``spec`` will not be pushed in this run after all (OCI: dependents stop waiting)."""
        ...

    def finish_push(self, result: PushOutcome) -> None:
        """After a push run: OCI writes its ``--tag`` image."""
        ...

    # -- reading -------------------------------------------------------------------------------
    def list_package_refs(self) -> list[SpecRef]: ...  # from manifests/tags, without the index
    def fetch_manifest(self, ref: PackageId) -> Manifest:
        """The package's manifest, NOT verified: install verifies ``raw`` first."""
        ...

    def manifest_from_verified(self, verified: bytes, fetched: Manifest, label: str) -> Manifest:
        """The records read from the text a signature check returned (never a second parse of
        the fetched file): only these are trusted."""
        ...

    def get_blob_bytes(self, record: Record) -> bytes: ...  # size and checksum verified
    def fetch_blob(self, record: Record, dest: str) -> None:
        """Copy to ``dest``, size and checksum verified (IntegrityError); no partial file left."""
        ...

    def local_blob_path(self, record: Record) -> str | None:
        """The blob's file when the cache is on the local file system (read without a copy)."""
        ...

    # -- index ---------------------------------------------------------------------------------
    def read_index_bytes(self) -> bytes | None: ...  # None: the cache has no index
    def write_index_bytes(self, data: bytes, db_version: str) -> None: ...
    def index_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while the index is updated: concurrent updates of a directory take turns."""
        ...

    def read_index_tagged(self) -> tuple[bytes | None, str | None]:
        """(Spack's index bytes, the tag of what names them); (None, None) without an index."""
        ...

    def write_index_if(self, data: bytes, db_version: str, expect: str | None) -> bool:
        """Write the index only if it still has tag ``expect`` (None: only if there is none);
        False: another update wrote first (merge onto it and try again)."""
        ...

    def read_index_entry(self, ref: SpecRef) -> tuple[list[Spec], int] | None:
        """(spec nodes, tarball size) of a listed package for the index; None: skip it."""
        ...

    # -- public keys ---------------------------------------------------------------------------
    def publish_public_keys(self, keys: Mapping[str, bytes]) -> list[str]:
        """Put armored public keys ({fingerprint: key}) where Spack finds them; OCI: MirrorError."""
        ...

    def public_key_blobs(self) -> list[tuple[str, str, bytes]]:
        """(fingerprint, path, key data) of every key the cache publishes; OCI: MirrorError."""
        ...


# -- helpers shared by the implementations ---------------------------------------------------
#: What each kind-specific option is for, as its error says.
OPTION_USE = {
    "base_image": "apply only to OCI mirrors (oci://...)",
    "tag": "apply only to OCI mirrors (oci://...)",
    "layout": "is for directory, http and s3 mirrors",
}


def refuse_options(cache: BuildCache, given: Mapping[str, object], what: str) -> None:
    """OptionNotTaken for each option given (not None) that ``cache.push_options`` lacks;
    ``what`` describes the mirror (e.g. "a layout v3 directory mirror")."""
    refused = [name for name, value in given.items()
               if value is not None and name not in cache.push_options]
    if not refused:
        return
    use = OPTION_USE.get(refused[0], f"is not taken by {what}s")
    where = cache.ref.display if cache.ref is not None else cache.url
    raise OptionNotTaken(refused, use, where, what)


def describe(kind: str, backend: ByteBackend | None) -> str:
    """A mirror in words for messages: "a layout v3 directory mirror", "an OCI registry"."""
    if backend is None:
        return "an OCI registry"
    return f"a {kind.replace('-', ' ')} {backend.transport} mirror"


def read_specfile_entry(cache: BuildCache, ref: PackageId) -> tuple[list[Spec], int]:
    """(spec nodes, tarball size) of a package through its manifest and spec file."""
    from ..spec import parse_specfile

    manifest = cache.fetch_manifest(ref)
    data = cache.get_blob_bytes(manifest.spec)
    if manifest.spec.compression == "gzip":
        data = gzip.decompress(data)
    return (parse_specfile(data, f"{cache.url} spec {ref.name}/{ref.hash[:7]}"),
            manifest.tarball.content_length)


@contextlib.contextmanager
def directory_lock(backend: ByteBackend, rel_dir: str) -> Iterator[None]:
    """The update lock of a mirror on the local file system (``rel_dir`` inside it); nothing
    to hold elsewhere."""
    if backend.root is None:
        yield
        return
    from ..locks import dir_lock

    if not os.path.isdir(backend.root):
        raise MirrorError(f"no mirror at {backend.root} (the directory does not exist)")
    with dir_lock(os.path.join(backend.root, *rel_dir.split("/"))):
        yield


__all__ = ["BlobRecord", "BuildCache", "ByteBackend", "DirListing", "Manifest", "Packed",
           "PackageId", "PackageManifest", "PushOutcome", "Record", "Signer", "SpecRef",
           "refuse_options"]
