"""Configuration in YAML scopes, the way Spack does it.

Scopes, lowest precedence first::

    defaults       built in
    site           <install root>/etc   (the root from --root, else $BINCACHE_ROOT)
    user           ~/.bincache          (HOME is honoured)
    <directory>    each -C/--config-scope DIR, in the order given
    command_line   values set by command-line options

Each scope is a directory holding one file per section (``mirrors.yaml``, ``config.yaml``),
whose single top-level key is the section's name. Sections merge key by key: a mapping in a
higher scope is merged into the one below, its keys first (so a user's mirrors are tried
before the site's), and any other value replaces the lower one.

Every value keeps where it came from (file and line): ``bincache config blame`` prints it,
relative paths are expanded against the directory of the scope that wrote them, and a bad
file is reported as ``<file>:<line>: <key>: <what is wrong>``.

Files are edited surgically (:func:`write_entry`): only the entry that changes is re-emitted,
every other byte of the file (comments, other entries, their quoting) stays as it was.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError, UsageError
from .locks import dir_lock

log = logging.getLogger(__name__)

#: Scope names that are not directories.
DEFAULTS = "defaults"
SITE = "site"
USER = "user"
COMMAND_LINE = "command_line"

#: Shown instead of a secret in every output and log line.
MASK = "****"

Path = tuple  # a key path inside a section, e.g. ("mirrors", "local", "url")


# --------------------------------------------------------------------------------------------
# Scopes


@dataclass(frozen=True)
class Scope:
    """One configuration scope: a directory of ``<section>.yaml`` files, or in-memory data."""

    name: str
    directory: str | None  # None for the in-memory scopes (defaults, command line)

    @property
    def writable(self) -> bool:
        return self.directory is not None

    def file(self, section: str) -> str:
        if self.directory is None:
            raise ConfigError(f'scope "{self.name}" is not a file; choose site, user or a directory')
        return os.path.join(self.directory, f"{section}.yaml")


@dataclass(frozen=True)
class Origin:
    """Where a value was set: its scope, and the file and line when it came from a file."""

    scope: Scope
    file: str | None = None
    line: int | None = None  # 1-based

    def __str__(self) -> str:
        if self.file is None:
            return f"<{self.scope.name}>"
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Section:
    """A section's data as merged over scopes, with the origin of every key path in it."""

    name: str
    data: Any
    origins: dict[Path, Origin] = field(default_factory=dict)

    def origin(self, *path: Any) -> Origin | None:
        """Origin of the value at ``path`` (below the section name), or of its nearest parent."""
        full = (self.name, *path)
        while full:
            if full in self.origins:
                return self.origins[full]
            full = full[:-1]
        return None


# --------------------------------------------------------------------------------------------
# Schemas: small, explicit validators so an error names the key and says what was expected.


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
    "profile",
    "endpoint_url",
    "view",
    "include_binary",
    "exclude_binary",
)

