"""The shape of a clearsigned document (RFC 4880 7), checked before gpg sees it. No cryptography.

gpg decides whether a signature is good, and its output is the only text trusted. What gpg
tolerates but a reader could misread is refused here: text around the signed block (gpg ignores
it), a second block (gpg verifies and prints both), and lines longer than gpg reads (it verifies
and prints the first ``MAX_LINE`` bytes of such a line and drops the rest with a warning).
"""

from __future__ import annotations

from ..errors import SignatureError

BEGIN_SIGNED = b"-----BEGIN PGP SIGNED MESSAGE-----"
BEGIN_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----"
END_SIGNATURE = b"-----END PGP SIGNATURE-----"

#: gpg's MAX_LINELEN for cleartext (Spack's note too): past it a line is cut, silently signed.
MAX_LINE = 19995


def is_clearsigned(data: bytes) -> bool:
    """Whether ``data`` is an OpenPGP clearsigned document (possibly after leading whitespace)."""
    return data.lstrip().startswith(BEGIN_SIGNED)


def check_signable(data: bytes) -> None:
    """Refuse text gpg would not sign as given: a line it would truncate."""
    for line in data.split(b"\n"):
        if len(line) > MAX_LINE:
            raise SignatureError(f"cannot clearsign a line of {len(line)} bytes (gpg truncates lines "
                                 f"longer than {MAX_LINE}); write the document with line breaks")


def single_document(data: bytes, source: str) -> bytes:
    """``data`` as one clearsigned document and nothing else (surrounding whitespace dropped).

    Line endings may be LF or CRLF: gpg canonicalizes them in cleartext signatures."""
    doc = data.strip()
    lines = doc.split(b"\n")
    longest = max(len(line) for line in lines)
    if longest > MAX_LINE:
        raise SignatureError(f"{source}: holds a line of {longest} bytes, longer than gpg "
                             f"verifies ({MAX_LINE}); refusing it")
    if lines[0].rstrip(b"\r") != BEGIN_SIGNED:
        raise SignatureError(f"{source}: not a clearsigned document")
    kinds = [line.rstrip(b"\r") for line in lines if line.startswith(b"-----")]
    if kinds != [BEGIN_SIGNED, BEGIN_SIGNATURE, END_SIGNATURE] or lines[-1].rstrip(b"\r") != END_SIGNATURE:
        raise SignatureError(f"{source}: not a single clearsigned document (unexpected armor lines); "
                             "refusing it")
    return doc + b"\n"


def clearsigned_text(data: bytes, source: str = "signed document") -> bytes:
    """The signed text of a clearsigned document WITHOUT checking the signature (listings, and
    installs the user asked not to verify). Never used where a signature is required."""
    doc = single_document(data, source)
    lines = [line.rstrip(b"\r") for line in doc.split(b"\n")]
    try:
        blank = next(i for i, line in enumerate(lines) if not line.strip())
        end = lines.index(BEGIN_SIGNATURE, blank)
    except (StopIteration, ValueError):
        raise SignatureError(f"{source}: damaged clearsigned document") from None
    body = [line[2:] if line.startswith(b"- ") else line for line in lines[blank + 1:end]]
    return b"".join(line.rstrip(b" \t") + b"\n" for line in body)
