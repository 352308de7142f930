"""GnuPG: bincache's keyring, clearsigned manifests, and their verification.

The keyring lives in bincache's own GnuPG home (``BINCACHE_GNUPGHOME``, else ``config:gnupghome``,
else ``~/.bincache/gpg``), not in the user's personal one unless configured so.

Trust is GnuPG's *ownertrust*: a key is trusted when its ownertrust is ultimate. ``keys trust``
and ``keys install --trust`` set it, ``keys create`` gets it from gpg, ``keys untrust`` clears it.
A good signature is not enough: gpg exits 0 and python-gnupg says ``valid`` for a good signature
by any key in the keyring, trusted or not, so :func:`verify_clearsigned` checks the signer's
primary fingerprint against the trusted set itself.

Every gpg call runs with ``--batch --pinentry-mode loopback`` and no passphrase source, so a key
that needs a passphrase fails at once with a clear error instead of waiting for a prompt.

Signing is on the hot path of ``create`` (one manifest per package). Spawning gpg costs ~7 ms a
signature here, more than packing a small package, so :class:`Signer` writes the OpenPGP
signature packet itself and has the digest signed in this process (a passphrase-less key, with
``cryptography``) or by the warm gpg-agent over its socket; gpg checks the first signature, and
anything unusual falls back to one gpg process per signature. Verification always runs gpg.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import BlobNotFound, MirrorError, SignatureError, SpecError, UsageError

log = logging.getLogger(__name__)

# -- armor and formats ----------------------------------------------------------------------------

BEGIN_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
END_SIGNATURE = b"-----END PGP SIGNATURE-----"

#: Media types of the key blobs and of the key index (Spack's layout v3).
MT_KEY = "application/pgp-keys"
MT_KEYINDEX = "application/vnd.spack.keyindex.v1+json"
KEY_MANIFESTS = "v3/manifests/key"
KEYS_MANIFEST = f"{KEY_MANIFESTS}/keys.manifest.json"
V2_KEYS = "build_cache/_pgp"
V2_KEY_INDEX = f"{V2_KEYS}/index.json"

# gpg silently truncates clearsigned lines longer than this (Spack's note, gpg's MAX_LINELEN).
_MAX_LINE = 19995

# gpg-agent's sockets (S.gpg-agent.browser is the longest name) must fit in sun_path (108 bytes).
_MAX_HOME_LEN = 80

_FPR = re.compile(r"^[0-9A-F]{40}$")
_EXPIRES = re.compile(r"^(0|\d+[dwmy]?|\d{4}-\d{2}-\d{2}|\d{8}T\d{6})$")
_GPG_OPTIONS = ["--pinentry-mode", "loopback", "--no-auto-key-retrieve"]


# -- the GnuPG home --------------------------------------------------------------------------------


def gnupg_home(home: str | None = None) -> str:
    """bincache's GnuPG home: ``home``, else ``BINCACHE_GNUPGHOME``, else ``config:gnupghome``
    (relative to the scope that set it), else ``~/.bincache/gpg``. Created (mode 0700) if missing."""
    path = home or os.environ.get("BINCACHE_GNUPGHOME") or _configured_home()
    if not path:
        path = os.path.join(os.path.expanduser("~"), ".bincache", "gpg")
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise SignatureError(f"cannot create the GnuPG home {path}: {e.strerror}") from None
    return path


def _configured_home() -> str | None:
    try:
        from . import config
    except ImportError:
        return None
    # A broken config file is reported (ConfigError), not replaced by another keyring silently.
    section = config.current().section("config")
    value = (section.data or {}).get("gnupghome")
    if not value:
        return None
    value = os.path.expandvars(os.path.expanduser(str(value)))
    if not os.path.isabs(value):
        origin = section.origin("gnupghome")
        directory = getattr(getattr(origin, "scope", None), "directory", None)
        if directory:
            value = os.path.join(directory, value)
    return value


def _gpg_homedir(home: str) -> str:
    """The path to give gpg for ``home``: itself, or a short symlink to it when its sockets would
    not fit in a Unix socket address. The alias is stable (one per home), because gpg-agent keeps
    using the path it was started with."""
    if len(home) <= _MAX_HOME_LEN:
        return home
    base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), f"bincache-gpg-{os.getuid()}")
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SignatureError(f"GnuPG home {home} is too long for gpg-agent's socket and {base} "
                             f"cannot be created for a short alias: {e.strerror}") from None
    st = os.lstat(base)
    if not os.path.isdir(base) or os.path.islink(base) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SignatureError(f"{base} is not a private directory of this user; remove it, or use a "
                             "shorter GnuPG home (BINCACHE_GNUPGHOME)")
    real = os.path.realpath(home)
    link = os.path.join(base, hashlib.sha256(real.encode()).hexdigest()[:16])
    try:
        if os.readlink(link) == real:
            return link
    except OSError:
        pass
    tmp = f"{link}.{os.getpid()}.tmp"
    try:
        os.symlink(real, tmp)
        os.replace(tmp, link)
    except OSError as e:
        raise SignatureError(f"cannot make a short alias {link} for the GnuPG home {home}: {e.strerror}") from None
    return link


_gpg_lock = threading.Lock()
_gpg_objects: dict[str, Any] = {}


def _gpg(home: str | None = None):
    """A python-gnupg handle on bincache's GnuPG home (cached per home)."""
    homedir = _gpg_homedir(gnupg_home(home))
    with _gpg_lock:
        g = _gpg_objects.get(homedir)
        if g is None:
            try:
                import gnupg
            except ImportError:
                raise SignatureError("python-gnupg is not installed: pip install python-gnupg") from None
            try:
                g = gnupg.GPG(gnupghome=homedir, options=list(_GPG_OPTIONS))
            except (OSError, ValueError, RuntimeError) as e:
                raise SignatureError(f"cannot run gpg ({e}); install GnuPG 2.2 or later") from None
            g.encoding = "utf-8"
            _gpg_objects[homedir] = g
        return g


@dataclass
class _GpgRun:
    returncode: int
    data: bytes
    stderr: str


def _run_gpg(home: str | None, args: list[str], data: bytes) -> _GpgRun:
    """One gpg process on ``data``, stdin fed, status on stderr. Used where python-gnupg's two
    reader threads per call cost more than gpg itself (verification: ~10 ms -> ~6 ms here)."""
    homedir = _gpg_homedir(gnupg_home(home))
    cmd = ["gpg", "--homedir", homedir, "--batch", "--no-tty", "--status-fd", "2", *_GPG_OPTIONS, *args]
    try:
        r = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise SignatureError("gpg is not installed: install GnuPG 2.2 or later") from None
    except subprocess.TimeoutExpired:
        raise SignatureError(f"gpg did not answer within 120 s (home {homedir})") from None
    return _GpgRun(r.returncode, r.stdout, r.stderr.decode("utf-8", "replace"))


