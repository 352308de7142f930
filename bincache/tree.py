"""Install trees: installed prefixes, Spack's store layout and database, and registering
prefixes that another build system installed."""

from __future__ import annotations

import functools
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any

from .atomic import write_atomic
from .errors import SpecError
from .spec import (
    _NAME_RE,
    _VERSION_RE,
    DB_DIR,
    DB_NODE_FORMAT,
    DB_VERSION,
    DEPS_JSON,
    SPEC_DIR,
    SPEC_JSON,
    SPECFILE_VERSION,
    Spec,
    inputs_hash,
    make_node,
    matches,
    node_format,
    parse_compiler,
    read_prefix_specfile,
    specfile_dict,
    upgrade_node,
)
from .treedb import TreeDatabase, entry
from .treetext import Unsure, record_at, records

# ---------------------------------------------------------------------------------------------
# Install trees


class InstalledSpec:
    """A prefix and its spec; ``nodes`` is its spec file's DAG (root first), read from the
    prefix when first asked for when the record came from the tree's database."""

    __slots__ = ("spec", "prefix", "_nodes")

    def __init__(self, spec: Spec, prefix: str, nodes: tuple[Spec, ...] | None = ()):
        self.spec = spec
        self.prefix = prefix
        self._nodes = nodes  # None: not read yet

    @property
    def nodes(self) -> tuple[Spec, ...]:
        if self._nodes is None:
            try:
                nodes = read_prefix_specfile(self.prefix)
            except SpecError:
                nodes = []
            # The prefix's own spec file, unless it is not this package's (then the record's).
            self._nodes = tuple(nodes) if nodes and nodes[0].hash == self.spec.hash else (self.spec,)
        return self._nodes

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def hash(self) -> str:
        return self.spec.hash

    def _key(self) -> tuple:
        return (self.spec, self.prefix)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstalledSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"InstalledSpec(spec={self.spec!r}, prefix={self.prefix!r})"


PADDING_PLACEHOLDER = "__spack_path_placeholder__"
_SCAN_DEPTH = 4


def _is_padding(name: str) -> bool:
    # Spack pads with whole placeholders and cuts the last one to the padded length.
    return len(name) > 2 and name.startswith("__") and PADDING_PLACEHOLDER.startswith(name)


def spack_config_root(path: str) -> str:
    """``config:install_tree:root`` of a Spack ``config.yaml`` (``$spack`` cannot be resolved
    without Spack itself: that is an error that says what to give instead)."""
    import yaml

    try:
        with open(path, "rb") as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"cannot read the Spack configuration {path}: {e}") from None
    tree = ((doc.get("config") or {}) if isinstance(doc, dict) else {}).get("install_tree")
    root = tree.get("root") if isinstance(tree, dict) else tree
    if not isinstance(root, str) or not root:
        raise SpecError(f"{path} has no config:install_tree:root; give the install tree with --root")
    root = os.path.expanduser(os.path.expandvars(root))
    if "$" in root:
        raise SpecError(f"{path}: install_tree:root {root!r} names Spack variables that bincache "
                        "cannot resolve; give the expanded path with --root")
    if not os.path.isabs(root):
        root = os.path.join(os.path.dirname(os.path.abspath(path)), root)
    return root


def find_store(root: str) -> str:
    """Where Spack's store is, given its configured root: a ``config.yaml`` is read, and the
    ``__spack_path_placeholder__`` directories of ``install_tree:padded_length`` are followed
    down to the directory that holds ``.spack-db``."""
    root = os.path.abspath(root)
    if os.path.isfile(root) and root.endswith((".yaml", ".yml")):
        root = spack_config_root(root)
    path = root
    while not os.path.exists(os.path.join(path, DB_DIR)):
        try:
            entries = [e for e in os.listdir(path) if not e.startswith(".") or _is_padding(e)]
        except OSError:
            return root
        padding = [e for e in entries if _is_padding(e)]
        if len(padding) != 1 or not os.path.isdir(os.path.join(path, padding[0])):
            return root
        path = os.path.join(path, padding[0])
    return path


