"""Clearsigning manifests with one key of bincache's keyring, by gpg and its agent.

The secret key never leaves GnuPG: each signature is one ``gpg --clearsign`` process, whose
agent holds the key (unlocked beforehand when it has a passphrase: bincache never prompts).
Measured here: ~7 ms of gpg per manifest, paid in parallel by ``create -j`` (benchmarks/bench_sign.py).
"""

from __future__ import annotations

from ..errors import SignatureError
from .cleartext import END_SIGNATURE, check_signable
from .home import gnupg_home, gpg_homedir, run_gpg
from .keyring import KeyInfo, list_keys, match_keys

#: Status lines that mean gpg wanted a passphrase it could not get.
_PASSPHRASE = {"NEED_PASSPHRASE", "INQUIRE_MAXLEN", "PINENTRY_LAUNCHED", "BAD_PASSPHRASE",
               "MISSING_PASSPHRASE"}


class Signer:
    """Clearsigns build cache manifests with one key of bincache's keyring (thread-safe).

    ``key`` is a fingerprint, key id or user id; with none, the single signing key is used.
    The first signature is made at once, so a key gpg cannot use fails here, not mid-push.
    """

    def __init__(self, key: str | None = None, home: str | None = None) -> None:
        self.home = gnupg_home(home)
        self.key: KeyInfo = self._choose(key)
        self.fingerprint: str = self.key.fingerprint
        self.clearsign(b"bincache signing check\n")

    def clearsign(self, data: bytes) -> bytes:
        """A clearsigned document (SHA-256) whose signed text is ``data`` (Spack's v3 manifests)."""
        check_signable(data)
        # gpg picks the key's signing subkey for this primary fingerprint.
        r = run_gpg(self.home, ["--local-user", self.fingerprint, "--digest-algo", "SHA256",
                                "--clearsign"], data if data.endswith(b"\n") else data + b"\n")
        codes = r.codes()
        if r.returncode != 0 or "SIG_CREATED" not in codes or END_SIGNATURE not in r.data:
            if _PASSPHRASE & set(codes) or "passphrase" in r.messages.lower():
                raise self._passphrase_error()
            raise SignatureError(f"gpg could not sign with {self.fingerprint}: "
                                 f"{r.messages or 'exit ' + str(r.returncode)}")
        return r.data

    def close(self) -> None:
        """Nothing to release (kept for callers that close their signer)."""

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Signer({self.fingerprint}, home={self.home!r})"

    def _choose(self, key: str | None) -> KeyInfo:
        secret = list_keys(self.home, secret=True)
        if key:
            matches = match_keys(key, secret)
            usable = [k for k in matches if k.can_sign]
            if not matches:
                raise SignatureError(f'no secret key matches "{key}" in {self.home}; '
                                     "see bincache keys list --signing")
            if not usable:
                k = matches[0]
                raise SignatureError(f"key {k.fingerprint} ({k.uid}) cannot sign: it is {k.state}"
                                     f"{'' if k.sign_capable else ' and has no signing capability'}")
            if len(usable) > 1:
                listing = ", ".join(f"{k.fingerprint} ({k.uid})" for k in usable)
                raise SignatureError(f'"{key}" matches {len(usable)} signing keys: {listing}; give a fingerprint')
            return usable[0]
        usable = [k for k in secret if k.can_sign]
        if not usable:
            raise SignatureError(
                f"no signing key in {self.home}: create one with `bincache keys create NAME EMAIL`, "
                "import one with `bincache keys trust FILE`, or push with --unsigned")
        if len(usable) > 1:
            listing = ", ".join(f"{k.fingerprint} ({k.uid})" for k in usable)
            raise SignatureError(f"{len(usable)} signing keys in {self.home}: {listing}; "
                                 "choose one with --key FINGERPRINT")
        return usable[0]

    def _passphrase_error(self) -> SignatureError:
        return SignatureError(
            f"signing key {self.fingerprint} ({self.key.uid}) is protected by a passphrase and bincache "
            "cannot ask for one (it never prompts). Use a key without passphrase for unattended "
            "signing (`bincache keys create`), or unlock this one in gpg-agent first "
            f"(e.g. `gpg --homedir {gpg_homedir(self.home)} --clearsign` once, or "
            "gpg-preset-passphrase), or push with --unsigned")
