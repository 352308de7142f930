"""bincache's keyring: create, list, find, import, trust and export keys, through GnuPG.

Trust is GnuPG's *ownertrust*: a key is trusted when its ownertrust is ultimate. ``keys trust``
and ``keys install --trust`` set it, ``keys create`` gets it from gpg, ``keys untrust`` clears it.
Secret key material is never read by bincache: it stays in the home, used by gpg and its agent;
the one exception is ``keys export --secret``, which writes what gpg exports to a 0600 file.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..atomic import write_atomic
from ..errors import SignatureError, UsageError
from .home import gnupg_home, python_gnupg, run_gpg

_EXPIRES = re.compile(r"^(0|\d+[dwmy]?|\d{4}-\d{2}-\d{2}|\d{8}T\d{6})$")
_ALGOS = {"1": "rsa", "17": "dsa", "19": "ecdsa", "22": "eddsa", "18": "ecdh", "16": "elgamal"}


@dataclass(frozen=True)
class KeyInfo:
    """One key of the keyring."""

    fingerprint: str
    uids: tuple[str, ...]
    created: int
    expires: int | None
    validity: str  # gpg's: "r" revoked, "e" expired, "d" disabled, "i" invalid, else usable
    ownertrust: str
    secret: bool
    sign_capable: bool
    algorithm: str

    @property
    def keyid(self) -> str:
        return self.fingerprint[-16:]

    @property
    def uid(self) -> str:
        return self.uids[0] if self.uids else ""

    @property
    def trusted(self) -> bool:
        return self.ownertrust == "u" and self.usable

    @property
    def usable(self) -> bool:
        return self.validity not in ("r", "e", "d", "i")

    @property
    def state(self) -> str:
        return {"r": "revoked", "e": "expired", "d": "disabled", "i": "invalid"}.get(self.validity, "valid")

    @property
    def can_sign(self) -> bool:
        return self.secret and self.sign_capable and self.usable

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "uids": list(self.uids), "created": self.created,
                "expires": self.expires, "state": self.state, "trusted": self.trusted,
                "secret": self.secret, "can_sign": self.can_sign, "algorithm": self.algorithm}


def _key_info(k: dict, secret_fprs: set[str]) -> KeyInfo:
    fpr = k["fingerprint"].upper()
    expires = int(k["expires"]) if str(k.get("expires") or "").isdigit() else None
    algo = _ALGOS.get(str(k.get("algo")), str(k.get("algo")))
    curve = k.get("curve")
    return KeyInfo(
        fingerprint=fpr, uids=tuple(k.get("uids") or ()), created=int(k.get("date") or 0),
        expires=expires, validity=k.get("trust") or "", ownertrust=k.get("ownertrust") or "",
        secret=fpr in secret_fprs, sign_capable="S" in (k.get("cap") or ""),
        algorithm=f"{curve}" if curve else f"{algo}{k.get('length') or ''}",
    )


def list_keys(home: str | None = None, *, secret: bool = False) -> list[KeyInfo]:
    """The keys of bincache's keyring (only those with a secret key when ``secret``)."""
    g = python_gnupg(home)
    secret_fprs = {k["fingerprint"].upper() for k in g.list_keys(secret=True)}
    keys = [_key_info(k, secret_fprs) for k in g.list_keys()]
    if secret:
        keys = [k for k in keys if k.secret]
    return sorted(keys, key=lambda k: (k.uid, k.fingerprint))


def signing_keys(home: str | None = None) -> list[KeyInfo]:
    """Keys bincache can sign with: a secret key, able to sign, neither revoked nor expired."""
    return [k for k in list_keys(home, secret=True) if k.can_sign]


def trusted_keys(home: str | None = None) -> list[KeyInfo]:
    return [k for k in list_keys(home) if k.trusted]


_trust_lock = threading.Lock()
_trust_cache: dict[str, tuple[tuple, frozenset[str]]] = {}