_connection = AnyOf(
    (str, Str()),
    (dict, Mapping({"url": Str(), "access_pair": _access_pair}, spack=_SPACK_CONNECTION)),
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
                "signed": Bool(),
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
        close = difflib.get_close_matches(section, list(SCHEMAS), n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise UsageError(
            f'no configuration section "{section}".{hint} Sections: {", ".join(SCHEMAS)}'
        )


# --------------------------------------------------------------------------------------------
# Reading YAML with line numbers


@dataclass
class FileData:
    """One section of one scope as read from its file: data, and the line of every key path."""

    scope: Scope
    file: str | None
    data: Any  # the section's value (None when the file is absent or empty)
    lines: dict[Path, int] = field(default_factory=dict)
    text: str = ""


def _node_to_data(
    loader: yaml.SafeLoader, node: yaml.Node, path: Path, lines: dict[Path, int], file: str
) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves "<<" merge keys
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(f"{file}:{key_node.start_mark.line + 1}: a key must be a name")
            if key in result:
                raise ConfigError(
                    f"{file}:{key_node.start_mark.line + 1}: {_key((*path, key))}: "
                    "duplicate key (the first one is on line "
                    f"{lines[(*path, key)]})"
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = _node_to_data(loader, value_node, (*path, key), lines, file)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _node_to_data(loader, item, (*path, i), lines, file) for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML text; return the data and the 1-based line of every key path.

    Raises ConfigError naming the file and line for a syntax error or a duplicate key.
    """
    lines: dict[Path, int] = {}
    try:
        # The reader checks the characters of the whole text already here.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: invalid YAML: {e}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        data = _node_to_data(loader, node, (), lines, file)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{file}:{mark.line + 1}" if mark else file
        problem = e.problem or e.context or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: invalid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return data, lines


def read_scope_section(scope: Scope, section: str) -> FileData:
    """Read and validate one section of one scope (an absent file is an empty section)."""
    _check_section(section)
    if scope.directory is None:
        return FileData(scope, None, None)
    path = scope.file(section)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return FileData(scope, path, None)
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    log.debug("reading %s", path)
    data, lines = parse_yaml(text, path)
    if data is None:
        return FileData(scope, path, None, lines, text)
    if not isinstance(data, dict):
        raise ConfigError(f'{path}:1: expected a mapping with the key "{section}:"')
    extra = [k for k in data if k != section]
    if extra:
        key = extra[0]
        raise ConfigError(
            f'{path}:{lines.get((key,), 1)}: {key}: unknown key; this file holds only "{section}:"'
        )

    def where(p: Path) -> str:
        while p and p not in lines:
            p = p[:-1]
        return f"{path}:{lines.get(p, 1)}: "

    value = data.get(section)
    if value is not None:
        SCHEMAS[section].check(value, (section,), where, complete=False)
    return FileData(scope, path, value, lines, text)


# --------------------------------------------------------------------------------------------
# Merging


def _merge(
    lower: Any,
    lower_origins: dict[Path, Origin],
    higher: Any,
    higher_origin: Callable[[Path], Origin],
    path: Path,
) -> tuple[Any, dict[Path, Origin]]:
    """Merge ``higher`` over ``lower`` (mappings key by key, higher's keys first)."""
    origins: dict[Path, Origin] = {}
    if isinstance(lower, dict) and isinstance(higher, dict):
        merged: dict[Any, Any] = {}
        origins[path] = higher_origin(path)
        for key, value in higher.items():
            sub = (*path, key)
            if key in lower:
                merged[key], o = _merge(
                    lower[key], _below(lower_origins, sub), value, higher_origin, sub
                )
            else:
                merged[key], o = value, _all_origins(value, sub, higher_origin)
            origins.update(o)
        for key, value in lower.items():
            if key not in merged:
                merged[key] = value
                origins.update(_below(lower_origins, (*path, key)))
        return merged, origins
    return higher, _all_origins(higher, path, higher_origin)


def _below(origins: dict[Path, Origin], path: Path) -> dict[Path, Origin]:
    n = len(path)
    return {p: o for p, o in origins.items() if p[:n] == path}


def _all_origins(value: Any, path: Path, origin: Callable[[Path], Origin]) -> dict[Path, Origin]:
    result = {path: origin(path)}
    if isinstance(value, dict):
        for key, item in value.items():
            result.update(_all_origins(item, (*path, key), origin))
    return result


# --------------------------------------------------------------------------------------------
# The configuration


class Config:
    """The scopes in effect, lowest precedence first, and the merged sections over them."""

    def __init__(self, scopes: list[Scope], overrides: dict[str, Any] | None = None) -> None:
        self.scopes = scopes
        self._overrides: dict[str, Any] = dict(overrides or {})

    # -- scopes

    def scope(self, name: str) -> Scope:
        """A scope by name (defaults, site, user, command_line), or a directory given as a path.

        A path names a directory scope even when it was not given with -C: writing there is
        how a project keeps its own mirrors.yaml.
        """
        for scope in self.scopes:
            if scope.name == name:
                return scope
        if "/" in name or os.sep in name or name in (".", "..") or os.path.isdir(name):
            directory = os.path.abspath(os.path.expanduser(name))
            for scope in self.scopes:
                if scope.directory == directory:
                    return scope
            return Scope(directory, directory)
        if name == SITE:
            raise UsageError(
                "no site scope: give the install tree with --root or BINCACHE_ROOT "
                "(the site scope is <root>/etc)"
            )
        names = [s.name for s in self.scopes]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise UsageError(f'no configuration scope "{name}".{hint} Scopes: {", ".join(names)}')

    @property
    def default_write_scope(self) -> Scope:
        """Where edits go unless told: the highest-precedence scope that is a directory."""
        for scope in reversed(self.scopes):
            if scope.writable:
                return scope
        raise ConfigError("no writable configuration scope")

    def write_scope(self, name: str | None) -> Scope:
        scope = self.default_write_scope if name is None else self.scope(name)
        if not scope.writable:
            raise UsageError(f'scope "{scope.name}" cannot be written; choose site, user or a DIR')
        return scope

    # -- reading

    def read(self, scope: Scope, section: str) -> FileData:
        if scope.name == DEFAULTS:
            return FileData(scope, None, DEFAULT_DATA.get(section))
        if scope.name == COMMAND_LINE:
            return FileData(scope, None, self._overrides.get(section))
        return read_scope_section(scope, section)

    def section(self, section: str, scope: str | None = None) -> Section:
        """The merged section (or one scope's part of it), with origins."""
        _check_section(section)
        scopes = self.scopes if scope is None else [self.scope(scope)]
        data: Any = None
        origins: dict[Path, Origin] = {}
        for sc in scopes:
            fd = self.read(sc, section)
            if fd.data is None:
                continue

            def origin(p: Path, fd: FileData = fd) -> Origin:
                line = None
                q = p
                while q and q not in fd.lines:
                    q = q[:-1]
                if fd.file is not None:
                    line = fd.lines.get(q)
                return Origin(fd.scope, fd.file, line)

            data, origins = _merge(data, origins, fd.data, origin, (section,))
        if data is None:
            data = {}
        result = Section(section, data, origins)
        if scope is None:
            # Required keys are checked on the merge: a user scope may tune a site mirror.
            def where(p: Path) -> str:
                o = result.origin(*p[1:])
                return f"{o}: " if o else ""

            SCHEMAS[section].check(data, (section,), where)
        return result

    def get(self, section: str, scope: str | None = None) -> Any:
        """The merged value of a section (or of one scope's file)."""
        return self.section(section, scope).data

    def set_override(self, section: str, key: str, value: Any) -> None:
        """Set ``section:key`` in the command-line scope (what a CLI option says)."""
        _check_section(section)
        data = dict(self._overrides.get(section) or {})
        data[key] = value
        SCHEMAS[section].check(data, (section,), lambda p: "command line: ")
        self._overrides[section] = data

    # -- output

    def dump(self, section: str, scope: str | None = None) -> str:
        """The section as YAML, secrets masked (``bincache config get``)."""
        data = mask_secrets(section, self.get(section, scope))
        return dump_yaml({section: data})

    def blame(self, section: str) -> str:
        """The merged section as YAML, each line annotated with the file:line that set it."""
        sec = self.section(section)
        data = mask_secrets(section, sec.data)
        rows: list[tuple[str, str]] = [("---", f"{section}:")]
        for path, text in _yaml_lines(data, (section,), 1):
            origin = sec.origins.get(path) or sec.origin(*path[1:])
            rows.append((str(origin) if origin else "", text))
        width = max(len(r[0]) for r in rows)
        return "".join(f"{o.ljust(width)}  {t}\n" for o, t in rows)


def _yaml_lines(value: Any, path: Path, depth: int) -> Iterator[tuple[Path, str]]:
    indent = "  " * depth
    if isinstance(value, dict):
        for key, item in value.items():
            sub = (*path, key)
            k = _flow(key)
            if isinstance(item, dict) and item:
                yield sub, f"{indent}{k}:"
                yield from _yaml_lines(item, sub, depth + 1)
            else:
                yield sub, f"{indent}{k}: {_flow(item)}"


def _flow(value: Any) -> str:
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=1 << 30)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    return text[:-3].strip() if text.endswith("...") else text


# --------------------------------------------------------------------------------------------
# Secrets


def mask_secrets(section: str, data: Any) -> Any:
    """A copy of a section's data with literal passwords replaced by ``****``."""
    if section != "mirrors" or not isinstance(data, dict):
        return data

    def pair(p: Any) -> Any:
        if isinstance(p, list) and len(p) == 2 and isinstance(p[1], str):
            return [p[0], MASK]
        return p

    def conn(c: Any) -> Any:
        if isinstance(c, dict) and "access_pair" in c:
            c = dict(c)
            c["access_pair"] = pair(c["access_pair"])
        if isinstance(c, str):
            return mask_url(c)
        if isinstance(c, dict) and isinstance(c.get("url"), str):
            c = dict(c)
            c["url"] = mask_url(c["url"])
        return c

    result = {}
    for name, entry in data.items():
        entry = conn(entry)
        if isinstance(entry, dict):
            entry = dict(entry)
            for d in ("fetch", "push"):
                if d in entry:
                    entry[d] = conn(entry[d])
        result[name] = entry
    return result


def mask_url(url: str) -> str:
    """A URL without its secrets (a password in the user info, token-like query values)."""
    from .redact import redact_url

    return redact_url(url)


# --------------------------------------------------------------------------------------------
# Writing


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists (``access_pair: [user, {variable: TOKEN}]``), no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    """YAML in bincache's stable style: block mappings, insertion order, flow lists."""
    return yaml.dump(
        data, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=1 << 30, indent=2
    )


def _max_end(node: yaml.Node) -> int:
    """Index just after the last character of a node's own text (not the comments after it)."""
    if isinstance(node, yaml.MappingNode):
        ends = [_max_end(v) for pair in node.value for v in pair]
        return max(ends) if ends else node.end_mark.index
    if isinstance(node, yaml.SequenceNode) and not node.flow_style:
        ends = [_max_end(v) for v in node.value]
        return max(ends) if ends else node.end_mark.index
    return node.end_mark.index


def _line_end(text: str, index: int) -> int:
    """Index after the newline ending the line that holds ``index - 1`` (a node's last char)."""
    if index > 0 and text[index - 1] == "\n":
        return index  # block scalars end at the start of the next line
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl + 1


def _entry_text(key: str, value: Any, indent: int) -> str:
    pad = " " * indent
    return "".join(pad + line + "\n" for line in dump_yaml({key: value}).splitlines())


def _splice(text: str, section: str, key: str, value: Any) -> str | None:
    """Edit ``section:key`` in place in YAML text; None when the text is not in a shape that
    can be edited in place (then the caller rewrites the whole file)."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        return None
    sec_node = sec_key = None
    for k, v in root.value:
        if isinstance(k, yaml.ScalarNode) and k.value == section:
            sec_key, sec_node = k, v
    if sec_node is None:
        if value is None:
            return text
        body = text if not text or text.endswith("\n") else text + "\n"
        return body + dump_yaml({section: {key: value}})
    if isinstance(sec_node, yaml.MappingNode) and sec_node.flow_style and not sec_node.value:
        if value is None:
            return text
        # "mirrors: {}" (what removing the last mirror leaves) becomes a block mapping again.
        head = text[: sec_node.start_mark.index].rstrip(" ")
        entry = _entry_text(key, value, 2).rstrip("\n")
        return head + "\n" + entry + text[sec_node.end_mark.index :]
    if not isinstance(sec_node, yaml.MappingNode) or sec_node.flow_style or not sec_node.value:
        return None
    for k, v in sec_node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            start = k.start_mark.index - k.start_mark.column
            if text[start : k.start_mark.index].strip():
                return None  # the key does not start its line
            end = _line_end(text, _max_end(v))
            new = "" if value is None else _entry_text(key, value, k.start_mark.column)
            if value is None and len(sec_node.value) == 1:
                # The last entry goes: "mirrors: {}" rather than a null section.
                colon = text.index(":", sec_key.end_mark.index) + 1
                return text[:colon] + " {}" + text[colon:start] + text[end:]
            return text[:start] + new + text[end:]
    if value is None:
        return text
    first, last = sec_node.value[0][0], sec_node.value[-1][1]
    end = _line_end(text, _max_end(last))
    head = text[:end] if text[:end].endswith("\n") or not text[:end] else text[:end] + "\n"
    return head + _entry_text(key, value, first.start_mark.column) + text[end:]


#: ``update(current)`` for :func:`update_entry`: the entry's new value, or None to remove it.
Update = Callable[[Any], Any]


def update_entry(scope: Scope, section: str, key: str, update: Update) -> str:
    """Read-modify-write ``section:key`` in a scope's file, under a lock; return the file.

    ``update`` gets the entry as the file holds it now (None when absent) and returns the new
    value (None removes the entry); an exception from it leaves the file untouched. Only that
    entry's text changes: comments and every other entry stay byte for byte. The result is
    validated and must read back as intended before it replaces the file (atomically); two
    processes editing the same scope at once take turns instead of losing an edit.
    """
    path = scope.file(section)
    with _locked(os.path.dirname(path)):
        fd = read_scope_section(scope, section)
        data = dict(fd.data or {})
        value = update(data.get(key))
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        # One scope's part: required keys may come from a lower scope (checked when merged).
        SCHEMAS[section].check(data, (section,), lambda p: f"{path}: ", complete=False)

        new_text = _splice(fd.text, section, key, value) if fd.text.strip() else None
        if new_text is not None:
            check, _ = parse_yaml(new_text, path)
            if not isinstance(check, dict) or (check.get(section) or {}) != data:
                log.debug("in-place edit of %s did not round-trip; rewriting the file", path)
                new_text = None
        if new_text is None:
            new_text = dump_yaml({section: data})
        # A file that holds a password in plain text is readable by its owner only.
        _write_atomic(path, new_text, private=mask_secrets(section, data) != data)
    return path


def write_entry(scope: Scope, section: str, key: str, value: Any) -> str:
    """Set (or with ``value=None`` remove) ``section:key`` in a scope's file; return the file."""
    return update_entry(scope, section, key, lambda _current: value)


def _locked(directory: str):
    try:
        return dir_lock(directory)
    except OSError as e:
        raise ConfigError(f"{directory}: cannot create or open: {e.strerror or e}") from None


def _write_atomic(path: str, text: str, private: bool = False) -> None:
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        if private:
            mode &= 0o600
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".yaml", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise ConfigError(f"{path}: cannot write: {e.strerror or e}") from None


# --------------------------------------------------------------------------------------------
# The process-wide configuration


_current: Config | None = None


def user_config_dir() -> str:
    """``~/.bincache`` (HOME is honoured)."""
    return os.path.join(os.path.expanduser("~"), ".bincache")


#: The CLI exports -C directories here (os.pathsep-separated), so that a build step it
#: starts, or a build system's own Python, sees the same scopes.
SCOPES_ENV = "BINCACHE_CONFIG_SCOPES"


def build_scopes(root: str | None = None, scope_dirs: Iterable[str] = ()) -> list[Scope]:
    """The scopes for an install root (None: $BINCACHE_ROOT) and -C directories (none given:
    those in $BINCACHE_CONFIG_SCOPES)."""
    root = root or os.environ.get("BINCACHE_ROOT") or None
    scope_dirs = list(scope_dirs)
    if not scope_dirs:
        scope_dirs = [d for d in os.environ.get(SCOPES_ENV, "").split(os.pathsep) if d]
    scopes = [Scope(DEFAULTS, None)]
    if root:
        scopes.append(Scope(SITE, os.path.join(os.path.abspath(os.path.expanduser(root)), "etc")))
    scopes.append(Scope(USER, user_config_dir()))
    for d in scope_dirs:
        directory = os.path.abspath(os.path.expanduser(d))
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise UsageError(f"config scope {d}: not a directory")
        scopes.append(Scope(directory, directory))
    scopes.append(Scope(COMMAND_LINE, None))
    return scopes


def configure(
    root: str | None = None,
    scope_dirs: Iterable[str] = (),
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Set the process-wide configuration (the CLI calls this with --root and -C)."""
    global _current
    _current = Config(build_scopes(root, scope_dirs), overrides)
    log.debug("configuration scopes: %s", ", ".join(s.name for s in _current.scopes))
    return _current


def current() -> Config:
    """The configuration set with :func:`configure`, else one built from the environment now
    (HOME, BINCACHE_ROOT, BINCACHE_CONFIG_SCOPES), so a long-lived build process sees changes
    to its environment."""
    return _current if _current is not None else Config(build_scopes())


def reset() -> None:
    """Forget what :func:`configure` set; the environment decides again."""
    global _current
    _current = None
    _warned_ignored.clear()


def get(section: str, scope: str | None = None) -> Any:
    """The merged value of a section in the process-wide configuration."""
    return current().get(section, scope)


def get_value(path: str, default: Any = None) -> Any:
    """One value by colon path: ``"mirrors:local:url"``, or a key of config.yaml's ``config:``
    section without the section name (``"install_tree:root"``, as Spack spells it)."""
    parts = [p for p in path.split(":") if p]
    if not parts:
        raise UsageError("empty configuration path")
    if parts[0] not in SCHEMAS:
        parts.insert(0, "config")
    value: Any = get(parts[0])
    for part in parts[1:]:
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value
