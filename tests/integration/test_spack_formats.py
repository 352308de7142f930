"""Spec files and indexes are never relabelled: what bincache writes from a real Spack 0.23 tree
(spec file format v4) is what each Spack release reads.

No Spack 1.x runs here, so ``spack1_reader`` applies the rules of Spack 1.x's readers, taken
from spack/spack ``lib/spack/spack/spec.py`` (``SpecfileReaderBase.from_node_dict``,
``SpecfileV5``, ``wire_spec_nodes``), ``schema/spec.py`` (``annotations``) and
``url_buildcache.py`` (a spec record is found by the exact media type
``application/vnd.spack.spec.v{SPECFILE_FORMAT_VERSION}+json``, the index by ``db.v8``).
"""

from __future__ import annotations

import json
import os
import re

import pytest

from bincache.errors import IndexVersionError
from bincache.index import Index, choose_db_version, read_index
from bincache.spec import Spec, legacy_compiler, parse_specfile, upgrade_node
from tests.conftest import run_cli
from tests.fixtures.spack_tree import SPECS, spack_tree
from tests.integration.test_spack_tree import assert_runs_from, blob, index_doc, manifest

pytest_plugins = ["tests.fixtures.registry"]

SPEC_MT = re.compile(r"application/vnd\.spack\.spec\.v(\d+)\+json$")
COMPILER_STRING = re.compile(r"^[\w-]+@=[\w.]+$")


class SpackReadError(Exception):
    pass


def spack1_read_nodes(nodes: list[dict], version: int) -> dict[str, dict]:
    """Spack >= 1.0 reading concrete nodes with the reader of ``version`` (5 or 6)."""
    if version < 5:
        raise SpackReadError(f"v{version} is read by SpecfileV4; not used for layout v3 or db.v8")
    by_hash = {}
    for node in nodes:
        if "annotations" not in node:
            if "compiler" in node:  # SpecfileV5.legacy_compiler
                raise SpackReadError("The 'compiler' option is unexpected in specfiles at v5 or greater")
        else:
            ann = node["annotations"]
            if set(ann) - {"original_specfile_version", "compiler"}:  # additionalProperties: False
                raise SpackReadError(f"unexpected annotations {sorted(ann)}")
            if not isinstance(ann["original_specfile_version"], int):  # KeyError if missing
                raise SpackReadError("original_specfile_version is not a number")
            if "compiler" in ann and not COMPILER_STRING.match(ann["compiler"]):
                raise SpackReadError(f"annotations.compiler {ann['compiler']!r} is not a spec")
        for dep in node.get("dependencies", []):  # SpecfileV5.extract_info_from_dep
            params = dep["parameters"]
            assert isinstance(params["deptypes"], list) and isinstance(params["virtuals"], list)
        by_hash[node["hash"]] = node
    for node in nodes:  # wire_spec_nodes: MissingSpecHashError
        for dep in node.get("dependencies", []):
            if dep["hash"] not in by_hash:
                raise SpackReadError(f"{node['name']} references missing dep hash {dep['hash']}")
    return by_hash


def spack1_read_specfile(data: bytes, media_type: str) -> dict[str, dict]:
    doc = json.loads(data)
    version = int(doc["spec"]["_meta"]["version"])
    if SPEC_MT.match(media_type).group(1) != str(version):
        raise SpackReadError(f"media type {media_type} on a v{version} document")
    return spack1_read_nodes(doc["spec"]["nodes"], version)


def v4_nodes() -> dict[str, dict]:
    out = {}
    for name in ("hello", "libgreet"):
        with open(os.path.join(SPECS, f"{name}.spec.json")) as f:
            doc = json.load(f)
        assert doc["spec"]["_meta"]["version"] == 4
        out.update({n["hash"]: n for n in doc["spec"]["nodes"]})
    return out


@pytest.fixture(scope="module")
def v3_mirror(tmp_path_factory):
    tree = spack_tree()
    mirror = str(tmp_path_factory.mktemp("v3") / "mirror")
    run_cli("--root", tree["configured_root"], "create", "--unsigned", mirror, "hello",
            "--rebuild-index", check=True)
    return mirror


