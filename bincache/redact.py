"""One redaction for every URL bincache prints or logs: no password, no token.

A URL may carry a secret in its user info (``scheme://user:password@host``) or in its query
(``?token=...``, pre-signed S3 and GCS URLs' ``X-Amz-Signature``, Azure SAS ``sig``...).
:func:`redact_url` masks both in one URL; :func:`redact` masks every URL inside a message (an
exception's text may quote one), and the CLI passes each error line and log record through it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

MASK = "****"

# Query parameters whose value is a credential (compared lower-case; prefixes end with "-").
_SECRET_PARAMS = frozenset((
    "token", "access_token", "id_token", "refresh_token", "auth", "authorization", "sig",
    "signature", "password", "passwd", "pwd", "secret", "client_secret", "key", "api_key",
    "apikey", "credential", "credentials", "session_token", "security_token", "code",
))
_SECRET_PREFIXES = ("x-amz-", "x-goog-")
_SECRET_WORDS = ("token", "secret", "password", "signature")

# scheme://[user[:password]@]rest ; the URL ends at whitespace or a quote/bracket.
_URL = re.compile(r"""(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'"<>()\[\]{}]*)""")


def secret_param(name: str) -> bool:
    """Whether a query parameter's value is a credential."""
    n = name.lower()
    return (n in _SECRET_PARAMS or n.startswith(_SECRET_PREFIXES)
            or any(w in n for w in _SECRET_WORDS))


def _redact_query(query: str) -> str:
    parts = []
    for piece in query.split("&"):
        name, eq, _value = piece.partition("=")
        if eq and secret_param(_unquote_name(name)):
            parts.append(f"{name}={MASK}")
        else:
            parts.append(piece)
    return "&".join(parts)


def _unquote_name(name: str) -> str:
    pairs = parse_qsl(f"{name}=x", keep_blank_values=True)
    return pairs[0][0] if pairs else name


def _redact_rest(rest: str) -> str:
    authority_end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i >= 0:
            authority_end = min(authority_end, i)
    authority, tail = rest[:authority_end], rest[authority_end:]
    at = authority.rfind("@")
    if at >= 0:
        user, colon, _password = authority[:at].partition(":")
        authority = f"{user}:{MASK}@{authority[at + 1:]}" if colon else authority
    path, q, query = tail.partition("?")
    if q:
        query, hashmark, fragment = query.partition("#")
        tail = f"{path}?{_redact_query(query)}{hashmark}{fragment}"
    return authority + tail


def redact_url(url: str) -> str:
    """``url`` with a password in its user info and token-like query values replaced by ****.

    A string without ``://`` is taken as ``[user:password@]host/...`` (an OCI reference).
    """
    if not isinstance(url, str):
        return url
    m = _URL.match(url)
    if m:
        return m.group("scheme") + _redact_rest(url[len(m.group("scheme")):])
    return _redact_rest(url) if "@" in url.split("/", 1)[0] else url


def redact(text: str) -> str:
    """Every URL inside ``text`` redacted (messages, log lines)."""
    if "://" not in text:
        return text
    def one(m: re.Match) -> str:
        rest = m.group("rest")
        body = rest.rstrip(":;,.")  # the sentence's punctuation after a URL is not part of it
        return m.group("scheme") + _redact_rest(body) + rest[len(body):]

    return _URL.sub(one, text)


__all__ = ["MASK", "redact", "redact_url", "secret_param"]
