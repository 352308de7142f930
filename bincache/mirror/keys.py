"""Public keys in a mirror: publish them (Spack's layout v3 key manifests) and install them.

    v3/manifests/key/<FINGERPRINT>.key.manifest.json   names the armored public key blob
    v3/manifests/key/keys.manifest.json                names the key index {"keys": {FPR: {}}}
    build_cache/_pgp/index.json, <FPR>.pub             layout v2 (read only)

A mirror serves public keys only: a key blob holding secret key material is refused, whatever
``--trust`` says (issue 10: a mirror must not be able to plant a signing key in the keyring).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..errors import BlobNotFound, MirrorError, SignatureError
from ..signing import keyring
from ..signing.home import gnupg_home
from .layout_v3 import MT_KEY, MT_KEYINDEX, manifest_bytes, parse_manifest

KEY_MANIFESTS = "v3/manifests/key"
KEYS_MANIFEST = f"{KEY_MANIFESTS}/keys.manifest.json"
V2_KEYS = "build_cache/_pgp"
V2_KEY_INDEX = f"{V2_KEYS}/index.json"
_FPR = re.compile(r"^[0-9A-F]{40}$")


def _layout_cache(cache, verb: str):
    if not hasattr(cache, "backend"):
        raise MirrorError(f"cannot {verb} keys in {getattr(cache, 'url', cache)}: key manifests exist "
                          "only in directory, http and s3 mirrors (Spack's layout v3)")
    return cache


def _read_key_index(cache) -> dict[str, dict]:
    try:
        raw = cache.backend.read(KEYS_MANIFEST)
    except BlobNotFound:
        return {}
    records = [r for r in parse_manifest(raw, origin=f"{cache.url}/{KEYS_MANIFEST}").records
               if r.media_type == MT_KEYINDEX]
    if not records:
        return {}
    try:
        doc = json.loads(cache.get_blob_bytes(records[0]))
        keys = doc["keys"]
        return {str(k).upper(): (v if isinstance(v, dict) else {}) for k, v in keys.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MirrorError(f"{cache.url}/{KEYS_MANIFEST}: the key index is damaged") from None


def publish_keys(cache, fingerprints: Sequence[str] | None = None, home: str | None = None) -> list[str]:
    """Put public keys into a mirror: ``v3/manifests/key/<FPR>.key.manifest.json`` naming the
    armored key blob, and the key index ``keys.manifest.json``. With no keys given, the signing
    keys of bincache's keyring are published. Returns the fingerprints published."""
    if fingerprints:
        keys = [keyring.find_key(q, home) for q in fingerprints]
    else:
        keys = keyring.signing_keys(home)
        if not keys:
            raise SignatureError(f"no signing keys in {gnupg_home(home)} to publish; name the keys to publish")
    fprs = list(dict.fromkeys(k.fingerprint for k in keys))
    if hasattr(cache, "publish_public_keys"):  # layout v2: build_cache/_pgp/<FPR>.pub
        return cache.publish_public_keys({fpr: keyring.export_keys([fpr], home=home)[0] for fpr in fprs})
    cache = _layout_cache(cache, "publish")
    cache.backend.check_writable()
    for fpr in fprs:
        data, _ = keyring.export_keys([fpr], home=home)
        rec = cache.put_blob_bytes(data, MT_KEY, "none")
        cache.backend.write(f"{KEY_MANIFESTS}/{fpr}.key.manifest.json", manifest_bytes([rec]))
    index = _read_key_index(cache)
    for fpr in fprs:
        index.setdefault(fpr, {})
    doc = {"keys": {k: index[k] for k in sorted(index)}}
    rec = cache.put_blob_bytes(json.dumps(doc, indent=2).encode(), MT_KEYINDEX, "none")
    cache.backend.write(KEYS_MANIFEST, manifest_bytes([rec]))
    return fprs


