"""A package's manifest read the way install trusts it: records from the verified text only.

Install, check, migrate and the cache page all need the same three facts about a package in a
mirror: its manifest, whether it is signed, and who signed it (when the signature verifies
against a trusted key). This module is the one place those verbs ask the signing code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import mask_url
from ..errors import BincacheError, SignatureError
from ..mirror.base import Manifest
from ..mirror.layout_v3 import is_clearsigned
from ..signing import clearsigned_text, list_keys, verify_clearsigned


class UnsignedPackage(SignatureError):
    """The package carries no signature and signatures are required."""


@dataclass
class VerifiedPackage:
    manifest: Manifest  # built from `text`
    text: bytes  # what the verifier returned (or the plain text of an unsigned package)
    signed: bool  # the package carries a signature
    signer: str | None  # primary fingerprint, when the signature was verified


def unsigned_allowed(cache, unsigned: bool | None) -> bool:
    """``--unsigned`` wins; else a mirror configured ``signed: false``; else signatures required."""
    if unsigned is not None:
        return unsigned
    return cache.ref is not None and cache.ref.signed is False


def package_label(cache, item) -> str:
    return f"{mask_url(cache.url)} {item.name}@{item.version}/{item.hash[:7]}"


def verified_package(cache, item, *, unsigned: bool, home: str | None = None) -> VerifiedPackage:
    """The package's manifest, its signature verified unless ``unsigned``.

    Raises BlobNotFound when the mirror does not hold the package, SignatureError when the
    signature is bad, untrusted or missing (and required), MirrorError when it is damaged.
    """
    return verify_fetched(cache, item, cache.fetch_manifest(item), unsigned=unsigned, home=home)


def verify_fetched(cache, item, fetched, *, unsigned: bool, home: str | None = None) -> VerifiedPackage:
    """:func:`verified_package` for a manifest already fetched (a caller that first looks at
    whether it is signed)."""
    label = package_label(cache, item)
    raw = fetched.raw
    signed = is_clearsigned(raw)
    signer = None
    if signed and not unsigned:
        text, signer = verify_clearsigned(raw, home, source=label)
    elif signed:
        text = clearsigned_text(raw, label)
    elif not unsigned:
        raise UnsignedPackage(f"{label}: not signed (use --unsigned if unsigned packages are "
                             "acceptable)")
    else:
        text = raw
    # layout v3: the manifest; layout v2: the signed document is the spec file; OCI: the
    # records and the image digest the verified signature text names, checked against the image.
    manifest = cache.manifest_from_verified(text, fetched, label)
    return VerifiedPackage(manifest, text, signed, signer)


def key_names(home: str | None = None) -> dict[str, str]:
    """Fingerprint -> first user id, for the keys of the keyring (what a page shows a signer as)."""
    try:
        return {k.fingerprint: k.uid for k in list_keys(home)}
    except BincacheError:
        return {}