def _status(result) -> list[list[str]]:
    """The ``[GNUPG:]`` status lines of a python-gnupg result (it runs gpg with --status-fd 2)."""
    lines = []
    for line in (getattr(result, "stderr", "") or "").splitlines():
        if line.startswith("[GNUPG:] "):
            lines.append(line[9:].split(" "))
    return lines


def _gpg_messages(result) -> str:
    """gpg's own human messages (not status lines), for error reports."""
    msgs = [line[5:] for line in (getattr(result, "stderr", "") or "").splitlines() if line.startswith("gpg: ")]
    return "; ".join(msgs[-2:])


# -- keys ------------------------------------------------------------------------------------------


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


_ALGOS = {"1": "rsa", "17": "dsa", "19": "ecdsa", "22": "eddsa", "18": "ecdh", "16": "elgamal"}


def _key_info(k: dict, secret_fprs: set[str]) -> KeyInfo:
    fpr = k["fingerprint"].upper()
    cap = k.get("cap") or ""
    expires = int(k["expires"]) if str(k.get("expires") or "").isdigit() else None
    algo = _ALGOS.get(str(k.get("algo")), str(k.get("algo")))
    length = k.get("length")
    curve = k.get("curve")
    return KeyInfo(
        fingerprint=fpr, uids=tuple(k.get("uids") or ()), created=int(k.get("date") or 0),
        expires=expires, validity=k.get("trust") or "", ownertrust=k.get("ownertrust") or "",
        secret=fpr in secret_fprs, sign_capable="S" in cap,
        algorithm=f"{curve}" if curve else f"{algo}{length or ''}",
    )


def _listings(home: str | None) -> tuple[list[dict], list[dict]]:
    """python-gnupg's listings of the public and of the secret keys."""
    g = _gpg(home)
    return list(g.list_keys()), list(g.list_keys(secret=True))


def _unescape_colon_field(value: str) -> str:
    raw = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), value)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _parse_colon_listing(text: str) -> list[dict]:
    """gpg's ``--with-colons --with-keygrip`` key listing, as python-gnupg's dicts (the fields
    bincache uses). Parsing it here saves python-gnupg's version probe and reader threads on
    the path every signed ``create`` takes."""
    keys: list[dict] = []
    current: dict | None = None  # the key or subkey the next fpr/grp lines belong to
    for line in text.splitlines():
        f = line.split(":")
        if len(f) < 10:
            continue
        kind = f[0]
        if kind in ("pub", "sec"):
            current = {"type": kind, "trust": f[1], "length": f[2], "algo": f[3], "keyid": f[4],
                       "date": f[5], "expires": f[6], "ownertrust": f[8], "cap": f[11] if len(f) > 11 else "",
                       "token": f[14] if len(f) > 14 else "", "curve": f[16] if len(f) > 16 else "",
                       "uids": [], "subkey_info": {}, "fingerprint": "", "keygrip": ""}
            keys.append(current)
        elif kind in ("sub", "ssb") and keys:
            current = {"type": kind, "trust": f[1], "length": f[2], "algo": f[3], "keyid": f[4],
                       "date": f[5], "expires": f[6], "cap": f[11] if len(f) > 11 else "",
                       "token": f[14] if len(f) > 14 else "", "fingerprint": "", "keygrip": ""}
            keys[-1]["subkey_info"][f[4]] = current
        elif kind == "fpr" and current is not None and not current["fingerprint"]:
            current["fingerprint"] = f[9]
        elif kind == "grp" and current is not None and not current["keygrip"]:
            current["keygrip"] = f[9]
        elif kind == "uid" and keys:
            keys[-1]["uids"].append(_unescape_colon_field(f[9]))
    return keys


_LISTING_CACHE = "bincache-secret-keys.json"


def _keyring_stamp(path: str) -> list:
    """What changes when keys, their trust or their secret parts change."""
    stamp = []
    for name in ("pubring.kbx", "pubring.gpg", "trustdb.gpg", "private-keys-v1.d"):
        try:
            st = os.stat(os.path.join(path, name))
            stamp.append([name, st.st_mtime_ns, st.st_size, st.st_ino])
        except OSError:
            stamp.append([name, None])
    return stamp


def _secret_listing(home: str | None) -> list[dict]:
    """The secret keys as :func:`_parse_colon_listing` gives them. Kept in the home between
    runs while the keyring, the trustdb and the secret key directory are unchanged and no key
    has expired since: a signed ``create`` then starts without a gpg process (public data only:
    fingerprints, user ids, capabilities)."""
    path = gnupg_home(home)
    stamp = _keyring_stamp(path)
    cache = os.path.join(path, _LISTING_CACHE)
    try:
        with open(cache) as f:
            doc = json.load(f)
        if doc.get("stamp") == stamp and doc.get("version") == 1:
            keys = doc["keys"]
            now = time.time()
            expiries = [k.get("expires") for k in keys] + [
                sub.get("expires") for k in keys for sub in k.get("subkey_info", {}).values()]
            if not any(e and str(e).isdigit() and int(e) < now for e in expiries):
                return keys
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    r = _run_gpg(home, ["--list-secret-keys", "--with-colons", "--with-keygrip", "--fixed-list-mode"], b"")
    if r.returncode not in (0, 2):  # 2: "no secret keys" in some versions
        raise SignatureError(f"gpg cannot list the keys of {path}: {_gpg_messages(r)}")
    keys = _parse_colon_listing(r.data.decode("utf-8", "replace"))
    # gpg may have updated the trustdb while listing: stamp what is there now.
    tmp = f"{cache}.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(tmp, "w") as f:
            json.dump({"version": 1, "stamp": _keyring_stamp(path), "keys": keys}, f)
        os.replace(tmp, cache)
    except OSError as e:
        log.debug("cannot keep the key listing in %s: %s", path, e)
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return keys


def list_keys(home: str | None = None, *, secret: bool = False,
              _raw: tuple[list[dict], list[dict]] | None = None) -> list[KeyInfo]:
    """The keys of bincache's keyring (only those with a secret key when ``secret``)."""
    public, secret_raw = _raw if _raw is not None else _listings(home)
    secret_fprs = {k["fingerprint"].upper() for k in secret_raw}
    keys = [_key_info(k, secret_fprs) for k in public]
    if secret:
        keys = [k for k in keys if k.secret]
    return sorted(keys, key=lambda k: (k.uid, k.fingerprint))


def signing_keys(home: str | None = None, *, _raw: tuple[list[dict], list[dict]] | None = None) -> list[KeyInfo]:
    """Keys bincache can sign with: a secret key, able to sign, neither revoked nor expired."""
    return [k for k in list_keys(home, secret=True, _raw=_raw) if k.can_sign]


def trusted_keys(home: str | None = None) -> list[KeyInfo]:
    return [k for k in list_keys(home) if k.trusted]


_trust_lock = threading.Lock()
_trust_cache: dict[str, tuple[tuple, frozenset[str]]] = {}


