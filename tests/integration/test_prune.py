"""`bincache prune`: mark and sweep from roots, on a mirror of 200 packages (real pushes)."""

from __future__ import annotations

import json
import os
import random
import shutil
import time

import pytest

from bincache import api
from tests.conftest import run_cli

N = 200


def reference_closure(deps: dict[str, list[str]], roots: list[str]) -> set[str]:
    """What must survive, computed apart from bincache: plain depth-first search."""
    keep: set[str] = set()

    def visit(name: str) -> None:
        if name not in keep:
            keep.add(name)
            for d in deps[name]:
                visit(d)

    for r in roots:
        visit(r)
    return keep


def register_dag(root, names: list[str], rng: random.Random, max_deps: int, lines: int
                 ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Register one prefix per name, each depending on up to `max_deps` earlier ones (seeded):
    (name -> dependency names, name -> hash)."""
    deps: dict[str, list[str]] = {}
    prefixes: dict[str, str] = {}
    hashes: dict[str, str] = {}
    for name in names:
        prefix = root / "opt" / name
        (prefix / "share").mkdir(parents=True)
        # Every package's own bytes, so every tarball is a blob of its own.
        (prefix / "share" / "data.txt").write_text(f"{name} {rng.random()}\n" * lines)
        deps[name] = sorted(rng.sample(sorted(prefixes), k=min(len(prefixes), rng.randint(0, max_deps))))
        inst = api.register(str(prefix), name, "1.0", deps=[prefixes[d] for d in deps[name]], root=str(root))
        prefixes[name] = str(prefix)
        hashes[name] = inst.hash
    return deps, hashes


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """200 registered prefixes, each depending on up to 3 earlier ones (seeded), pushed."""
    base = tmp_path_factory.mktemp("prune")
    root = base / "root"
    deps, hashes = register_dag(root, [f"pkg{i:03d}" for i in range(N)], random.Random(13), 3, 20)
    mirror = base / "mirror"
    result = api.push(str(mirror), root=str(root), signed=False, jobs=4, update_index=True)
    assert len(result.pushed) == N
    return {"mirror": mirror, "deps": deps, "hashes": hashes, "root": root, "base": base}


def state(mirror) -> tuple[set[str], set[str], set[str]]:
    """(package names with a manifest, blob paths on disk, blob paths the manifests name)."""
    names, named = set(), set()
    for d, _, files in os.walk(mirror / "v3" / "manifests"):
        for f in files:
            raw = open(os.path.join(d, f), "rb").read()
            for rec in json.loads(raw).get("data", []):
                named.add(f"blobs/sha256/{rec['checksum'][:2]}/{rec['checksum']}")
            if f.endswith(".spec.manifest.json"):
                names.add(f.split("-")[0])
    blobs = {os.path.relpath(os.path.join(d, f), mirror)
             for d, _, files in os.walk(mirror / "blobs") for f in files}
    return names, blobs, named


def test_three_roots_keep_exactly_their_closures(pushed, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(pushed["mirror"], mirror)
    roots = ["pkg199", "pkg150", "pkg042"]
    expected = reference_closure(pushed["deps"], roots)
    assert 10 < len(expected) < N - 10  # the roots neither keep everything nor nothing
    h = pushed["hashes"]
    before = state(mirror)

    # A dry run lists what would go and changes nothing.
    dry = run_cli("prune", str(mirror), "--keep", "pkg199", f"/{h['pkg150']}", "pkg042@1.0",
                  "--grace", "0", "--json", check=True)
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and {r["name"] for r in doc["roots"]} == set(roots)
    (m,) = doc["mirrors"]
    assert set(m["kept"]) == {h[n] for n in expected}
    assert set(m["deleted"]) == {h[n] for n in h} - {h[n] for n in expected}
    assert state(mirror) == before

    # Roots from a file of hashes this time, deleted for real.
    roots_file = tmp_path / "roots.txt"
    roots_file.write_text("# release 2026.12\n" + "".join(f"{h[n]}\n" for n in roots))
    r = run_cli("prune", str(mirror), "--keep", str(roots_file), "--grace", "0", "--yes", check=True)
    assert f"{len(expected)} kept, {N - len(expected)} deleted" in r.stdout
    names, blobs, named = state(mirror)
    assert names == expected
    assert blobs == named  # no orphan blob, and no manifest naming a missing blob
    listed = json.loads(run_cli("list", str(mirror), "--json", check=True).stdout)
    assert {e["name"] for e in listed} == expected  # the index follows

    # What is kept still installs.
    new_root = tmp_path / "installed"
    run_cli("--root", str(new_root), "install", "--unsigned", "--mirror", str(mirror), "pkg199", check=True)
    got = {d.split("/")[-2].split("-")[0] for d, _, f in os.walk(new_root) if "data.txt" in f}
    assert got == reference_closure(pushed["deps"], ["pkg199"])


def test_young_blobs_survive_the_grace_period_and_a_spack_lock_is_a_root(pushed, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(pushed["mirror"], mirror)  # copies are fresh: every blob is seconds old
    past = time.time() - 7200  # the packages were pushed long ago (young ones would be roots)
    for d, _, files in os.walk(mirror / "v3" / "manifests" / "spec"):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))
    h = pushed["hashes"]
    lock = tmp_path / "spack.lock"
    lock.write_text(json.dumps({"_meta": {"lockfile-version": 5},
                                "roots": [{"hash": h["pkg010"], "spec": "pkg010"}],
                                "concrete_specs": {h["pkg010"]: {"name": "pkg010"},
                                                   "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz": {"name": "cmake"}}}))
    r = run_cli("prune", str(mirror), "--keep", str(lock), "--yes", check=True)
    assert "younger than --grace" in r.stdout
    names, blobs, named = state(mirror)
    assert names == reference_closure(pushed["deps"], ["pkg010"])
    assert named < blobs  # the unreferenced blobs are still there
    # Once old enough, they go.
    past = time.time() - 7200
    for b in blobs - named:
        os.utime(mirror / b, (past, past))
    r = run_cli("prune", str(mirror), "--keep", str(lock), "--yes", check=True)
    names2, blobs2, named2 = state(mirror)
    assert names2 == names and blobs2 == named2


def test_keep_newest_and_bad_input(pushed, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(pushed["mirror"], mirror)
    before = state(mirror)
    r = run_cli("prune", str(mirror), "--keep", "pkg001", "nosuchpkg", "--yes")
    assert r.returncode == 1 and r.stderr == 'error: root "nosuchpkg" is not in the mirror; nothing was deleted\n'
    assert state(mirror) == before
    r = run_cli("prune", str(mirror), "--yes")
    assert r.returncode == 2 and "would delete everything" in r.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_cli("prune", str(a_file), "--keep", "pkg001")
    assert r.returncode == 2 and "is a file" in r.stderr
    # Every name has one version here: --keep-newest 1 keeps everything.
    r = run_cli("prune", str(mirror), "--keep-newest", "1", "--json", check=True)
    assert len(json.loads(r.stdout)["mirrors"][0]["deleted"]) == 0
