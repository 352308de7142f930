"""The two ends of a `sync`: a layout v3 mirror (directory, s3, http) or an OCI registry.

A package travels as a `Carried`: the bytes a directory mirror keeps as its manifest (signed or
not) and the blobs they name. A directory mirror stores exactly that. A registry stores an
image (the dependencies' tarballs, then the package's, as layers; a config holding the spec, as
`push` makes it) and, when the manifest is signed, the manifest itself as the image's signature
artifact with the original spec blob beside it: install verifies that manifest and uses the
tarball and spec by their signed digests, so the signature made for the directory mirror keeps
working, and the way back to a directory gives the original bytes again. Between registries the
image and its signature artifact are copied byte for byte.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import tarfile
import zlib
from dataclasses import dataclass
from typing import IO, cast

from ..errors import BincacheError, BlobNotFound, MirrorError
from ..limits import MAX_SPECFILE
from ..mirror.layout_v3 import (
    LAYOUT_JSON,
    MT_SPEC_PREFIX,
    TARBALL_TYPES,
    BlobRecord,
    LayoutV3Cache,
    clearsigned_payload,
    is_clearsigned,
    manifest_bytes,
    parse_manifest,
)
from ..mirror.oci import OciCache, leaves_first
from ..oci import image as img
from ..oci.client import OCI_MANIFEST, Descriptor, FetchedManifest, Platform
from ..spec import Spec, parse_specfile

log = logging.getLogger(__name__)
KEY_MANIFESTS = "v3/manifests/key"


@dataclass
class Carried:
    spec: Spec  # the index's
    raw: bytes
    records: list[BlobRecord]
    image: FetchedManifest | None = None  # from a registry: copied as it is to another one
    signature: FetchedManifest | None = None
    specfile: bytes | None = None  # for an image made here: its config's spec file
    diff_id: str | None = None  # ... and the tarball's uncompressed digest
    resigned: bool = False  # `raw` was signed by this run (--resign, or a converted v2 package)

    @property
    def tarball(self) -> BlobRecord:
        return next(r for r in self.records if r.media_type in TARBALL_TYPES.values())

    @property
    def spec_record(self) -> BlobRecord:
        return next(r for r in self.records if r.media_type.startswith(MT_SPEC_PREFIX))

    @property
    def signed(self) -> bool:
        return is_clearsigned(self.raw)


def _record(desc: Descriptor) -> BlobRecord:
    algorithm, _, hexdigest = desc.digest.partition(":")
    return BlobRecord(int(desc.size), desc.media_type, "none", hexdigest, algorithm)


def _digest(rec: BlobRecord) -> str:
    return f"{rec.checksum_algorithm}:{rec.checksum}"


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


class _Joined:
    """A read-only stream over an iterator of byte chunks."""

    def __init__(self, chunks):
        self.chunks, self.buf = chunks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.chunks)
            except StopIteration:
                break
        out, self.buf = (self.buf, b"") if n < 0 else (self.buf[:n], self.buf[n:])
        return out


def layer_facts(path: str, compression: str = "gzip") -> tuple[str, bytes | None]:
    """(diff_id, the package's own spec file) of a package tarball, in one streamed pass: the
    sha256 of the uncompressed tar (an image layer's diff_id) and ``<prefix>/.spack/spec.json``
    (the shallowest one; read into memory, bounded, never extracted)."""
    found: tuple[int, bytes] | None = None
    with open(path, "rb") as raw, contextlib.ExitStack() as stack:
        if compression == "zstd":
            from ..tar.zstd import chunks

            plain: _Joined | gzip.GzipFile = _Joined(chunks(raw, 1 << 20))
        else:
            plain = stack.enter_context(gzip.GzipFile(fileobj=raw))
        stream = _Hashing(plain)
        try:
            with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
                for m in tar:
                    depth = m.name.count("/")
                    if (m.isfile() and m.name.endswith(".spack/spec.json") and m.size <= MAX_SPECFILE
                            and (found is None or depth < found[0])):
                        member = tar.extractfile(m)
                        if member is not None:
                            found = (depth, member.read())
        except (tarfile.TarError, EOFError, zlib.error, OSError):
            found = None  # not a tarball we can read: the layer still gets its digest
        while stream.read(1 << 20):
            pass
    return "sha256:" + stream.h.hexdigest(), (found[1] if found else None)


def own_specfile(data: bytes | None, spec) -> bytes | None:
    """The tarball's spec file when it describes `spec` (the format the package was built
    with, which every Spack that reads the registry reads), else None."""
    if data is None:
        return None
    try:
        return data if parse_specfile(data, "the tarball's spec file")[0].hash == spec.hash else None
    except BincacheError:
        return None


class DirSide:
    """A layout v3 mirror: the manifest is the commit point, written after its blobs."""

    def __init__(self, cache: LayoutV3Cache):
        self.cache, self.url = cache, cache.url

    def check_writable(self) -> None:
        self.cache.backend.check_writable()

    def has(self, spec) -> bool:
        return self.cache.backend.exists(self.cache.manifest_path(spec.name, spec.version, spec.hash))

    def carried(self, spec) -> Carried:
        raw = self.cache.fetch_manifest_raw(spec)
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        return Carried(spec, raw, parse_manifest(payload, raw, f"{self.url} {spec.short()}").records)

    def has_blob(self, rec: BlobRecord) -> bool:
        return self.cache.backend.exists(rec.path)

    def local_path(self, rec: BlobRecord) -> str | None:
        return self.cache.backend.local_path(rec.path)

    def fetch_blob(self, rec: BlobRecord, dest: str) -> None:
        self.cache.fetch_blob(rec, dest)  # checked against the record

    def read_blob(self, rec: BlobRecord) -> bytes:
        return self.cache.get_blob_bytes(rec)

    def put_blob(self, rec: BlobRecord, path: str) -> None:
        self.cache.backend.put_file(rec.path, path)

    def blobs_for(self, carried: Carried) -> list[BlobRecord]:
        return list(carried.records)

    def wants_image(self, carried: Carried) -> bool:
        return False

    def commit(self, carried: Carried, layers: dict) -> None:
        s = carried.spec
        self.cache.backend.write(self.cache.manifest_path(s.name, s.version, s.hash), carried.raw)

    def finish(self, source, carried: list[Carried], copy_manifest) -> None:
        """Public keys and layout.json: from a layout v3 source as they are."""
        if isinstance(source, DirSide):
            for rel in _key_manifests(source.cache):
                if not self.cache.backend.exists(rel):
                    copy_manifest(rel, source.cache.backend.read(rel))
            try:
                layout = source.cache.backend.read(LAYOUT_JSON)
            except BincacheError:
                layout = None
            if layout is not None and not self.cache.backend.exists(LAYOUT_JSON):
                self.cache.backend.write(LAYOUT_JSON, layout)
        else:
            self.cache.write_layout("gpg" if any(c.signed for c in carried) else None)


def _key_manifests(cache: LayoutV3Cache) -> list[str]:
    try:
        return cache.backend.list(KEY_MANIFESTS)
    except BincacheError:
        return []  # http: the keys stay where they are (install them from the source)


class OciSide:
    """A registry repository: the package's tag is the commit point, written last."""

    def __init__(self, cache: OciCache):
        self.cache, self.url = cache, cache.url
        self.client, self.image = cache.client, cache.image

    def check_writable(self) -> None:
        pass  # the first upload says so, with the registry's own words

    def same_registry(self, other) -> bool:
        return isinstance(other, OciSide) and other.image.api_host == self.image.api_host

    def has(self, spec) -> bool:
        return self.client.manifest_digest(self.cache.tag_ref(spec.name, spec.version, spec.hash)) is not None

    def carried(self, spec) -> Carried:
        ref = self.cache.tag_ref(spec.name, spec.version, spec.hash)
        manifest = self.client.resolve_image(ref, Platform(architecture=img.goarch()))
        doc = manifest.json()
        try:
            tarball = Descriptor.from_json(doc["layers"][-1])
            config = Descriptor.from_json(doc["config"])
        except (KeyError, IndexError, TypeError) as exc:
            raise MirrorError(f"{self.url}: {ref.tag} is not a package image") from exc
        signature = self.cache.signature_manifest(manifest)
        if signature is None:
            records = OciCache._records(tarball, config)
            return Carried(spec, manifest_bytes(records), records, manifest)
        try:
            layer = Descriptor.from_json(signature.json()["layers"][0])
        except (KeyError, IndexError, TypeError) as exc:
            raise MirrorError(f"{self.url}: the signature of {ref.tag} has no layer") from exc
        raw = self.client.fetch_blob_bytes(self.image, layer.digest, layer.size, max_size=1 << 20)
        # Carried, not trusted: whoever installs the copy verifies it.
        records = parse_manifest(clearsigned_payload(raw), raw, f"{self.url} {ref.tag}").records
        return Carried(spec, raw, records, manifest, signature)

    def has_blob(self, rec: BlobRecord) -> bool:
        return self.client.blob_exists(self.image, _digest(rec))

    def local_path(self, rec: BlobRecord) -> str | None:
        return None

    def fetch_blob(self, rec: BlobRecord, dest: str) -> None:
        self.client.fetch_blob(self.image, _digest(rec), dest, rec.content_length)  # verified

    def read_blob(self, rec: BlobRecord) -> bytes:
        return self.client.fetch_blob_bytes(self.image, _digest(rec), rec.content_length)

    def put_blob(self, rec: BlobRecord, path: str) -> None:
        self.client.upload_blob(self.image, path, _digest(rec), check_exists=False)

    def mount(self, rec: BlobRecord, source: OciSide) -> bool:
        return self.client.mount_blob(self.image, _digest(rec), source.image.name)

    def wants_image(self, carried: Carried) -> bool:
        """True when the image is made here (the source was no registry)."""
        return carried.image is None

    def blobs_for(self, carried: Carried) -> list[BlobRecord]:
        if carried.image is None:
            return list(carried.records)
        descs = []
        for manifest in (carried.image, carried.signature):
            if manifest is not None:
                doc = manifest.json()
                descs += [doc["config"], *(doc.get("layers") or [])]
        return list({d["digest"]: _record(Descriptor.from_json(d)) for d in descs}.values())

    def existing_layer(self, spec) -> img.Layer | None:
        """A dependency's layer from its image already in this repository, or None."""
        try:
            manifest, config = self.client.fetch_image(self.cache.tag_ref(spec.name, spec.version, spec.hash))
            layer = Descriptor.from_json(manifest.json()["layers"][-1])
            return img.Layer(layer.digest, str(config["rootfs"]["diff_ids"][-1]), layer.size)
        except (BlobNotFound, KeyError, IndexError, TypeError):
            return None

    def commit(self, carried: Carried, layers: dict) -> None:
        """The signature artifact (if any), then the image under the package's tag."""
        tag = self.cache.tag_ref(carried.spec.name, carried.spec.version, carried.spec.hash)
        if carried.image is not None:
            if carried.resigned:
                spec_rec = carried.spec_record
                config = carried.image.json()["config"]["digest"]
                self.cache.publish_signature(carried.image, carried.raw, [] if _digest(spec_rec) == config else [
                    Descriptor(spec_rec.media_type, _digest(spec_rec), spec_rec.content_length)])
            elif carried.signature is not None:
                self._put_signature_manifest(carried.image, carried.signature)
            self.client.put_manifest(tag, carried.image.data, carried.image.media_type)
            return
        assert carried.specfile is not None  # a package without an image was read with them
        nodes = parse_specfile(carried.specfile, f"{self.url} {carried.spec.short()}")
        own = layer_of(carried)
        by_hash = {n.hash: n for n in nodes}
        image_layers = []
        for h in leaves_first(by_hash, nodes[0].hash)[:-1]:
            layer = layers.get(h) or self.existing_layer(by_hash[h])
            if layer is None:
                log.warning("%s: dependency %s is not in %s; its image will lack that layer",
                            carried.spec.short(), by_hash[h].short(), self.url)
                continue
            image_layers.append(layer)
        image_layers.append(own)
        config = img.build_config(
            layers=image_layers, env=img.image_env([], exists=lambda _: False),
            spack_keys=img.spack_config_keys(carried.specfile, own.digest),
            architecture=img.goarch(nodes[0].target))
        manifest = self.cache.put_image(config, image_layers,
                                        {"org.opencontainers.image.description": carried.spec.short()})
        if carried.signed:
            spec_rec = carried.spec_record
            self.cache.publish_signature(manifest, carried.raw, [Descriptor(
                spec_rec.media_type, _digest(spec_rec), spec_rec.content_length)])
        self.client.put_manifest(tag, manifest.data, OCI_MANIFEST)

    def _put_signature_manifest(self, image: FetchedManifest, signature: FetchedManifest) -> None:
        _, indexed = self.client.put_manifest(self.image.with_digest(signature.digest),
                                              signature.data, signature.media_type or OCI_MANIFEST)
        if not indexed:
            self.client.put_manifest(self.image.with_tag(img.signature_tag(image.digest)),
                                     signature.data, signature.media_type or OCI_MANIFEST)

    def finish(self, source, carried: list[Carried], copy_manifest) -> None:
        pass  # a registry holds no public keys: trust them from the source


def specfile_bytes(data: bytes, rec: BlobRecord) -> bytes:
    if rec.compression == "gzip" or data[:2] == b"\x1f\x8b":
        return zlib.decompress(data, 31)
    return data


def layer_of(carried: Carried) -> img.Layer:
    assert carried.diff_id is not None  # learned when the tarball was read
    rec = carried.tarball
    return img.Layer(_digest(rec), carried.diff_id, rec.content_length,
                     img.LAYER_ZSTD if rec.compression == "zstd" else img.LAYER_GZIP)


__all__ = ["Carried", "DirSide", "OciSide", "layer_facts", "layer_of", "own_specfile", "specfile_bytes"]
