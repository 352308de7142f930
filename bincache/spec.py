"""Specs (Spack spec files, DAG hashes) and install trees (prefixes and their database).

A spec file lives at ``<prefix>/.spack/spec.json``; its first node is the package, the others
its dependencies (transitively). A build system that is not Spack registers a prefix with
:func:`register_prefix`, which writes that file with the hash computed as Spack computes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import SpecError, UsageError

SPECFILE_VERSION = 5  # what `register` writes: the format of Spack 1.0-1.2 (1.3 reads it too)
#: Spec file formats bincache reads (DESIGN.md): v1 (Spack <= 0.16) to v6 (Spack 1.3).
KNOWN_SPECFILE_VERSIONS = range(1, 7)
DB_VERSION = "8"  # Spack >= 1.0's database; Spack 0.2x reads "7" only
#: Database versions bincache reads, and the spec file format of their nodes.
DB_NODE_FORMAT = {"6": 3, "7": 4, "8": 5}
SPEC_DIR = ".spack"
SPEC_JSON = "spec.json"
DEPS_JSON = "dependency_prefixes.json"  # bincache's record, beside spec.json
DB_DIR = ".spack-db"
DEFAULT_PROJECTION = "{platform}-{target}/{name}-{version}-{hash}"
# Spack's grammar (spack/parser.py): a name or an arch field starts with a letter, digit or "_",
# so "." and ".." never are; a version holds no separator, space or control character.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_ARCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_VERSION_RE = re.compile(r"[A-Za-z0-9_][^\x00-\x20/\\\x7f]*")
_SPEC_HASH_RE = re.compile(r"[a-z0-9]{32}")


def dag_hash(node: dict) -> str:
    """Spack's DAG hash: SHA-1 of the node as compact JSON without its ``hash`` key, base32."""
    content = {k: v for k, v in node.items() if k != "hash"}
    text = json.dumps(content, separators=(",", ":"))
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return base64.b32encode(digest).decode().lower()[:32]


@dataclass(frozen=True)
class DepRef:
    name: str
    hash: str
    deptypes: tuple[str, ...] = ("build", "link")


