"""Mirrors: what a CLI argument or a configured name resolves to, and editing ``mirrors.yaml``.

A mirror argument that contains ``/`` or ``\\`` is a path or URL (an anonymous mirror);
anything else names a mirror of the configuration, which must exist. A configured mirror
has a ``url``, or ``fetch:``/``push:`` subsections with their own url and credentials::

    mirrors:
      local: {url: ./cache, autopush: true}          # relative to this file's directory
      ghcr:
        url: oci://ghcr.io/org/cache
        push: {access_pair: {id: alice, secret_variable: GHCR_TOKEN}}
        signed: false
      minio: {url: s3://bucket/c, endpoint_url: "http://127.0.0.1:9000", profile: ci}

Values are kept in the file as written (relative paths, ``$VARIABLES``, ``{variable: NAME}``)
and expanded only when a :class:`MirrorRef` is made for use: paths against the directory of
the scope that wrote them, variables from the environment of that moment.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import config as _config
from ..errors import ConfigError, MirrorError, MirrorNotFound, UsageError
from . import urls as _urls
from .urls import SCHEMES, check_url, expand_variables, path_to_url, refuse_settings  # noqa: F401

log = logging.getLogger(__name__)

FETCH = "fetch"
PUSH = "push"
DIRECTIONS = (FETCH, PUSH)

@dataclass(frozen=True)
class MirrorRef:
    """One mirror as a command uses it: a URL for the direction asked, and its settings."""

    url: str  # absolute: file:///..., http(s)://..., s3://..., oci://..., oci+http://...
    name: str | None = None  # None for an anonymous mirror given as a path or URL
    signed: bool | None = None  # None: not configured (signing defaults to on)
    autopush: bool = False
    insecure: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    s3_profile: str | None = None  # Spack's profile: an AWS profile for an s3:// mirror
    s3_endpoint_url: str | None = None  # Spack's endpoint_url: an S3-compatible server
    compression: str | None = None  # bincache's own: "gzip" or "zstd" tarballs (None: gzip)

    @property
    def display(self) -> str:
        """The name, else the URL with any password masked: what messages show."""
        return self.name or _config.mask_url(self.url)

    def __str__(self) -> str:
        return self.display


# --------------------------------------------------------------------------------------------
# Configured mirrors


@dataclass(frozen=True)
class Credential:
    """One element of an ``access_pair``: a literal, or an environment variable read at use."""

    literal: str | None = field(default=None, repr=False)
    variable: str | None = None

    @classmethod
    def from_yaml(cls, value: Any) -> Credential | None:
        if value is None:
            return None
        if isinstance(value, dict):
            return cls(variable=value["variable"])
        return cls(literal=str(value))

    def to_yaml(self) -> Any:
        return {"variable": self.variable} if self.variable else self.literal

    def value(self, what: str) -> str:
        if self.variable is None:
            return self.literal or ""
        value = os.environ.get(self.variable)
        if value is None:
            raise ConfigError(f"{what} comes from ${self.variable}, which is not set")
        return value

    def show(self, secret: bool) -> str:
        if self.variable is not None:
            return f"${self.variable}"
        return _config.MASK if secret else str(self.literal)


@dataclass(frozen=True)
class Connection:
    """The URL and credentials of one direction of a configured mirror, as written."""

    url: str  # as written: maybe relative, maybe with $VARIABLES
    base_dir: str  # the directory of the scope that wrote the url
    username: Credential | None = None
    password: Credential | None = None
    profile: str | None = None
    endpoint_url: str | None = None

    def absolute_url(self, what: str) -> str:
        url = expand_variables(self.url, what)
        return path_to_url(url, self.base_dir)


@dataclass(frozen=True)
class MirrorConfig:
    """A configured mirror: both directions, its flags, and the scope that holds it."""

    name: str
    fetch: Connection | None
    push: Connection | None
    signed: bool | None = None
    autopush: bool = False
    insecure: bool = False
    binary: bool = True
    scope: str = ""  # the highest-precedence scope that defines it
    compression: str | None = None

    def connection(self, direction: str) -> Connection | None:
        return self.fetch if direction == FETCH else self.push

    @property
    def fetch_url(self) -> str | None:
        """The absolute fetch URL (paths and variables expanded now), None if fetch-less."""
        return self.fetch.absolute_url(f'mirror "{self.name}": url') if self.fetch else None

    @property
    def push_url(self) -> str | None:
        """The absolute push URL (paths and variables expanded now), None if push-less."""
        return self.push.absolute_url(f'mirror "{self.name}": url') if self.push else None

    def ref(self, direction: str, *, strict: bool = True) -> MirrorRef:
        """The mirror for use in one direction: absolute URL, credentials from the environment.

        ``strict=False``: a credential variable that is unset is a warning, and the mirror is
        used without credentials (an install can still read a public cache).
        """
        conn = self.connection(direction)
        if conn is None:
            other = PUSH if direction == FETCH else FETCH
            raise MirrorError(
                f'mirror "{self.name}" has no {direction} URL (only a {other} URL); add one with: '
                f"bincache mirror set-url --{direction} {self.name} URL"
            )
        url = conn.absolute_url(f'mirror "{self.name}": url')
        username = password = None
        try:
            if conn.username is not None:
                username = conn.username.value(f'mirror "{self.name}": the {direction} user name')
            if conn.password is not None:
                password = conn.password.value(f'mirror "{self.name}": the {direction} password')
        except ConfigError as e:
            if strict:
                raise
            warnings.warn(f"{e}; using the mirror without credentials", UserWarning, stacklevel=3)
            username = password = None
        self._log(direction, url)
        return MirrorRef(
            url=url,
            name=self.name,
            signed=self.signed,
            autopush=self.autopush,
            insecure=self.insecure,
            username=username,
            password=password,
            s3_profile=conn.profile,
            s3_endpoint_url=conn.endpoint_url,
            compression=self.compression,
        )

    def _log(self, direction: str, url: str) -> None:
        conn = self.connection(direction)
        assert conn is not None
        # The password is never logged, only where it comes from ($VAR) or ****.
        log.debug(
            "mirror %s (%s): %s %s, user %s, password %s, signed %s, autopush %s, insecure %s",
            self.name,
            self.scope,
            direction,
            _config.mask_url(url),
            conn.username.show(False) if conn.username else "-",
            conn.password.show(True) if conn.password else "-",
            self.signed,
            self.autopush,
            self.insecure,
        )

    def describe(self) -> dict[str, Any]:
        """Plain data for ``mirror list --json``: URLs expanded, secrets masked."""

        def side(direction: str) -> dict[str, Any] | None:
            conn = self.connection(direction)
            if conn is None:
                return None
            try:
                url = _config.mask_url(conn.absolute_url(f'mirror "{self.name}": url'))
            except ConfigError:
                url = None
            self._log(direction, url or conn.url)
            described = {
                "url": url,
                "configured_url": _config.mask_url(conn.url),
                "username": conn.username.show(False) if conn.username else None,
                "password": conn.password.show(True) if conn.password else None,
            }
            s3 = {"profile": conn.profile, "endpoint_url": conn.endpoint_url}
            described.update((k, v) for k, v in s3.items() if v is not None)
            return described

        return {
            "name": self.name,
            "fetch": side(FETCH),
            "push": side(PUSH),
            "signed": self.signed,
            "autopush": self.autopush,
            "insecure": self.insecure,
            "compression": self.compression,
            "scope": self.scope,
        }


def _pair(value: Any) -> tuple[Credential | None, Credential | None]:
    if value is None:
        return None, None
    if isinstance(value, dict):  # Spack's {id|id_variable, secret_variable}
        user = (
            Credential(variable=value["id_variable"])
            if "id_variable" in value
            else Credential.from_yaml(value.get("id"))
        )
        secret = value.get("secret_variable")
        return user, Credential(variable=secret) if secret else None
    return Credential.from_yaml(value[0]), Credential.from_yaml(value[1])


def _base_dir(origin: _config.Origin | None) -> str:
    if origin is not None and origin.scope.directory is not None:
        return origin.scope.directory
    return os.getcwd()


def _mirror_config(section: _config.Section, name: str) -> MirrorConfig:
    entry = section.data[name]
    top_origin = section.origin(name)
    scope = top_origin.scope.name if top_origin else ""
    if isinstance(entry, str):
        both = Connection(entry, _base_dir(top_origin))
        return MirrorConfig(name, both, both, scope=scope)

    top_pair = _pair(entry.get("access_pair"))

    def conn(direction: str) -> Connection | None:
        sub = entry.get(direction)
        if isinstance(sub, str):
            return Connection(sub, _base_dir(section.origin(name, direction)), *top_pair,
                              entry.get("profile"), entry.get("endpoint_url"))
        sub = sub or {}
        if "url" in sub:
            url, origin = sub["url"], section.origin(name, direction, "url")
        elif "url" in entry:
            url, origin = entry["url"], section.origin(name, "url")
        else:
            return None
        pair = _pair(sub["access_pair"]) if "access_pair" in sub else top_pair
        # As Spack: a direction's own setting, else the mirror's.
        profile, endpoint = (sub.get(k, entry.get(k)) for k in ("profile", "endpoint_url"))
        return Connection(url, _base_dir(origin), *pair, profile, endpoint)

    return MirrorConfig(
        name,
        conn(FETCH),
        conn(PUSH),
        signed=entry.get("signed"),
        autopush=bool(entry.get("autopush", False)),
        insecure=bool(entry.get("insecure", False)),
        binary=bool(entry.get("binary", True)),
        scope=scope,
        compression=entry.get("compression"),
    )


def mirror_configs(cfg: _config.Config | None = None) -> list[MirrorConfig]:
    """Every configured mirror, in precedence order (higher scopes first, then file order)."""
    section = (cfg or _config.current()).section("mirrors")
    return [_mirror_config(section, name) for name in section.data]


def get_mirror(name: str, cfg: _config.Config | None = None) -> MirrorConfig:
    """A configured mirror by name; MirrorNotFound (with suggestions) if there is none."""
    cfg = cfg or _config.current()
    section = cfg.section("mirrors")
    if name not in section.data:
        raise MirrorNotFound(_not_found_message(name, list(section.data)))
    return _mirror_config(section, name)


def _not_found_message(name: str, names: list[str]) -> str:
    import difflib  # only for a mistake's message: not at every start

    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        options = " or ".join(f'"{c}"' for c in close)
        return (
            f'no mirror named "{name}". Did you mean {options}? '
            f"(for a directory, write ./{name})"
        )
    return f'no mirror named "{name}". Did you mean ./{name}?'


# --------------------------------------------------------------------------------------------
# What other modules call


def resolve(arg: str, direction: str = "push") -> MirrorRef:
    """A mirror argument: contains ``/`` or ``\\`` -> a path or URL; otherwise a configured name.

    Raises MirrorNotFound (with "Did you mean" suggestions) for an unknown name, MirrorError
    for a mirror without a URL in that direction, ConfigError for an unset variable.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be fetch or push, not {direction!r}")
    if "/" in arg or "\\" in arg or arg in (".", ".."):
        check_url(arg)
        ref = MirrorRef(url=path_to_url(expand_variables(arg, "mirror")))
        log.debug("mirror %s: %s", _config.mask_url(arg), _config.mask_url(ref.url))
        return ref
    return get_mirror(arg).ref(direction)


