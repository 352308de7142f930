"""Registry authentication: anonymous, basic, and the Bearer token flow of GHCR and Docker Hub.

The registry says what it wants in a `WWW-Authenticate` challenge on a 401. For `Basic`, the
credentials go to the registry itself. For `Bearer realm=..,service=..,scope=..`, the client
asks the realm (a token server) for a token for that scope, with the credentials if it has some,
and retries with `Authorization: Bearer <token>`. Tokens are cached per scope until shortly
before they expire. Credentials are never sent anywhere but the registry host and the realm it
announced, and only over https unless the mirror is explicitly insecure.
"""

from __future__ import annotations

import base64
import os
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import requests

from ..errors import AuthError, RegistryError

#: A token is renewed this many seconds before its announced expiry.
EXPIRY_MARGIN = 10.0
#: The token spec's default lifetime when a token server does not say.
DEFAULT_TOKEN_LIFETIME = 60.0

_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Credentials:
    """A username and password (or token) for one registry. The password never prints."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Challenge:
    """One parsed `WWW-Authenticate` challenge."""

    scheme: str  # "basic" or "bearer", lowercased
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` header into its challenges (RFC 7235, as registries send it).

    >>> parse_challenges('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"')
    [Challenge(scheme='bearer', params={'realm': 'https://a/token', 'service': 'reg', 'scope': 'repository:x:pull'})]
    """
    challenges: list[Challenge] = []
    pos = 0
    scheme_re = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?=\s|$)")
    while pos < len(header):
        m = scheme_re.match(header, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while True:
            pm = re.compile(r"\s*,?\s*").match(header, pos)
            start = pm.end() if pm else pos
            p = _CHALLENGE_PARAM.match(header, start)
            if not p:
                break
            value = p.group(2) if p.group(2) is not None else p.group(3)
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = p.end()
        challenges.append(Challenge(scheme, params))
    return challenges


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Holds the credentials for one registry and the tokens obtained with them.

    Thread-safe: parallel uploads share one Authenticator, and a token fetched by one thread
    is used by the others.
    """

    def __init__(
        self,
        registry_host: str,
        credentials: Credentials | None = None,
        *,
        insecure: bool = False,
        verify: bool | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.registry_host = registry_host
        self.credentials = credentials
        self.insecure = insecure
        self.verify = resolve_verify(verify)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._mode: str | None = None  # None (unknown/anonymous), "basic" or "bearer"
        self._bearer: dict[str, str] = {}  # realm, service from the last challenge
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._fetched_at: dict[tuple[str, ...], float] = {}
        self.token_requests = 0  # how many times a realm was asked (tests, benchmarks)
        self._session = requests.Session()

    # --- request side -------------------------------------------------------------------
    def authorization(self, url: str, scope: tuple[str, ...]) -> str | None:
        """The `Authorization` header value for a request to `url` needing `scope`, if known.

        Once the registry has shown it wants Bearer tokens, a token for a new scope is fetched
        up front instead of waiting for one more 401.
        """
        if not self._is_registry(url):
            return None
        with self._lock:
            mode = self._mode
        if mode == "basic" and self.credentials:
            return _basic_header(self.credentials)
        if mode == "bearer":
            token = self._cached_token(scope)
            if token is None:
                token = self._fetch_token(self._bearer["realm"], self._bearer.get("service"),
                                          scope)
            return f"Bearer {token}"
        return None

    def handle_unauthorized(self, response: requests.Response, scope: tuple[str, ...],
                            sent: str | None) -> bool:
        """Learn from a 401 answer to a request that carried `sent` (an Authorization value).

        Returns True when a retry can succeed; raises AuthError, one line naming the registry,
        when it cannot.
        """
        header = response.headers.get("WWW-Authenticate", "")
        challenges = parse_challenges(header)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        sent_bearer = sent is not None and sent.startswith("Bearer ")
        if bearer is not None and "realm" in bearer.params:
            realm = bearer.params["realm"]
            self._check_realm(realm)
            if sent_bearer and _registry_error_code(header) == "insufficient_scope":
                raise AuthError(self._refused_message("not allowed to " + _describe(scope)))
            if sent_bearer and self._fresh(scope):
                raise AuthError(self._refused_message("a token just issued was refused"))
            wanted = bearer.params.get("scope")
            challenge_scope = tuple(wanted.split(" ")) if wanted else scope
            with self._lock:
                self._mode = "bearer"
                self._bearer = {"realm": realm, "service": bearer.params.get("service", "")}
                # A refused token is useless even if it has not expired (server restarted).
                self._tokens.pop(scope, None)
            merged = tuple(dict.fromkeys(scope + challenge_scope))
            self._fetch_token(realm, bearer.params.get("service"), merged, also=(scope,))
            return True
        if basic is not None:
            if self.credentials is None:
                raise AuthError(
                    f"registry {self.registry_host} requires a username and password: "
                    "configure access_pair for this mirror or pass --oci-username/--oci-password"
                )
            if sent is not None and sent.startswith("Basic "):
                raise AuthError(self._refused_message("wrong username or password"))
            with self._lock:
                self._mode = "basic"
            return True
        raise AuthError(f"registry {self.registry_host} refused the request (HTTP 401) and "
                        f"offered no supported authentication scheme ({header or 'none'})")

    # --- tokens -------------------------------------------------------------------------
    def _cached_token(self, scope: tuple[str, ...]) -> str | None:
        with self._lock:
            token = self._tokens.get(scope)
            if token is not None and token.expires_at > time.monotonic():
                return token.value
            return None

    def _fresh(self, scope: tuple[str, ...]) -> bool:
        # A token younger than two seconds that is refused will not get better by asking again.
        with self._lock:
            fetched = self._fetched_at.get(scope)
        return fetched is not None and time.monotonic() - fetched < 2.0

    def _fetch_token(self, realm: str, service: str | None, scope: tuple[str, ...],
                     also: tuple[tuple[str, ...], ...] = ()) -> str:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scope)
        headers = {}
        if self.credentials is not None:
            headers["Authorization"] = _basic_header(self.credentials)
        try:
            response = self._session.get(realm, params=params, headers=headers,
                                         timeout=self.timeout, verify=self.verify,
                                         allow_redirects=False)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach the token server {_host(realm)} of registry "
                                f"{self.registry_host}: {_reason(exc)}") from exc
        with self._lock:
            self.token_requests += 1
        if response.status_code in (401, 403):
            if self.credentials is None:
                raise AuthError(f"registry {self.registry_host} requires a username and "
                                "password: configure access_pair for this mirror")
            raise AuthError(self._refused_message("wrong username or password"))
        if response.status_code != 200:
            raise RegistryError(f"token server {_host(realm)} of registry {self.registry_host} "
                                f"answered HTTP {response.status_code}")
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryError(f"token server {_host(realm)} answered something that is not "
                                "a token") from exc
        if not value:
            raise RegistryError(f"token server {_host(realm)} answered without a token")
        now = time.monotonic()
        expires_at = now + max(lifetime - EXPIRY_MARGIN, lifetime / 2)
        with self._lock:
            for key in (scope, *also):
                self._tokens[key] = _Token(value, expires_at)
                self._fetched_at[key] = now
        return value

    # --- safety -------------------------------------------------------------------------
    def _is_registry(self, url: str) -> bool:
        # Same host AND a scheme the mirror allows: an https registry's redirect to plain http on
        # the same host must not carry the credentials in clear text.
        parsed = urlparse(url)
        if parsed.scheme != "https" and not self.insecure:
            return False
        return parsed.netloc.lower() == self.registry_host.lower()

    def _check_realm(self, realm: str) -> None:
        parsed = urlparse(realm)
        if parsed.scheme == "https" or (parsed.scheme == "http" and self.insecure):
            return
        raise AuthError(f"registry {self.registry_host} announced a token server at {realm!r}, "
                        "which is not https: refusing to send credentials there")

    def _refused_message(self, why: str) -> str:
        user = f" for user {self.credentials.username!r}" if self.credentials else ""
        return f"registry {self.registry_host} refused the credentials{user}: {why}"


def _basic_header(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _registry_error_code(header: str) -> str | None:
    m = re.search(r'error="([^"]+)"', header)
    return m.group(1) if m else None


def resolve_verify(verify: bool | str | None) -> bool | str:
    """What to pass as `verify=` on every request.

    requests lets `REQUESTS_CA_BUNDLE` override a Session's `verify`, so bincache resolves it
    once itself (explicit > REQUESTS_CA_BUNDLE > CURL_CA_BUNDLE > the default bundle) and
    passes it per request.
    """
    if verify is not None:
        return verify
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _describe(scope: tuple[str, ...]) -> str:
    parts = []
    for item in scope:
        kind, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        parts.append(f"{actions.replace(',', '+')} {name}" if kind == "repository" else item)
    return ", ".join(parts)


def _host(url: str) -> str:
    return urlparse(url).netloc or url


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__
