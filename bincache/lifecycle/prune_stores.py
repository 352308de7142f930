"""What `prune` deletes, per kind of mirror: manifests (the packages), then unreferenced blobs.

A layout v3 mirror (directory or s3) lists its blobs with their ages, so the grace period
applies to each blob. A registry lists no blobs and tells no ages: the blobs a prune may unlink
from the repository are the ones the deleted images (and their signature artifacts, and the
replaced index image) named, and only those that no manifest of the repository names when it is
listed again after the deletes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from ..config import mask_url
from ..errors import BincacheError, BlobNotFound, MirrorError, RegistryError
from ..mirror.layout_v3 import BlobRecord, LayoutV3Cache, clearsigned_payload, is_clearsigned
from ..mirror.oci import OciCache
from ..oci import image as img
from ..oci.client import Descriptor, FetchedManifest

BLOBS = "blobs"
MANIFESTS = "v3/manifests"


class LayoutStore:
    def __init__(self, cache: LayoutV3Cache):
        self.cache, self.url, self.backend = cache, cache.url, cache.backend

    def check_deletable(self) -> None:
        self.backend.check_writable()

    def _rel(self, spec) -> str:
        return self.cache.manifest_path(spec.name, spec.version, spec.hash)

    def push_times(self) -> dict[str, float]:
        """Package hash -> when its manifest was written (for --keep-newest)."""
        out = {}
        for rel, mtime, _ in self.backend.list_stat(f"{MANIFESTS}/spec"):
            h = rel.rsplit("-", 1)[-1].split(".", 1)[0]
            out[h] = mtime
        return out

    def _names(self, rel: str) -> set[str]:
        """The blob paths one manifest names. A manifest that cannot be read stops the prune:
        the blobs it names are unknown, so no blob could be deleted safely."""
        try:
            raw = self.backend.read(rel)
            payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
            data = json.loads(payload)["data"]
        except BlobNotFound:
            return set()  # deleted meanwhile (by us, or another prune)
        except (BincacheError, ValueError, KeyError, TypeError) as e:
            raise MirrorError(f"{rel}: unreadable manifest ({e}); no blob was deleted: fix or "
                              "remove it and run again") from None
        names = set()
        for d in data if isinstance(data, list) else []:
            try:
                names.add(BlobRecord.from_dict(d).path)
            except BincacheError:
                continue  # a record bincache cannot name a path for names no blob of ours
        return names

    def referenced(self, doomed: Sequence = ()) -> set[str]:
        """Every blob the manifests name (spec, index and key manifests), but the doomed."""
        skip = {self._rel(s) for s in doomed}
        out: set[str] = set()
        for rel in self.backend.list(MANIFESTS):
            if rel not in skip:
                out |= self._names(rel)
        return out

    def delete_packages(self, specs: list) -> None:
        for s in specs:
            self.backend.delete(self._rel(s))
            root = self.backend.root
            if root is not None:
                _rmdir_empty(root, f"{MANIFESTS}/spec/{s.name}")

    def candidates(self, doomed: list) -> list[tuple[str, float | None, int]]:
        """Every blob of the mirror, with its age."""
        return [(rel, mtime, size) for rel, mtime, size in self.backend.list_stat(BLOBS)]

    def delete_blob(self, rel: str) -> None:
        self.backend.delete(rel)


def _rmdir_empty(root: str, rel: str) -> None:
    try:
        os.rmdir(os.path.join(root, *rel.split("/")))
    except OSError:
        pass


class OciStore:
    def __init__(self, cache: OciCache):
        self.cache, self.url = cache, cache.url
        self.client, self.image = cache.client, cache.image
        self.unlinkable: dict[str, int] = {}  # digest -> size, named by what was deleted

    def check_deletable(self) -> None:
        """Ask the registry to delete a manifest that does not exist: 404 when it allows
        deletes, 405 when it does not (nothing changes either way)."""
        try:
            self.client.delete_manifest(self.image, "sha256:" + "0" * 64)
        except RegistryError as e:
            raise MirrorError(f"{mask_url(self.url)}: {e}; nothing was deleted") from None

    def push_times(self) -> dict[str, float]:
        return {}  # a registry keeps no push dates (images say 1970): newest = highest version

    def _image(self, spec) -> FetchedManifest | None:
        try:
            return self.client.fetch_manifest(self.cache.tag_ref(spec.name, spec.version, spec.hash))
        except BlobNotFound:
            return None

    @staticmethod
    def _blobs_of(manifest: FetchedManifest) -> dict[str, int]:
        doc = manifest.json()
        descs = [d for d in [doc.get("config"), *(doc.get("layers") or [])] if isinstance(d, dict)]
        out = {}
        for d in descs:
            try:
                desc = Descriptor.from_json(d)
            except (KeyError, TypeError, ValueError):
                continue
            out[desc.digest] = desc.size
        return out

    def referenced(self, doomed: Sequence = ()) -> set[str]:
        """Every blob a manifest of the repository names (images, signatures, the index)."""
        skip = {img.package_tag(s.name, s.version, s.hash) for s in doomed}
        out: set[str] = set()
        for tag in self.client.list_tags(self.image):
            if tag in skip:
                continue
            try:
                manifest = self.client.fetch_manifest(self.image.with_tag(tag))
            except BlobNotFound:
                continue  # deleted meanwhile
            out |= set(self._blobs_of(manifest))
            if img.is_package_tag(tag):
                signature = self.cache.signature_manifest(manifest)
                if signature is not None:
                    out |= set(self._blobs_of(signature))
        return out

    def delete_packages(self, specs: list) -> None:
        """Each package's signature artifact, then its image (which removes its tag)."""
        index = self._index_manifest()
        if index is not None:
            self.unlinkable.update(self._blobs_of(index))  # replaced by the update that follows
        for s in specs:
            manifest = self._image(s)
            if manifest is None:
                continue
            self.unlinkable.update(self._blobs_of(manifest))
            signature = self.cache.signature_manifest(manifest)
            if signature is not None:
                self.unlinkable.update(self._blobs_of(signature))
                self.client.delete_manifest(self.image, signature.digest)
            self.client.delete_manifest(self.image, manifest.digest)

    def _index_manifest(self) -> FetchedManifest | None:
        try:
            return self.client.fetch_manifest(self.image.with_tag(img.INDEX_TAG))
        except BlobNotFound:
            return None

    def candidates(self, doomed: list) -> list[tuple[str, float | None, int]]:
        """The blobs the doomed images name (a dry run's estimate; the real run unlinks what
        the deleted ones named). Age 0: a registry tells none, so the grace period cannot
        apply to single blobs (None); the second listing protects what a push names meanwhile."""
        if not self.unlinkable:
            for s in doomed:
                manifest = self._image(s)
                if manifest is not None:
                    self.unlinkable.update(self._blobs_of(manifest))
        return [(d, None, size) for d, size in sorted(self.unlinkable.items())]

    def delete_blob(self, digest: str) -> None:
        self.client.delete_blob(self.image, digest)


def store_of(cache):
    if isinstance(cache, OciCache):
        return OciStore(cache)
    return LayoutStore(cache)