def test_the_v4_reader_rules_reject_what_bincache_used_to_write():
    original = v4_nodes()
    with pytest.raises(SpackReadError, match="unexpected in specfiles at v5"):
        spack1_read_nodes(list(original.values()), 5)  # v4 nodes labelled v5


def test_v3_spec_files_from_a_v4_tree_pass_spack_1x_reader_rules(v3_mirror):
    original = v4_nodes()
    for name in ("hello", "libgreet"):
        records = manifest(v3_mirror, name)["data"]
        specs = [r for r in records if SPEC_MT.match(r["mediaType"])]
        assert len(specs) == 1  # one blob, one media type: the version it really is
        assert specs[0]["mediaType"] == "application/vnd.spack.spec.v5+json"
        data = blob(v3_mirror, specs[0])
        read = spack1_read_specfile(data, specs[0]["mediaType"])
        for h, node in read.items():
            old = original[h]
            assert node["hash"] == h == old["hash"]  # the DAG hash is unchanged
            assert node["annotations"] == {"original_specfile_version": 4,
                                           "compiler": "gcc@=12.2.0"}
            # Spack's to_node_dict order: the v4 keys without compiler, annotations, hash.
            assert list(node) == [k for k in old if k not in ("compiler", "hash")] + ["annotations", "hash"]
            assert {k: v for k, v in node.items() if k not in ("annotations",)} == \
                {k: v for k, v in old.items() if k != "compiler"}
        doc = json.loads(data)
        assert doc["binary_cache_checksum"]["hash"] == records[0]["checksum"]


def test_v3_index_is_db_v8_with_nodes_spack_1x_reads(v3_mirror):
    media_type, index = index_doc(v3_mirror)
    assert media_type == "application/vnd.spack.db.v8+json"
    assert index["database"]["version"] == "8"
    nodes = [dict(r["spec"], hash=h) for h, r in index["database"]["installs"].items()]
    spack1_read_nodes(nodes, 5)


def test_bincache_installs_its_v3_cache_of_a_spack_tree(v3_mirror, tmp_path):
    root = str(tmp_path / "root")
    run_cli("--root", root, "install", "--unsigned", "--mirror", v3_mirror, "hello", check=True)
    assert_runs_from(root)


def test_oci_config_and_index_keep_the_v4_format(registry_http, tmp_path):
    tree = spack_tree()
    url = f"{registry_http.url}/spack-tree/{tmp_path.name}"
    run_cli("--root", tree["configured_root"], "create", "--unsigned", url, "hello",
            "--rebuild-index", check=True)
    from bincache.mirror import MirrorRef, open_cache
    from bincache.oci import image as img

    cache = open_cache(MirrorRef(url))
    h = tree["hashes"]["hello"]
    fetched = cache.client.fetch_manifest(cache.image.with_tag(img.package_tag("hello", "1.0", h)))
    config_desc = fetched.json()["config"]
    config = json.loads(cache.client.fetch_blob_bytes(cache.image, config_desc["digest"],
                                                      config_desc["size"]))
    # Spack 0.23 reads v4 from an image config, and so does Spack 1.x (its v4 reader).
    assert config["spec"]["_meta"]["version"] == 4
    assert {n["hash"]: n for n in config["spec"]["nodes"]} == \
        {k: v for k, v in v4_nodes().items() if k in {n["hash"] for n in config["spec"]["nodes"]}}
    index = read_index(cache)
    assert index is not None and index.db_version == "7"  # every node is a v4 one: Spack 0.2x and 1.x read it
    root = str(tmp_path / "root")
    run_cli("--root", root, "install", "--unsigned", "--mirror", url, "hello", check=True)
    assert_runs_from(root)