@dataclass(frozen=True)
class Spec:
    """One concrete build: a node of a spec file."""

    name: str
    version: str
    hash: str
    #: The node, or a function that decodes it when first asked for (:meth:`lazy`).
    _node: dict | Callable[[], dict] = field(compare=False, repr=False, hash=False)
    deps: tuple[DepRef, ...] = field(default=(), compare=False, repr=False, hash=False)
    #: The format of the spec file (or database) the node was read from: never relabelled.
    specfile_version: int = field(default=SPECFILE_VERSION, compare=False, repr=False, hash=False)
    _external: bool | None = field(default=None, compare=False, repr=False, hash=False)

    @property
    def node(self) -> dict:
        node = self._node
        if not isinstance(node, dict):
            node = node()
            object.__setattr__(self, "_node", node)
        return node

    @classmethod
    def lazy(cls, node: dict, load: Callable[[], dict], specfile_version: int = SPECFILE_VERSION) -> Spec:
        """A spec checked as :meth:`from_node` checks ``node``, holding ``load`` (which gives
        that node again) instead of it: a tree of 50,000 packages holds ~40 MB less, and a
        package whose node is never looked at (most of a create with everything present)
        never decodes it again."""
        spec = cls.from_node(node, specfile_version)
        return cls(spec.name, spec.version, spec.hash, load, spec.deps, spec.specfile_version,
                   bool(node.get("external")))

    @classmethod
    def from_node(cls, node: dict, specfile_version: int = SPECFILE_VERSION) -> Spec:
        try:
            name = node["name"]
            version = str(node.get("version", ""))
            h = node.get("hash") or dag_hash(node)
        except (KeyError, TypeError, AttributeError) as e:
            raise SpecError(f"spec node without {e}: not a Spack spec file") from None
        # Names, versions and hashes become paths (projections, staging, mirror layouts): a spec
        # file from a mirror is untrusted data until they are checked.
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise SpecError(f"spec node with an invalid package name {name!r}")
        if version and not _VERSION_RE.fullmatch(version):
            raise SpecError(f"{name}: invalid version {version!r}")
        if not isinstance(h, str) or not _SPEC_HASH_RE.fullmatch(h):
            raise SpecError(f"{name}: invalid hash {h!r}")
        _check_arch(node.get("arch"), name)
        raw = node.get("dependencies") or []
        if isinstance(raw, dict):  # spec files v1-v3: {name: {hash, type}}
            raw = [dict(v, name=k) for k, v in raw.items() if isinstance(v, dict)]
        if not isinstance(raw, list):
            raise SpecError(f"{name}: 'dependencies' is not a list")
        deps = []
        for d in raw:
            params = d.get("parameters") if isinstance(d, dict) else None
            params = params if isinstance(params, dict) else {}
            types = (params.get("deptypes") or d.get("type") or ("build", "link")) if isinstance(d, dict) else None
            dep_hash = (d.get("hash") or d.get("dag_hash", "")) if isinstance(d, dict) else None
            if isinstance(types, str):
                types = (types,)
            if not (isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(dep_hash, str)
                    and isinstance(types, (list, tuple)) and all(isinstance(t, str) for t in types)):
                raise SpecError(f"{name}: a dependency entry without a valid name, hash or type")
            deps.append(DepRef(d["name"], dep_hash, tuple(types)))
        external = node.get("external")
        if external is not None and not isinstance(external, dict):
            raise SpecError(f"{name}: 'external' is not a mapping")
        path = (external or {}).get("path")
        if path is not None and not (isinstance(path, str) and os.path.isabs(path) and "\0" not in path):
            raise SpecError(f"{name}: external path {path!r} is not an absolute path")
        return cls(name, version, h, node, tuple(deps), specfile_version)

    @property
    def is_external(self) -> bool:
        """Spack's externals (glibc at /usr on every Linux DAG since 0.22): never packed, never
        fetched, never relocated; satisfied where their path exists."""
        if self._external is not None:
            return self._external
        return bool(self.node.get("external"))

    @property
    def external_path(self) -> str | None:
        return (self.node.get("external") or {}).get("path") if self.is_external else None

    @property
    def arch(self) -> dict:
        a = self.node.get("arch") or {}
        return a if isinstance(a, dict) else {}

    @property
    def platform(self) -> str:
        return self.arch.get("platform", "linux")

    @property
    def target(self) -> str:
        t = self.arch["target"] if "target" in self.arch else os.uname().machine
        return t.get("name", "x86_64") if isinstance(t, dict) else str(t)

    @property
    def dag_name(self) -> str:
        """``name-version-hash``: the file name Spack's layout v3 uses for this spec."""
        return f"{self.name}-{self.version}-{self.hash}"

    def short(self) -> str:
        return f"{self.name}@{self.version}/{self.hash[:7]}"

    def link_run_deps(self) -> tuple[DepRef, ...]:
        """Dependencies a binary package needs at run time (build-only ones are not shipped)."""
        return tuple(d for d in self.deps if set(d.deptypes) & {"link", "run"})

    def projection(self, template: str = DEFAULT_PROJECTION) -> str:
        """The prefix path under the root: bincache's fields, or Spack's projection syntax
        (``{architecture}/{compiler.name}-{compiler.version}/{name}-{version}-{hash:7}``), so a
        Spack config.yaml's ``install_tree:projections:all`` works as it is."""

        def field_value(m: re.Match) -> str:
            token = m.group(1)
            sigil = token[0] if token[:1] in ("@", "/") else ""
            key, _, width = token[len(sigil):].partition(":")
            value = self._projection_field(key)
            if value is None or (width and not (width.isdigit() and key == "hash")):
                raise UsageError(
                    f"invalid projection {template!r} (unknown field {{{token}}}); use {{name}}, "
                    "{version}, {hash}, {hash:N}, {platform}, {os}, {target}, {architecture}, "
                    "{architecture.platform|os|target}, {compiler.name}, {compiler.version}, "
                    "{namespace}")
            return sigil + (value[: int(width)] if width else value)

        return re.sub(r"\{([^{}]*)\}", field_value, template)

    def _projection_field(self, key: str) -> str | None:
        arch_os = str(self.arch.get("platform_os") or "none")
        given = self.node.get("compiler")
        compiler = given if isinstance(given, dict) else {}
        values = {
            "name": self.name, "version": self.version, "hash": self.hash,
            "namespace": str(self.node.get("namespace") or "builtin"),
            "platform": self.platform, "target": self.target, "os": arch_os,
            "architecture": f"{self.platform}-{arch_os}-{self.target}",
            "architecture.platform": self.platform, "architecture.os": arch_os,
            "architecture.platform_os": arch_os, "architecture.target": self.target,
            # Spack >= 1.0 has compilers as dependencies; a v4 node names its own.
            "compiler.name": str(compiler.get("name") or "none"),
            "compiler.version": str(compiler.get("version") or "none"),
        }
        return values.get(key)