def mirror_key_fingerprints(cache) -> list[str]:
    """Fingerprints of the keys a mirror publishes (its key index, else its key manifests)."""
    cache = _layout_cache(cache, "read")
    fprs = list(_read_key_index(cache))
    if not fprs:
        try:
            names = cache.backend.list(KEY_MANIFESTS)
        except BlobNotFound:
            names = []
        except MirrorError:
            if getattr(cache.backend, "root", None):
                raise  # a local mirror that is missing: say so
            names = []  # http cannot list: the key index above is all there is
        for rel in names:
            base = rel.rsplit("/", 1)[-1]
            if base.endswith(".key.manifest.json"):
                fprs.append(base[: -len(".key.manifest.json")].upper())
    return sorted(f for f in set(fprs) if _FPR.match(f))


def _v2_key_fingerprints(cache) -> list[str]:
    """Keys of a layout v2 cache (``build_cache/_pgp/index.json``), read for old caches."""
    try:
        doc = json.loads(cache.backend.read(V2_KEY_INDEX))
        return sorted(f for f in (str(k).upper() for k in doc["keys"]) if _FPR.match(f))
    except BlobNotFound:
        return []
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MirrorError(f"{cache.url}/{V2_KEY_INDEX}: the key index is damaged") from None


def _key_blobs(cache) -> list[tuple[str, str, bytes]]:
    """(fingerprint, path, key data) of every key the mirror publishes, v3 first, else v2."""
    blobs = []
    for fpr in mirror_key_fingerprints(cache):
        path = f"{KEY_MANIFESTS}/{fpr}.key.manifest.json"
        try:
            raw = cache.backend.read(path)
        except BlobNotFound:
            raise MirrorError(f"{cache.url}: the key index names {fpr} but {path} is missing") from None
        records = [r for r in parse_manifest(raw, origin=f"{cache.url}/{path}").records if r.media_type == MT_KEY]
        if not records:
            raise MirrorError(f"{cache.url}/{path}: lists no {MT_KEY} blob")
        blobs.append((fpr, path, cache.get_blob_bytes(records[0])))
    if blobs:
        return blobs
    for fpr in _v2_key_fingerprints(cache):
        path = f"{V2_KEYS}/{fpr}.pub"
        try:
            blobs.append((fpr, path, cache.backend.read(path)))
        except BlobNotFound:
            raise MirrorError(f"{cache.url}: the key index names {fpr} but {path} is missing") from None
    return blobs


def install_keys(cache, trust: bool, home: str | None = None) -> list[str]:
    """Import the public keys a mirror publishes; trust them only when ``trust`` says so.

    Each key blob is checked against its manifest (size, sha256), must hold exactly the key its
    manifest is named for (so a mirror cannot slip a different key in under a known name), and
    must hold public key material only. Nothing is imported unless every blob passes.
    Old caches (layout v2, ``build_cache/_pgp/``) are read when there are no v3 keys.
    Returns the fingerprints imported."""
    cache = _layout_cache(cache, "install")
    blobs = _key_blobs(cache)
    if not blobs:
        raise SignatureError(f"{cache.url} publishes no keys (bincache keys publish MIRROR puts them there)")
    for fpr, path, data in blobs:
        found = keyring.scan_keys(data, home)
        if any(k.get("type") == "sec" for k in found) or keyring.holds_secret_keys(data, home):
            raise SignatureError(f"{cache.url}/{path}: holds SECRET key material; a mirror publishes "
                                 "public keys only: refusing it (nothing imported)")
        public = {k["fingerprint"] for k in found if k.get("type") == "pub"}
        if public != {fpr}:
            shown = ", ".join(sorted(public)) or "no key"
            raise SignatureError(f"{cache.url}/{path}: holds {shown}, not the key {fpr} it is named for; refusing it")
    imported = []
    for fpr, _, data in blobs:
        imported += keyring.import_keys(data, trust=trust, home=home, origin=f"{cache.url} key {fpr}")
    return sorted(set(imported))


__all__ = ["KEYS_MANIFEST", "KEY_MANIFESTS", "install_keys", "mirror_key_fingerprints", "publish_keys"]