def _usable(configs: list[MirrorConfig], direction: str) -> list[MirrorRef]:
    refs = []
    for m in configs:
        try:
            refs.append(m.ref(direction, strict=False))
        except ConfigError as e:
            # One mirror whose URL needs an unset variable must not stop the others.
            warnings.warn(f"{e}; skipping that mirror", UserWarning, stacklevel=3)
    return refs


def configured_mirrors(direction: str) -> list[MirrorRef]:
    """Every configured binary mirror with a URL in ``direction``, in config order (what
    ``install``/``list`` use with no ``--mirror``: the first that has a package wins).

    A mirror whose credential variable is unset is used without credentials, one whose URL
    needs an unset variable is skipped; both with a warning.
    """
    return _usable(
        [m for m in mirror_configs() if m.binary and m.connection(direction) is not None],
        direction,
    )


def autopush_mirrors() -> list[MirrorRef]:
    """The mirrors with ``autopush: true`` and a push URL, in config order."""
    return _usable(
        [m for m in mirror_configs() if m.autopush and m.binary and m.push is not None], PUSH
    )


_LEGACY_HINT = {
    "directory": "--directory is deprecated; give the directory as the first argument",
    "mirror_url": "--mirror-url is deprecated; give the URL as the first argument",
    "mirror_name": "--mirror-name is deprecated; give the mirror name as the first argument",
}