def _check_arch(arch, name: str) -> None:
    """The arch fields take part in install paths (the default projection): Spack's grammar."""
    if arch is None:
        return
    if not isinstance(arch, dict):
        raise SpecError(f"{name}: invalid arch {arch!r}")
    for key in ("platform", "platform_os", "target"):
        value = arch.get(key)
        if key == "target" and isinstance(value, dict):
            value = value.get("name")
        if value is not None and not (isinstance(value, str) and _ARCH_RE.fullmatch(value)):
            raise SpecError(f"{name}: invalid arch {key} {str(value)[:80]!r}")


def specfile_version(doc: Any, origin: str = "spec file") -> int:
    """``spec._meta.version`` of a spec file (1 when ``spec`` is a list, as Spack reads it)."""
    spec: Any = doc.get("spec") if isinstance(doc, dict) else None
    if isinstance(spec, list):
        return 1
    try:
        version = int(spec["_meta"]["version"])
    except (KeyError, TypeError, ValueError):
        raise SpecError(f"{origin}: no 'spec._meta.version': not a Spack spec file") from None
    if version not in KNOWN_SPECFILE_VERSIONS:
        raise SpecError(f"{origin}: spec file format v{version} is not one bincache reads "
                        f"(v{KNOWN_SPECFILE_VERSIONS[0]}-v{KNOWN_SPECFILE_VERSIONS[-1]}); "
                        "a newer bincache may read it")
    return version


def parse_specfile(data: bytes | str | dict, origin: str = "spec file") -> list[Spec]:
    """The nodes of a Spack spec file (formats v1-v6), root first, each knowing the format."""
    doc: Any = data
    if not isinstance(data, dict):
        from .limits import MAX_SPECFILE, load_json

        try:
            doc = load_json(data, origin, MAX_SPECFILE)
        except (ValueError, UnicodeDecodeError) as e:
            raise SpecError(f"{origin}: not valid JSON ({e})") from None
    try:
        spec = doc["spec"]
        nodes = spec["nodes"] if isinstance(spec, dict) else spec
    except (KeyError, TypeError):
        raise SpecError(f"{origin}: no 'spec.nodes': not a Spack spec file") from None
    version = specfile_version(doc, origin)
    out = []
    for node in nodes:
        if isinstance(node, dict) and "name" not in node and len(node) == 1:
            # v1 spec files: {name: {...}}
            (name, body), = node.items()
            node = dict(body, name=name)
        out.append(Spec.from_node(node, version))
    if not out:
        raise SpecError(f"{origin}: spec file has no nodes")
    return out


def specfile_dict(nodes: Iterable[Spec], version: int | None = None) -> dict:
    """A spec file of ``nodes`` in the format they were read in (``version`` only names it when
    the nodes are already in that format: a document is never relabelled)."""
    nodes = list(nodes)
    if version is None:
        version = nodes[0].specfile_version if nodes else SPECFILE_VERSION
    return {"spec": {"_meta": {"version": version}, "nodes": [n.node for n in nodes]}}


