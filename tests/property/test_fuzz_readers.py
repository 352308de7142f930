"""Issue 10, finding 9: every reader of untrusted documents fails with one BincacheError.

Hypothesis mutates valid documents (byte flips, cuts, insertions, and structural edits of the
parsed JSON/YAML: a value replaced by another type, a key dropped) and feeds them to the readers
install and listing use: manifests (plain and clearsigned), spec files, buildinfo, indexes, OCI
image manifests and configs (through a real registry), key indexes, mirrors.yaml and
config.yaml, ELF headers. Each either succeeds or raises a BincacheError: any other exception
would be a traceback in front of a user. Bounded in time: derandomized, a fixed number of
examples per reader (a few seconds each).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bincache import config
from bincache.errors import BincacheError
from bincache.index import Index
from bincache.mirror.layout_v3 import BlobRecord, manifest_bytes, parse_manifest
from bincache.relocate import elf
from bincache.relocate.plan import BuildInfo
from bincache.signing.cleartext import clearsigned_text
from bincache.spec import Spec, parse_specfile
from tests.fixtures.hostile import buildinfo, node

pytest_plugins = ["tests.fixtures.registry"]

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

_DEP = node("zlib", "1.3")
_ROOT = node("curl", "8.1", deps=(_DEP,))
SPECFILE = {"spec": {"_meta": {"version": 5}, "nodes": [_ROOT, _DEP]}}
RECORDS = [BlobRecord(1234, "application/vnd.spack.install.v2.tar+gzip", "gzip", "a" * 64),
           BlobRecord(99, "application/vnd.spack.spec.v5+json", "gzip", "b" * 64)]
MANIFEST = manifest_bytes(RECORDS)
BUILDINFO = buildinfo("/opt/old/curl-8.1-x", {_ROOT["hash"]: "/opt/old/curl-8.1-x",
                                              _DEP["hash"]: "/opt/old/zlib-1.3-y"},
                      "bincache_extra: {offsets: {lib/a.so: [[0, 12], [0, 40]]}}\n")
_INDEX = Index()
_INDEX.add_specfile([Spec.from_node(_ROOT), Spec.from_node(_DEP)], 1234)
INDEX = _INDEX.to_bytes()
MIRRORS_YAML = """mirrors:
  local:
    url: /tmp/mirror
    signed: false
  remote:
    fetch:
      url: https://example.org/cache
      access_pair: [user, {variable: TOKEN}]
    push: oci://ghcr.io/org/cache
    autopush: true
"""
CONFIG_YAML = """config:
  install_tree:
    root: /opt/sw
    projections:
      all: "{name}-{version}-{hash}"
  gnupghome: ~/.gnupg-x