def trusted_fingerprints(home: str | None = None) -> frozenset[str]:
    """Primary fingerprints of the trusted keys; cached until the keyring or trustdb changes."""
    path = gnupg_home(home)
    stamp = []
    for name in ("pubring.kbx", "pubring.gpg", "trustdb.gpg"):
        try:
            st = os.stat(os.path.join(path, name))
            stamp.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            stamp.append((name, None))
    key = tuple(stamp)
    with _trust_lock:
        cached = _trust_cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
    fprs = frozenset(k.fingerprint for k in list_keys(home) if k.trusted)
    with _trust_lock:
        _trust_cache[path] = (key, fprs)
    return fprs


def find_keys(query: str, home: str | None = None, *, secret: bool = False,
              _raw: tuple[list[dict], list[dict]] | None = None) -> list[KeyInfo]:
    """Keys matching a fingerprint, a key id (16 or 8 hex digits, optional 0x), or a piece of a
    user id (name or email, case-insensitive)."""
    q = query.strip()
    keys = list_keys(home, secret=secret, _raw=_raw)
    hexq = q[2:] if q.lower().startswith("0x") else q
    hexq = hexq.replace(" ", "").upper()
    if re.fullmatch(r"[0-9A-F]{8,40}", hexq):
        found = [k for k in keys if k.fingerprint.endswith(hexq)]
        if found:
            return found
    ql = q.lower().strip("<>")
    return [k for k in keys if any(ql in u.lower() for u in k.uids)]


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
    g = _gpg(home)
    result = g.gen_key("\n".join(params))
    fpr = (getattr(result, "fingerprint", None) or "").upper()
    if not fpr:
        raise SignatureError(f"gpg could not create the key: {_gpg_messages(result) or result.status}")
    return find_key(fpr, home)


def import_keys(data: bytes, *, trust: bool, home: str | None = None, origin: str = "key data") -> list[str]:
    """Import OpenPGP keys (public, or secret ones exported without passphrase) and, when
    ``trust``, make them trusted. Returns the primary fingerprints imported."""
    g = _gpg(home)
    result = g.import_keys(data)
    fprs = sorted({f.upper() for f in (result.fingerprints or []) if f})
    if not fprs:
        why = _gpg_messages(result)
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
    g = _gpg(home)
    try:
        g.trust_keys(fprs, "TRUST_ULTIMATE" if trusted else "TRUST_UNDEFINED")
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
        g = _gpg(home)
        result = g.delete_keys(key.fingerprint)
        if str(result) != "ok":
            raise SignatureError(f"gpg could not remove key {key.fingerprint}: {_gpg_messages(result) or result}")
    return key


def export_keys(keys: Sequence[str] | None = None, *, secret: bool = False, home: str | None = None) -> tuple[bytes, list[str]]:
    """Armored export of the given keys (all keys, or all secret keys, when none are given)."""
    if keys:
        selected = [find_key(q, home, secret=secret) for q in keys]
    else:
        selected = list_keys(home, secret=secret)
    if not selected:
        raise SignatureError(f"no {'secret ' if secret else ''}keys to export in {gnupg_home(home)}")
    fprs = list(dict.fromkeys(k.fingerprint for k in selected))
    g = _gpg(home)
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
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise SignatureError(f"cannot write {path}: {e.strerror}") from None


# -- clearsigning ----------------------------------------------------------------------------------


def is_clearsigned(data: bytes) -> bool:
    """Whether ``data`` is an OpenPGP clearsigned document (possibly after leading whitespace)."""
    return data.lstrip().startswith(BEGIN_SIGNED)


def _cleartext_lines(data: bytes) -> list[bytes]:
    text = data.replace(b"\r\n", b"\n")
    if text.endswith(b"\n"):
        text = text[:-1]
    lines = text.split(b"\n")
    for line in lines:
        if len(line) > _MAX_LINE:
            raise SignatureError(f"cannot clearsign a line of {len(line)} bytes (gpg truncates lines "
                                 f"longer than {_MAX_LINE}); write the document with line breaks")
    return lines


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    table = _CRC24_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[((crc >> 16) ^ byte) & 0xFF]
    return crc


def _make_crc24_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
        table.append(crc & 0xFFFFFF)
    return table


_CRC24_TABLE = _make_crc24_table()


def _armor_signature(packet: bytes) -> bytes:
    b64 = base64.b64encode(packet)
    body = b"\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    crc = base64.b64encode(_crc24(packet).to_bytes(3, "big"))
    return BEGIN_SIGNATURE + b"\n\n" + body + b"\n=" + crc + b"\n" + END_SIGNATURE + b"\n"


def _cleartext(lines: list[bytes]) -> bytes:
    # Dash-escaping (RFC 4880 7.1): a signed line starting with "-" cannot be taken for armor.
    return b"".join((b"- " + line if line.startswith(b"-") else line) + b"\n" for line in lines)


def _mpi(value: bytes) -> bytes:
    value = value.lstrip(b"\0")
    bits = (len(value) - 1) * 8 + value[0].bit_length() if value else 0
    return struct.pack(">H", bits) + value


def _parse_sexp(data: bytes, i: int = 0) -> tuple[Any, int]:
    """Canonical S-expressions (what gpg-agent answers): lists and length-prefixed atoms."""
    if data[i:i + 1] == b"(":
        i += 1
        out = []
        while data[i:i + 1] != b")":
            if i >= len(data):
                raise ValueError("unterminated S-expression")
            item, i = _parse_sexp(data, i)
            out.append(item)
        return out, i + 1
    colon = data.index(b":", i)
    n = int(data[i:colon])
    return data[colon + 1:colon + 1 + n], colon + 1 + n


def _assuan_unescape(data: bytes) -> bytes:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


class _NeedsPassphrase(Exception):
    pass


