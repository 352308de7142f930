"""Spec files, DAG hashes, install tree discovery and spec selection."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest

from bincache.errors import SpecError
from bincache.spec import Spec, dag_hash, make_node, parse_specfile
from bincache.tree import InstallTree, register_prefix

V5 = {
    "spec": {
        "_meta": {"version": 5},
        "nodes": [
            {"name": "zlib-ng", "version": "2.2.1",
             "arch": {"platform": "linux", "platform_os": "ubuntu24.04", "target": {"name": "x86_64_v3"}},
             "namespace": "builtin", "parameters": {"build_system": "autotools"},
             "dependencies": [{"name": "gmake", "hash": "a" * 32,
                               "parameters": {"deptypes": ["build"], "virtuals": []}},
                              {"name": "libc", "hash": "b" * 32,
                               "parameters": {"deptypes": ["link"], "virtuals": []}}],
             "hash": "nic37xsihlqze3xyg3xd6pthcgqxoy6p"},
            {"name": "gmake", "version": "4.4.1", "hash": "a" * 32},
            {"name": "libc", "version": "2.39", "hash": "b" * 32},
        ],
    }
}


def test_dag_hash_is_sha1_of_compact_json_without_hash_in_base32():
    node = {"name": "x", "version": "1", "parameters": {}, "hash": "ignored"}
    text = json.dumps({"name": "x", "version": "1", "parameters": {}}, separators=(",", ":"))
    expected = base64.b32encode(hashlib.sha1(text.encode()).digest()).decode().lower()[:32]
    assert dag_hash(node) == expected
    assert len(expected) == 32


def test_v5_spec_file_root_first_with_deptypes_and_dict_target():
    nodes = parse_specfile(json.dumps(V5))
    root = nodes[0]
    assert (root.name, root.version, root.hash) == ("zlib-ng", "2.2.1", "nic37xsihlqze3xyg3xd6pthcgqxoy6p")
    assert root.target == "x86_64_v3"
    # build-only dependencies do not travel with a binary package
    assert [d.name for d in root.link_run_deps()] == ["libc"]


def test_v4_and_v6_spec_files_and_old_type_key():
    v4 = json.loads(json.dumps(V5))
    v4["spec"]["_meta"]["version"] = 4
    v6 = json.loads(json.dumps(V5))
    v6["spec"]["_meta"]["version"] = 6
    old = {"spec": {"_meta": {"version": 3}, "nodes": [
        {"name": "a", "version": "1", "hash": "c" * 32,
         "dependencies": [{"name": "b", "hash": "d" * 32, "type": ["link"]}]}]}}
    assert parse_specfile(json.dumps(v4))[0].name == "zlib-ng"
    assert parse_specfile(json.dumps(v6))[0].hash == "nic37xsihlqze3xyg3xd6pthcgqxoy6p"
    assert parse_specfile(json.dumps(old))[0].deps[0].deptypes == ("link",)


@pytest.mark.parametrize("bad", [b"not json", b"{}", b'{"spec": {"nodes": []}}'])
def test_bad_spec_files_are_one_clear_error(bad):
    with pytest.raises(SpecError):
        parse_specfile(bad, "x/spec.json")


def _register(root, name, version, deps=()):
    spec = Spec.from_node(make_node(name, version, [parse_specfile(open(os.path.join(d, ".spack/spec.json")).read())[0] for d in deps]))
    prefix = os.path.join(root, spec.projection())
    os.makedirs(prefix)
    return register_prefix(prefix, name, version, deps=deps, root=root)


def test_register_writes_a_spec_file_whose_hash_checks(tmp_path):
    root = str(tmp_path / "root")
    a = _register(root, "liba", "1.0")
    b = _register(root, "prog", "2.0", deps=[a.prefix])
    data = json.load(open(os.path.join(b.prefix, ".spack", "spec.json")))
    nodes = data["spec"]["nodes"]
    assert [n["name"] for n in nodes] == ["prog", "liba"]
    assert dag_hash(nodes[0]) == nodes[0]["hash"] == b.hash
    assert nodes[0]["dependencies"][0]["hash"] == a.hash
    # the same inputs give the same hash (a rebuild is recognised)
    assert make_node("prog", "2.0", [a.spec], nodes[0]["arch"])["hash"] == b.hash


def test_tree_found_by_database_and_by_scan(tmp_path):
    root = str(tmp_path / "root")
    a = _register(root, "liba", "1.0")
    b = _register(root, "prog", "2.0", deps=[a.prefix])
    assert set(InstallTree(root).specs()) == {a.hash, b.hash}
    os.remove(os.path.join(root, ".spack-db", "index.json"))
    assert set(InstallTree(root).specs()) == {a.hash, b.hash}


def test_selection_by_name_version_hash_and_errors(tmp_path):
    root = str(tmp_path / "root")
    a1 = _register(root, "liba", "1.0")
    a2 = _register(root, "liba", "2.0")
    tree = InstallTree(root)
    assert tree.select(["liba@2.0"]) == [a2]
    assert tree.select([f"/{a1.hash[:6]}"]) == [a1]
    with pytest.raises(SpecError, match=r'"liba" matches 2 specs: liba@1.0/.*liba@2.0/'):
        tree.select(["liba"])
    with pytest.raises(SpecError, match='no installed spec matches "nope".*Installed: liba'):
        tree.select(["nope"])


def test_closure_puts_dependencies_first_and_reports_missing_ones(tmp_path):
    root = str(tmp_path / "root")
    a = _register(root, "liba", "1.0")
    b = _register(root, "libb", "1.0", deps=[a.prefix])
    c = _register(root, "prog", "1.0", deps=[b.prefix, a.prefix])
    tree = InstallTree(root)
    assert [s.name for s in tree.closure([c])] == ["liba", "libb", "prog"]
    import shutil
    shutil.rmtree(a.prefix)
    os.remove(os.path.join(root, ".spack-db", "index.json"))
    with pytest.raises(SpecError, match="depends on liba.*not installed"):
        InstallTree(root).closure([c])
