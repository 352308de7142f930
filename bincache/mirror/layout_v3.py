"""Spack's build cache layout v3 over a byte backend (directory, http, s3).

    v3/layout.json, v3/manifests/spec/<name>/<name>-<version>-<hash>.spec.manifest.json,
    v3/manifests/index/index.manifest.json, v3/manifests/key/..., blobs/sha256/<xx>/<sha256>

Blobs are written before the manifest that names them: the manifest is the commit point.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..atomic import atomic_path
from ..errors import BlobNotFound, IntegrityError, MirrorError, SignatureError
from ..limits import MAX_MANIFEST, load_json
from ..signing.cleartext import clearsigned_text, is_clearsigned
from ..spec import v5_specfile
from .base import (  # noqa: F401  (the records are imported from here too)
    MT_SPEC_PREFIX,
    MT_TARBALL,
    MT_TARBALL_ZSTD,
    TARBALL_TYPES,
    BlobRecord,
    ByteBackend,
    DirListing,
    Manifest,
    PackageId,
    PackageManifest,
    Packed,
    PushOutcome,
    Record,
    Signer,
    SpecRef,
    describe,
    directory_lock,
    read_specfile_entry,
    refuse_options,
)
from .pushed import PushedEntries

if TYPE_CHECKING:
    from ..spec import Spec
    from .config import MirrorRef

LAYOUT_VERSION = 3
MT_INDEX_PREFIX = "application/vnd.spack.db.v"
MT_KEY = "application/pgp-keys"
MT_KEYINDEX = "application/vnd.spack.keyindex.v1+json"
SPEC_MANIFESTS = "v3/manifests/spec"
INDEX_MANIFEST = "v3/manifests/index/index.manifest.json"
LAYOUT_JSON = "v3/layout.json"
KEY_MANIFESTS = "v3/manifests/key"
KEYS_MANIFEST = f"{KEY_MANIFESTS}/keys.manifest.json"
V2_KEYS = "build_cache/_pgp"
V2_KEY_INDEX = f"{V2_KEYS}/index.json"
_MANIFEST_NAME = re.compile(r"^(?P<stem>.+)-(?P<hash>[a-z2-7]{32})\.spec\.manifest\.json$")
_FPR = re.compile(r"^[0-9A-F]{40}$")
#: A remote blob at least this big is looked for (HEAD) before it is uploaded: the upload it
#: may save costs more than the request. A smaller one is PUT at once; its path is its digest,
#: so writing it again changes nothing. (A local mirror always looks: a stat is cheaper.)
HEAD_BEFORE_PUT = 1 << 20


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


def staging_dir(backend: ByteBackend) -> str:
    """A temporary directory on the mirror's file system when it has one (copy-free publish)."""
    root = backend.root
    if root:
        from ..staging import make_private_dir

        backend.check_writable()
        # Locked while this create lives: an interrupted one's packed tarballs are removed by
        # the next create into the same mirror.
        private = make_private_dir(os.path.join(root, ".bincache-staging"), "create-")
        weakref.finalize(backend, private.close)
        return private.path
    return tempfile.mkdtemp(prefix="bincache-")


def _refs(rels: Iterable[str]) -> list[SpecRef]:
    refs = []
    for rel in rels:
        parts = rel.split("/")
        m = _MANIFEST_NAME.match(parts[-1])
        if not m or len(parts) < 5:
            continue
        name = parts[-2]
        stem = m.group("stem")
        version = stem[len(name) + 1:] if stem.startswith(name + "-") else stem.rsplit("-", 1)[-1]
        refs.append(SpecRef(name, version, m.group("hash")))
    return refs


