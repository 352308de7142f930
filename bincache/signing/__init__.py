"""Signing and verification on GnuPG: bincache's keyring, clearsigned manifests, their checks.

No OpenPGP of our own: gpg (and its agent, which keeps the secret keys) signs, gpg verifies, and
the text gpg returns as verified is the only text trusted. ``cleartext`` only checks a
document's shape before gpg sees it.

    home      the GnuPG home; running gpg        keyring   keys: create, list, trust, export
    cleartext framing checks, no cryptography   sign      Signer (gpg --clearsign)
    verify    verify_clearsigned, verify_manifest_bytes, verify_manifests, verify_v2_specfile
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import exports

if TYPE_CHECKING:
    from .cleartext import clearsigned_text, is_clearsigned
    from .home import gnupg_home, stop_agent
    from .keyring import (
        KeyInfo,
        create_key,
        export_keys,
        find_key,
        find_keys,
        holds_secret_keys,
        import_keys,
        list_keys,
        scan_keys,
        set_trust,
        signing_keys,
        trust_file,
        trusted_fingerprints,
        trusted_keys,
        untrust_key,
        write_export,
    )
    from .sign import Signer
    from .verify import (
        verify_clearsigned,
        verify_manifest_bytes,
        verify_manifests,
        verify_v2_specfile,
    )

# The names are imported when first asked for: a push without signing (and a layout v3 mirror,
# which only needs ``cleartext``'s framing checks) never starts the keyring's modules.
_SUBMODULE = {
    "KeyInfo": "keyring", "Signer": "sign", "clearsigned_text": "cleartext",
    "create_key": "keyring", "export_keys": "keyring", "find_key": "keyring",
    "find_keys": "keyring", "gnupg_home": "home", "holds_secret_keys": "keyring",
    "import_keys": "keyring", "is_clearsigned": "cleartext", "list_keys": "keyring",
    "scan_keys": "keyring", "set_trust": "keyring", "signing_keys": "keyring",
    "stop_agent": "home", "trust_file": "keyring", "trusted_fingerprints": "keyring",
    "trusted_keys": "keyring", "untrust_key": "keyring", "verify_clearsigned": "verify",
    "verify_manifest_bytes": "verify", "verify_manifests": "verify",
    "verify_v2_specfile": "verify", "write_export": "keyring",
}


__getattr__ = exports(globals(), _SUBMODULE)

__all__ = [
    "KeyInfo", "Signer", "clearsigned_text", "create_key", "export_keys", "find_key", "find_keys",
    "gnupg_home", "holds_secret_keys", "import_keys", "is_clearsigned", "list_keys", "scan_keys", "set_trust",
    "signing_keys", "stop_agent", "trust_file", "trusted_fingerprints", "trusted_keys",
    "untrust_key", "verify_clearsigned", "verify_manifest_bytes", "verify_manifests",
    "verify_v2_specfile", "write_export",
]