class InstallTree:
    """The prefixes under a root: from ``<root>/.spack-db/index.json`` when present, else a scan.

    ``root`` may be Spack's configured root (its padded store is found below it) or Spack's
    ``config.yaml``. Externals (records whose spec has ``external``) are known but never packed.
    """

    def __init__(self, root: str):
        self.given = os.path.abspath(root)
        self.root = find_store(root) if os.path.exists(root) else self.given
        self._specs: dict[str, InstalledSpec] | None = None
        # The database's records as read (journal applied), and what get() made of them.
        self._records: dict | None = None
        self._node_format = SPECFILE_VERSION
        self._format_read = False
        self._unrecorded: dict[str, InstalledSpec] = {}
        self._unrecorded_scanned: dict[str, InstalledSpec] | None = None  # (get without _load)
        self._made: dict[str, InstalledSpec | None] = {}
        self._at: dict[tuple[str, str], InstalledSpec | None] = {}  # get(h, at=) of a miss
        self._database: TreeDatabase | None = None

    @property
    def db_path(self) -> str:
        return os.path.join(self.root, DB_DIR, "index.json")

    def looked_for(self) -> str:
        """What discovery looked for, for the message of an empty tree."""
        where = self.root if self.root == self.given else f"{self.given} (store {self.root})"
        return (f"looked in {where} for {DB_DIR}/index.json, for {SPEC_DIR}/{SPEC_JSON} up to "
                f"{_SCAN_DEPTH} levels down, and below {PADDING_PLACEHOLDER} padding directories")

    def specs(self) -> dict[str, InstalledSpec]:
        if self._specs is None:
            self._require_root()
            self._specs = self._from_db()
            # Every record is an InstalledSpec now, and get() reads those: the raw records
            # (20 MB at 50,000 packages) are not looked at again.
            self._records = {}
        return self._specs

    def packages(self) -> dict[str, InstalledSpec]:
        """The installed specs bincache can pack (externals left out)."""
        return {h: i for h, i in self.specs().items() if not i.spec.is_external}

    def _from_db(self) -> dict[str, InstalledSpec]:
        found = self._from_text() if self._records is None else None
        if found is not None:
            return found
        self._load()
        assert self._records is not None
        found = {}
        for h, rec in self._records.items():
            inst = self._make(h, rec)
            if inst is not None:
                found[h] = inst
        for h, inst in self._unrecorded.items():
            found.setdefault(h, inst)
        return found

    def _from_text(self) -> dict[str, InstalledSpec] | None:
        """Every record made an InstalledSpec as index.json's text is walked, one record decoded
        at a time, each spec holding where its node is in the text rather than the node
        (:meth:`Spec.lazy`): at 50,000 packages ~50 MB instead of the whole document's 80 MB
        of objects plus 40 MB of nodes. None: the text is not in the compact form."""
        journal = self.database.journal_records()  # first: see treedb's note on compaction
        text = self.database.index_text()
        found: dict[str, InstalledSpec] = {}
        known: set[bytes] = set()
        if text is not None:
            self._read_node_format()
            try:
                for h, rec, at in records(text):
                    if h in journal:
                        rec = journal.pop(h)
                        inst = self._make(h, rec)
                    else:
                        inst = self._make(h, rec, functools.partial(_node_at, text, at, h))
                    if isinstance(rec, dict) and isinstance(rec.get("path"), str):
                        known.add(os.fsencode(rec["path"]))
                    if inst is not None:
                        found[h] = inst
            except Unsure:
                return None
        for h, rec in journal.items():
            if isinstance(rec.get("path"), str):
                known.add(os.fsencode(rec["path"]))
            inst = self._make(h, rec)
            if inst is not None:
                found[h] = inst
        if self._unrecorded_scanned is None:
            self._unrecorded_scanned = self._scan(known)
        for h, inst in self._unrecorded_scanned.items():
            found.setdefault(h, inst)
        self._made = {}  # (get() reads the specs from now on)
        return found

    def _require_root(self) -> None:
        if not os.path.isdir(self.root):
            raise SpecError(f"install tree {self.root} does not exist; give one with --root or BINCACHE_ROOT")

    def _read_node_format(self) -> None:
        """The node format of the database's version, read once without parsing the records."""
        if not self._format_read:
            self._node_format = DB_NODE_FORMAT.get(self.database.version("?"), SPECFILE_VERSION)
            self._format_read = True

    def _load(self) -> None:
        """The records alone: a prefix's spec file is read only when its DAG is asked for
        (InstalledSpec.nodes), and a record becomes an InstalledSpec only when looked up, so
        opening a tree of 50,000 parses one JSON document, not 50,000 files."""
        if self._records is not None:
            return
        self._require_root()
        records: dict = {}
        if self.database.exists():
            try:
                db = self.database.read()["database"]
                records = db["installs"]
                if not isinstance(records, dict):
                    raise TypeError("installs is not a mapping")
                self._node_format = DB_NODE_FORMAT.get(str(db.get("version")), SPECFILE_VERSION)
                self._format_read = True
            except (KeyError, TypeError, AttributeError) as e:
                raise SpecError(f"{self.db_path}: not a readable Spack database ({e})") from None
        # Prefixes put in the tree after the database was written are found by a scan too.
        known = {os.fsencode(rec["path"]) for rec in records.values()
                 if isinstance(rec, dict) and isinstance(rec.get("path"), str)}
        self._unrecorded = self._scan(known)
        self._records = records

    def _make(self, h: str, rec, load: Callable[[], dict] | None = None) -> InstalledSpec | None:
        """The record of ``h`` as an InstalledSpec (None: not installed, or its prefix is gone);
        ``load`` gives the node again later, for a spec that does not hold it."""
        if h in self._made:
            return self._made[h]
        inst = None
        try:
            if isinstance(rec, dict) and rec.get("installed", True):
                path = rec.get("path")
                spec_node: Any = rec.get("spec")
                if isinstance(spec_node, dict) and spec_node.get("external"):
                    spec = Spec.from_node(dict(spec_node, hash=h), self._node_format)
                    inst = InstalledSpec(spec, path or spec.external_path or "", (spec,))
                elif path and os.path.isdir(path):
                    node = dict(spec_node, hash=h)
                    spec = Spec.from_node(node, self._node_format) if load is None else \
                        Spec.lazy(node, load, self._node_format)
                    inst = InstalledSpec(spec, path, None)
        except (KeyError, TypeError, AttributeError) as e:
            raise SpecError(f"{self.db_path}: not a readable Spack database ({e})") from None
        self._made[h] = inst
        return inst

    def _scan(self, known: set[bytes] | frozenset[bytes] = frozenset()) -> dict[str, InstalledSpec]:
        """Prefixes (a ``.spack/spec.json``) up to ``_SCAN_DEPTH`` levels down; the ``known``
        ones (recorded in the database, as bytes) are neither entered nor parsed."""
        found: dict[str, InstalledSpec] = {}
        spec_file = f"/{SPEC_DIR}/{SPEC_JSON}".encode()

        def walk(directory: bytes, depth: int) -> None:
            try:
                names = os.listdir(directory)
            except OSError:
                return
            # A tree of 50,000 lists 50,000 names here: the known ones go by set difference
            # (C speed), and only the others are looked at.
            for path in sorted(set(map((directory + b"/").__add__, names)) - known):
                if os.path.basename(path).startswith(b".") or not _is_dir(path):
                    continue
                if os.path.isfile(path + spec_file):
                    nodes = read_prefix_specfile(os.fsdecode(path))
                    found[nodes[0].hash] = InstalledSpec(nodes[0], os.fsdecode(path), tuple(nodes))
                elif depth + 1 < _SCAN_DEPTH:
                    walk(path, depth + 1)

        walk(os.fsencode(self.root), 0)
        return found

    def get(self, h: str, at: str | None = None) -> InstalledSpec | None:
        """One installed spec by hash: its record alone is read (:meth:`TreeDatabase.lookup`),
        and a scan of the tree runs only for a hash the database does not know.

        ``at``: where an install would put ``h``. A hash the database does not know is then
        looked for there only (a prefix whose spec file names it), not by a scan of the whole
        tree (45-70 ms at 50,000 prefixes): installing one package touches its DAG's prefixes,
        whatever the size of the tree. A prefix placed by hand elsewhere in the tree is not
        seen that way; Spack, which reads only its database, does not see it either, and
        :meth:`specs` (list, create) still finds it."""
        if self._specs is not None:
            return self._specs.get(h)
        if self._records is not None:
            rec = self._records.get(h)
            inst = self._make(h, rec) if rec is not None else None
            return inst if inst is not None else self._unrecorded.get(h)
        if h not in self._made:
            self._require_root()
            rec = self.database.lookup(h) if self.database.exists() else None
            if rec is None:
                self._made[h] = None
            else:
                self._read_node_format()
                self._make(h, rec)
        inst = self._made.get(h)
        if inst is not None:
            return inst
        if at is not None and self._unrecorded_scanned is None:
            return self._prefix_at(h, at)
        return self._lazy_unrecorded().get(h)

    def _prefix_at(self, h: str, prefix: str) -> InstalledSpec | None:
        """The unrecorded prefix ``prefix`` if it holds ``h`` (what the scan would find there)."""
        if (h, prefix) not in self._at:
            found = None
            if not os.path.basename(prefix).startswith(".") and _is_dir(os.fsencode(prefix)) \
                    and os.path.isfile(os.path.join(prefix, SPEC_DIR, SPEC_JSON)):
                try:
                    nodes = read_prefix_specfile(prefix)
                except SpecError:
                    nodes = []
                if nodes and nodes[0].hash == h:
                    found = InstalledSpec(nodes[0], prefix, tuple(nodes))
            self._at[(h, prefix)] = found
        return self._at[(h, prefix)]

    def _lazy_unrecorded(self) -> dict[str, InstalledSpec]:
        """Prefixes in the tree the database does not record (found once, by a scan)."""
        if self._unrecorded_scanned is None:
            known = self.database.known_paths() if self.database.exists() else set()
            self._unrecorded_scanned = self._scan(known)
        return self._unrecorded_scanned

    def select(self, selectors: Iterable[str]) -> list[InstalledSpec]:
        """Installed specs matching ``name``, ``name@version``, ``/hashprefix`` (or combinations)."""
        specs = list(self.packages().values())
        externals = [s for s in self.specs().values() if s.spec.is_external]
        chosen: list[InstalledSpec] = []
        for sel in selectors:
            found = [s for s in specs if matches(s.spec, sel)]
            if not found:
                ext = [s for s in externals if matches(s.spec, sel)]
                if ext:
                    raise SpecError(f'"{sel}" is an external ({ext[0].spec.short()} at '
                                    f"{ext[0].spec.external_path}): externals are never packed; "
                                    "they are used where they are installed")
                names = sorted({s.name for s in specs})
                hint = (f" Installed: {', '.join(names[:20])}" if names
                        else f" The install tree is empty ({self.looked_for()}).")
                raise SpecError(f'no installed spec matches "{sel}" in {self.root}.{hint}')
            if len(found) > 1:
                listing = ", ".join(sorted(m.spec.short() for m in found))
                raise SpecError(f'"{sel}" matches {len(found)} specs: {listing}. Add @version or /hash.')
            if found[0] not in chosen:
                chosen.append(found[0])
        return chosen

    def is_external_dependency(self, inst: InstalledSpec, h: str) -> bool:
        dep = self.get(h)
        if dep is not None:
            # The same hash is the same node: the tree's record answers without reading the
            # prefix's spec file (a create of 50,000 packages read thousands for this).
            return dep.spec.is_external
        node = next((n for n in inst.nodes if n.hash == h), None)
        return node is not None and node.is_external

    def closure(self, roots: Iterable[InstalledSpec], include_deps: bool = True,
                include_roots: bool = True) -> list[InstalledSpec]:
        """Roots and their link/run dependencies, dependencies first (each once); externals are
        never part of it (Spack never pushes one)."""
        ordered: list[InstalledSpec] = []
        seen: set[str] = set()

        def visit(inst: InstalledSpec, is_root: bool) -> None:
            if inst.hash in seen or inst.spec.is_external:
                return
            seen.add(inst.hash)
            if include_deps:
                for dep in inst.spec.link_run_deps():
                    if self.is_external_dependency(inst, dep.hash):
                        continue
                    dep_inst = self.get(dep.hash)
                    if dep_inst is None:
                        raise SpecError(
                            f"{inst.spec.short()} depends on {dep.name}/{dep.hash[:7]}, "
                            f"which is not installed in {self.root}"
                        )
                    visit(dep_inst, False)
            if include_roots or not is_root:
                ordered.append(inst)

        for r in roots:
            visit(r, True)
        return ordered

    def dependency_prefixes(self, inst: InstalledSpec) -> dict[str, str]:
        """hash -> prefix of a package and its installed dependencies, externals left out (as
        Spack leaves them out of ``hash_to_prefix``: they are never relocated)."""
        out = {inst.hash: inst.prefix}
        for h in [n.hash for n in inst.nodes[1:]] + [d.hash for d in inst.spec.deps]:
            if h in out or self.is_external_dependency(inst, h):
                continue
            dep = self.get(h)
            if dep is not None:
                out[h] = dep.prefix
        return out

    @property
    def database(self) -> TreeDatabase:
        # One per tree: it keeps the document it read, which a fold at the end reuses.
        if self._database is None:
            self._database = TreeDatabase(os.path.join(self.root, DB_DIR))
        return self._database

    def record(self, inst: InstalledSpec, explicit: bool = True) -> None:
        """Add a prefix (or an external) to the tree's database: one line appended to its
        journal (:mod:`bincache.treedb`), whatever the size of the tree."""
        db = self.database
        # A new database takes the version Spack 0.2x reads when the node is a v4 one (so Spack
        # 0.2x can use the tree); an existing one keeps its version, its nodes converted to fit.
        version = db.version("7" if node_format(inst.spec) <= 4 else DB_VERSION)
        node = db_node(inst.spec, version)
        rec = {
            "spec": {k: v for k, v in node.items() if k != "hash"},
            "path": inst.prefix,
            "installed": True,
            "explicit": explicit,
            "installation_time": time.time(),
        }
        try:
            db.append([entry(inst.hash, rec, [d.hash for d in inst.spec.deps], version)])
        except OSError as e:
            raise SpecError(f"{self.db_path}: cannot record {inst.spec.short()} ({e.strerror})") from None
        if self._specs is not None:
            self._specs[inst.hash] = inst
        self._made[inst.hash] = inst
        if self._records is not None:
            self._records.setdefault(inst.hash, {})

    def settle(self, *, always: bool) -> None:
        """At the end of a command that recorded packages: ``index.json`` made complete
        (``always``: after an install; else when Spack reads this tree: see
        :meth:`TreeDatabase.settle`)."""
        try:
            self.database.settle(always=always)
        except OSError as e:
            raise SpecError(f"{self.db_path}: cannot update the database ({e.strerror})") from None