class LayoutV3Cache:
    """A build cache in Spack's layout v3, over a backend that stores bytes at relative paths."""

    kind: ClassVar[str] = "layout-v3"
    push_options: ClassVar[frozenset[str]] = frozenset()
    index_remedy: ClassVar[str] = "run bincache update-index"
    compressions: ClassVar[tuple[str, ...]] = ("gzip", "zstd")  # Spack >= 1.0 reads gzip
    sharded_index: ClassVar[bool] = True
    index_write_atomic: ClassVar[bool] = True
    needs_diff_id: ClassVar[bool] = False

    def __init__(self, backend: ByteBackend, ref: MirrorRef | None = None):
        self.backend: ByteBackend = backend
        self.ref = ref
        self.url = backend.url
        self._layout_written: str | None = None  # layout.json as this cache read or wrote it
        self._layout_lock = threading.Lock()
        self._pushed = PushedEntries()  # spec files pushed here, for the index update after

    def __repr__(self) -> str:
        return f"LayoutV3Cache({self.url})"

    # -- paths ---------------------------------------------------------------------------------
    @staticmethod
    def manifest_path(name: str, version: str, h: str) -> str:
        return f"{SPEC_MANIFESTS}/{name}/{name}-{version}-{h}.spec.manifest.json"

    def staging_dir(self) -> str:
        return staging_dir(self.backend)

    # -- blobs ---------------------------------------------------------------------------------
    def has_blob(self, record: Record) -> bool:
        return self.backend.exists(record.path)

    def _worth_looking(self, size: int) -> bool:
        return self.backend.root is not None or size >= HEAD_BEFORE_PUT

    def put_blob_bytes(self, data: bytes, media_type: str, compression: str = "none") -> BlobRecord:
        rec = BlobRecord(len(data), media_type, compression, hashlib.sha256(data).hexdigest())
        if not (self._worth_looking(len(data)) and self.backend.exists(rec.path)):
            self.backend.write(rec.path, data)
        return rec

    def put_blob_chunks(self, chunks: Iterable[bytes | memoryview], media_type: str,
                        compression: str = "none") -> BlobRecord:
        """put_blob_bytes for a blob made piece by piece (Spack's index.json spliced from the
        previous one): a directory mirror streams it to its file, hashing on the way, with
        no copy of it in memory; other mirrors get the pieces joined."""
        from .directory import DirectoryBackend

        backend = self.backend
        if isinstance(backend, DirectoryBackend):
            digest, size = backend.put_hashed(
                "blobs/sha256", chunks, lambda d: BlobRecord(0, media_type, compression, d).path)
            return BlobRecord(size, media_type, compression, digest)
        return self.put_blob_bytes(b"".join(chunks), media_type, compression)

    def put_blob_file(self, path: str, record: Record) -> None:
        if not (self._worth_looking(record.content_length) and self.backend.exists(record.path)):
            self.backend.put_file(record.path, path)

    def get_blob_bytes(self, record: Record) -> bytes:
        data = self.backend.read(record.path, max_size=record.content_length)
        _verify(data, record, self.url)
        return data

    def fetch_blob(self, record: Record, dest: str) -> None:
        """Copy a blob to ``dest`` after checking its size and SHA-256; no partial file is left."""
        with atomic_path(dest) as tmp:
            self.backend.get_file(record.path, tmp, max_size=record.content_length)
            with open(tmp, "rb") as f:
                verify_blob_file(f, record, f"{self.url}/{record.path}")

    def local_blob_path(self, record: Record) -> str | None:
        return self.backend.local_path(record.path)

    # -- packages ------------------------------------------------------------------------------
    def has_package(self, spec: PackageId) -> bool:
        return self.backend.exists(self.manifest_path(spec.name, spec.version, spec.hash))

    def configure_push(self, *, base_image: str | None = None, tag: str | None = None) -> None:
        refuse_options(self, {"base_image": base_image, "tag": tag}, describe(self.kind, self.backend))

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

    def push_package(self, packed: Packed, signer: Signer | None = None) -> None:
        """Blobs first (tarball, gzipped spec file), then the manifest, then layout.json."""
        self.backend.check_writable()
        codec = packed.compression
        tar_rec = BlobRecord(packed.result.compressed_size, TARBALL_TYPES[codec], codec,
                             packed.result.digest)
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
        self._pushed.add(s.hash, spec_data, tar_rec.content_length)
        self.write_layout("gpg" if signer is not None else None)

    def push_failed(self, spec: PackageId) -> None:
        """Nothing waits on another package's push here."""

    def finish_push(self, result: PushOutcome) -> None:
        """Nothing is written after a run: every manifest is its own commit point."""

    def fetch_manifest_raw(self, ref: PackageId) -> bytes:
        path = self.manifest_path(ref.name, ref.version, ref.hash)
        try:
            return self.backend.read(path, max_size=MAX_MANIFEST)
        except BlobNotFound:
            # An index that still lists it: its manifest went alone (by hand), which only the
            # full listing sees (docs/internals.md, "Finding new packages by their blobs").
            raise BlobNotFound(f"{self.url} has no package {ref.name}@{ref.version}/{ref.hash[:7]} "
                               f"(no {path}; if the index lists it, run bincache update-index "
                               "--full)") from None

    def fetch_manifest(self, ref: PackageId) -> PackageManifest:
        """The manifest, parsed WITHOUT verifying a signature (install verifies ``raw`` first)."""
        raw = self.fetch_manifest_raw(ref)
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        return parse_manifest(payload, raw, f"{self.url} {ref.name}/{ref.hash[:7]}")

    def manifest_from_verified(self, verified: bytes, fetched: Manifest, label: str) -> PackageManifest:
        """The manifest parsed from the text gpg verified (the fetched one is not trusted)."""
        return parse_manifest(verified, fetched.raw, label)

    def list_package_refs(self) -> list[SpecRef]:
        return _refs(self.backend.list(SPEC_MANIFESTS))

    def list_package_refs_of(self, names: Iterable[str]) -> list[SpecRef]:
        """The packages whose manifests sit in these names' directories (a part of the
        listing, for an update that knows which directories changed)."""
        return _refs(rel for n in sorted(names) for rel in self.backend.list(f"{SPEC_MANIFESTS}/{n}"))

    def spec_dirs(self, since: float = -math.inf) -> DirListing | None:
        """The per-name manifest directories by change time (names of those changed at or
        after ``since``); None where the store has no directories (s3, http): see
        ByteBackend.list_dirs."""
        # The clock from the index lock's directory: a touch of the spec directory would move
        # the change time index_blobs watches there.
        return self.backend.list_dirs(SPEC_MANIFESTS, since, clock_dir=INDEX_MANIFEST.rsplit("/", 1)[0])

    # -- index ---------------------------------------------------------------------------------
    def read_index_bytes(self) -> bytes | None:
        return self.read_index_tagged()[0]

    def read_index_tagged(self) -> tuple[bytes | None, str | None]:
        got = self.backend.read_tagged(INDEX_MANIFEST, MAX_MANIFEST)
        if got is None or got[0] is None:
            return None, None
        return self._index_blob(got[0]), got[1]

    def index_from_manifest(self, raw: bytes) -> bytes | None:
        """Spack's index.json named by the index manifest ``raw`` (read already)."""
        return self._index_blob(raw)

    def write_index_if(self, data: bytes, db_version: str, expect: str | None) -> bool:
        rec = self.put_blob_bytes(data, f"{MT_INDEX_PREFIX}{db_version}+json", "none")
        return self.backend.write_if(INDEX_MANIFEST, manifest_bytes([rec]), expect)

    def _index_blob(self, raw: bytes) -> bytes | None:
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

    def index_lock(self) -> contextlib.AbstractContextManager[None]:
        return directory_lock(self.backend, INDEX_MANIFEST.rsplit("/", 1)[0])

    def read_index_entry(self, ref: SpecRef) -> tuple[list[Spec], int]:
        pushed = self._pushed.get(ref.hash)
        if pushed is not None:  # pushed by this run: the spec file it wrote, no request
            from ..spec import parse_specfile

            return (parse_specfile(pushed[0], f"{self.url} spec {ref.name}/{ref.hash[:7]}"),
                    pushed[1])
        return read_specfile_entry(self, ref)

    # -- public keys ---------------------------------------------------------------------------
    def publish_public_keys(self, keys: Mapping[str, bytes]) -> list[str]:
        """``v3/manifests/key/<FPR>.key.manifest.json`` naming each armored key blob, then the
        key index ``keys.manifest.json`` naming every key the mirror holds."""
        self.backend.check_writable()
        for fpr, armored in keys.items():
            rec = self.put_blob_bytes(armored, MT_KEY, "none")
            self.backend.write(f"{KEY_MANIFESTS}/{fpr}.key.manifest.json", manifest_bytes([rec]))
        index = self._read_key_index()
        for fpr in keys:
            index.setdefault(fpr, {})
        doc = {"keys": {k: index[k] for k in sorted(index)}}
        rec = self.put_blob_bytes(json.dumps(doc, indent=2).encode(), MT_KEYINDEX, "none")
        self.backend.write(KEYS_MANIFEST, manifest_bytes([rec]))
        return list(keys)

    def _read_key_index(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.backend.read(KEYS_MANIFEST)
        except BlobNotFound:
            return {}
        records = [r for r in parse_manifest(raw, origin=f"{self.url}/{KEYS_MANIFEST}").records
                   if r.media_type == MT_KEYINDEX]
        if not records:
            return {}
        try:
            doc = json.loads(self.get_blob_bytes(records[0]))
            keys = doc["keys"]
            return {str(k).upper(): (v if isinstance(v, dict) else {}) for k, v in keys.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MirrorError(f"{self.url}/{KEYS_MANIFEST}: the key index is damaged") from None

    def key_fingerprints(self) -> list[str]:
        """Fingerprints of the keys the mirror publishes (its key index, else its key manifests)."""
        fprs = list(self._read_key_index())
        if not fprs:
            try:
                names = self.backend.list(KEY_MANIFESTS)
            except BlobNotFound:
                names = []
            except MirrorError:
                if self.backend.root is not None:
                    raise  # a local mirror that is missing: say so
                names = []  # http cannot list: the key index above is all there is
            for rel in names:
                base = rel.rsplit("/", 1)[-1]
                if base.endswith(".key.manifest.json"):
                    fprs.append(base[: -len(".key.manifest.json")].upper())
        return sorted(f for f in set(fprs) if _FPR.match(f))

    def public_key_blobs(self) -> list[tuple[str, str, bytes]]:
        """(fingerprint, path, key data) of every key the mirror publishes; an old cache's
        (layout v2, ``build_cache/_pgp/``) when there are no v3 keys."""
        blobs = []
        for fpr in self.key_fingerprints():
            path = f"{KEY_MANIFESTS}/{fpr}.key.manifest.json"
            try:
                raw = self.backend.read(path)
            except BlobNotFound:
                raise MirrorError(f"{self.url}: the key index names {fpr} but {path} is missing") from None
            records = [r for r in parse_manifest(raw, origin=f"{self.url}/{path}").records
                       if r.media_type == MT_KEY]
            if not records:
                raise MirrorError(f"{self.url}/{path}: lists no {MT_KEY} blob")
            blobs.append((fpr, path, self.get_blob_bytes(records[0])))
        return blobs or v2_public_key_blobs(self.backend)


def v2_public_key_blobs(backend: ByteBackend) -> list[tuple[str, str, bytes]]:
    """The keys of a layout v2 cache (``build_cache/_pgp/index.json`` and ``<FPR>.pub``)."""
    try:
        doc = json.loads(backend.read(V2_KEY_INDEX))
        fprs = sorted(f for f in (str(k).upper() for k in doc["keys"]) if _FPR.match(f))
    except BlobNotFound:
        return []
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MirrorError(f"{backend.url}/{V2_KEY_INDEX}: the key index is damaged") from None
    blobs = []
    for fpr in fprs:
        path = f"{V2_KEYS}/{fpr}.pub"
        try:
            blobs.append((fpr, path, backend.read(path)))
        except BlobNotFound:
            raise MirrorError(f"{backend.url}: the key index names {fpr} but {path} is missing") from None
    return blobs


def _verify(data: bytes, record: Record, where: str) -> None:
    if len(data) != record.content_length:
        raise IntegrityError(f"{where}/{record.path}: size {len(data)} but the manifest says {record.content_length}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.checksum:
        raise IntegrityError(f"{where}/{record.path}: checksum mismatch: the blob is corrupt")


def verify_blob_file(f: Any, record: Record, where: str, *, checksum: bool = True) -> None:
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
