"""The benchmark tree generator: same seed, same tree; and the tree holds what it claims."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zlib

import pytest

from bincache.spec import dag_hash
from bincache.tree import InstallTree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import gen_tree  # noqa: E402

SIZE_MB = 8


def fingerprint(root: str) -> str:
    """Every path with its kind, mode, link target or content hash, and hardlink grouping."""
    h = hashlib.sha256()
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                entry = f"L {rel} -> {os.readlink(path)}"
            elif os.path.isdir(path):
                entry = f"D {rel} {st.st_mode & 0o777:o}"
            else:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                first = inodes.setdefault(st.st_ino, rel)
                entry = f"F {rel} {st.st_mode & 0o777:o} {digest} {first}"
            h.update(entry.encode() + b"\n")
    return h.hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gen") / "tree")
    prefixes = gen_tree.generate(root, SIZE_MB, seed=7)
    return root, prefixes


def test_same_seed_gives_the_same_tree_and_another_seed_does_not(tree):
    root, prefixes = tree
    first = fingerprint(root)
    again_root = root + "-again"
    # Prefixes embed the root, so the second tree must be generated at the same path.
    moved = root + "-first"
    os.rename(root, moved)
    try:
        assert gen_tree.generate(root, SIZE_MB, seed=7) == prefixes
        assert fingerprint(root) == first
        shutil.rmtree(root)
        gen_tree.generate(root, SIZE_MB, seed=8)
        assert fingerprint(root) != first
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(again_root, ignore_errors=True)
        os.rename(moved, root)


def test_prefixes_are_spack_prefixes_with_valid_spec_files(tree):
    root, prefixes = tree
    installed = InstallTree(root).specs()
    assert sorted(i.prefix for i in installed.values()) == sorted(prefixes)
    by_prefix = {i.prefix: i for i in installed.values()}
    depended_on = 0
    for prefix in prefixes:
        inst = by_prefix[prefix]
        assert os.path.basename(prefix) == f"{inst.name}-{inst.spec.version}-{inst.hash}"
        assert os.path.dirname(prefix) == os.path.join(root, "linux-x86_64")
        with open(os.path.join(prefix, ".spack", "spec.json")) as f:
            doc = json.load(f)
        assert doc["spec"]["_meta"]["version"] == 5
        nodes = doc["spec"]["nodes"]
        assert all(dag_hash(n) == n["hash"] for n in nodes)
        # Dependencies are earlier prefixes, and each is in the spec file.
        node_hashes = {n["hash"] for n in nodes[1:]}
        for dep in inst.spec.deps:
            assert dep.hash in node_hashes
            dep_prefix = installed[dep.hash].prefix
            assert prefixes.index(dep_prefix) < prefixes.index(prefix)
            depended_on += 1
    assert depended_on > 0


def test_compiled_programs_run_from_their_prefix_and_embed_prefixes(tree):
    _, prefixes = tree
    for prefix in prefixes:
        tool = os.path.join(prefix, "bin", "bcgen-tool")
        out = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
        assert f"{prefix}/share/bcgen" in out  # the string constant, patched to this prefix
        ldd = subprocess.run(["ldd", tool], capture_output=True, text=True, check=True).stdout
        lib_line = next(line for line in ldd.splitlines() if "libbcgen.so.1" in line)
        assert f"{prefix}/lib/libbcgen.so.1" in lib_line
        dyn = subprocess.run(["readelf", "-d", tool], capture_output=True, text=True, check=True)
        assert f"{prefix}/lib" in dyn.stdout  # RUNPATH into the tree


def test_tree_holds_the_promised_kinds_of_content(tree):
    root, prefixes = tree
    stats = gen_tree.tree_stats(prefixes)
    assert 0.9 * SIZE_MB * 2**20 <= stats["bytes"] <= 1.25 * SIZE_MB * 2**20
    assert stats["hardlinks"] >= len(prefixes)

    small = system_elves = incompressible = prefix_texts = abs_links_to_deps = 0
    for prefix in prefixes:
        pkg_name = os.path.basename(prefix).rsplit("-", 2)[0]
        with open(os.path.join(prefix, "lib", "pkgconfig", f"{pkg_name}.pc")) as f:
            assert f"prefix={prefix}\n" in f.read()
        with open(os.path.join(prefix, "bin", f"{pkg_name}-run"), "rb") as f:
            assert f.readline() == f"#!{prefix}/bin/bcgen-tool\n".encode()
        # Symlink chain: libbcgen.so -> libbcgen.so.1 -> libbcgen.so.1.0.0.
        lib = os.path.join(prefix, "lib")
        assert os.readlink(os.path.join(lib, "libbcgen.so")) == "libbcgen.so.1"
        assert os.path.realpath(os.path.join(lib, "libbcgen.so")) == os.path.join(lib, "libbcgen.so.1.0.0")
        assert os.stat(os.path.join(prefix, "bin", "bcgen-tool")).st_nlink == 2
        for dirpath, dirnames, filenames in os.walk(prefix):
            for name in filenames + dirnames:  # a symlink to a directory is listed in dirnames
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    target = os.readlink(path)
                    if os.path.isabs(target) and not target.startswith(prefix):
                        assert target.startswith(os.path.join(root, "linux-x86_64"))
                        abs_links_to_deps += 1
                    continue
                if os.path.isdir(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                if len(data) < 16384:
                    small += 1
                if data[:4] == b"\x7fELF" and "bcgen" not in name and "-tool" not in name:
                    assert root.encode() not in data  # a copy from the system, untouched
                    system_elves += 1
                elif name.endswith(".bin") and len(data) > 4096:
                    assert len(zlib.compress(data, 6)) > 0.99 * len(data)
                    incompressible += 1
                elif b"\0" not in data and prefix.encode() in data:
                    prefix_texts += 1
    assert small >= 100
    assert system_elves >= len(prefixes)
    assert incompressible >= 1
    assert prefix_texts >= 5 * len(prefixes)
    assert abs_links_to_deps >= 1


def test_refuses_a_non_empty_root(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        gen_tree.generate(str(tmp_path), 1)


@pytest.mark.parametrize("shape", ["chain", "flat"])
def test_shape_and_prefix_count_options_give_that_dag(tmp_path, shape):
    root = str(tmp_path / "tree")
    prefixes = gen_tree.generate(root, 4, seed=3, prefixes=5, shape=shape)
    assert len(prefixes) == 5
    installed = {i.prefix: i for i in InstallTree(root).specs().values()}
    by_hash = {i.hash: p for p, i in installed.items()}
    for k, prefix in enumerate(prefixes):
        deps = [by_hash[d.hash] for d in installed[prefix].spec.deps]
        expected = [prefixes[k - 1]] if shape == "chain" and k else []
        assert deps == expected


def test_a_bad_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shape must be one of"):
        gen_tree.generate(str(tmp_path / "t"), 4, shape="star")