def resolve_legacy(
    directory: str | None = None,
    mirror_url: str | None = None,
    mirror_name: str | None = None,
    direction: str = "push",
) -> MirrorRef | None:
    """The old ``create --directory D | --mirror-url U | --mirror-name N`` spellings.

    Returns None when none is given; warns (``FutureWarning``, which the CLI prints as
    ``warning: ...``) and resolves the one given; more than one is a UsageError.
    """
    given = {k: v for k, v in (("directory", directory), ("mirror_url", mirror_url),
                               ("mirror_name", mirror_name)) if v is not None}
    if not given:
        return None
    if len(given) > 1:
        flags = " and ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"{flags} cannot be used together; give one mirror")
    (kind, value), = given.items()
    shown = _config.mask_url(value)
    # FutureWarning: shown to users by default, also outside the CLI (DeprecationWarning is not).
    warnings.warn(f"{_LEGACY_HINT[kind]}: bincache create {shown} ...", FutureWarning, stacklevel=2)
    if kind == "mirror_name":
        return get_mirror(value).ref(direction)
    check_url(value)
    # --directory and --mirror-url always meant a location, even without a slash.
    return MirrorRef(url=path_to_url(expand_variables(value, "mirror")))


# --------------------------------------------------------------------------------------------
# Editing mirrors.yaml (``bincache mirror add/set/set-url/remove``)