def _is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _node_at(text: str, at: int, h: str) -> dict:
    """The node of the database record at ``at`` of ``text`` (a lazy spec's, see _from_text)."""
    return dict(record_at(text, at)["spec"], hash=h)


def db_node(spec: Spec, db_version: str) -> dict:
    """A node as a database of ``db_version`` holds it: v8 (Spack >= 1.0, read with the v5
    reader) needs v4 nodes converted; older databases hold nodes as they were read."""
    if db_version == "8" and node_format(spec) <= 4:
        return upgrade_node(spec.node, spec.specfile_version)
    return spec.node


def recorded_dependency_prefixes(prefix: str) -> dict[str, str]:
    """hash -> prefix of every dependency recorded when ``prefix`` was registered (or {})."""
    path = os.path.join(prefix, SPEC_DIR, DEPS_JSON)
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
        found = doc["hash_to_prefix"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SpecError(f"{path}: not a readable dependency record ({e}); register {prefix} again") from None
    if not isinstance(found, dict):
        raise SpecError(f"{path}: not a readable dependency record; register {prefix} again")
    return {str(h): str(p) for h, p in found.items()}


def _enclosing_tree(prefix: str) -> InstallTree | None:
    """The install tree a prefix lives in (a parent holding ``.spack-db``), as Spack lays it out."""
    d = os.path.dirname(prefix)
    for _ in range(6):
        if os.path.isfile(os.path.join(d, DB_DIR, "index.json")):
            return InstallTree(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return None


def _dependency_prefixes(dep_prefix: str, nodes: list[Spec], root: str | None) -> dict[str, str]:
    """hash -> prefix for a dependency and everything it depends on; every node must be found."""
    found = {nodes[0].hash: dep_prefix}
    found.update(recorded_dependency_prefixes(dep_prefix))
    trees = [t for t in (InstallTree(root) if root else None, _enclosing_tree(dep_prefix)) if t is not None]
    for n in nodes[1:]:
        if n.hash in found:
            continue
        for tree in trees:
            try:
                inst = tree.get(n.hash)
            except SpecError:
                inst = None
            if inst is not None:
                found[n.hash] = inst.prefix
                break
        else:
            raise SpecError(
                f"dependency {dep_prefix} ({nodes[0].short()}) does not record where its own "
                f"dependency {n.short()} is installed; register {dep_prefix} again with --dep for "
                "each of its dependencies, or give the install tree with --root")
    return found


def register_prefix(prefix: str, name: str, version: str, deps: Iterable[str] = (),
                    arch: dict | None = None, parameters: dict | None = None,
                    root: str | None = None, compiler: str | None = None,
                    hash_inputs: Iterable[str] = ()) -> InstalledSpec:
    """Write ``<prefix>/.spack/spec.json`` for a prefix another build system installed.

    ``deps`` are prefixes already registered: where each one (and each of theirs) is installed
    is recorded in ``<prefix>/.spack/dependency_prefixes.json``, so the package can be pushed
    from outside any install tree with a complete ``hash_to_prefix``. ``hash_inputs`` (values,
    ``@FILE`` for a file's content) become the spec's ``package_hash``. When ``root`` is given,
    the prefix is recorded in that tree's database too. ``compiler`` (``NAME@VERSION``) makes it
    a spec file v4 with the compiler on the node, which Spack < 1.0 needs to install the package
    (Spack >= 1.0 reads v4 too).
    """
    if isinstance(deps, str):
        deps = [deps]
    compiler_node = parse_compiler(compiler) if compiler else None
    prefix = os.path.abspath(prefix)
    if not os.path.isdir(prefix):
        raise SpecError(f"{prefix} is not a directory")
    if not _NAME_RE.fullmatch(name or ""):
        raise SpecError(f'invalid package name "{name}": use letters, digits, "-", "_", "." and "+"')
    if not _VERSION_RE.fullmatch(str(version or "")):
        raise SpecError(f'invalid version "{version}": a version starts with a letter, digit '
                        'or "_" and holds no "/", space or control character')
    dep_nodes: list[Spec] = []
    direct: list[Spec] = []
    hash_to_prefix: dict[str, str] = {}
    for dep_prefix in deps:
        dep_prefix = os.path.abspath(dep_prefix)
        if os.path.normpath(dep_prefix) == prefix:
            raise SpecError(f"{prefix} cannot depend on itself")
        if not os.path.isfile(os.path.join(dep_prefix, SPEC_DIR, SPEC_JSON)):
            what = "does not exist" if not os.path.isdir(dep_prefix) else "is not registered (no .spack/spec.json)"
            raise SpecError(f"dependency {dep_prefix} {what}: build and register it first "
                            f"(bincache register {dep_prefix} --name NAME --version VERSION)")
        nodes = read_prefix_specfile(dep_prefix)
        hash_to_prefix.update(_dependency_prefixes(dep_prefix, nodes, root))
        direct.append(nodes[0])
        for n in nodes:
            if n.hash not in {d.hash for d in dep_nodes}:
                dep_nodes.append(n)
    node = make_node(name, str(version), direct, arch, parameters, compiler_node, inputs_hash(hash_inputs))
    spec = Spec.from_node(node)
    nodes = [spec] + dep_nodes
    spec_dir = os.path.join(prefix, SPEC_DIR)
    os.makedirs(spec_dir, exist_ok=True)
    # A text file holding the dependencies' prefixes: relocation rewrites it on install, so an
    # installed copy records where its dependencies were installed.
    record = {"hash_to_prefix": {h: hash_to_prefix[h] for h in sorted(hash_to_prefix)}}
    write_atomic(os.path.join(spec_dir, DEPS_JSON), json.dumps(record, indent=2).encode())
    doc = specfile_dict(nodes, 4 if compiler_node else SPECFILE_VERSION)
    write_atomic(os.path.join(spec_dir, SPEC_JSON), json.dumps(doc, indent=2).encode())
    inst = InstalledSpec(spec, prefix, tuple(nodes))
    if root is not None:
        tree = InstallTree(root)
        tree.record(inst)
        tree.settle(always=False)
    return inst


def prefix_tree(prefix: str) -> tuple[InstallTree, InstalledSpec]:
    """A prefix outside any install tree, with the dependencies recorded when it was registered.

    Its parent directory stands for the store root. Every dependency must have a recorded prefix,
    so that the package's buildinfo names where each one was.
    """
    prefix = os.path.abspath(prefix)
    nodes = read_prefix_specfile(prefix)
    recorded = recorded_dependency_prefixes(prefix)
    inst = InstalledSpec(nodes[0], prefix, tuple(nodes))
    specs = {inst.hash: inst}
    by_hash = {n.hash: n for n in nodes}
    for h, dep_prefix in recorded.items():
        if h in by_hash and h != inst.hash:
            specs[h] = InstalledSpec(by_hash[h], dep_prefix, (by_hash[h],))
    missing = [n.short() for n in nodes[1:] if n.hash not in specs]
    if missing:
        raise SpecError(f"{prefix} does not record where {', '.join(missing)} is installed (it was "
                        "registered without --dep, or by an older bincache); register it again "
                        "with --dep for each dependency, or push it with --root")
    tree = InstallTree(os.path.dirname(prefix))
    tree._specs = specs
    return tree, inst
