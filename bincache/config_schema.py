"""What each configuration section may hold: small explicit validators, so that an error
names the file, line and key and says what was expected.

Keys that Spack defines in the same place but bincache does not use are accepted with one
warning (a scope may be shared with Spack); a key neither defines is an error.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigError, UsageError

Path = tuple  # a key path inside a section, e.g. ("mirrors", "local", "url")


class _Schema:
    """A validator: ``check(value, path, where)`` raises ConfigError naming the key."""

    def check(
        self, value: Any, path: Path, where: Callable[[Path], str], complete: bool = True
    ) -> None:
        """Raise ConfigError if ``value`` does not fit. ``complete=False`` checks one scope's
        part, which may leave out required keys that a lower scope provides."""
        raise NotImplementedError


def _key(path: Path) -> str:
    return ":".join(str(p) for p in path)


def _fail(where: Callable[[Path], str], path: Path, message: str) -> ConfigError:
    return ConfigError(f"{where(path)}{_key(path)}: {message}")


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value) if isinstance(value, str) else str(value).lower()


class Bool(_Schema):
    def check(self, value, path, where, complete=True):
        if not isinstance(value, bool):
            raise _fail(where, path, f"expected true or false, got {_show(value)}")


class Int(_Schema):
    def __init__(self, minimum: int | None = None) -> None:
        self.minimum = minimum

    def check(self, value, path, where, complete=True):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(where, path, f"expected a whole number, got {_show(value)}")
        if self.minimum is not None and value < self.minimum:
            raise _fail(where, path, f"must be at least {self.minimum}, got {value}")


class Str(_Schema):
    def __init__(self, pattern: str | None = None, what: str = "") -> None:
        self.pattern = re.compile(pattern) if pattern else None
        self.what = what

    def check(self, value, path, where, complete=True):
        if not isinstance(value, str):
            raise _fail(where, path, f"expected a string, got {_show(value)}")
        if self.pattern and not self.pattern.fullmatch(value):
            raise _fail(where, path, f"{value!r} is not {self.what}")


class AnyOf(_Schema):
    """The first alternative whose type matches decides (so its error is the precise one)."""

    def __init__(self, *alternatives: tuple[type | tuple[type, ...], _Schema], what: str) -> None:
        self.alternatives = alternatives
        self.what = what

    def check(self, value, path, where, complete=True):
        for types, schema in self.alternatives:
            if isinstance(value, types):
                schema.check(value, path, where, complete)
                return
        raise _fail(where, path, f"expected {self.what}, got {_show(value)}")


class ListOf(_Schema):
    def __init__(self, item: _Schema, length: int | None = None) -> None:
        self.item = item
        self.length = length

    def check(self, value, path, where, complete=True):
        if not isinstance(value, list):
            raise _fail(where, path, f"expected a list, got {_show(value)}")
        if self.length is not None and len(value) != self.length:
            raise _fail(where, path, f"expected {self.length} items, got {len(value)}")
        for i, item in enumerate(value):
            self.item.check(item, (*path, i), where, complete)


class Null(_Schema):
    def check(self, value, path, where, complete=True):
        if value is not None:
            raise _fail(where, path, f"expected nothing, got {_show(value)}")


#: Spack settings already warned about in this process (a file is checked more than once).
_warned_ignored: set[str] = set()


def _warn_ignored(where: Callable[[Path], str], path: Path) -> None:
    prefix = where(path)
    seen = prefix.split(":", 1)[0] + " " + _key(path)  # once per file and key, with or without line
    if seen not in _warned_ignored:
        _warned_ignored.add(seen)
        message = f"{prefix}{_key(path)}: a Spack setting that bincache does not use; ignored"
        warnings.warn(message, UserWarning, stacklevel=2)


class Mapping(_Schema):
    """A mapping with known keys (unknown ones are an error, with a suggestion), or with
    arbitrary keys matching ``key_pattern`` whose values all follow ``values``.

    ``spack`` names keys that Spack defines in the same place and bincache does not use: a file
    shared with Spack may hold them, so they are accepted with a warning (Spack checks them)."""

    def __init__(
        self,
        keys: dict[str, _Schema] | None = None,
        *,
        values: _Schema | None = None,
        key_pattern: str | None = None,
        key_what: str = "a valid name",
        required: Callable[[dict, Path, Callable[[Path], str]], None] | None = None,
        spack: Iterable[str] = (),
    ) -> None:
        self.keys = keys or {}
        self.values = values
        self.key_pattern = re.compile(key_pattern) if key_pattern else None
        self.key_what = key_what
        self.required = required
        self.spack = frozenset(spack)

    def check(self, value, path, where, complete=True):
        if not isinstance(value, dict):
            raise _fail(where, path, f"expected a mapping, got {_show(value)}")
        for key, item in value.items():
            sub = (*path, key)
            if self.values is not None:
                if not isinstance(key, str) or (
                    self.key_pattern and not self.key_pattern.fullmatch(key)
                ):
                    raise _fail(where, sub, f"{key!r} is not {self.key_what}")
                self.values.check(item, sub, where, complete)
            elif key in self.keys:
                self.keys[key].check(item, sub, where, complete)
            elif key in self.spack:
                _warn_ignored(where, sub)
            else:
                import difflib  # only for a mistake's message: not at every start

                close = difflib.get_close_matches(str(key), [*self.keys, *self.spack], n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                known = ", ".join(self.keys)
                raise _fail(where, sub, f"unknown key{hint}; known keys: {known}")
        if self.required is not None and complete:
            self.required(value, path, where)


# mirrors.yaml. access_pair elements: a literal, null, or {variable: NAME} read at use.
_VARIABLE_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_credential = AnyOf(
    (str, Str()),
    (type(None), Null()),
    (dict, Mapping({"variable": Str(_VARIABLE_NAME, "an environment variable name")})),
    what="a string or {variable: NAME}",
)
_access_pair = AnyOf(
    (list, ListOf(_credential, length=2)),
    # Spack >= 0.23 spells it as a mapping; read it too, never write it.
    (
        dict,
        Mapping(
            {
                "id": Str(),
                "id_variable": Str(_VARIABLE_NAME, "an environment variable name"),
                "secret_variable": Str(_VARIABLE_NAME, "an environment variable name"),
            }
        ),
    ),
    what="[user, password]",
)


# A fetch:/push: subsection without its own url uses the mirror's url with its own credentials.
# Per-connection keys of Spack's mirrors.yaml (0.23 and 1.x) that bincache does not use.
_SPACK_CONNECTION = (
    "access_token",
    "access_token_variable",
    "view",
    "include_binary",
    "exclude_binary",
)

# Spack's S3 settings, per mirror or per direction.
_string_or_null = AnyOf((str, Str()), (type(None), Null()), what="a string")
_S3 = {"profile": _string_or_null, "endpoint_url": _string_or_null}

_connection = AnyOf(
    (str, Str()),
    (dict, Mapping({"url": Str(), "access_pair": _access_pair, **_S3}, spack=_SPACK_CONNECTION)),
    what="a URL or a mapping with url and access_pair",
)


def _has_url(conn: Any) -> bool:
    return isinstance(conn, str) or (isinstance(conn, dict) and "url" in conn)


def _mirror_requires_url(value: dict, path: Path, where: Callable[[Path], str]) -> None:
    if "url" not in value and not _has_url(value.get("fetch")) and not _has_url(value.get("push")):
        raise _fail(where, path, 'needs "url", or "fetch" and/or "push" with their own url')


MIRROR_NAME = r"\w[\w.-]*"

_mirror = AnyOf(
    (str, Str()),
    (
        dict,
        Mapping(
            {
                "url": Str(),
                "fetch": _connection,
                "push": _connection,
                "access_pair": _access_pair,
                **_S3,
                "signed": Bool(),
                # bincache's own: the tarball codec pushed to this mirror (gzip by default).
                "compression": Str(pattern=r"gzip|zstd", what="gzip or zstd"),
                "autopush": Bool(),
                "insecure": Bool(),
                # Spack's: a mirror that holds sources only has binary: false.
                "binary": Bool(),
                "source": Bool(),
            },
            required=_mirror_requires_url,
            spack=_SPACK_CONNECTION,
        ),
    ),
    what="a URL or a mapping",
)

# The keys of Spack's config.yaml (0.23 and 1.x, lib/spack/spack/schema/config.py) besides
# install_tree.
_SPACK_CONFIG = (
    "flags", "shared_linking", "install_hash_length", "install_path_scheme", "build_stage",
    "stage_name", "develop_stage_link", "test_stage", "extensions", "template_dirs",
    "license_dir", "source_cache", "misc_cache", "environments_root", "connect_timeout",
    "verify_ssl", "ssl_certs", "suppress_gpg_warnings", "install_missing_compilers", "debug",
    "checksum", "deprecated", "locks", "dirty", "build_language", "build_jobs",
    "concurrent_packages", "ccache", "concretizer", "db_lock_timeout", "package_lock_timeout",
    "allow_sgid", "install_status", "binary_index_root", "url_fetch_method",
    "additional_external_search_paths", "binary_index_ttl", "aliases", "installer",
    "terminal_title",
)

#: Section name -> schema of its value. Other modules may add sections with register_section.
SCHEMAS: dict[str, _Schema] = {
    "mirrors": Mapping(
        values=_mirror,
        key_pattern=MIRROR_NAME,
        key_what="a mirror name (letters, digits, _ . -, no slash)",
    ),
    # config.yaml, laid out as Spack's: config: {install_tree: {root: ...}, ...}
    # Keys some module reads are checked; Spack's other keys are accepted with a warning (a
    # config.yaml may be shared with Spack); a key neither defines is an error.
    "config": Mapping(
        {
            "install_tree": Mapping(
                {
                    # the install tree, when neither --root nor BINCACHE_ROOT is given
                    "root": Str(),
                    # prefix layout under the root, Spack's spelling: {all: "{name}-{version}"}
                    "projections": Mapping(values=Str(), key_what="a spec selector or all"),
                },
                spack=("padded_length",),
            ),
            "gnupghome": Str(),  # bincache's own GnuPG home (BINCACHE_GNUPGHOME wins)
        },
        spack=_SPACK_CONFIG,
    ),
}

#: What the built-in defaults scope holds.
DEFAULT_DATA: dict[str, Any] = {"mirrors": {}, "config": {}}


def register_section(name: str, schema: _Schema, default: Any = None) -> None:
    """Let another module own a configuration section (``<name>.yaml``)."""
    SCHEMAS[name] = schema
    DEFAULT_DATA[name] = {} if default is None else default


def _check_section(section: str) -> None:
    if section not in SCHEMAS:
        import difflib  # only for a mistake's message: not at every start

        close = difflib.get_close_matches(section, list(SCHEMAS), n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise UsageError(
            f'no configuration section "{section}".{hint} Sections: {", ".join(SCHEMAS)}'
        )



def forget_warnings() -> None:
    """Warn again about ignored Spack settings (a new configuration, e.g. in tests)."""
    _warned_ignored.clear()
