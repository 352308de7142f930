"""`migrate`: a Spack layout v2 cache to layout v3, in place or into another mirror.

As Spack 1.0's ``buildcache migrate`` does: each package's spec file is read (its signature
verified), ``binary_cache_checksum`` becomes the tarball's blob record, the spec file (without
that key, with ``archive_size``) becomes a gzipped spec blob, and a v3 manifest names both.

Signatures cannot be carried over: a v2 signature covers the spec file, v3 signs the manifest.
So a signed package is verified against the trusted keys and its manifest signed again with
``key``; without a key, signed packages are refused unless ``unsigned`` (then they are migrated
unsigned, and that is said). Every package is read and verified before anything is written, so
a refusal changes nothing. ``v3/layout.json`` is written last and only when every package made
it: until then a mirror migrated in place still reads as v2. The old layout stays unless
``delete_old``. A second run skips what is already there (and resumes an interrupted run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..config import mask_url
from ..errors import (
    BincacheError,
    BlobNotFound,
    IntegrityError,
    MirrorError,
    SignatureError,
    UsageError,
)
from ..index import read_index, update_index
from ..mirror import open_cache
from ..mirror.base import ByteBackend, Manifest, PackageId
from ..mirror.layout_v2 import BUILD_CACHE, LayoutV2Cache, holds_v2
from ..mirror.layout_v3 import (
    LAYOUT_JSON,
    MT_SPEC_PREFIX,
    MT_TARBALL,
    BlobRecord,
    LayoutV3Cache,
    clearsigned_payload,
    gzip_bytes,
    is_clearsigned,
    manifest_bytes,
    parse_manifest,
)
from ..spec import parse_specfile
from .trust import UnsignedPackage, verify_fetched

#: Spack 1.0's migrate labels the spec blob v5 whatever the file's own ``_meta`` says (a v4 file
#: from Spack 0.2x stays v4 inside): readers take the format from ``_meta``, and Spack 1.0's
#: reader looks for this media type. bincache does the same, so Spack reads what it migrates.
MT_MIGRATED_SPEC = f"{MT_SPEC_PREFIX}5+json"


@dataclass
class MigratedPackage:
    name: str
    version: str
    hash: str
    action: str  # migrated | present | failed
    signed_v2: bool = False
    v2_signer: str | None = None  # fingerprint whose v2 signature was verified
    signer: str | None = None  # fingerprint that signed the v3 manifest
    message: str = ""

    def short(self) -> str:
        return f"{self.name}@{self.version}/{self.hash[:7]}"


@dataclass
class MigrateResult:
    source: str
    dest: str
    in_place: bool
    packages: list[MigratedPackage] = field(default_factory=list)
    key: str | None = None
    index_updated: bool = False
    layout_written: bool = False
    deleted_old: bool = False

    @property
    def failed(self) -> list[MigratedPackage]:
        return [p for p in self.packages if p.action == "failed"]


@dataclass
class _Plan:
    ref: PackageId
    manifest: Manifest  # a V2Manifest, from the verified spec file
    text: bytes  # the verified spec file
    signed: bool
    v2_signer: str | None


def _has_v2(backend) -> bool:
    try:
        return holds_v2(backend)
    except BincacheError:
        return False


def _layout_backend(ref, what: str):
    cache = open_cache(ref)
    backend = cache.backend
    if backend is None:
        raise MirrorError(f"{mask_url(cache.url)}: migrate {what} Spack's file layouts (a "
                          "directory, http or s3 mirror), not an OCI registry")
    return backend


def _refs(v2: LayoutV2Cache) -> list:
    try:
        return v2.list_package_refs()
    except MirrorError:  # http cannot list: the index names the packages (as Spack migrates)
        idx = read_index(v2)
        if idx is None:
            raise
        return [e.spec for e in idx.packages()]


def _present(v3: LayoutV3Cache, ref) -> bool:
    """A v3 manifest whose blobs are all there (a half-written package is migrated again)."""
    try:
        raw = v3.backend.read(v3.manifest_path(ref.name, ref.version, ref.hash))
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        records = parse_manifest(payload, raw).records
    except BincacheError:
        return False
    return all(v3.backend.exists(r.path) for r in records)


def _plan(v2: LayoutV2Cache, ref, *, resign: bool, unsigned: bool) -> _Plan:
    fetched = v2.fetch_manifest(ref)
    if fetched.signed and not resign and not unsigned:
        raise SignatureError(
            "signed, and a layout v2 signature (over the spec file) cannot be carried over to "
            "layout v3 (which signs the manifest): give -k KEY to verify it and sign the new "
            "manifest, or --unsigned to migrate it unsigned")
    if not fetched.signed and not unsigned:
        raise UnsignedPackage("not signed: give --unsigned to migrate unsigned packages")
    # A signed package to re-sign is verified first: only a verified text is signed again.
    pkg = verify_fetched(v2, ref, fetched, unsigned=not (fetched.signed and resign))
    return _Plan(ref, pkg.manifest, pkg.text, fetched.signed, pkg.signer)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write(v2: LayoutV2Cache, v3: LayoutV3Cache, plan: _Plan, signer, scratch: str) -> MigratedPackage:
    ref = plan.ref
    try:
        doc = json.loads(plan.text)
        root = parse_specfile(doc, f"{ref.name}/{ref.hash[:7]} spec file")[0]
    except (ValueError, BincacheError) as e:
        raise MirrorError(f"the spec file is unreadable ({e})") from None
    if root.hash != ref.hash:
        raise MirrorError(f"the spec file describes {root.short()}, not /{ref.hash[:7]}")
    rec = plan.manifest.tarball
    if rec.checksum_algorithm != "sha256":
        raise MirrorError(f"its tarball checksum is {rec.checksum_algorithm}; layout v3 records sha256")
    local = v2.local_blob_path(rec)
    if local is None:
        local = os.path.join(scratch, f"{ref.hash}.spack")
        v2.fetch_blob(rec, local)  # checked against the verified checksum
    elif _sha256_file(local) != rec.checksum:
        raise IntegrityError(f"{rec.path}: checksum mismatch: the tarball is not the one its "
                             "spec file names")
    tar_rec, spec_blob, spec_rec = v3_blobs(doc, rec.checksum, os.path.getsize(local))
    v3.put_blob_file(local, tar_rec)
    v3.put_blob_bytes(spec_blob, spec_rec.media_type, spec_rec.compression)
    body = manifest_bytes([tar_rec, spec_rec])
    fingerprint = None
    if plan.signed and signer is not None:
        body = signer.clearsign(body)
        fingerprint = signer.fingerprint
    v3.backend.write(v3.manifest_path(root.name, root.version, root.hash), body)
    if local.startswith(scratch):
        os.unlink(local)
    return MigratedPackage(root.name, root.version, root.hash, "migrated", plan.signed,
                           plan.v2_signer, fingerprint)


def v3_blobs(doc: dict, tarball_sha256: str, size: int) -> tuple[BlobRecord, bytes, BlobRecord]:
    """A v2 package's blobs in layout v3, from its verified spec file (a dict, changed here):
    (tarball record, gzipped spec blob, spec record), as Spack 1.0 migrates them."""
    doc.pop("binary_cache_checksum", None)
    doc["archive_size"] = size
    spec_blob = gzip_bytes(json.dumps(doc, separators=(",", ":")).encode())
    spec_rec = BlobRecord(len(spec_blob), MT_MIGRATED_SPEC, "gzip", hashlib.sha256(spec_blob).hexdigest())
    return BlobRecord(size, MT_TARBALL, "gzip", tarball_sha256), spec_blob, spec_rec


def _delete_old(backend: ByteBackend) -> None:
    root = backend.root
    if root is not None:
        shutil.rmtree(os.path.join(root, BUILD_CACHE))
        return
    for rel in backend.list(BUILD_CACHE):
        backend.delete(rel)


def migrate(source, dest=None, *, key: str | None = None, unsigned: bool = False,
            delete_old: bool = False, jobs: int = 4) -> MigrateResult:
    """Migrate the v2 cache at ``source`` (a MirrorRef) to v3 at ``dest`` (default: in place)."""
    src_backend = _layout_backend(source, "reads")
    src_root = src_backend.root
    if src_root is not None and not os.path.isdir(src_root):
        raise MirrorError(f"no mirror at {src_root} (the directory does not exist)")
    if not _has_v2(src_backend):
        raise MirrorError(f"{mask_url(src_backend.url)} holds no Spack layout v2 cache (no "
                          f"{BUILD_CACHE}/): nothing to migrate")
    dest_backend = src_backend
    if dest is not None:
        dest_backend = _layout_backend(dest, "writes")
        dest_root = dest_backend.root
        if dest_root is not None and os.path.exists(dest_root) and not os.path.isdir(dest_root):
            raise UsageError(f"{dest_root} is a file, not a directory: give a directory for the "
                             "v3 cache (or no DEST, to migrate in place)")
        if dest_backend.url == src_backend.url:
            dest_backend = src_backend
    in_place = dest_backend is src_backend
    if dest_backend.root is None:
        dest_backend.check_writable()  # http: read only, said before any work
    if delete_old and not src_backend.writable:
        raise UsageError(f"{mask_url(src_backend.url)}: --delete-old removes files, which this "
                         "kind of mirror does not offer here; delete build_cache/ yourself")
    v2 = LayoutV2Cache(src_backend, source)
    v3 = LayoutV3Cache(dest_backend, dest or source)
    result = MigrateResult(mask_url(src_backend.url), mask_url(dest_backend.url), in_place)
    signer = None
    if key is not None:
        from ..signing import Signer

        signer = Signer(key)
        result.key = signer.fingerprint

    refs = _refs(v2)
    todo, plans, problems = [], {}, []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        present = list(pool.map(lambda r: _present(v3, r), refs))
        for ref, there in zip(refs, present):
            if there:
                result.packages.append(MigratedPackage(ref.name, ref.version, ref.hash, "present",
                                                       message="already in layout v3"))
            else:
                todo.append(ref)

        def plan(ref):
            try:
                return _plan(v2, ref, resign=signer is not None, unsigned=unsigned)
            except BincacheError as e:
                return e

        for ref, got in zip(todo, pool.map(plan, todo)):
            if isinstance(got, BincacheError):
                problems.append(f"{ref.name}@{ref.version}/{ref.hash[:7]}: {_reason(got)}")
            else:
                plans[ref.hash] = got
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MirrorError(f"{len(problems)} of {len(refs)} packages cannot be migrated, nothing was "
                          f"changed: {problems[0]}{more}")

    if todo:
        dest_backend.check_writable()
        scratch = tempfile.mkdtemp(prefix="bincache-migrate-")
        try:
            def write(ref):
                try:
                    return _write(v2, v3, plans[ref.hash], signer, scratch)
                except (BincacheError, OSError) as e:
                    return MigratedPackage(ref.name, ref.version, ref.hash, "failed",
                                           message=_reason(e))

            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                result.packages.extend(pool.map(write, todo))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    result.packages.sort(key=lambda p: (p.name, p.version, p.hash))

    if any(p.action == "migrated" for p in result.packages) or not _index_present(v3):
        update_index(v3, jobs=max(1, jobs))
        result.index_updated = True
    if signer is not None and any(p.signer for p in result.packages):
        from ..mirror.keys import publish_keys

        publish_keys(v3, [signer.fingerprint])
    if not result.failed:
        signed = any(p.signer for p in result.packages) or _layout_signing(v3)
        v3.write_layout("gpg" if signed else None)
        result.layout_written = True
        if delete_old:
            _delete_old(src_backend)
            result.deleted_old = True
    return result


def _index_present(v3: LayoutV3Cache) -> bool:
    try:
        return v3.read_index_bytes() is not None
    except BincacheError:
        return False


def _layout_signing(v3: LayoutV3Cache) -> bool:
    try:
        return json.loads(v3.backend.read(LAYOUT_JSON)).get("signing") == "gpg"
    except (BlobNotFound, ValueError, AttributeError, BincacheError):
        return False


def _reason(e: BaseException) -> str:
    text = str(e)
    return text if text else type(e).__name__
