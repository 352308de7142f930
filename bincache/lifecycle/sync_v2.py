"""A Spack layout v2 cache as a `sync` source, and `--resign`.

A v2 package travels as the layout v3 package `migrate` makes of it (same tarball, the spec file
as a spec blob). A v2 signature covers the spec file, not a manifest, so it cannot come along:
a signed v2 package is verified against the trusted keys and its new manifest signed with
``--resign KEY``; without a key it is refused, before anything is written.

``--resign`` on any source: a signed package is verified (only the text gpg returned is signed
again) and re-signed with KEY; an unsigned one stays unsigned.
"""

from __future__ import annotations

import json
import os
import threading

from ..config import mask_url
from ..errors import SignatureError
from ..mirror.layout_v2 import LayoutV2Cache
from ..mirror.layout_v3 import BlobRecord, manifest_bytes, parse_manifest
from ..signing import verify_clearsigned
from .migrate import v3_blobs
from .sync_sides import Carried
from .trust import verify_fetched


class V2Side:
    """Read side only: v2 packages, converted on the way (their blobs in a scratch directory
    when they are not local files)."""

    def __init__(self, cache: LayoutV2Cache, scratch: str, signer=None):
        self.cache, self.url, self.scratch, self.signer = cache, cache.url, scratch, signer
        self.files: dict[str, str] = {}  # sha256 -> a local file holding that blob
        self.lock = threading.Lock()

    def carried(self, spec) -> Carried:
        label = f"{mask_url(self.url)} {spec.name}@{spec.version}/{spec.hash[:7]}"
        fetched = self.cache.fetch_manifest(spec)
        if fetched.signed and self.signer is None:
            raise SignatureError(
                f"{label}: signed with a layout v2 signature (over the spec file), which a layout "
                "v3 mirror or a registry cannot carry: give --resign KEY to verify it and sign "
                "the copy")
        pkg = verify_fetched(self.cache, spec, fetched, unsigned=not fetched.signed)
        rec = pkg.manifest.tarball
        local = self.cache.backend.local_path(rec.path)
        if local is None:
            local = os.path.join(self.scratch, f"{spec.hash}.spack")
            self.cache.fetch_blob(rec, local)  # checked against the verified checksum
        tar_rec, spec_blob, spec_rec = v3_blobs(json.loads(pkg.text), rec.checksum,
                                                os.path.getsize(local))
        spec_path = os.path.join(self.scratch, f"{spec_rec.checksum}.spec.json.gz")
        with open(spec_path, "wb") as f:
            f.write(spec_blob)
        with self.lock:
            self.files[tar_rec.checksum] = local
            self.files[spec_rec.checksum] = spec_path
        body = manifest_bytes([tar_rec, spec_rec])
        if fetched.signed:
            body = self.signer.clearsign(body)
        return Carried(spec, body, [tar_rec, spec_rec], resigned=fetched.signed)

    def local_path(self, rec: BlobRecord) -> str | None:
        with self.lock:
            return self.files.get(rec.checksum)

    def fetch_blob(self, rec: BlobRecord, dest: str) -> None:
        raise AssertionError("every blob of a converted v2 package is a local file")

    def read_blob(self, rec: BlobRecord) -> bytes:
        path = self.local_path(rec)
        assert path is not None, "every blob of a converted v2 package is a local file"
        with open(path, "rb") as f:
            return f.read()


def resign(carried: Carried, signer, label: str) -> None:
    """Verify a signed package's manifest and sign the verified text with ``signer``."""
    if not carried.signed or carried.resigned:
        return
    text, _ = verify_clearsigned(carried.raw, source=label)
    carried.records = parse_manifest(text, None, label).records
    carried.raw = signer.clearsign(text)
    carried.resigned = True