def specfile_bytes(nodes: Iterable[Spec], version: int | None = None) -> bytes:
    return json.dumps(specfile_dict(nodes, version), separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Converting older formats as Spack >= 1.0 does (lib/spack/spack/spec.py, to_node_dict of a node
# read by SpecfileV4): the node-level ``compiler`` becomes ``annotations.compiler`` (a spec
# string, ``gcc@=12.2.0``), ``annotations.original_specfile_version`` records the format the
# node was first read from, and the stored ``hash`` is kept (Spack never recomputes it on read).


def legacy_compiler(compiler: dict) -> str:
    """``{"name": "gcc", "version": "12.2.0"}`` as Spack 1.x writes it: ``gcc@=12.2.0``."""
    name = compiler.get("name", "")
    versions = compiler.get("versions")
    if versions is None:
        versions = [compiler.get("version", "")]
    elif isinstance(versions, str):
        versions = [versions]
    # Spack's VersionList of one concrete version prints "=1.2"; ranges print as they are.
    text = ",".join(v if (v.startswith("=") or ":" in v) else f"={v}" for v in map(str, versions) if v)
    return f"{name}@{text}" if text else str(name)


def upgrade_node(node: dict, from_version: int) -> dict:
    """A node of format ``from_version`` (< 5) as Spack >= 1.0 writes it into a v5 document."""
    if "annotations" in node:
        return node
    out = {k: v for k, v in node.items() if k not in ("compiler", "hash")}
    annotations: dict = {"original_specfile_version": from_version}
    if isinstance(node.get("compiler"), dict):
        annotations["compiler"] = legacy_compiler(node["compiler"])
    out["annotations"] = annotations
    if "hash" in node:
        out["hash"] = node["hash"]
    return out


def node_format(spec: Spec) -> int:
    """The format of one node: an ``annotations`` key means v5 or later, whatever the file."""
    if "annotations" in spec.node:
        return max(spec.specfile_version, 5)
    return min(spec.specfile_version, 4)


def v5_readable(nodes: Iterable[Spec]) -> tuple[list[dict], int]:
    """(nodes, format) of a document Spack >= 1.0's v5 reader accepts: v5/v6 documents as they
    are, older ones converted as Spack converts them (its v5 reader raises on a node-level
    ``compiler``: "The 'compiler' option is unexpected in specfiles at v5 or greater")."""
    nodes = list(nodes)
    version = nodes[0].specfile_version if nodes else SPECFILE_VERSION
    if version >= 5:
        return [n.node for n in nodes], version
    return [upgrade_node(n.node, n.specfile_version) for n in nodes], 5


def v5_specfile(doc: dict, origin: str = "spec file") -> tuple[dict, int]:
    """A whole spec file (buildcache keys kept) in a format Spack >= 1.0 reads: (doc, version)."""
    nodes = parse_specfile(doc, origin)
    upgraded, version = v5_readable(nodes)
    if version == nodes[0].specfile_version:
        return doc, version
    out = dict(doc)
    out["spec"] = {"_meta": {"version": version}, "nodes": upgraded}
    return out, version


def read_prefix_specfile(prefix: str) -> list[Spec]:
    path = os.path.join(prefix, SPEC_DIR, SPEC_JSON)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SpecError(f"{prefix}: no {SPEC_DIR}/{SPEC_JSON}; register it first with `bincache register`") from None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror}") from None
    return parse_specfile(data, path)


def host_arch() -> dict:
    os_name = "linux"
    try:
        with open("/etc/os-release") as f:
            info = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        os_name = (info.get("ID", "linux") + info.get("VERSION_ID", "").split(".")[0]).replace('"', "")
    except OSError:
        pass
    # os.uname(), not the platform module (what it returns on Linux): importing platform
    # compiles a dozen regular expressions, ~2 ms of every command's start.
    uname = os.uname()
    return {"platform": uname.sysname.lower() or "linux", "platform_os": os_name,
            "target": uname.machine or "x86_64"}


class PackageId(Protocol):
    """What names a package: a :class:`Spec`, or a cache's listing of one (``SpecRef``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def hash(self) -> str: ...


def matches(spec: PackageId, selector: str) -> bool:
    """Whether a spec matches ``name``, ``name@VERSIONS``, ``/hashprefix`` or
    ``name@VERSIONS/hash``, with Spack's version syntax: ``@1.3`` is 1.3 and every 1.3.x,
    ``@=1.3`` exactly 1.3, ``@1.2:1.4`` / ``@1.3:`` / ``@:1.4`` ranges (bounds included, as
    prefixes), and ``@1.2,1.4:`` any of several."""
    sel = selector.strip()
    h = None
    if "/" in sel:
        sel, _, h = sel.partition("/")
    name, _, version = sel.partition("@")
    name = name.strip()
    if name and spec.name != name:
        return False
    if version and not version_satisfies(spec.version, version.strip()):
        return False
    if h and not spec.hash.startswith(h.lower()):
        return False
    return bool(name or h)


# Spack's order of version components: words < numbers < these words (vn/version.py).
_INFINITY_VERSIONS = ("stable", "trunk", "head", "master", "main", "develop")


def _version_key(version: str) -> tuple:
    key = []
    for part in re.findall(r"\d+|[A-Za-z]+", version):
        if part.isdigit():
            key.append((1, int(part), ""))
        elif part.lower() in _INFINITY_VERSIONS:
            key.append((2, _INFINITY_VERSIONS.index(part.lower()), ""))
        else:
            key.append((0, 0, part))
    return tuple(key)


def _at_least(version: tuple, low: tuple) -> bool:
    return not low or version >= low


def _at_most(version: tuple, high: tuple) -> bool:
    # An upper bound is a prefix: 1.3.9 is within @:1.3.
    return not high or version <= high or version[: len(high)] == high


def version_satisfies(version: str, constraint: str) -> bool:
    """Whether ``version`` satisfies a Spack version constraint (see :func:`matches`)."""
    v = _version_key(version)
    for part in (p.strip() for p in constraint.split(",")):
        if not part:
            continue
        if part.startswith("="):
            if version == part[1:]:
                return True
        elif ":" in part:
            low, _, high = part.partition(":")
            if _at_least(v, _version_key(low)) and _at_most(v, _version_key(high)):
                return True
        else:
            p = _version_key(part)
            if version == part or (p and v[: len(p)] == p):
                return True
    return False


# ---------------------------------------------------------------------------------------------
# Registering prefixes built by other build systems


def make_node(name: str, version: str, deps: list[Spec], arch: dict | None = None,
              parameters: dict | None = None, compiler: dict | None = None,
              package_hash: str | None = None) -> dict:
    """A Spack v5 spec node (with its hash), in the key order Spack writes; with a
    ``compiler`` ({name, version}), a v4 node (Spack 0.2x's format: compiler on the node).

    ``package_hash`` is where Spack puts the hash of the package's recipe; a build system that is
    not Spack puts the hash of its build inputs there (:func:`inputs_hash`), so that it is part of
    the DAG hash as in Spack.
    """
    node: dict = {
        "name": name,
        "version": version,
        "arch": arch or host_arch(),
    }
    if compiler:
        node["compiler"] = dict(compiler)
    node["namespace"] = "bincache"
    node["parameters"] = dict(parameters or {})
    if package_hash:
        node["package_hash"] = package_hash
    if deps:
        node["dependencies"] = [
            {"name": d.name, "hash": d.hash, "parameters": {"deptypes": ["build", "link"], "virtuals": []}}
            for d in sorted(deps, key=lambda d: (d.name, d.hash))
        ]
    if not compiler:
        node["annotations"] = {"original_specfile_version": SPECFILE_VERSION}
    node["hash"] = dag_hash(node)
    return node


def parse_compiler(text: str) -> dict:
    """``gcc@12.2.0`` as a v4 spec node's compiler ``{"name", "version"}``."""
    name, _, version = str(text).partition("@")
    if not _NAME_RE.fullmatch(name) or not _VERSION_RE.fullmatch(version.lstrip("=")):
        raise UsageError(f'invalid compiler "{text}": give NAME@VERSION, e.g. gcc@12.2.0')
    return {"name": name, "version": version.lstrip("=")}


def inputs_hash(inputs: Iterable[str]) -> str | None:
    """The ``package_hash`` of a build's inputs: each a value, or ``@FILE`` for a file's content.

    Spack's form (base32 of a SHA-256). Inputs are sorted: the same set gives the same hash
    whatever order a build script lists them in; a file counts by its content, not its path.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    items = []
    for value in inputs:
        value = str(value)
        if value.startswith("@"):
            path = value[1:]
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            except OSError as e:
                raise UsageError(f"hash input {value}: cannot read {path}: {e.strerror}") from None
            items.append("file:" + digest.hexdigest())
        else:
            items.append("value:" + value)
    if not items:
        return None
    text = "\n".join(sorted(items)).encode()
    return base64.b32encode(hashlib.sha256(text).digest()).decode().lower()