"""

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["..", "/", "//etc", "a/../..", "\x00", "-1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, path + (i,))


@st.composite
def structural(draw, value):
    """``value`` with one to three nodes replaced by random JSON values or removed."""
    value = json.loads(json.dumps(value))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(value))
        path = draw(st.sampled_from(paths))
        new = draw(_json_values)
        if not path:
            value = new
            continue
        parent = value
        for p in path[:-1]:
            parent = parent[p]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
    return value


@st.composite
def byte_mutations(draw, data: bytes):
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "repeat"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16)
                             | st.sampled_from([b"\x00", b"[", b"{", b"&a ", b"*a", b"\xff\xfe",
                                                b"\n---\n", b'"', b"\r\n"]))
        elif op == "truncate":
            del data[i:]
        elif op == "repeat":
            data[i:i] = bytes(data[i:i + 32]) * 4
    return bytes(data)


def documents(value, dump):
    """Mutants of a JSON/YAML document: structural ones, and byte-level ones of its text."""
    text = dump(value)
    return st.one_of(structural(value).map(dump), byte_mutations(text))


def _dump_json(v) -> bytes:
    return json.dumps(v, indent=0).encode()


def _dump_yaml(v) -> bytes:
    return yaml.safe_dump(v, default_flow_style=None).encode()


def _clean(call, *args):
    try:
        call(*args)
    except BincacheError as e:
        assert str(e).strip(), "an error without a message"


@FUZZ
@given(documents(json.loads(MANIFEST), _dump_json))
def test_manifests(data):
    def read(b):
        m = parse_manifest(b, origin="manifest")
        for r in m.records:
            assert r.path.startswith("blobs/sha256/")
        m.tarball, m.spec  # noqa: B018 - the properties raise for a manifest without them

    _clean(read, data)


@FUZZ
@given(byte_mutations(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + MANIFEST
                      + b"\n-----BEGIN PGP SIGNATURE-----\n\niHUEARYIAB0WIQ\n=abcd\n"
                        b"-----END PGP SIGNATURE-----\n"))
def test_clearsigned_manifests(data):
    _clean(lambda b: parse_manifest(clearsigned_text(b, "manifest"), b), data)


@FUZZ
@given(documents(SPECFILE, _dump_json))
def test_spec_files(data):
    def read(b):
        for s in parse_specfile(b, "spec file"):
            s.projection(), s.short(), s.dag_name, s.link_run_deps()  # noqa: B018

    _clean(read, data)


@FUZZ
@given(documents(yaml.safe_load(BUILDINFO), _dump_yaml))
def test_buildinfo(data):
    prefix = tempfile.mkdtemp()
    try:
        os.makedirs(os.path.join(prefix, ".spack"))
        with open(os.path.join(prefix, ".spack", "binary_distribution"), "wb") as f:
            f.write(data)
        _clean(BuildInfo.load, prefix)
    finally:
        shutil.rmtree(prefix)


@FUZZ
@given(documents(json.loads(INDEX), _dump_json))
def test_indexes(data):
    def read(b):
        idx = Index.from_bytes(b, "index")
        for e in idx.packages():
            e.spec.projection(), e.spec.link_run_deps()  # noqa: B018

    _clean(read, data)


@pytest.fixture
def scope(tmp_path):
    d = tmp_path / "scope"
    d.mkdir()
    yield d
    config.reset()


@FUZZ
@given(data=st.data())
def test_mirrors_yaml_and_config_yaml(scope, data):
    from bincache.mirror.config import configured_mirrors

    for name, text in (("mirrors.yaml", MIRRORS_YAML), ("config.yaml", CONFIG_YAML)):
        seed = yaml.safe_load(text)
        (scope / name).write_bytes(data.draw(documents(seed, _dump_yaml)))

    def read():
        config.configure(scope_dirs=[str(scope)])
        config.get("mirrors"), config.get("config")  # noqa: B018
        configured_mirrors("fetch"), configured_mirrors("push")  # noqa: B018
        config.get_value("install_tree:root")

    try:
        _clean(read)
    finally:
        config.reset()


def _elf_seed() -> bytes:
    with open(shutil.which("true") or "/bin/true", "rb") as f:
        return f.read()


@settings(FUZZ, max_examples=30)
@given(st.data())
def test_elf_headers(tmp_path_factory, data):
    seed = _elf_seed()
    # Mutations in the headers, where a parser looks first (ELF header, program and section headers).
    head = data.draw(byte_mutations(seed[:4096]))
    tail_at = len(seed) - 4096
    tail = data.draw(byte_mutations(seed[tail_at:]))
    path = tmp_path_factory.mktemp("elf") / "prog"
    path.write_bytes(head + seed[4096:tail_at] + tail)
    _clean(elf.read_elf_strings, str(path))
    _clean(elf.unloaded_sections, str(path))


# --- OCI: mutated image manifests and configs served by a real registry -----------------------
def _oci_seed(tag_hash: str) -> tuple[dict, bytes]:
    config_doc = dict(SPECFILE)
    cfg = json.dumps(config_doc).encode()
    layer = gzip.compress(b"x" * 100)
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                      "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(), "size": len(cfg)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)}]}
    return doc, cfg


@pytest.fixture
def one_attempt(monkeypatch):
    monkeypatch.setenv("BINCACHE_OCI_RETRIES", "1")  # a 500 for a broken manifest: no backoff


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_oci_manifests_and_configs(registry_http, one_attempt, data):
    from bincache.mirror import MirrorRef
    from bincache.mirror.layout_v3 import SpecRef
    from bincache.mirror.oci import OciCache

    h = _ROOT["hash"]
    tag = f"curl-8.1-{h}.spack"
    doc, cfg = _oci_seed(h)
    if data.draw(st.booleans()):
        manifest = data.draw(documents(doc, _dump_json))
    else:
        manifest = _dump_json(doc)
        cfg = data.draw(documents(SPECFILE, _dump_json))
        doc["config"]["digest"] = "sha256:" + hashlib.sha256(cfg).hexdigest()
        doc["config"]["size"] = len(cfg)
        manifest = _dump_json(doc)
    repo = f"fuzz/r{hashlib.sha256(manifest + cfg).hexdigest()[:12]}"
    blobs = {"sha256:" + hashlib.sha256(cfg).hexdigest(): cfg}
    registry_http.seed_image(repo, tag, manifest, blobs)
    cache = OciCache(MirrorRef(f"oci+http://{registry_http.host}/{repo}"))

    def read():
        cache.fetch_manifest(SpecRef("curl", "8.1", h))
        cache.list_package_refs()  # the tag is read as update-index reads it
        cache.read_index_entry(SpecRef("curl", "8.1", h))

    _clean(read)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_key_indexes(tmp_path_factory, data):
    from bincache.mirror import MirrorRef, open_cache
    from bincache.mirror.keys import KEYS_MANIFEST, mirror_key_fingerprints

    mirror = tmp_path_factory.mktemp("keys")
    index = data.draw(documents({"keys": {"A" * 40: {}, "B" * 40: {"x": 1}}}, _dump_json))
    digest = hashlib.sha256(index).hexdigest()
    blob = mirror / "blobs" / "sha256" / digest[:2] / digest
    blob.parent.mkdir(parents=True)
    blob.write_bytes(index)
    rec = BlobRecord(len(index), "application/vnd.spack.keyindex.v1+json", "none", digest)
    km = mirror / KEYS_MANIFEST
    km.parent.mkdir(parents=True)
    km.write_bytes(data.draw(st.one_of(st.just(manifest_bytes([rec])),
                                       byte_mutations(manifest_bytes([rec])))))
    (mirror / "v3" / "layout.json").write_text("{}")
    _clean(lambda: mirror_key_fingerprints(open_cache(MirrorRef(str(mirror)))))