class _AgentConnection:
    """One Assuan connection to gpg-agent (one per thread; the agent serves them concurrently)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(socket_path)
        self.buf = b""
        self.pid = os.getpid()
        self._read()  # greeting
        self.command("RESET")
        # Loopback: the agent asks *us* for a passphrase (an INQUIRE we cancel) instead of
        # starting a pinentry that would wait for a person.
        self.command("OPTION pinentry-mode=loopback")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("gpg-agent closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _read(self) -> bytes:
        data = []
        asked = False
        while True:
            line = self._line()
            if line.startswith(b"D "):
                data.append(line[2:])
            elif line == b"OK" or line.startswith(b"OK "):
                return _assuan_unescape(b"".join(data))
            elif line.startswith(b"ERR"):
                if asked:
                    raise _NeedsPassphrase(line.decode(errors="replace"))
                raise RuntimeError(line.decode(errors="replace"))
            elif line.startswith(b"INQUIRE"):
                # Only a passphrase would be asked for here; there is no way to get one.
                asked = True
                self.sock.sendall(b"CAN\n")
            # "S ..." status and "#" comments are informational.

    def command(self, cmd: str) -> bytes:
        self.sock.sendall(cmd.encode() + b"\n")
        return self._read()

    def pksign(self, keygrip: str, digest: bytes, hash_algo: int) -> bytes:
        # Pipelined: the three commands go in one write; the answers come back in order.
        self.sock.sendall(f"SIGKEY {keygrip}\nSETHASH {hash_algo} {digest.hex()}\nPKSIGN\n".encode())
        self._read()
        self._read()
        return self._read()


# In-process signing costs ~30 ms to set up (export, import of cryptography, a check) and saves
# ~0.4 ms a signature over the agent: worth it from a few dozen packages, not for three.
_UPGRADE_AFTER = 8

# OpenPGP public-key algorithms the packet writer knows (the agent's S-expression gives their MPIs).
_AGENT_ALGOS = {1: "rsa", 17: "dsa", 19: "ecdsa", 22: "eddsa"}
_HASH_SHA256 = 8  # the same number in OpenPGP and in libgcrypt
_SIGN_ERRORS = (OSError, ConnectionError, RuntimeError, ValueError, IndexError, KeyError, TypeError)

#: Signer modes, fastest first.
MODES = ("local", "agent", "gpg")


class Signer:
    """Clearsigns build cache manifests with one key of bincache's keyring.

    ``key`` is a fingerprint, key id or user id; with none, the single signing key is used.
    Thread-safe. ``mode`` picks how signatures are made; "auto" starts with the agent (ready
    in a few ms) and, from the 8th signature on, moves to in-process signing set up in the
    background; anything that fails falls back to the next way:

    * ``local``: a key without passphrase (Ed25519 or RSA) is read once from gpg and signs in
      this process with ``cryptography`` (~0.05 ms). It is the same secret gpg-agent would read
      from the same file; it is never written or printed. Keys with a passphrase never take this
      path (gpg will not export them without it).
    * ``agent``: the warm gpg-agent signs the digest over its socket (~0.4 ms, CPU of the agent).
    * ``gpg``: one gpg process per signature (~7 ms), what any setup can do.

    bincache writes the OpenPGP signature packet itself in the first two modes, so the first
    signature is checked with gpg before that mode is used (once per key: the result is kept
    in the home).
    """

    def __init__(self, key: str | None = None, home: str | None = None, *, mode: str = "auto") -> None:
        if mode not in ("auto", *MODES):
            raise ValueError(f"mode must be auto, local, agent or gpg, not {mode!r}")
        self.home = gnupg_home(home)
        self._homedir = _gpg_homedir(self.home)
        # create pays this once per run, so little of it is on the way: "auto" signs through
        # the agent at once (the key listing is kept in the home between runs) and moves to
        # in-process signing later (see _UPGRADE_AFTER).
        self._exported: bytes | None = None
        exporting = None
        if mode == "local":
            exporting = threading.Thread(target=self._export_secret_keys, daemon=True)
            exporting.start()
        secret_listing = _secret_listing(self.home)
        raw = (secret_listing, secret_listing)  # the secret listing holds trust and validity too
        try:
            self.key = self._choose(key, raw)
        finally:
            if exporting is not None:
                exporting.join()
        self.fingerprint: str = self.key.fingerprint
        self._upgrade: threading.Thread | None = None
        self._local = threading.local()
        self._conns: list[_AgentConnection] = []
        self._conns_lock = threading.Lock()
        # Sockets are closed when the Signer goes away or at exit, never left to the collector.
        weakref.finalize(self, _close_connections, self._conns, self._conns_lock)
        self._subkey = self._signing_subkey(secret_listing)
        self._sign_digest: Callable[[bytes], list[bytes]] | None = None
        self._socket_path = ""
        self._check: threading.Thread | None = None
        self._check_error: str | None = None
        self._check_lock = threading.Lock()
        self._fallbacks: tuple[str, ...] = ()
        self.mode = "gpg"
        self.notes: list[str] = []  # why faster modes were not used (for --debug and benchmarks)
        self._signed = itertools.count(1)
        if mode == "auto" and self._try_mode("agent"):
            self.mode = "agent"
            self._fallbacks = ("gpg",)
            self._upgrade = threading.Thread(target=self._upgrade_to_local, daemon=True)
            return
        candidates = ("local", "gpg") if mode == "auto" else (mode,)  # auto: the agent failed
        for i, candidate in enumerate(candidates):
            if candidate == "gpg" or self._try_mode(candidate, background=candidate == "local"):
                self.mode = candidate
                self._fallbacks = candidates[i + 1:]
                break
        if self.mode == "gpg":
            self._gpg_clearsign(b"bincache signing check\n")  # a passphrase problem shows now

    # -- public ----------------------------------------------------------------------------------
    def clearsign(self, data: bytes) -> bytes:
        """A clearsigned document (SHA-256) whose signed text is ``data`` (Spack's v3 manifests)."""
        lines = _cleartext_lines(data)
        if self._check is not None:
            self._await_check()
        if next(self._signed) == _UPGRADE_AFTER:
            self._start_upgrade()
        sign_digest = self._sign_digest
        if sign_digest is not None:
            try:
                return self._packet_clearsign(lines, sign_digest)
            except _NeedsPassphrase:
                raise self._passphrase_error() from None
            except _SIGN_ERRORS as e:
                log.debug("%s signing failed (%s); using gpg", self.mode, e)
                self.notes.append(f"{self.mode} failed: {e}")
                self._sign_digest = None
                self.mode = "gpg"
        return self._gpg_clearsign(data)

    @property
    def fast(self) -> bool:
        """Whether signatures are made without a gpg process each."""
        return self.mode != "gpg"

    def close(self) -> None:
        _close_connections(self._conns, self._conns_lock)

    def __enter__(self) -> Signer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Signer({self.fingerprint}, home={self.home!r}, mode={self.mode})"

    # -- choosing the key ------------------------------------------------------------------------
    def _choose(self, key: str | None, raw: tuple[list[dict], list[dict]]) -> KeyInfo:
        if key:
            matches = find_keys(key, self.home, secret=True, _raw=raw)
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
        usable = signing_keys(self.home, _raw=raw)
        if not usable:
            raise SignatureError(
                f"no signing key in {self.home}: create one with `bincache keys create NAME EMAIL`, "
                "import one with `bincache keys trust FILE`, or push with --unsigned")
        if len(usable) > 1:
            listing = ", ".join(f"{k.fingerprint} ({k.uid})" for k in usable)
            raise SignatureError(f"{len(usable)} signing keys in {self.home}: {listing}; "
                                 "choose one with --key FINGERPRINT")
        return usable[0]

    def _signing_subkey(self, secret_listing: list[dict]) -> tuple[str, str, int] | None:
        """(fingerprint, keygrip, algorithm) of the key material gpg would sign with: the newest
        signing subkey with its secret part here, else the primary key."""
        for k in secret_listing:
            if k["fingerprint"].upper() != self.fingerprint:
                continue
            now = time.time()
            best = None
            for info in (k.get("subkey_info") or {}).values():
                if "s" not in (info.get("cap") or "") or info.get("token") not in ("+", ""):
                    continue
                if info.get("trust") in ("r", "e", "d", "i"):
                    continue
                exp = info.get("expires")
                if exp and str(exp).isdigit() and int(exp) < now:
                    continue
                if best is None or int(info.get("date") or 0) > int(best.get("date") or 0):
                    best = info
            if best is not None and best.get("keygrip"):
                return best["fingerprint"].upper(), best["keygrip"], int(best["algo"])
            if "s" in (k.get("cap") or "") and k.get("keygrip"):
                return self.fingerprint, k["keygrip"], int(k["algo"])
        return None

    # -- modes -----------------------------------------------------------------------------------
    def _try_mode(self, mode: str, background: bool = False) -> bool:
        if self._subkey is None:
            self.notes.append(f"{mode}: no signing key material found")
            return False
        try:
            sign_digest = self._local_signer() if mode == "local" else self._agent_signer()
            if sign_digest is None:
                return False
            doc = self._packet_clearsign(_cleartext_lines(b"bincache signing check\n"), sign_digest)
        except _NeedsPassphrase:
            raise self._passphrase_error() from None
        except _SIGN_ERRORS as e:
            self.notes.append(f"{mode}: {e}")
            log.debug("%s signing unavailable: %s", mode, e)
            return False
        self._sign_digest = sign_digest
        if self._check_key(mode) in _checked_modes(self.home):
            return True
        if background:
            self._check = threading.Thread(target=self._background_check, args=(mode, doc), daemon=True)
            self._check.start()
            return True
        if self._self_check(mode, doc) is not None:
            self._sign_digest = None
            return False
        return True

    def _background_check(self, mode: str, doc: bytes) -> None:
        self._check_error = self._self_check(mode, doc)

    def _upgrade_to_local(self) -> None:
        """Move from agent to in-process signing once the key material is here and checked."""
        try:
            if self._export_secret_keys() is None:
                self.notes.append("local: gpg exported no secret key (passphrase?)")
                return
            sign_digest = self._local_signer()
            if sign_digest is None:
                return
            if self._check_key("local") not in _checked_modes(self.home):
                doc = self._packet_clearsign(_cleartext_lines(b"bincache signing check\n"), sign_digest)
                if self._self_check("local", doc) is not None:
                    return
        except _SIGN_ERRORS as e:
            self.notes.append(f"local: {e}")
            log.debug("in-process signing unavailable: %s", e)
            return
        with self._check_lock:
            if self.mode == "agent":
                self._sign_digest = sign_digest
                self.mode = "local"

    def _start_upgrade(self) -> None:
        if self._upgrade is not None:
            try:
                self._upgrade.start()
            except RuntimeError:  # started already (settle)
                pass

    def settle(self) -> None:
        """Finish the move to in-process signing now (benchmarks and tests; signing never needs to)."""
        if self._upgrade is not None:
            self._start_upgrade()
            self._upgrade.join()
        if self._check is not None:
            self._await_check()

    def _check_key(self, mode: str) -> str:
        sub_fpr, _, algo = self._subkey  # type: ignore[misc]
        return f"{mode}:{sub_fpr}:{algo}:{_PACKET_WRITER_VERSION}"

    def _self_check(self, mode: str, doc: bytes) -> str | None:
        """The packet is ours, so gpg checks the first one before any signature is handed out;
        returns what went wrong, or None. A success is remembered in the home (per key, mode
        and packet writer version): later runs skip the ~8 ms gpg check. It records a test
        result, nothing secret."""
        try:
            _, fpr = verify_clearsigned(doc, self.home, trusted_only=False)
            if fpr != self.fingerprint:
                raise SignatureError(f"signed by {fpr}")
        except SignatureError as e:
            error = f"{mode}: self-check failed: {e}"
            self.notes.append(error)
            log.debug("%s-made signature did not verify (%s)", mode, e)
            return error
        _remember_checked(self.home, self._check_key(mode))
        return None

    def _await_check(self) -> None:
        with self._check_lock:
            check = self._check
            if check is None:
                return
            check.join()
            if self._check_error is not None:
                self._sign_digest = None
                self._check_error = None
                self.mode = "gpg"
                for candidate in self._fallbacks:
                    if candidate == "gpg" or self._try_mode(candidate):
                        self.mode = candidate
                        break
            self._check = None

    def _export_secret_keys(self, fingerprint: str | None = None) -> bytes | None:
        """Binary export of the secret keys (all, or one); None when gpg exports nothing, as for
        a key with a passphrase (loopback, no way to ask)."""
        try:
            r = _run_gpg(self.home, ["--export-secret-keys", *([fingerprint] if fingerprint else [])], b"")
        except SignatureError as e:
            log.debug("secret key export failed: %s", e)
            return None
        data = r.data if r.returncode == 0 else b""
        if fingerprint is None:
            self._exported = data or None
        return data or None

    def _local_signer(self) -> Callable[[bytes], list[bytes]] | None:
        try:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
        except ImportError:
            self.notes.append("local: the cryptography package is not installed")
            return None
        sub_fpr, _, algo = self._subkey  # type: ignore[misc]
        if algo not in (1, 22):
            self.notes.append(f"local: algorithm {algo}")
            return None
        exported = getattr(self, "_exported", None)
        self._exported = None
        secret = _secret_key_material(exported, sub_fpr) if exported else None
        if secret is None:
            # The export of every key fails when one of them has a passphrase: this key alone.
            exported = self._export_secret_keys(self.fingerprint)
            secret = _secret_key_material(exported, sub_fpr) if exported else None
        del exported
        if secret is None:
            # A key with a passphrase is exported protected (or not at all): stays in the agent.
            self.notes.append("local: no unprotected secret key material (passphrase?)")
            return None
        pub, sec = secret
        if algo == 22:
            if pub[0][:1] != b"\x40" or len(pub[0]) != 33:
                self.notes.append("local: not an Ed25519 key")
                return None
            private = ed25519.Ed25519PrivateKey.from_private_bytes(sec[0].rjust(32, b"\0"))
            if private.public_key().public_bytes_raw() != pub[0][1:]:
                raise ValueError("the exported Ed25519 secret does not match its public key")

            def sign_ed25519(digest: bytes) -> list[bytes]:
                sig = private.sign(digest)
                return [sig[:32], sig[32:]]

            return sign_ed25519
        n, e = (int.from_bytes(v, "big") for v in pub[:2])
        d, p, q = (int.from_bytes(v, "big") for v in sec[:3])
        numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), rsa.rsa_crt_iqmp(p, q),
                                        rsa.RSAPublicNumbers(e, n))
        rsa_key = numbers.private_key()

        def sign_rsa(digest: bytes) -> list[bytes]:
            return [rsa_key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))]

        return sign_rsa

    def _agent_signer(self) -> Callable[[bytes], list[bytes]] | None:
        _, keygrip, algo = self._subkey  # type: ignore[misc]
        if algo not in _AGENT_ALGOS:
            self.notes.append(f"agent: algorithm {algo}")
            return None
        # Listing the secret keys started the agent; its socket is in the home unless gpg put
        # it under /run/user (then gpgconf knows where).
        guess = os.path.join(self._homedir, "S.gpg-agent")
        try:
            is_socket = stat.S_ISSOCK(os.stat(guess).st_mode)
        except OSError:
            is_socket = False
        self._socket_path = guess if is_socket else _agent_socket(self._homedir)

        def sign_agent(digest: bytes) -> list[bytes]:
            try:
                raw = self._pksign(keygrip, digest)
            except (OSError, ConnectionError):
                # A connection the agent dropped (agent restarted): one fresh try.
                raw = self._pksign(keygrip, digest)
            sexp, _ = _parse_sexp(raw)
            if sexp[0] != b"sig-val" or sexp[1][0].decode() not in _AGENT_ALGOS.values():
                raise ValueError(f"unexpected signature from gpg-agent: {sexp[1][0]!r}")
            return [part[1] for part in sexp[1][1:]]

        return sign_agent

    def _pksign(self, keygrip: str, digest: bytes) -> bytes:
        conn = self._connection()
        try:
            return conn.pksign(keygrip, digest, _HASH_SHA256)
        except BaseException:
            # Answers to the pipelined commands may still be in flight: never reuse it.
            self._local.conn = None
            conn.close()
            raise

    def _connection(self) -> _AgentConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.pid != os.getpid():
            try:
                conn = _AgentConnection(self._socket_path, timeout=60.0)
            except (FileNotFoundError, ConnectionRefusedError):
                # The agent went away (gpgconf --kill, a reboot of the session): start it again.
                self._socket_path = _agent_socket(self._homedir)
                conn = _AgentConnection(self._socket_path, timeout=60.0)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _packet_clearsign(self, lines: list[bytes], sign_digest: Callable[[bytes], list[bytes]]) -> bytes:
        """The clearsigned document, with a v4 signature packet (RFC 4880 5.2.3) made here."""
        sub_fpr, _, algo = self._subkey  # type: ignore[misc]
        fpr = bytes.fromhex(sub_fpr)
        # Signature type 0x01 (canonical text): lines end in CRLF, trailing blanks are not signed.
        canonical = b"\r\n".join(line.rstrip(b" \t\r") for line in lines)
        # Hashed subpackets: issuer fingerprint (33), creation time (2); unhashed: issuer id (16).
        hashed = bytes([22, 33, 4]) + fpr + bytes([5, 2]) + struct.pack(">I", int(time.time()))
        head = bytes([4, 0x01, algo, _HASH_SHA256]) + struct.pack(">H", len(hashed)) + hashed
        digest = hashlib.sha256(canonical + head + b"\x04\xff" + struct.pack(">I", len(head))).digest()
        values = sign_digest(digest)
        unhashed = bytes([9, 16]) + fpr[-8:]
        body = (head + struct.pack(">H", len(unhashed)) + unhashed + digest[:2]
                + b"".join(_mpi(v) for v in values))
        if len(body) < 256:
            packet = bytes([0x88, len(body)]) + body
        else:
            packet = bytes([0x89]) + struct.pack(">H", len(body)) + body
        return BEGIN_SIGNED + b"\nHash: SHA256\n\n" + _cleartext(lines) + _armor_signature(packet)

    # -- gpg, one process per signature -----------------------------------------------------------
    def _gpg_clearsign(self, data: bytes) -> bytes:
        g = _gpg(self.home)
        # Never pass passphrase="": python-gnupg then adds --passphrase-fd 0 without writing a
        # line, and gpg takes the first line of the document as the passphrase (measured).
        result = g.sign(data if data.endswith(b"\n") else data + b"\n", keyid=self.fingerprint,
                        clearsign=True, detach=False, binary=False)
        out = bytes(result.data or b"")
        codes = {s[0] for s in _status(result)}
        if "SIG_CREATED" not in codes or END_SIGNATURE not in out:
            if codes & {"NEED_PASSPHRASE", "INQUIRE_MAXLEN", "PINENTRY_LAUNCHED", "BAD_PASSPHRASE"}:
                raise self._passphrase_error()
            raise SignatureError(f"gpg could not sign with {self.fingerprint}: "
                                 f"{_gpg_messages(result) or result.status or 'unknown error'}")
        return out

    def _passphrase_error(self) -> SignatureError:
        return SignatureError(
            f"signing key {self.fingerprint} ({self.key.uid}) is protected by a passphrase and bincache "
            "cannot ask for one (it never prompts). Use a key without passphrase for unattended "
            "signing (`bincache keys create`), or unlock this one in gpg-agent first "
            f"(e.g. `gpg --homedir {self._homedir} --clearsign` once), or push with --unsigned")


