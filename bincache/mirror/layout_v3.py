"""Spack's build cache layout v3 over a byte backend (directory, http, s3).

    v3/layout.json, v3/manifests/spec/<name>/<name>-<version>-<hash>.spec.manifest.json,
    v3/manifests/index/index.manifest.json, v3/manifests/key/..., blobs/sha256/<xx>/<sha256>

Blobs are written before the manifest that names them: the manifest is the commit point.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
import threading
import weakref
from dataclasses import dataclass

from ..errors import BlobNotFound, IntegrityError, MirrorError, SignatureError
from ..limits import MAX_MANIFEST, load_json
from ..signing.cleartext import clearsigned_text, is_clearsigned
from ..spec import v5_specfile

LAYOUT_VERSION = 3
MT_TARBALL = "application/vnd.spack.install.v2.tar+gzip"
MT_SPEC_PREFIX = "application/vnd.spack.spec.v"
MT_INDEX_PREFIX = "application/vnd.spack.db.v"
MT_KEY = "application/pgp-keys"
MT_KEYINDEX = "application/vnd.spack.keyindex.v1+json"
SPEC_MANIFESTS = "v3/manifests/spec"
INDEX_MANIFEST = "v3/manifests/index/index.manifest.json"
LAYOUT_JSON = "v3/layout.json"
_MANIFEST_NAME = re.compile(r"^(?P<stem>.+)-(?P<hash>[a-z2-7]{32})\.spec\.manifest\.json$")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: A remote blob at least this big is looked for (HEAD) before it is uploaded: the upload it
#: may save costs more than the request. A smaller one is PUT at once; its path is its digest,
#: so writing it again changes nothing. (A local mirror always looks: a stat is cheaper.)
HEAD_BEFORE_PUT = 1 << 20


@dataclass(frozen=True)
class BlobRecord:
    """One entry of a manifest's ``data`` list."""

    content_length: int
    media_type: str
    compression: str
    checksum: str
    checksum_algorithm: str = "sha256"

    @property
    def path(self) -> str:
        return f"blobs/{self.checksum_algorithm}/{self.checksum[:2]}/{self.checksum}"

    def to_dict(self) -> dict:
        return {
            "contentLength": self.content_length,
            "mediaType": self.media_type,
            "compression": self.compression,
            "checksumAlgorithm": self.checksum_algorithm,
            "checksum": self.checksum,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BlobRecord:
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


@dataclass(frozen=True)
class SpecRef:
    name: str
    version: str
    hash: str

    @property
    def dag_name(self) -> str:
        return f"{self.name}-{self.version}-{self.hash}"


@dataclass
class PackageManifest:
    """A package's manifest: the tarball record and the spec file record."""

    records: list[BlobRecord]
    raw: bytes
    signed: bool
    #: OCI: the digest of the image manifest the records were read from (the signature's subject).
    subject: str | None = None

    @property
    def tarball(self) -> BlobRecord:
        for r in self.records:
            if r.media_type == MT_TARBALL:
                return r
        raise MirrorError("the manifest lists no package tarball")

    @property
    def spec(self) -> BlobRecord:
        specs = [r for r in self.records if r.media_type.startswith(MT_SPEC_PREFIX)]
        if not specs:
            raise MirrorError("the manifest lists no spec file")
        return specs[0]


def manifest_bytes(records: list[BlobRecord]) -> bytes:
    """A manifest with short lines (GnuPG clearsign mangles very long ones), as Spack writes it."""
    doc = {"version": LAYOUT_VERSION, "data": [r.to_dict() for r in records]}
    return json.dumps(doc, indent=0, separators=(",", ":")).encode()


def clearsigned_payload(raw: bytes) -> bytes:
    """The text of a clearsigned document, WITHOUT checking the signature (listing only).

    One cleartext reader serves the project, the signing package's: it refuses what gpg would
    read differently (overlong lines, text around the block) and reads CRLF as gpg does.
    """
    try:
        return clearsigned_text(raw, "manifest")
    except SignatureError as e:
        raise MirrorError(str(e)) from None


def parse_manifest(payload: bytes, raw: bytes | None = None, origin: str = "manifest") -> PackageManifest:
    try:
        doc = load_json(payload, origin, MAX_MANIFEST)
        records = [BlobRecord.from_dict(d) for d in doc["data"]]
    except (ValueError, KeyError, TypeError) as e:
        raise MirrorError(f"{origin}: not a valid build cache manifest ({e})") from None
    raw = payload if raw is None else raw
    return PackageManifest(records, raw, is_clearsigned(raw))


def v5_specfile_bytes(specfile: bytes) -> tuple[bytes, int]:
    """A buildcache spec file in the format Spack >= 1.0 reads from layout v3: (bytes, version)."""
    doc = json.loads(specfile)
    upgraded, version = v5_specfile(doc)
    if upgraded is doc:
        return specfile, version
    return json.dumps(upgraded, separators=(",", ":")).encode(), version


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def staging_dir(backend) -> str:
    """A temporary directory on the mirror's file system when it has one (copy-free publish)."""
    root = getattr(backend, "root", None)
    if root:
        from ..staging import make_private_dir

        backend.check_writable()
        # Locked while this create lives: an interrupted one's packed tarballs are removed by
        # the next create into the same mirror.
        private = make_private_dir(os.path.join(root, ".bincache-staging"), "create-")
        weakref.finalize(backend, private.close)
        return private.path
    return tempfile.mkdtemp(prefix="bincache-")


class LayoutV3Cache:
    """A build cache in Spack's layout v3, over a backend that stores bytes at relative paths."""

    kind = "layout-v3"

    def __init__(self, backend, ref=None):
        self.backend = backend
        self.ref = ref
        self.url = backend.url
        self._layout_written: str | None = None  # layout.json as this cache read or wrote it
        self._layout_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LayoutV3Cache({self.url})"

    # -- paths ---------------------------------------------------------------------------------
    @staticmethod
    def manifest_path(name: str, version: str, h: str) -> str:
        return f"{SPEC_MANIFESTS}/{name}/{name}-{version}-{h}.spec.manifest.json"

    def staging_dir(self) -> str:
        return staging_dir(self.backend)

    # -- blobs ---------------------------------------------------------------------------------
    def has_blob(self, record: BlobRecord) -> bool:
        return self.backend.exists(record.path)

    def _worth_looking(self, size: int) -> bool:
        return getattr(self.backend, "root", None) is not None or size >= HEAD_BEFORE_PUT

    def put_blob_bytes(self, data: bytes, media_type: str, compression: str = "none") -> BlobRecord:
        rec = BlobRecord(len(data), media_type, compression, hashlib.sha256(data).hexdigest())
        if not (self._worth_looking(len(data)) and self.backend.exists(rec.path)):
            self.backend.write(rec.path, data)
        return rec

    def put_blob_file(self, path: str, record: BlobRecord) -> None:
        if not (self._worth_looking(record.content_length) and self.backend.exists(record.path)):
            self.backend.put_file(record.path, path)

    def get_blob_bytes(self, record: BlobRecord) -> bytes:
        data = self.backend.read(record.path, max_size=record.content_length)
        _verify(data, record, self.url)
        return data

    def fetch_blob(self, record: BlobRecord, dest: str) -> None:
        """Copy a blob to ``dest`` after checking its size and SHA-256; no partial file is left."""
        tmp = dest + ".part"
        try:
            self.backend.get_file(record.path, tmp, max_size=record.content_length)
            with open(tmp, "rb") as f:
                verify_blob_file(f, record, f"{self.url}/{record.path}")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- packages ------------------------------------------------------------------------------
    def has_package(self, spec) -> bool:
        return self.backend.exists(self.manifest_path(spec.name, spec.version, spec.hash))

    def write_layout(self, signing: str | None) -> None:
        """layout.json, read and written once per cache (a push of N packages, not N times)."""
        doc = {"signing": signing} if signing else {}
        data = json.dumps(doc).encode()
        with self._layout_lock:
            if self._layout_written == data.decode():
                return
            try:
                current = self.backend.read(LAYOUT_JSON)
            except BlobNotFound:
                current = None
            if current != data and not (current and signing is None):
                self.backend.write(LAYOUT_JSON, data)
            self._layout_written = data.decode()

    def push_package(self, packed, signer=None) -> None:
        """Blobs first (tarball, gzipped spec file), then the manifest, then layout.json."""
        self.backend.check_writable()
        tar_rec = BlobRecord(packed.result.compressed_size, MT_TARBALL, "gzip", packed.result.digest)
        self.put_blob_file(packed.tarball, tar_rec)
        spec_data, version = v5_specfile_bytes(packed.specfile)
        # Spack >= 1.0 finds the spec file by its exact media type, and reads it with the reader
        # of that version: the media type is the document's own version, and a v4 document
        # (Spack 0.2x) is converted as Spack converts it, since no Spack reads v4 from layout v3.
        spec_rec = self.put_blob_bytes(gzip_bytes(spec_data), f"{MT_SPEC_PREFIX}{version}+json", "gzip")
        body = manifest_bytes([tar_rec, spec_rec])
        if signer is not None:
            body = signer.clearsign(body)
        s = packed.spec
        self.backend.write(self.manifest_path(s.name, s.version, s.hash), body)
        self.write_layout("gpg" if signer is not None else None)

    def fetch_manifest_raw(self, ref) -> bytes:
        path = self.manifest_path(ref.name, ref.version, ref.hash)
        try:
            return self.backend.read(path, max_size=MAX_MANIFEST)
        except BlobNotFound:
            raise BlobNotFound(f"{self.url} has no package {ref.name}@{ref.version}/{ref.hash[:7]}") from None

    def fetch_manifest(self, ref) -> PackageManifest:
        """The manifest, parsed WITHOUT verifying a signature (install verifies ``raw`` first)."""
        raw = self.fetch_manifest_raw(ref)
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        return parse_manifest(payload, raw, f"{self.url} {ref.name}/{ref.hash[:7]}")

    def list_package_refs(self) -> list[SpecRef]:
        refs = []
        for rel in self.backend.list(SPEC_MANIFESTS):
            parts = rel.split("/")
            m = _MANIFEST_NAME.match(parts[-1])
            if not m or len(parts) < 5:
                continue
            name = parts[-2]
            stem = m.group("stem")
            version = stem[len(name) + 1:] if stem.startswith(name + "-") else stem.rsplit("-", 1)[-1]
            refs.append(SpecRef(name, version, m.group("hash")))
        return refs

    # -- index ---------------------------------------------------------------------------------
    def read_index_bytes(self) -> bytes | None:
        try:
            raw = self.backend.read(INDEX_MANIFEST, max_size=MAX_MANIFEST)
        except BlobNotFound:
            return None
        manifest = parse_manifest(raw, origin=f"{self.url}/{INDEX_MANIFEST}")
        recs = [r for r in manifest.records if r.media_type.startswith(MT_INDEX_PREFIX)]
        if not recs:
            return None
        # Prefer the newest database format we know.
        recs.sort(key=lambda r: r.media_type)
        return self.get_blob_bytes(recs[-1])

    def write_index_bytes(self, data: bytes, db_version: str) -> None:
        rec = self.put_blob_bytes(data, f"{MT_INDEX_PREFIX}{db_version}+json", "none")
        self.backend.write(INDEX_MANIFEST, manifest_bytes([rec]))


def _verify(data: bytes, record: BlobRecord, where: str) -> None:
    if len(data) != record.content_length:
        raise IntegrityError(f"{where}/{record.path}: size {len(data)} but the manifest says {record.content_length}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.checksum:
        raise IntegrityError(f"{where}/{record.path}: checksum mismatch: the blob is corrupt")


def verify_blob_file(f, record: BlobRecord, where: str, *, checksum: bool = True) -> None:
    """Size and checksum of an open blob against its manifest record (IntegrityError if not).

    ``checksum=False`` checks the size only, for a reader that hashes the bytes it uses itself
    (install extracts a local mirror's blob while hashing it: see tar.extract.Expected).
    """
    size = os.fstat(f.fileno()).st_size
    if record.content_length >= 0 and size != record.content_length:
        raise IntegrityError(f"{where}: size {size} but the manifest says {record.content_length} "
                             "(truncated or replaced blob)")
    if not checksum:
        return
    h = hashlib.new(record.checksum_algorithm)
    f.seek(0)
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    if h.hexdigest() != record.checksum:
        raise IntegrityError(f"{where}: checksum mismatch ({record.checksum_algorithm} "
                             f"{h.hexdigest()[:12]}..., expected {record.checksum[:12]}...): "
                             "the blob is corrupt")
