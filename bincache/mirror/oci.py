"""An OCI registry as a build cache: every package is an image, the index is one more image.

    <registry>/<repo>:<name>-<version>-<hash>.spack   a package (layers: deps, then itself)
    <registry>/<repo>:index.spack                     the index (Spack's database JSON)
    referrer of a package manifest, or tag sha256-<hex>.sig: its GnuPG signature

A package's tarball is the same blob, same digest, as in a directory mirror. Its spec is the
image config (`spec` key, as Spack writes it), so `fetch_manifest` presents the config as the
package's spec record. The signature is a clearsigned layout-v3 style manifest (tarball and
spec records) that also names the image manifest's digest, so install verifies it with the same
code as a directory mirror's manifest, and this module checks that it belongs to the image.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BlobNotFound, MirrorError, SignatureError
from ..oci import image as img
from ..oci.auth import Credentials
from ..oci.blobcache import BlobCache
from ..oci.client import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    Descriptor,
    FetchedManifest,
    Platform,
    RegistryClient,
    TransientError,
    sha256_digest,
)
from ..oci.reference import ImageReference
from .base import (
    MT_SPEC_PREFIX,
    TARBALL_TYPES,
    BlobRecord,
    Manifest,
    PackageId,
    PackageManifest,
    Packed,
    PushOutcome,
    Record,
    Signer,
    SpecRef,
)
from .config import MirrorRef
from .layout_v3 import is_clearsigned, manifest_bytes
from .pushed import PushedEntries

if TYPE_CHECKING:
    from ..spec import Spec

log = logging.getLogger(__name__)

#: The spec record's media type: the config holds a v5 spec file's `spec` key.
MT_SPEC = f"{MT_SPEC_PREFIX}5+json"
#: How long a dependent waits for a dependency pushed by another thread of the same run
#: (packing and uploading a multi-GB package takes minutes); after that its image lacks the
#: dependency's layer, with a warning, and the package itself is still pushed.
DEPENDENCY_WAIT = 900.0
#: A package tarball at least this big is looked for (HEAD) before it is uploaded; a smaller
#: one, and every image config (unique to its package), goes straight to POST + PUT: for a
#: new package the HEAD would only say 404, and pushing bytes the registry has is harmless.
HEAD_BEFORE_UPLOAD = 1 << 20


def _ref_from_mirror(ref: MirrorRef) -> ImageReference:
    insecure = ref.insecure or ref.url.startswith("oci+http://")
    image = ImageReference.from_url(ref.url, insecure=insecure)
    return image


class OciCache:
    """The BuildCache protocol (mirror/base.py) over one registry repository.

    Its push options (:meth:`configure_push`): `base_image` (a reference: packages are put on
    that image, for the right platform) and `tag` (one more tag naming an image with every
    package pushed in this run).
    """

    kind: ClassVar[str] = "oci"
    push_options: ClassVar[frozenset[str]] = frozenset({"base_image", "tag"})
    index_remedy: ClassVar[str] = "run bincache update-index"
    sharded_index: ClassVar[bool] = False
    index_write_atomic: ClassVar[bool] = False
    needs_diff_id: ClassVar[bool] = True  # the image config's rootfs.diff_ids
    backend = None  # images, not files at paths
    compressions: ClassVar[tuple[str, ...]] = ("gzip", "zstd")  # tar+gzip (Spack) or tar+zstd

    def __init__(self, ref: MirrorRef, *, client: RegistryClient | None = None,
                 blob_cache: BlobCache | None = None, jobs: int = 8) -> None:
        self.ref = ref  # install reads `ref.signed`, as for every cache
        self.image = _ref_from_mirror(ref)
        self.url = ref.url
        creds = Credentials(ref.username, ref.password or "") if ref.username else None
        self.client = client or RegistryClient(self.image, creds, pool_size=max(16, jobs))
        self.blobs = blob_cache or BlobCache()
        self.base_image: str | None = None
        self.tag: str | None = None
        self.jobs = jobs
        self._lock = threading.Condition()
        self._layers: dict[str, img.Layer] = {}  # hash -> layer, pushed or read in this run
        self._expected: set[str] = set()  # hashes this run will push (has_package said no)
        self._failed: set[str] = set()
        self._base: tuple[FetchedManifest, dict[str, Any]] | None = None
        self._tagged: list[Any] = []  # packages pushed in this run, in push order, for `tag`
        self._images: dict[str, tuple[FetchedManifest, dict[str, Any]]] = {}
        #: Repositories on the same registry that may hold our blobs (e.g. the source of a
        #: sync): each upload's POST asks to mount from them, which costs no extra request.
        self.mount_from: list[str] = []
        self._shared_blobs: set[str] = set()
        self._listed: dict[str, str] = {}  # hash -> tag, from the last listing
        self._pushed = PushedEntries()  # configs pushed here, for the index update after

    def __repr__(self) -> str:
        return f"OciCache({self.image.scheme}://{self.image})"

    # --- helpers --------------------------------------------------------------------------
    def tag_ref(self, name: str, version: str, dag_hash: str) -> ImageReference:
        return self.image.with_tag(img.package_tag(name, version, dag_hash))

    def staging_dir(self) -> str:
        return tempfile.mkdtemp(prefix="bincache-oci-")

    def configure_push(self, *, base_image: str | None = None, tag: str | None = None) -> None:
        self.base_image, self.tag = base_image, tag

    # --- packages -------------------------------------------------------------------------
    def has_package(self, spec: PackageId) -> bool:
        ref = self.tag_ref(spec.name, spec.version, spec.hash)
        try:
            present = self.client.manifest_digest(ref) is not None
        except TransientError as exc:
            # A registry killed while writing a tag leaves it half-written, and it answers 500
            # for it from then on; pushing the package again rewrites the tag.
            log.warning("%s: %s is unreadable (%s); pushing it again", self.url, ref.tag, exc)
            present = False
        if not present:
            with self._lock:
                self._expected.add(spec.hash)
        return present

    def push_package(self, packed: Packed, signer: Signer | None = None) -> None:
        """Upload the tarball, the config and the manifest (last); sign it if asked."""
        spec = packed.spec
        try:
            own = img.Layer("sha256:" + packed.result.digest, "sha256:" + packed.result.diff_id,
                            int(packed.result.compressed_size),
                            img.LAYER_TYPES[packed.compression])
            self.client.upload_blob(self.image, packed.tarball, own.digest,
                                    check_exists=own.size >= HEAD_BEFORE_UPLOAD,
                                    mount_from=self.mount_from)
            deps = self._dependency_layers(packed)
            base_manifest, base_config = self._base_image(spec)
            docker = base_manifest is not None and base_manifest.media_type == DOCKER_MANIFEST
            hash_to_prefix = dict((packed.buildinfo or {}).get("hash_to_prefix") or {})
            prefixes = [packed.prefix] + [hash_to_prefix[h] for h, _ in reversed(deps)
                                          if h in hash_to_prefix]
            config = img.build_config(
                layers=[layer for _, layer in deps] + [own],
                env=img.image_env(prefixes, (base_config or {}).get("config", {}).get("Env")
                                  or ()),
                spack_keys=img.spack_config_keys(packed.specfile, own.digest),
                base_config=base_config,
                architecture=img.goarch(spec.target),
            )
            manifest = self._put_image(config, [layer for _, layer in deps] + [own],
                                       base_manifest, docker,
                                       {"org.opencontainers.image.description": spec.short()},
                                       fresh=True)
            tag_ref = self.tag_ref(spec.name, spec.version, spec.hash)
            if signer is not None:
                self._push_signature(manifest, own, config_desc=self._config_desc(manifest),
                                     signer=signer)
            self.client.put_manifest(tag_ref, manifest.data, manifest.media_type)
            self._pushed.add(spec.hash, img.dumps(config), own.size)
        except BaseException:
            with self._lock:
                self._failed.add(spec.hash)
                self._lock.notify_all()
            raise
        with self._lock:
            self._layers[spec.hash] = own
            self._images[spec.hash] = (manifest, config)
            self._tagged.append(packed)
            tagged = [p.spec for p in self._tagged]
            self._lock.notify_all()
        if self.tag:
            # Kept current after every package, so the tag is right even if the run stops.
            self._put_tag_image(self.tag, tagged)

    def _upload_once(self, data: bytes) -> None:
        """A blob every package shares (the empty config): looked for once per run."""
        digest = sha256_digest(data)
        with self._lock:
            if digest in self._shared_blobs:
                return
        self.client.upload_blob(self.image, data, digest)
        with self._lock:
            self._shared_blobs.add(digest)

    def push_failed(self, spec: PackageId) -> None:
        """Say that `spec` will not be pushed in this run after all (its packing failed), so
        that dependents stop waiting for its layer."""
        with self._lock:
            self._failed.add(spec.hash)
            self._lock.notify_all()

    def _config_desc(self, manifest: FetchedManifest) -> Descriptor:
        return Descriptor.from_json(manifest.json()["config"])

    def put_image(self, config: dict[str, Any], layers: list[img.Layer],
                  annotations: dict[str, str] | None = None) -> FetchedManifest:
        """Upload an image config and build (not push) an OCI manifest over `layers`."""
        return self._put_image(config, layers, None, False, annotations)

    def _put_image(self, config: dict[str, Any], layers: list[img.Layer],
                   base: FetchedManifest | None, docker: bool,
                   annotations: dict[str, str] | None, fresh: bool = False) -> FetchedManifest:
        """Upload a config, and build (not push) the manifest over base + `layers`.

        `fresh`: the config was just made for a new package, so no HEAD asks whether the
        registry has it (a copy, as sync makes, asks: on a resumed copy it is there)."""
        data = img.dumps(config)
        digest = sha256_digest(data)
        self.client.upload_blob(self.image, data, digest, check_exists=not fresh)
        base_layers = [Descriptor.from_json(d) for d in (base.json()["layers"] if base else [])]
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        config_type = img.DOCKER_CONFIG if docker else img.CONFIG
        doc = img.build_manifest(
            config=Descriptor(config_type, digest, len(data)),
            layers=base_layers + [layer.descriptor(docker) for layer in layers],
            media_type=media_type, annotations=annotations)
        raw = img.dumps(doc)
        return FetchedManifest(raw, media_type, sha256_digest(raw))

    def _dependency_layers(self, packed: Packed) -> list[tuple[str, img.Layer]]:
        """(hash, layer) of the link/run dependencies, leaves first (a runnable image's order)."""
        nodes = {n.hash: n for n in packed.nodes}
        order = leaves_first(nodes, packed.spec.hash)
        layers = []
        for h in order[:-1]:
            layer = self._layer_of(nodes[h])
            if layer is None:
                log.warning("%s: dependency %s is not in %s; its image will lack that layer",
                            packed.spec.short(), nodes[h].short(), self.url)
                continue
            layers.append((h, layer))
        return layers

    def _layer_of(self, spec: Any) -> img.Layer | None:
        """A dependency's layer: pushed in this run, else read from its image in the registry."""
        with self._lock:
            if spec.hash in self._layers:
                return self._layers[spec.hash]
        try:
            manifest, config = self.client.fetch_image(
                self.tag_ref(spec.name, spec.version, spec.hash))
            layer = Descriptor.from_json(manifest.json()["layers"][-1])
            diff_id = str(config["rootfs"]["diff_ids"][-1])
        except BlobNotFound:
            # Pushed by another thread of this run? Wait for it (deps are started first).
            with self._lock:
                if spec.hash in self._expected and spec.hash not in self._layers:
                    log.info("waiting for %s, pushed by another job", spec.short())
                waited = self._lock.wait_for(
                    lambda: spec.hash in self._layers or spec.hash in self._failed
                    or spec.hash not in self._expected, timeout=DEPENDENCY_WAIT)
                return self._layers.get(spec.hash) if waited else None
        except (KeyError, IndexError, TypeError) as exc:
            raise MirrorError(f"{self.url}: the image of {spec.short()} is not a package "
                              "image") from exc
        found = img.Layer(layer.digest, diff_id, layer.size,
                          img.LAYER_TYPES[img.layer_compression(layer.media_type)])
        with self._lock:
            self._layers[spec.hash] = found
        return found

    # --- base image -----------------------------------------------------------------------
    def _base_image(self, spec: Any) -> tuple[FetchedManifest | None, dict[str, Any] | None]:
        if not self.base_image:
            return None, None
        with self._lock:
            if self._base is not None:
                return self._base
        base = self._base_reference(self.base_image)
        platform = Platform(architecture=img.goarch(spec.target))
        reader = self.client if base.api_host == self.image.api_host else RegistryClient(base)
        manifest, config = reader.fetch_image(base, platform)
        for desc in (Descriptor.from_json(d) for d in manifest.json().get("layers", [])):
            if self.client.blob_exists(self.image, desc.digest):
                continue
            # Same registry: a cross-repository mount copies nothing.
            if reader is self.client and self.client.mount_blob(self.image, desc.digest,
                                                                base.name):
                continue
            self._copy_blob(reader, base, desc)
        with self._lock:
            self._base = (manifest, config)
        return self._base

    def _copy_blob(self, reader: RegistryClient, ref: ImageReference, desc: Descriptor) -> None:
        """Copy a blob from another registry, through the local download cache."""
        if self.blobs.verify(desc.digest, desc.size):
            self.client.upload_blob(self.image, str(self.blobs.path(desc.digest)), desc.digest,
                                    check_exists=False)
            return
        tmp = tempfile.mkdtemp(prefix="bincache-blob-")
        try:
            dest = os.path.join(tmp, "blob")
            reader.fetch_blob(ref, desc.digest, dest, desc.size)
            self.blobs.add(desc.digest, dest)
            self.client.upload_blob(self.image, dest, desc.digest, check_exists=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _base_reference(self, text: str) -> ImageReference:
        ref = ImageReference.from_url(text)
        # A bare reference on the mirror's own registry inherits its scheme (an insecure test
        # registry stays http); anything else is https unless written oci+http://.
        if "://" not in text and ref.api_host == self.image.api_host:
            ref.scheme = self.image.scheme
        return ref

    # --- the --tag image ------------------------------------------------------------------
    def _image_of(self, spec: Any) -> tuple[FetchedManifest, dict[str, Any]]:
        with self._lock:
            known = self._images.get(spec.hash)
        if known is None:
            known = self.client.fetch_image(self.tag_ref(spec.name, spec.version, spec.hash))
            with self._lock:
                self._images[spec.hash] = known
        return known

    def _put_tag_image(self, tag: str, specs: list[Any]) -> None:
        """One image with the layers of every package in `specs` (each once), on the base."""
        if not specs:
            return
        base_manifest, base_config = self._base_image(specs[0])
        docker = base_manifest is not None and base_manifest.media_type == DOCKER_MANIFEST
        base_digests = {d["digest"] for d in (base_manifest.json()["layers"]
                                              if base_manifest else [])}
        layers: list[img.Layer] = []
        seen: set[str] = set()
        envs: list[list[str]] = []
        for spec in specs:
            manifest, config = self._image_of(spec)
            descs = manifest.json().get("layers") or []
            diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
            for desc, diff_id in zip(descs, diff_ids):
                if desc["digest"] in base_digests or desc["digest"] in seen:
                    continue
                seen.add(desc["digest"])
                layers.append(img.Layer(desc["digest"], diff_id, int(desc["size"])))
            envs.append(list((config.get("config") or {}).get("Env") or []))
        config = img.build_config(
            layers=layers,
            env=img.merge_env(list(reversed(envs)),
                              (base_config or {}).get("config", {}).get("Env") or ()),
            base_config=base_config,
            architecture=img.goarch(specs[0].target))
        names = ", ".join(dict.fromkeys(s.short() for s in specs))
        manifest = self._put_image(config, layers, base_manifest, docker,
                                   {"org.opencontainers.image.description": names[:1000]})
        self.client.put_manifest(self.image.with_tag(img.sanitize_tag(tag)), manifest.data,
                                 manifest.media_type)

    def finish_push(self, result: PushOutcome) -> None:
        """After a push run: write the `tag` image with every package of the run, including
        the ones already in the registry (`result.skipped`)."""
        if not self.tag:
            return
        specs = [p.spec for p in result.pushed or self._tagged] + list(result.skipped)
        self._put_tag_image(self.tag, specs)

    # --- signatures -----------------------------------------------------------------------
    @staticmethod
    def _records(tarball: Descriptor | img.Layer, config: Descriptor) -> list[BlobRecord]:
        codec = img.layer_compression(tarball.media_type)
        return [BlobRecord(int(tarball.size), TARBALL_TYPES[codec], codec,
                           tarball.digest.split(":")[1]),
                BlobRecord(int(config.size), MT_SPEC, "none", config.digest.split(":")[1])]

    def _push_signature(self, manifest: FetchedManifest, own: img.Layer, *,
                        config_desc: Descriptor, signer: Signer) -> None:
        body = json.loads(manifest_bytes(self._records(own, config_desc)))
        body["subject"] = {"mediaType": manifest.media_type, "digest": manifest.digest,
                           "size": len(manifest.data)}
        signed = signer.clearsign(json.dumps(body, indent=0, separators=(",", ":")).encode())
        self.publish_signature(manifest, signed, fresh=True)

    def publish_signature(self, manifest: FetchedManifest, signed: bytes,
                          blobs: Sequence[Descriptor] = (), fresh: bool = False) -> None:
        """Attach a clearsigned document to an image manifest (before its tag is written).

        `blobs` (already in the repository) become more layers of the signature artifact, so a
        registry's garbage collector keeps what the signed text names besides the image.
        `fresh`: the document was just signed, so it is uploaded without asking first."""
        sig_digest = sha256_digest(signed)
        self.client.upload_blob(self.image, signed, sig_digest, check_exists=not fresh)
        self._upload_once(img.EMPTY_JSON)
        doc = img.build_manifest(
            config=Descriptor(img.EMPTY, sha256_digest(img.EMPTY_JSON), len(img.EMPTY_JSON)),
            layers=[Descriptor(img.SIGNATURE_LAYER, sig_digest, len(signed)), *blobs],
            subject=Descriptor(manifest.media_type, manifest.digest, len(manifest.data)),
            artifact_type=img.SIGNATURE_ARTIFACT)
        raw = img.dumps(doc)
        _, indexed = self.client.put_manifest(self.image.with_digest(sha256_digest(raw)), raw,
                                              OCI_MANIFEST)
        if not indexed:
            # No referrers API (distribution 2.8): a tag next to the image finds it instead.
            self.client.put_manifest(self.image.with_tag(img.signature_tag(manifest.digest)),
                                     raw, OCI_MANIFEST)

    def signature_manifest(self, manifest: FetchedManifest) -> FetchedManifest | None:
        """The signature artifact whose subject is an image manifest, or None (unsigned)."""
        found = self.client.referrers(self.image, manifest.digest, img.SIGNATURE_ARTIFACT)
        if found:
            return self.client.fetch_manifest(self.image.with_digest(found[0]["digest"]))
        try:
            return self.client.fetch_manifest(
                self.image.with_tag(img.signature_tag(manifest.digest)))
        except BlobNotFound:
            return None

    def _fetch_signature(self, manifest: FetchedManifest) -> bytes | None:
        """The clearsigned document of an image manifest, or None when it is unsigned."""
        sig_manifest = self.signature_manifest(manifest)
        if sig_manifest is None:
            return None
        layers = sig_manifest.json().get("layers") or []
        if not layers:
            return None
        desc = Descriptor.from_json(layers[0])
        return self.client.fetch_blob_bytes(self.image, desc.digest, desc.size, max_size=1 << 20)

    # --- reading packages -----------------------------------------------------------------
    def fetch_manifest(self, ref: PackageId) -> PackageManifest:
        """The package's records (tarball = last layer, spec = the config) and its signature.

        `raw` is the clearsigned signature document when the image is signed (install verifies
        it like any layout v3 manifest), else a v3-style manifest made from the image.
        """
        tagged = self.tag_ref(ref.name, ref.version, ref.hash)
        try:
            manifest = self.client.resolve_image(tagged, Platform(architecture=img.goarch()))
        except BlobNotFound:
            raise BlobNotFound(f"{self.url} has no package {ref.name}@{ref.version}/"
                               f"{ref.hash[:7]} (no tag {tagged.tag})") from None
        doc = manifest.json()
        try:
            tarball = Descriptor.from_json(doc["layers"][-1])
            config = Descriptor.from_json(doc["config"])
        except (KeyError, IndexError) as exc:
            raise MirrorError(f"{self.url}: {tagged.tag} is not a package image") from exc
        records = self._records(tarball, config)
        raw = self._fetch_signature(manifest)
        if raw is None:
            return PackageManifest(records, manifest_bytes(records), False, manifest.digest)
        if not is_clearsigned(raw):
            raise SignatureError(f"{self.url}: the signature of {tagged.tag} is not a clearsigned "
                                 "document")
        # Not parsed here: install verifies `raw` and hands gpg's text to manifest_from_verified.
        return PackageManifest(records, raw, True, manifest.digest)

    def manifest_from_verified(self, verified: bytes, fetched: Manifest,
                               label: str) -> PackageManifest:
        """The package's records from the signature text gpg verified (never from a parse of the
        fetched document): they must name the image that was fetched and its layers."""
        if not isinstance(fetched, PackageManifest):
            raise SignatureError(f"{label}: not a manifest of this registry")
        if not fetched.signed:
            return fetched
        try:
            payload = json.loads(verified)
            signed_records = [BlobRecord.from_dict(d) for d in payload["data"]]
            if "subject" not in payload:
                return self._carried_manifest(signed_records, fetched, label)
            subject = payload["subject"]["digest"]
        except (ValueError, KeyError, TypeError, MirrorError) as exc:
            raise SignatureError(f"{label}: the signed text of the image signature is not a "
                                 "package signature") from exc
        if subject != fetched.subject or signed_records != fetched.records:
            raise SignatureError(f"{label}: the signature was made for another image ({subject}, "
                                 f"not {fetched.subject}): refusing it")
        return PackageManifest(signed_records, fetched.raw, True, subject)

    @staticmethod
    def _carried_manifest(signed: list[BlobRecord], fetched: PackageManifest,
                          label: str) -> PackageManifest:
        """A directory mirror's signed manifest that `sync` carried along with the image: it
        names the tarball (which must be this image's last layer) and the original spec blob
        (in the repository, a layer of the signature artifact); both are used by their signed
        digests, so the image around them needs no signature of its own."""
        tarballs = [r for r in signed if r.media_type in TARBALL_TYPES.values()]
        if tarballs != [fetched.tarball]:
            raise SignatureError(f"{label}: the signed manifest names another tarball than the "
                                 "image's: refusing it")
        return PackageManifest(signed, fetched.raw, True, fetched.subject)

    def fetch_blob(self, record: Record, dest: str) -> None:
        """Download a blob to `dest`, verified (IntegrityError otherwise), via the local cache."""
        digest = f"{record.checksum_algorithm}:{record.checksum}"
        if self.blobs.copy_to(digest, dest, record.content_length):
            return
        self.client.fetch_blob(self.image, digest, dest, record.content_length)
        self.blobs.add(digest, dest)

    def local_blob_path(self, record: Record) -> str | None:
        return None  # a registry is never a local file system

    def get_blob_bytes(self, record: Record) -> bytes:
        digest = f"{record.checksum_algorithm}:{record.checksum}"
        data = self.blobs.read_bytes(digest)
        if data is None or len(data) != record.content_length:
            data = self.client.fetch_blob_bytes(self.image, digest, record.content_length)
            self.blobs.add_bytes(digest, data)
        return data

    def list_package_refs(self) -> list[SpecRef]:
        refs = []
        listed = {}
        for tag in self.client.list_tags(self.image):
            ref = _spec_ref_from_tag(tag)
            if ref is not None:
                refs.append(ref)
                listed[ref.hash] = tag
        self._listed = listed
        return refs

    # --- index ----------------------------------------------------------------------------
    # A tag cannot be compared-and-swapped: write_index_if checks (HEAD) just before the PUT,
    # and bincache.index reads the index back and lists the tags again after each write
    # (index_write_atomic is False).
    def read_index_bytes(self) -> bytes | None:
        return self.read_index_tagged()[0]

    def read_index_tagged(self) -> tuple[bytes | None, str | None]:
        """(index bytes, digest of the index manifest); one HEAD when the local index cache
        holds the manifest that digest names and the blob cache its layer."""
        from ..index_cache import IndexCache

        ref = self.image.with_tag(img.INDEX_TAG)
        digest = self.client.manifest_digest(ref)
        if digest is None:
            return None, None
        local, key = IndexCache(), f"{self.url}:{img.INDEX_TAG}"
        known = local.get_root(key)
        if known is not None and known[1] == digest and sha256_digest(known[0]) == digest:
            raw = known[0]
        else:
            try:
                fetched = self.client.fetch_manifest(self.image.with_digest(digest))
            except BlobNotFound:
                return None, None
            raw, digest = fetched.data, fetched.digest
            local.put_root(key, raw, digest)
        try:
            layer = Descriptor.from_json(json.loads(raw)["layers"][0])
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise MirrorError(f"{self.url}: the {img.INDEX_TAG} image has no index layer; "
                              "run bincache update-index") from exc
        data = self.blobs.read_bytes(layer.digest)
        if data is None:
            data = self.client.fetch_blob_bytes(self.image, layer.digest, layer.size,
                                                max_size=1 << 30)
            self.blobs.add_bytes(layer.digest, data)
        return data, digest

    def write_index_bytes(self, data: bytes, db_version: str) -> None:
        self._put_index(data, None, check=False)

    def write_index_if(self, data: bytes, db_version: str, expect: str | None) -> bool:
        return self._put_index(data, expect, check=True)

    def _put_index(self, data: bytes, expect: str | None, *, check: bool) -> bool:
        digest = sha256_digest(data)
        # Looked for first: two writers often make the same index, and uploading a blob the
        # registry has rewrites its link, which a concurrent manifest PUT may read empty.
        self.client.upload_blob(self.image, data, digest)
        self._upload_once(img.EMPTY_JSON)
        # Spack's shape: an image whose single layer is the index JSON (it is no tarball, but
        # a real image keeps registries' garbage collectors and mirroring tools happy).
        doc = img.build_manifest(
            config=Descriptor(img.CONFIG, sha256_digest(img.EMPTY_JSON), len(img.EMPTY_JSON)),
            layers=[Descriptor(img.LAYER_GZIP, digest, len(data))])
        ref = self.image.with_tag(img.INDEX_TAG)
        if check and self.client.manifest_digest(ref) != expect:
            return False
        self.blobs.add_bytes(digest, data)
        raw = img.dumps(doc)
        written = self.client.put_manifest(ref, raw, OCI_MANIFEST)[0]
        from ..index_cache import IndexCache

        IndexCache().put_root(f"{self.url}:{img.INDEX_TAG}", raw, written)
        return True

    def index_lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def read_index_entry(self, ref: SpecRef) -> tuple[list[Spec], int] | None:
        """(spec nodes, tarball size) of a package tag: one manifest GET, one config GET (no
        signature lookup, no platform resolution), none for a package this cache pushed. A tag
        that is no package image is skipped."""
        from ..spec import parse_specfile

        tag = self._listed.get(ref.hash) or img.package_tag(ref.name, ref.version, ref.hash)
        pushed = self._pushed.get(ref.hash)
        if pushed is not None:  # pushed by this run: the config it put, no request
            return parse_specfile(pushed[0], f"{self.url}:{tag}"), pushed[1]
        try:
            manifest = self.client.fetch_manifest(self.image.with_tag(tag))
            doc = manifest.json()
            config = Descriptor.from_json(doc["config"])
            size = int((doc.get("layers") or [{}])[-1].get("size", 0))
            data = self.client.fetch_blob_bytes(self.image, config.digest, config.size)
            return parse_specfile(data, f"{self.url}:{tag}"), size
        except (BlobNotFound, MirrorError, ValueError) as exc:
            log.warning("%s: skipping %s: %s", self.url, tag, exc)
            return None

    # --- public keys ----------------------------------------------------------------------
    def publish_public_keys(self, keys: Mapping[str, bytes]) -> list[str]:
        raise self._no_keys("publish")

    def public_key_blobs(self) -> list[tuple[str, str, bytes]]:
        raise self._no_keys("install")

    def _no_keys(self, verb: str) -> MirrorError:
        return MirrorError(f"cannot {verb} keys in {self.url}: key manifests exist only in "
                           "directory, http and s3 mirrors (Spack's layout v3)")


def leaves_first(nodes: dict[str, Any], root: str) -> list[str]:
    """Hashes of `root`'s link/run closure in `nodes`, each after its dependencies and `root`
    last: the layer order of a runnable image."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(h: str) -> None:
        node = nodes.get(h)
        if node is None or h in seen:
            return
        seen.add(h)
        for dep in sorted(node.link_run_deps(), key=lambda d: (d.name, d.hash)):
            visit(dep.hash)
        order.append(h)

    visit(root)
    return order


def _spec_ref_from_tag(tag: str) -> SpecRef | None:
    h = img.hash_from_tag(tag)
    if h is None:
        return None
    stem = tag[: -len(".spack")][: -len(h) - 1]
    name, _, version = stem.rpartition("-")
    if not name:
        name, version = stem, ""
    return SpecRef(name, version, h)


__all__ = ["OciCache"]