@dataclass(frozen=True)
class MirrorChanges:
    """What ``mirror add``/``mirror set`` change; None leaves a setting as it is."""

    url: str | None = None
    username: Credential | None = None
    password: Credential | None = None
    signed: bool | None = None
    autopush: bool | None = None
    insecure: bool | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    compression: str | None = None  # "gzip" or "zstd": the tarball codec pushes use

    @property
    def settings(self) -> dict[str, str]:
        """The connection settings that change besides credentials: url, profile, endpoint."""
        return {
            k: v
            for k, v in (("url", self.url), ("profile", self.profile),
                         ("endpoint_url", self.endpoint_url))
            if v is not None
        }

    @property
    def connection_changed(self) -> bool:
        return bool(self.settings) or self.username is not None or self.password is not None


@dataclass
class EditResult:
    """Which files an edit wrote, and warnings for the user (plain-text passwords)."""

    files: list[str]
    warnings: list[str] = field(default_factory=list)


def _refuse_settings(name: str, url: str, changes: MirrorChanges) -> None:
    refuse_settings(url, {"s3_profile": changes.profile, "s3_endpoint_url": changes.endpoint_url},
                    f'mirror "{name}"')


def _check_name(name: str) -> None:
    if not re.fullmatch(_config.MIRROR_NAME, name):
        raise UsageError(
            f'"{name}" is not a mirror name: use letters, digits, "_", "." and "-" '
            "(a name with a slash would read as a path)"
        )


def _plaintext_warning(name: str, path: str) -> str:
    return (
        f'the password of mirror "{name}" is stored in plain text in {path}; '
        "prefer --oci-password-variable VAR, read from the environment when used"
    )


def _set_pair(container: dict, changes: MirrorChanges, inherited: Any = None) -> None:
    """Change one or both elements of ``container``'s access_pair; a subsection without its
    own pair starts from the mirror's (``inherited``), so setting only a push token keeps
    the user name."""
    if changes.username is None and changes.password is None:
        return
    user, password = _pair(container.get("access_pair", inherited))
    if changes.username is not None:
        user = changes.username
    if changes.password is not None:
        password = changes.password
    container["access_pair"] = _pair_yaml(user, password)