def trusted_fingerprints(home: str | None = None) -> frozenset[str]:
    """Primary fingerprints of the trusted keys; cached until the keyring or trustdb changes."""
    path = gnupg_home(home)
    stamp: list[tuple[str, int | None, int | None, int | None]] = []
    for name in ("pubring.kbx", "pubring.gpg", "trustdb.gpg"):
        try:
            st = os.stat(os.path.join(path, name))
            stamp.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append((name, None, None, None))
    key = tuple(stamp)
    with _trust_lock:
        cached = _trust_cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
    fprs = frozenset(k.fingerprint for k in list_keys(path) if k.trusted)
    with _trust_lock:
        _trust_cache[path] = (key, fprs)
    return fprs


def match_keys(query: str, keys: Iterable[KeyInfo]) -> list[KeyInfo]:
    """Keys matching a fingerprint, a key id (16 or 8 hex digits, optional 0x), or a piece of a
    user id (name or email, case-insensitive)."""
    keys = list(keys)
    q = query.strip()
    hexq = (q[2:] if q.lower().startswith("0x") else q).replace(" ", "").upper()
    if re.fullmatch(r"[0-9A-F]{8,40}", hexq):
        found = [k for k in keys if k.fingerprint.endswith(hexq)]
        if found:
            return found
    ql = q.lower().strip("<>")
    return [k for k in keys if any(ql in u.lower() for u in k.uids)]


def find_keys(query: str, home: str | None = None, *, secret: bool = False) -> list[KeyInfo]:
    return match_keys(query, list_keys(home, secret=secret))


def find_key(query: str, home: str | None = None, *, secret: bool = False) -> KeyInfo:
    """Exactly one key matching ``query``; a clear error for none or several."""
    found = find_keys(query, home, secret=secret)
    what = "secret key" if secret else "key"
    if not found:
        raise SignatureError(f'no {what} matches "{query}" in {gnupg_home(home)} '
                             f"(see bincache keys list{' --signing' if secret else ''})")
    if len(found) > 1:
        listing = ", ".join(f"{k.fingerprint} ({k.uid})" for k in found)
        raise SignatureError(f'"{query}" matches {len(found)} keys: {listing}; give a fingerprint')
    return found[0]


def create_key(name: str, email: str, comment: str | None = None, expires: str | None = None,
               home: str | None = None) -> KeyInfo:
    """Create an Ed25519 signing key without passphrase (for unattended signing), trusted."""
    for label, value in (("name", name), ("email", email), ("comment", comment or ""), ("expires", expires or "")):
        if any(c in value for c in "\r\n\0"):
            raise UsageError(f"the key's {label} cannot hold line breaks")
    if not name.strip():
        raise UsageError("the key needs a name")
    if "@" not in email or any(c in email for c in "<> "):
        raise UsageError(f'"{email}" is not an email address')
    if comment and any(c in comment for c in "()"):
        raise UsageError("the key's comment cannot hold parentheses")
    if expires and not _EXPIRES.match(expires):
        raise UsageError(f'--expires "{expires}": use 0 (never), a number of days, Nd/Nw/Nm/Ny, or YYYY-MM-DD')
    params = [
        "Key-Type: eddsa", "Key-Curve: ed25519", "Key-Usage: sign",
        f"Name-Real: {name.strip()}", f"Name-Email: {email.strip()}",
    ]
    if comment:
        params.append(f"Name-Comment: {comment.strip()}")
    params += [f"Expire-Date: {expires or 0}", "%no-protection", "%commit", ""]
    result = python_gnupg(home).gen_key("\n".join(params))
    fpr = (getattr(result, "fingerprint", None) or "").upper()
    if not fpr:
        raise SignatureError(f"gpg could not create the key: {_messages(result) or result.status}")
    return find_key(fpr, home)


def _messages(result) -> str:
    msgs = [line[5:] for line in (getattr(result, "stderr", "") or "").splitlines() if line.startswith("gpg: ")]
    return "; ".join(msgs[-2:])


def scan_keys(data: bytes, home: str | None = None) -> list[dict]:
    """What gpg finds in key data without importing it: python-gnupg's records ("pub" for a
    public key, "sec" for secret key material), fingerprints upper-case."""
    found = python_gnupg(home).scan_keys_mem(data)
    return [dict(k, fingerprint=str(k.get("fingerprint") or "").upper()) for k in found]