# Bump when _packet_clearsign changes: remembered self-checks of older writers are redone.
_PACKET_WRITER_VERSION = 1
_CHECKED_FILE = "bincache-signing-checked.json"


def _checked_modes(home: str) -> set[str]:
    try:
        with open(os.path.join(home, _CHECKED_FILE)) as f:
            return set(json.load(f))
    except (OSError, ValueError, TypeError):
        return set()


def _remember_checked(home: str, key: str) -> None:
    done = _checked_modes(home) | {key}
    tmp = os.path.join(home, f".{_CHECKED_FILE}.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "w") as f:
            json.dump(sorted(done), f)
        os.replace(tmp, os.path.join(home, _CHECKED_FILE))
    except OSError as e:  # a read-only home: the check just runs again next time
        log.debug("cannot record the signing self-check in %s: %s", home, e)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """The OpenPGP packets of a binary (unarmored) key export: (tag, body)."""
    out = []
    i = 0
    while i < len(data):
        first = data[i]
        if not first & 0x80:
            raise ValueError("not an OpenPGP packet")
        if first & 0x40:  # new format
            tag = first & 0x3F
            o1 = data[i + 1]
            if o1 < 192:
                length, i = o1, i + 2
            elif o1 < 224:
                length, i = ((o1 - 192) << 8) + data[i + 2] + 192, i + 3
            elif o1 == 255:
                length, i = struct.unpack(">I", data[i + 2:i + 6])[0], i + 6
            else:
                raise ValueError("partial lengths do not occur in key packets")
        else:
            tag = (first >> 2) & 0x0F
            kind = first & 3
            if kind == 3:
                raise ValueError("indeterminate length in a key packet")
            size = 1 << kind
            length = int.from_bytes(data[i + 1:i + 1 + size], "big")
            i += 1 + size
        out.append((tag, data[i:i + length]))
        i += length
    return out


def _read_mpis(data: bytes, at: int, count: int) -> tuple[list[bytes], int]:
    values = []
    for _ in range(count):
        bits = struct.unpack(">H", data[at:at + 2])[0]
        n = (bits + 7) // 8
        values.append(data[at + 2:at + 2 + n])
        at += 2 + n
    return values, at


def _secret_key_material(export: bytes, fingerprint: str) -> tuple[list[bytes], list[bytes]] | None:
    """(public MPIs, secret MPIs) of the (sub)key ``fingerprint`` in a secret key export, when it
    is stored unprotected (S2K usage 0); None otherwise."""
    for tag, body in _packets(export):
        if tag not in (5, 7) or len(body) < 6 or body[0] != 4:
            continue
        algo = body[5]
        at = 6
        if algo == 1:
            pub, at = _read_mpis(body, at, 2)
            n_secret = 4
        elif algo == 22:
            at += 1 + body[at]  # curve OID
            pub, at = _read_mpis(body, at, 1)
            n_secret = 1
        else:
            continue
        fpr = hashlib.sha1(b"\x99" + struct.pack(">H", at) + body[:at]).hexdigest().upper()
        if fpr != fingerprint:
            continue
        if body[at] != 0:
            return None
        sec, _ = _read_mpis(body, at + 1, n_secret)
        return pub, sec
    return None


def _close_connections(conns: list[_AgentConnection], lock: threading.Lock) -> None:
    with lock:
        for c in conns:
            c.close()
        conns.clear()


def _agent_socket(homedir: str) -> str:
    """Start the agent when needed (it then stays: later signatures find it warm)."""
    env = dict(os.environ, GNUPGHOME=homedir)
    try:
        subprocess.run(["gpgconf", "--homedir", homedir, "--launch", "gpg-agent"], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=True)
        out = subprocess.run(["gpgconf", "--homedir", homedir, "--list-dirs", "agent-socket"], env=env,
                             stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise OSError(f"gpgconf: {e}") from None
    path = out.stdout.decode().strip()
    # gpgconf percent-escapes some characters in paths.
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), path)