# -- the database version of the index --------------------------------------------------------
def test_update_index_keeps_the_db_version_and_db_version_chooses(v3_mirror, tmp_path):
    import shutil

    mirror = str(tmp_path / "m")
    shutil.copytree(v3_mirror, mirror)
    run_cli("update-index", mirror, "--db-version", "7", check=True)
    assert index_doc(mirror)[0] == "application/vnd.spack.db.v7+json"
    _, doc = index_doc(mirror)
    assert doc["database"]["version"] == "7"
    run_cli("update-index", mirror, check=True)  # kept
    assert index_doc(mirror)[0] == "application/vnd.spack.db.v7+json"
    bad = run_cli("update-index", mirror, "--db-version", "9")
    assert bad.returncode == 2 and "--db-version" in bad.stderr


def test_update_index_refuses_an_index_of_an_unknown_version(v3_mirror, tmp_path):
    import hashlib
    import shutil

    mirror = str(tmp_path / "m")
    shutil.copytree(v3_mirror, mirror)
    path = os.path.join(mirror, "v3", "manifests", "index", "index.manifest.json")
    data = json.dumps({"database": {"version": "9", "installs": {}}}).encode()
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(mirror, "blobs", "sha256", digest[:2]), exist_ok=True)
    with open(os.path.join(mirror, "blobs", "sha256", digest[:2], digest), "wb") as f:
        f.write(data)
    manifest_doc = {"version": 3, "data": [{"contentLength": len(data), "mediaType":
                    "application/vnd.spack.db.v9+json", "compression": "none",
                    "checksumAlgorithm": "sha256", "checksum": digest}]}
    with open(path, "w") as f:
        json.dump(manifest_doc, f)
    before = open(path, "rb").read()
    proc = run_cli("update-index", mirror)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) == 1 and "version 9" in proc.stderr
    assert open(path, "rb").read() == before


@pytest.mark.parametrize("version", ["6", "7", "8"])
def test_indexes_of_db_v6_to_v8_are_read(version):
    node = {"name": "zlib", "version": "1.3", "hash": "a" * 32}
    idx = Index.from_bytes(json.dumps({"database": {"version": version, "installs": {
        "a" * 32: {"spec": node, "ref_count": 0, "in_buildcache": True}}}}).encode())
    assert idx.db_version == version and [e.spec.name for e in idx.packages()] == ["zlib"]


def test_an_unknown_db_version_is_refused():
    with pytest.raises(IndexVersionError, match="version 9"):
        Index.from_bytes(b'{"database": {"version": "9", "installs": {}}}')


def test_a_new_index_defaults_to_what_its_readers_read():
    v4 = Spec.from_node({"name": "a", "version": "1", "compiler": {"name": "gcc", "version": "1"},
                         "hash": "b" * 32}, 4)
    v5 = Spec.from_node({"name": "a", "version": "1", "annotations": {"original_specfile_version": 5},
                         "hash": "c" * 32}, 5)
    old, new = Index(), Index()
    old.add(v4)
    new.add(v4)
    new.add(v5)
    assert choose_db_version(old, None, "oci") == "7"
    assert choose_db_version(old, None, "layout-v2") == "7"
    assert choose_db_version(old, None, "layout-v3") == "8"  # Spack >= 1.0 looks for db.v8 there
    assert choose_db_version(new, None, "oci") == "8"
    assert choose_db_version(new, None, "layout-v2") == "7"
    old.db_version = "8"
    assert choose_db_version(old, None, "oci") == "8"  # kept
    assert choose_db_version(new, "7", "layout-v3") == "7"


def test_conversion_is_spacks_own():
    assert legacy_compiler({"name": "gcc", "version": "12.2.0"}) == "gcc@=12.2.0"
    node = {"name": "x", "version": "1", "compiler": {"name": "gcc", "version": "9"},
            "namespace": "builtin", "hash": "d" * 32}
    assert upgrade_node(node, 4) == {"name": "x", "version": "1", "namespace": "builtin",
                                     "annotations": {"original_specfile_version": 4,
                                                     "compiler": "gcc@=9"},
                                     "hash": "d" * 32}
    (spec,) = parse_specfile({"spec": {"_meta": {"version": 4}, "nodes": [node]}})
    assert spec.specfile_version == 4 and spec.hash == "d" * 32
