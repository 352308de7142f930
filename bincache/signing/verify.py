"""Verifying clearsigned manifests with gpg, against the keys this keyring trusts.

The text returned is gpg's own output for the document (``gpg --decrypt``): the only bytes any
later decision may be read from. A good signature is not enough: gpg exits 0 for a good
signature by any key in the keyring, trusted or not, so the signer's primary fingerprint is
checked against the trusted set here, and so are the hash algorithm and the signature's date,
from gpg's VALIDSIG status line.
"""

from __future__ import annotations

import calendar
import json
import logging
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..errors import SignatureError, SpecError
from .cleartext import clearsigned_text, is_clearsigned, single_document
from .home import gnupg_home, run_gpg
from .keyring import trusted_fingerprints

log = logging.getLogger(__name__)

#: OpenPGP hash algorithms whose signatures can be forged (MD5, SHA-1, RIPEMD-160).
_WEAK_HASHES = {"1": "MD5", "2": "SHA-1", "3": "RIPEMD-160"}
#: How far in the future a signature may be dated: clocks of builders and users drift a little.
CLOCK_SKEW = 300


def verify_clearsigned(data: bytes, home: str | None = None, *, source: str = "signed document",
                       trusted_only: bool = True) -> tuple[bytes, str]:
    """Check a clearsigned document; returns (the signed text as gpg output it, the signer's
    primary fingerprint). Raises :class:`SignatureError` with a one-line reason for a bad
    signature, an unknown, untrusted, revoked or expired key, a SHA-1 or future-dated signature,
    or a document that is not one clearsigned block."""
    doc = single_document(data, source)
    home = gnupg_home(home)  # once: the configuration is read to find it
    result = run_gpg(home, ["--decrypt"], doc)
    status = result.status
    kinds = [s[0] for s in status]
    if kinds.count("NEWSIG") > 1 or kinds.count("PLAINTEXT") > 1:
        raise SignatureError(f"{source}: holds more than one signature; refusing it")
    codes = result.codes()
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
                             f"{result.messages or 'error ' + rc})")
    if "GOODSIG" not in codes or "VALIDSIG" not in codes or len(codes["VALIDSIG"]) < 10:
        why = result.messages
        raise SignatureError(f"{source}: no valid signature" + (f" ({why})" if why else ""))
    if result.returncode != 0:
        raise SignatureError(f"{source}: gpg did not accept the signature "
                             f"({result.messages or 'exit ' + str(result.returncode)})")
    # VALIDSIG <fpr> <date> <timestamp> <expires> <version> <reserved> <pk-algo> <hash-algo>
    #          <class> <primary fpr>
    valid = codes["VALIDSIG"]
    weak = _WEAK_HASHES.get(valid[7])
    if weak:
        raise SignatureError(f"{source}: signed with {weak}, which can be forged; refusing it "
                             "(sign it again: bincache signs with SHA-256)")
    made = _timestamp(valid[2])
    if made is None or made > time.time() + CLOCK_SKEW:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(made)) if made else repr(valid[2])
        raise SignatureError(f"{source}: the signature is dated {when}, in the future; refusing it "
                             "(is the signer's clock wrong?)")
    primary = valid[9].upper()
    if trusted_only and primary not in trusted_fingerprints(home):
        uid = " ".join(codes["GOODSIG"][1:])
        raise SignatureError(
            f"{source}: signed by key {primary} ({uid}), which is NOT trusted; trust it with "
            "`bincache keys trust FILE` (or `bincache keys install MIRROR --trust`) if you mean to")
    return bytes(result.data), primary


def _timestamp(field: str) -> float | None:
    """VALIDSIG's signature time: seconds since the epoch, or ISO 8601 (``--fixed-list-mode``)."""
    if field.isdigit():
        return float(field)
    try:
        return float(calendar.timegm(time.strptime(field, "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


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
    """The manifest text of a fetched manifest, checked as asked. Install calls this before it
    fetches any blob: with ``require_signature`` an unsigned manifest is refused and a signed one
    must verify against a trusted key (the text returned is gpg's); without, a signature is not
    checked (and that is said)."""
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
    """:func:`verify_manifest_bytes` for a whole DAG at once, in parallel (one gpg each)."""
    names = list(sources) if sources is not None else ["manifest"] * len(raws)
    home = gnupg_home(home)
    if len(raws) <= 1 or jobs <= 1:
        return [verify_manifest_bytes(r, require_signature, home, source=s) for r, s in zip(raws, names)]
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