def stop_agent(home: str | None = None) -> None:
    """Stop the gpg-agent of a home (tests use it to clean up their throwaway homes)."""
    homedir = _gpg_homedir(gnupg_home(home))
    subprocess.run(["gpgconf", "--homedir", homedir, "--kill", "gpg-agent"], stdin=subprocess.DEVNULL,
                   capture_output=True, timeout=30, check=False, env=dict(os.environ, GNUPGHOME=homedir))


# -- verification ----------------------------------------------------------------------------------


def _single_document(data: bytes, source: str) -> bytes:
    """``data`` must be one clearsigned document and nothing else: text around it is ignored by
    gpg but could be taken for the payload by a lax reader, and a second block would be
    verified and printed too."""
    doc = data.strip()
    lines = doc.split(b"\n")
    longest = max(len(line) for line in lines)
    if longest > _MAX_LINE:
        # gpg verifies and prints only the first _MAX_LINE bytes of a line and drops the rest
        # with a mere warning: text past it is signed by nobody.
        raise SignatureError(f"{source}: holds a line of {longest} bytes, longer than gpg "
                             f"verifies ({_MAX_LINE}); refusing it")
    if not lines[0].rstrip(b"\r") == BEGIN_SIGNED:
        raise SignatureError(f"{source}: not a clearsigned document")
    kinds = [line.rstrip(b"\r") for line in lines if line.startswith(b"-----")]
    if kinds != [BEGIN_SIGNED, BEGIN_SIGNATURE, END_SIGNATURE] or lines[-1].rstrip(b"\r") != END_SIGNATURE:
        raise SignatureError(f"{source}: not a single clearsigned document (unexpected armor lines); refusing it")
    return doc + b"\n"