def _pair_yaml(user: Credential | None, password: Credential | None) -> Any:
    """An access_pair as Spack reads it. A secret from a variable: the mapping
    ``{id | id_variable, secret_variable}`` (Spack >= 0.23 and 1.x; the only form 1.x reads).
    A plain-text secret: ``[id, secret]``, which Spack 0.2x reads and 1.x refuses (it takes no
    plain-text secret)."""
    if password is not None and password.variable is not None:
        if user is None:
            raise UsageError(
                "a secret from a variable needs a user name or access key id too (Spack's "
                "access_pair has both): add --oci-username[-variable] or "
                "--s3-access-key-id[-variable]"
            )
        first = {"id_variable": user.variable} if user.variable else {"id": user.literal or ""}
        return {**first, "secret_variable": password.variable}
    return [user.to_yaml() if user else None, password.to_yaml() if password else None]


def _apply_flags(entry: dict, changes: MirrorChanges) -> None:
    for key in ("signed", "autopush", "insecure", "compression"):
        value = getattr(changes, key)
        if value is not None:
            entry[key] = value


def _has_literal_password(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    pairs = [entry.get("access_pair")] + [
        entry[d].get("access_pair") for d in DIRECTIONS if isinstance(entry.get(d), dict)
    ]
    return any(isinstance(p, list) and isinstance(p[1], str) for p in pairs)


def _url_warnings(name: str, url: str | None, path: str) -> list[str]:
    if url is not None and _config.mask_url(url) != url:
        return [
            f'the URL of mirror "{name}" holds a password, stored in plain text in {path}; '
            "prefer --oci-username/--oci-password-variable"
        ]
    return []


def _spack_warnings(name: str, changes: MirrorChanges) -> list[str]:
    return [
        f'"{key}" (mirror "{name}") is bincache\'s own setting: Spack refuses a '
        "mirrors.yaml that holds it, so keep this mirror in a scope Spack does not read"
        for key, given in (("insecure", changes.insecure), ("compression", changes.compression))
        if given
    ]


#: Called with (absolute push URL, compression) before a `compression` is written: raises
#: when the mirror there cannot store that codec (the CLI opens the cache: a layout v2 mirror
#: stores gzip only). Not called for a URL that needs a variable's value.
CompressionCheck = Callable[[str, str], None]


def _check_codec(check: CompressionCheck | None, conn: Connection | None, codec: str | None,
                 name: str) -> None:
    if check is None or codec is None or conn is None or "$" in conn.url:
        return
    check(conn.absolute_url(f'mirror "{name}": url'), codec)


def add_mirror(
    name: str, url: str, changes: MirrorChanges = MirrorChanges(), scope: str | None = None,
    check: CompressionCheck | None = None,
) -> EditResult:
    """Add a mirror to a scope's ``mirrors.yaml`` (default: the highest writable scope).

    The URL is written as given (a relative path stays relative); credentials given as
    variables are written as ``{variable: NAME}``, never as their values.
    """
    _check_name(name)
    check_url(url)
    _urls.check_compression(changes.compression)
    _refuse_settings(name, url, changes)
    target = _config.current().write_scope(scope)
    _check_codec(check, Connection(url, target.directory or os.getcwd()), changes.compression, name)
    entry: dict[str, Any] = {"url": url}
    _set_pair(entry, changes)
    entry.update((k, v) for k, v in changes.settings.items() if k != "url")
    _apply_flags(entry, changes)

    def add(current: Any) -> Any:
        if current is not None:
            raise MirrorError(
                f'mirror "{name}" already exists in {target.file("mirrors")}; change it with '
                f"bincache mirror set, or remove it first"
            )
        return entry

    path = _config.update_entry(target, "mirrors", name, add)
    result = EditResult([path], _url_warnings(name, url, path) + _spack_warnings(name, changes))
    if changes.password is not None and changes.password.literal is not None:
        result.warnings.append(_plaintext_warning(name, path))
    return result


def _defining_scopes(cfg: _config.Config, name: str) -> list[_config.Scope]:
    """The writable scopes whose mirrors.yaml defines ``name``, highest precedence first."""
    found = []
    for scope in reversed(cfg.scopes):
        if scope.writable and name in (cfg.read(scope, "mirrors").data or {}):
            found.append(scope)
    return found


def _changed_entry(current: Any, changes: MirrorChanges, direction: str | None) -> Any:
    """A mirror's entry (as one scope's file holds it, None if absent) with ``changes``."""
    entry: Any = {"url": current} if isinstance(current, str) else dict(current or {})
    _apply_flags(entry, changes)
    if changes.connection_changed:
        subsections = [d for d in DIRECTIONS if d in entry]
        if direction is None:
            # Both directions: the top level, and every subsection that would shadow it.
            for k, v in changes.settings.items():
                # A mirror with only fetch:/push: urls gets no top-level url (that would add
                # the other direction); profile and endpoint fall back to the top level.
                if k != "url" or "url" in entry or not subsections:
                    entry[k] = v
            if "access_pair" in entry or not any(
                isinstance(entry[d], dict) and "access_pair" in entry[d] for d in subsections
            ):
                _set_pair(entry, changes)
        for d in [direction] if direction is not None else subsections:
            was_string = isinstance(entry.get(d), str)
            sub = {"url": entry[d]} if was_string else dict(entry.get(d) or {})
            for k, v in changes.settings.items():
                if direction is not None or k in sub:
                    sub[k] = v
            if direction is not None or "access_pair" in sub:
                _set_pair(sub, changes, inherited=entry.get("access_pair"))
            entry[d] = sub["url"] if was_string and set(sub) == {"url"} else sub
    if isinstance(current, str) and set(entry) == {"url"}:
        entry = entry["url"]  # a mirror written as a bare URL stays one
    return entry


def set_mirror(
    name: str,
    changes: MirrorChanges,
    direction: str | None = None,
    scope: str | None = None,
    check: CompressionCheck | None = None,
) -> EditResult:
    """Change a configured mirror in place.

    Without ``scope`` the change goes to the highest writable scope that defines the mirror;
    with one, to that scope (a mirror defined lower down gets a partial entry there that
    overrides just what changes). ``direction`` puts URL and credentials in the ``fetch:`` or
    ``push:`` subsection; without it they apply to both directions.
    """
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be fetch or push, not {direction!r}")
    if changes.url is not None:
        check_url(changes.url)
    _urls.check_compression(changes.compression)
    cfg = _config.current()
    if scope is not None:
        target = cfg.write_scope(scope)
        get_mirror(name, cfg)  # must exist somewhere
    else:
        defining = _defining_scopes(cfg, name)
        if not defining:
            get_mirror(name, cfg)  # raises MirrorNotFound with suggestions
            raise MirrorError(f'mirror "{name}" is not defined in a file; give --scope')
        target = defining[0]
    current = get_mirror(name, cfg)
    for conn in (current.fetch, current.push) if direction is None else (current.connection(direction),):
        url = changes.url or (conn.url if conn is not None else None)
        if url is not None and "$" not in url:  # a variable's value is known only when used
            _refuse_settings(name, url, changes)
    push = current.push
    if changes.url is not None and direction != FETCH:
        push = Connection(changes.url, target.directory or os.getcwd())
    _check_codec(check, push, changes.compression, name)

    written: list[Any] = []

    def change(current: Any) -> Any:
        written.append(_changed_entry(current, changes, direction))
        return written[-1]

    path = _config.update_entry(target, "mirrors", name, change)
    result = EditResult([path], _url_warnings(name, changes.url, path) + _spack_warnings(name, changes))
    if (
        changes.password is not None
        and changes.password.literal is not None
        and _has_literal_password(written[-1])
    ):
        result.warnings.append(_plaintext_warning(name, path))
    return result


def remove_mirror(name: str, scope: str | None = None) -> EditResult:
    """Remove a mirror from one scope, or without ``scope`` from every file that defines it."""
    cfg = _config.current()
    if scope is not None:
        targets = [cfg.write_scope(scope)]
    else:
        targets = _defining_scopes(cfg, name)
        if not targets:
            get_mirror(name, cfg)
            raise MirrorError(f'mirror "{name}" is not defined in a file')

    files = []
    for target in targets:

        def remove(current: Any, target: _config.Scope = target) -> None:
            if current is None:
                raise MirrorNotFound(f'no mirror named "{name}" in {target.file("mirrors")}')
            return None

        files.append(_config.update_entry(target, "mirrors", name, remove))
    return EditResult(files)
