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

Files are parsed once per process (again only when they change) and edited in place
(:func:`update_entry`) through ruamel.yaml's round-trip mode: only the entry that changes is
re-emitted; comments, other entries and their quoting stay as they were. What each section may
hold is in :mod:`bincache.config_schema`, the YAML handling in :mod:`bincache.yamlfile`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .config_schema import (  # noqa: F401  (re-exported: the configuration's one surface)
    DEFAULT_DATA,
    MIRROR_NAME,
    SCHEMAS,
    Path,
    _check_section,
    _key,
    forget_warnings,
    register_section,
)
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
# Reading YAML with line numbers


@dataclass
class FileData:
    """One section of one scope as read from its file: data, and the line of every key path."""

    scope: Scope
    file: str | None
    data: Any  # the section's value (None when the file is absent or empty)
    lines: dict[Path, int] = field(default_factory=dict)
    text: str = ""


def parse_yaml(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Parse YAML text; return the data and the 1-based line of every key path.

    Raises ConfigError naming the file and line for a syntax error or a duplicate key.
    """
    from . import yamlfile  # ruamel.yaml: imported when a file is read, not by every command

    return yamlfile.parse(text, file)


#: Files already read and checked in this process, by path: (identity of the file, its data).
#: A file is parsed once per process however often its section is asked for (every
#: signature check asks where the GnuPG home is); a changed file is read again.
_file_cache: dict[str, tuple[tuple[int, int, int], FileData]] = {}


def read_scope_section(scope: Scope, section: str) -> FileData:
    """Read and validate one section of one scope (an absent file is an empty section)."""
    _check_section(section)
    if scope.directory is None:
        return FileData(scope, None, None)
    path = scope.file(section)
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = _file_cache.get(path)
            if cached is not None and cached[0] == identity and cached[1].scope == scope:
                # A copy: callers may change what they get.
                return dataclasses.replace(cached[1], data=copy.deepcopy(cached[1].data))
            text = f.read()
    except FileNotFoundError:
        return FileData(scope, path, None)
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    log.debug("reading %s", path)
    result = _parse_scope_file(scope, section, path, text)
    _file_cache[path] = (identity, result)
    return result


def _parse_scope_file(scope: Scope, section: str, path: str, text: str) -> FileData:
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
        import difflib  # only for a mistake's message: not at every start

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
    from . import yamlfile

    indent = "  " * depth
    if isinstance(value, dict):
        for key, item in value.items():
            sub = (*path, key)
            k = yamlfile.flow(key)
            if isinstance(item, dict) and item:
                yield sub, f"{indent}{k}:"
                yield from _yaml_lines(item, sub, depth + 1)
            else:
                yield sub, f"{indent}{k}: {yamlfile.flow(item)}"


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


def dump_yaml(data: Any) -> str:
    """YAML in bincache's stable style: block mappings, insertion order, flow lists."""
    from . import yamlfile

    return yamlfile.dump_plain(data)


def _edited_text(text: str, path: str, section: str, key: str, value: Any) -> list[str]:
    """Candidates for the file's text with ``section:key`` set to ``value`` (None: removed),
    best first: the user's own lines kept wherever the edit did not touch them, then ruamel's
    rendering of the whole file (comments kept, spacing normalized)."""
    from ruamel.yaml.comments import CommentedMap

    from . import yamlfile

    doc = yamlfile.load(text, path) if text.strip() else None
    if not isinstance(doc, CommentedMap):
        doc = yamlfile.node({})
    before = yamlfile.dump(doc) if text.strip() else ""
    if not isinstance(doc.get(section), CommentedMap):
        if value is None:
            return [text]
        yamlfile.assign(doc, section, {})
    if value is None and list(doc[section]) == [key]:
        # The last entry goes: "mirrors: {}" rather than a null section.
        yamlfile.assign(doc[section], key, None)
        doc[section].fa.set_flow_style()
    else:
        yamlfile.assign(doc[section], key, value)
    after = yamlfile.dump(doc)
    return [yamlfile.keep_original_lines(text, before, after), after]


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

        for new_text in _edited_text(fd.text, path, section, key, value):
            try:
                check, _ = parse_yaml(new_text, path)
            except ConfigError:
                continue
            if isinstance(check, dict) and (check.get(section) or {}) == data:
                break
        else:
            raise ConfigError(f"{path}: the edit did not read back as intended; file unchanged")
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
    from . import yamlfile

    yamlfile.write_atomic(path, text, private)


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
    forget_warnings()
    _file_cache.clear()


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