def verify_clearsigned(data: bytes, home: str | None = None, *, source: str = "signed document",
                       trusted_only: bool = True) -> tuple[bytes, str]:
    """Check a clearsigned document; returns (the signed text as gpg read it, the signer's primary
    fingerprint). Raises :class:`SignatureError` with a one-line reason for a bad signature, an
    unknown, untrusted, revoked or expired key, or a document that is not one clearsigned block."""
    doc = _single_document(data, source)
    result = _run_gpg(home, ["--decrypt"], doc)
    status = _status(result)
    kinds = [s[0] for s in status]
    if kinds.count("NEWSIG") > 1 or kinds.count("PLAINTEXT") > 1:
        raise SignatureError(f"{source}: holds more than one signature; refusing it")
    codes = {s[0]: s[1:] for s in status}
    if "BADSIG" in codes:
        raise SignatureError(f"{source}: BAD signature (key {codes['BADSIG'][0]}): the signed text was "
                             "changed after signing")
    if "REVKEYSIG" in codes:
        raise SignatureError(f"{source}: signed by key {codes['REVKEYSIG'][0]}, which is REVOKED")
    if "EXPKEYSIG" in codes:
        raise SignatureError(f"{source}: signed by key {codes['EXPKEYSIG'][0]}, which has EXPIRED")
    if "EXPSIG" in codes:
        raise SignatureError(f"{source}: the signature has expired")
    if "ERRSIG" in codes:
        args = codes["ERRSIG"]
        keyid = args[0] if args else "?"
        rc = args[5] if len(args) > 5 else ""
        if rc == "9":
            raise SignatureError(
                f"{source}: signed by unknown key {keyid}; if you trust it, add it with "
                "`bincache keys install MIRROR --trust` or `bincache keys trust FILE`")
        raise SignatureError(f"{source}: the signature cannot be checked (key {keyid}: "
                             f"{_gpg_messages(result) or 'error ' + rc})")
    if "GOODSIG" not in codes or "VALIDSIG" not in codes:
        why = _gpg_messages(result)
        raise SignatureError(f"{source}: no valid signature" + (f" ({why})" if why else ""))
    if result.returncode != 0:
        raise SignatureError(f"{source}: gpg did not accept the signature ({_gpg_messages(result) or 'exit ' + str(result.returncode)})")
    valid = codes["VALIDSIG"]
    primary = (valid[9] if len(valid) > 9 else valid[0]).upper()
    if trusted_only and primary not in trusted_fingerprints(home):
        uid = " ".join(codes["GOODSIG"][1:])
        raise SignatureError(
            f"{source}: signed by key {primary} ({uid}), which is NOT trusted; trust it with "
            "`bincache keys trust FILE` (or `bincache keys install MIRROR --trust`) if you mean to")
    return bytes(result.data), primary


def clearsigned_text(data: bytes, source: str = "signed document") -> bytes:
    """The signed text of a clearsigned document WITHOUT checking the signature."""
    doc = _single_document(data, source)
    lines = doc.split(b"\n")
    try:
        blank = next(i for i, line in enumerate(lines) if not line.strip())
        end = lines.index(BEGIN_SIGNATURE, blank)
    except (StopIteration, ValueError):
        raise SignatureError(f"{source}: damaged clearsigned document") from None
    body = [line.rstrip(b"\r") for line in lines[blank + 1:end]]
    body = [line[2:] if line.startswith(b"- ") else line for line in body]
    return b"".join(line.rstrip(b" \t") + b"\n" for line in body)


_skip_lock = threading.Lock()
_skip_warned = False


def _note_skipped(source: str) -> None:
    global _skip_warned
    with _skip_lock:
        first = not _skip_warned
        _skip_warned = True
    if first:
        warnings.warn("signatures are NOT verified (--unsigned / signed: false): installing signed "
                      "packages without checking who signed them", UserWarning, stacklevel=3)
    log.info("%s: signature not verified (unsigned install)", source)


