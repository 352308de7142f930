"""Public keys in a mirror: publish them from the keyring and install them into it.

Where a cache keeps them is the cache's own (``BuildCache.publish_public_keys`` and
``public_key_blobs``): layout v3 key manifests (``v3/manifests/key/<FPR>.key.manifest.json``
and the key index ``keys.manifest.json``), layout v2 ``build_cache/_pgp/``; an OCI registry
has none. This module is the GnuPG side.

A mirror serves public keys only: a key blob holding secret key material is refused, whatever
``--trust`` says (issue 10: a mirror must not be able to plant a signing key in the keyring).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import SignatureError
from ..signing import keyring
from ..signing.home import gnupg_home
from .base import BuildCache
from .layout_v3 import KEY_MANIFESTS, KEYS_MANIFEST, LayoutV3Cache


def publish_keys(cache: BuildCache, fingerprints: Sequence[str] | None = None,
                 home: str | None = None) -> list[str]:
    """Put public keys into a mirror, in its layout's place for them. With no keys given, the
    signing keys of bincache's keyring are published. Returns the fingerprints published."""
    if fingerprints:
        keys = [keyring.find_key(q, home) for q in fingerprints]
    else:
        keys = keyring.signing_keys(home)
        if not keys:
            raise SignatureError(f"no signing keys in {gnupg_home(home)} to publish; name the keys to publish")
    fprs = list(dict.fromkeys(k.fingerprint for k in keys))
    return cache.publish_public_keys({fpr: keyring.export_keys([fpr], home=home)[0] for fpr in fprs})


def mirror_key_fingerprints(cache: LayoutV3Cache) -> list[str]:
    """Fingerprints of the keys a layout v3 mirror publishes (key index, else key manifests)."""
    return cache.key_fingerprints()


def install_keys(cache: BuildCache, trust: bool, home: str | None = None) -> list[str]:
    """Import the public keys a mirror publishes; trust them only when ``trust`` says so.

    Each key blob is checked against its manifest (size, sha256), must hold exactly the key its
    manifest is named for (so a mirror cannot slip a different key in under a known name), and
    must hold public key material only. Nothing is imported unless every blob passes.
    Old caches (layout v2, ``build_cache/_pgp/``) are read when there are no v3 keys.
    Returns the fingerprints imported."""
    blobs = cache.public_key_blobs()
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