def holds_secret_keys(data: bytes, home: str | None = None) -> bool:
    """Whether key data holds secret key packets (primary or subkey), as gpg lists its packets."""
    listing = run_gpg(home, ["--list-packets"], data).data
    return any(line.startswith((b":secret key packet:", b":secret sub key packet:"))
               for line in listing.splitlines())


def import_keys(data: bytes, *, trust: bool, home: str | None = None, origin: str = "key data") -> list[str]:
    """Import OpenPGP keys (public, or secret ones exported without passphrase) and, when
    ``trust``, make them trusted. Returns the primary fingerprints imported."""
    result = python_gnupg(home).import_keys(data)
    fprs = sorted({f.upper() for f in (result.fingerprints or []) if f})
    if not fprs:
        why = _messages(result)
        raise SignatureError(f"{origin} holds no OpenPGP key that gpg can import" + (f" ({why})" if why else ""))
    sec_read = int(getattr(result, "sec_read", 0) or 0)
    sec_done = int(getattr(result, "sec_imported", 0) or 0) + int(getattr(result, "sec_dups", 0) or 0)
    if sec_read > sec_done:
        raise SignatureError(f"{origin}: the secret key could not be imported (is it protected by a "
                             "passphrase? export it without one for unattended signing)")
    if trust:
        set_trust(fprs, True, home)
    return fprs


def set_trust(fingerprints: Iterable[str], trusted: bool, home: str | None = None) -> None:
    """Set (ultimate) or clear the ownertrust of keys."""
    fprs = [f.upper() for f in fingerprints]
    if not fprs:
        return
    try:
        python_gnupg(home).trust_keys(fprs, "TRUST_ULTIMATE" if trusted else "TRUST_UNDEFINED")
    except ValueError as e:
        raise SignatureError(f"gpg could not record trust for {', '.join(fprs)}: {e}") from None


def trust_file(path: str, home: str | None = None) -> list[KeyInfo]:
    """``keys trust FILE``: import the keys in FILE and trust them."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SignatureError(f"cannot read {path}: {e.strerror}") from None
    fprs = import_keys(data, trust=True, home=home, origin=path)
    return [find_key(f, home) for f in fprs]


def untrust_key(query: str, home: str | None = None) -> KeyInfo:
    """``keys untrust KEY``: clear the key's trust; a public-only key is also removed."""
    key = find_key(query, home)
    set_trust([key.fingerprint], False, home)
    if not key.secret:
        result = python_gnupg(home).delete_keys(key.fingerprint)
        if str(result) != "ok":
            raise SignatureError(f"gpg could not remove key {key.fingerprint}: {_messages(result) or result}")
    return key


def export_keys(keys: Sequence[str] | None = None, *, secret: bool = False,
                home: str | None = None) -> tuple[bytes, list[str]]:
    """Armored export of the given keys (all keys, or all secret keys, when none are given).
    ``secret`` is only for ``keys export --secret`` (moving a signing key to a build machine)."""
    if keys:
        selected = [find_key(q, home, secret=secret) for q in keys]
    else:
        selected = list_keys(home, secret=secret)
    if not selected:
        raise SignatureError(f"no {'secret ' if secret else ''}keys to export in {gnupg_home(home)}")
    fprs = list(dict.fromkeys(k.fingerprint for k in selected))
    g = python_gnupg(home)
    if secret:
        data = g.export_keys(fprs, secret=True, armor=True, expect_passphrase=False)
    else:
        data = g.export_keys(fprs, armor=True)
    data = data.encode() if isinstance(data, str) else bytes(data or b"")
    if b"-----BEGIN PGP" not in data:
        hint = " (a secret key protected by a passphrase cannot be exported without a way to ask for it)" if secret else ""
        raise SignatureError(f"gpg exported nothing for {', '.join(fprs)}{hint}")
    return data, fprs


def write_export(path: str, data: bytes, secret: bool) -> None:
    """Write an export atomically; secret keys with mode 0600."""
    try:
        write_atomic(path, data, 0o600 if secret else 0o644)
    except OSError as e:
        raise SignatureError(f"cannot write {path}: {e.strerror}") from None