def verify_manifest_bytes(raw: bytes, require_signature: bool, home: str | None = None, *,
                          source: str = "manifest") -> bytes:
    """The manifest JSON of a fetched manifest, checked as asked. Install calls this before it
    fetches any blob: with ``require_signature`` an unsigned manifest is refused and a signed one
    must verify against a trusted key; without, a signature is not checked (and that is said)."""
    if is_clearsigned(raw):
        if require_signature:
            payload, _ = verify_clearsigned(raw, home, source=source)
            return payload
        _note_skipped(source)
        return clearsigned_text(raw, source)
    if require_signature:
        raise SignatureError(
            f"{source} is not signed: refusing to install it; if you trust the mirror, use --unsigned "
            "(or set signed: false on the mirror)")
    return raw


def verify_manifests(raws: Sequence[bytes], require_signature: bool, home: str | None = None, *,
                     sources: Sequence[str] | None = None, jobs: int = 4) -> list[bytes]:
    """:func:`verify_manifest_bytes` for a whole DAG at once, in parallel (gpg runs ~6 ms each)."""
    names = list(sources) if sources is not None else ["manifest"] * len(raws)
    if len(raws) <= 1 or jobs <= 1:
        return [verify_manifest_bytes(r, require_signature, home, source=s) for r, s in zip(raws, names)]
    gnupg_home(home)
    if require_signature:
        trusted_fingerprints(home)  # warm the cache once, not from every thread
    with ThreadPoolExecutor(max_workers=min(jobs, len(raws))) as pool:
        futures = [pool.submit(verify_manifest_bytes, r, require_signature, home, source=s)
                   for r, s in zip(raws, names)]
        return [f.result() for f in futures]


def verify_v2_specfile(data: bytes, home: str | None = None, *, require_signature: bool = True,
                       source: str = "spec file") -> dict:
    """A layout v2 ``*.spec.json.sig`` (clearsigned spec JSON), verified, as a dict."""
    payload = verify_manifest_bytes(data, require_signature, home, source=source)
    try:
        doc = json.loads(payload)
    except ValueError as e:
        raise SpecError(f"{source}: the signed text is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: the signed text is not a spec file")
    return doc


# -- keys in a mirror ------------------------------------------------------------------------------


def _layout_cache(cache, verb: str):
    if not hasattr(cache, "backend"):
        raise MirrorError(f"cannot {verb} keys in {getattr(cache, 'url', cache)}: key manifests exist "
                          "only in directory, http and s3 mirrors (Spack's layout v3)")
    return cache


def _manifest_records(raw: bytes, where: str) -> list:
    from .mirror.layout_v3 import parse_manifest

    return parse_manifest(raw, origin=where).records


def _read_key_index(cache) -> dict[str, dict]:
    try:
        raw = cache.backend.read(KEYS_MANIFEST)
    except BlobNotFound:
        return {}
    records = [r for r in _manifest_records(raw, f"{cache.url}/{KEYS_MANIFEST}") if r.media_type == MT_KEYINDEX]
    if not records:
        return {}
    try:
        doc = json.loads(cache.get_blob_bytes(records[0]))
        keys = doc["keys"]
    except (ValueError, KeyError, TypeError):
        raise MirrorError(f"{cache.url}/{KEYS_MANIFEST}: the key index is damaged") from None
    return {str(k).upper(): (v if isinstance(v, dict) else {}) for k, v in keys.items()}


def publish_keys(cache, fingerprints: Sequence[str] | None = None, home: str | None = None) -> list[str]:
    """Put public keys into a mirror: ``v3/manifests/key/<FPR>.key.manifest.json`` naming the
    armored key blob, and the key index ``keys.manifest.json``. With no keys given, the signing
    keys of bincache's keyring are published. Returns the fingerprints published."""
    from .mirror.layout_v3 import manifest_bytes

    if fingerprints:
        keys = [find_key(q, home) for q in fingerprints]
    else:
        keys = signing_keys(home)
        if not keys:
            raise SignatureError(f"no signing keys in {gnupg_home(home)} to publish; name the keys to publish")
    fprs = list(dict.fromkeys(k.fingerprint for k in keys))
    if hasattr(cache, "publish_public_keys"):  # layout v2: build_cache/_pgp/<FPR>.pub
        return cache.publish_public_keys({fpr: export_keys([fpr], home=home)[0] for fpr in fprs})
    cache = _layout_cache(cache, "publish")
    cache.backend.check_writable()
    for fpr in fprs:
        data, _ = export_keys([fpr], home=home)
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


def install_keys(cache, trust: bool, home: str | None = None) -> list[str]:
    """Import the public keys a mirror publishes; trust them only when ``trust`` says so.

    Each key blob is checked against its manifest (size, sha256) and must hold exactly the key
    its manifest is named for, so a mirror cannot slip a different key in under a known name.
    Old caches (layout v2, ``build_cache/_pgp/``) are read when there are no v3 keys.
    Returns the fingerprints imported."""
    cache = _layout_cache(cache, "install")
    g = _gpg(home)
    blobs = []
    fprs = mirror_key_fingerprints(cache)
    for fpr in fprs:
        path = f"{KEY_MANIFESTS}/{fpr}.key.manifest.json"
        try:
            raw = cache.backend.read(path)
        except BlobNotFound:
            raise MirrorError(f"{cache.url}: the key index names {fpr} but {path} is missing") from None
        records = [r for r in _manifest_records(raw, f"{cache.url}/{path}") if r.media_type == MT_KEY]
        if not records:
            raise MirrorError(f"{cache.url}/{path}: lists no {MT_KEY} blob")
        blobs.append((fpr, path, cache.get_blob_bytes(records[0])))
    if not fprs:
        for fpr in _v2_key_fingerprints(cache):
            path = f"{V2_KEYS}/{fpr}.pub"
            try:
                blobs.append((fpr, path, cache.backend.read(path)))
            except BlobNotFound:
                raise MirrorError(f"{cache.url}: the key index names {fpr} but {path} is missing") from None
    if not blobs:
        raise SignatureError(f"{cache.url} publishes no keys (bincache keys publish MIRROR puts them there)")
    for fpr, path, data in blobs:
        found = {k.get("fingerprint", "").upper() for k in g.scan_keys_mem(data) if k.get("type") == "pub"}
        if found != {fpr}:
            shown = ", ".join(sorted(found)) or "no key"
            raise SignatureError(f"{cache.url}/{path}: holds {shown}, not the key {fpr} it is named for; refusing it")
    imported = []
    for fpr, _, data in blobs:
        imported += import_keys(data, trust=trust, home=home, origin=f"{cache.url} key {fpr}")
    return sorted(set(imported))


__all__ = [
    "KeyInfo", "Signer", "clearsigned_text", "create_key", "export_keys", "find_key", "find_keys",
    "gnupg_home", "import_keys", "install_keys", "is_clearsigned", "list_keys", "mirror_key_fingerprints",
    "publish_keys", "set_trust", "signing_keys", "stop_agent", "trust_file", "trusted_fingerprints",
    "trusted_keys", "untrust_key", "verify_clearsigned", "verify_manifest_bytes", "verify_manifests",
    "verify_v2_specfile", "write_export",
]

