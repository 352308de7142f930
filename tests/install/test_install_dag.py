"""A DAG of small packages (chains and a fan, gcc-built programs): installed in parallel it is
the same tree as installed serially, its programs run, its database is Spack's, and a run
killed while it records loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from bincache import api
from bincache.tree import InstallTree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_dag  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

N = 26  # the base chain of 20 (every later package depends on one: the fan), then a chain


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    base = tmp_path_factory.mktemp("dag")
    root = str(base / ("tree-" + "p" * 40))
    prefixes = bench_dag.generate(root, N)
    mirror = str(base / "mirror")
    api.push(mirror, [], root=root, signed=False, update_index=True, jobs=2)
    hashes = sorted(InstallTree(root).specs())
    return {"root": root, "mirror": mirror, "prefixes": prefixes, "hashes": hashes}


def _same_length_root(tmp_path, dag, key: str) -> str:
    room = len(dag["root"]) - len(str(tmp_path)) - 1
    return os.path.join(str(tmp_path), (key + "_" * room)[:room])


def test_parallel_install_is_the_serial_install_and_programs_run(dag, tmp_path):
    results = {}
    for jobs in (1, 3):
        root = _same_length_root(tmp_path, dag, f"j{jobs}")
        res = api.install(["/" + h for h in dag["hashes"]], mirrors=[dag["mirror"]], root=root,
                          unsigned=True, jobs=jobs)
        assert len(res.installed) == N
        results[jobs] = (root, bench_dag.tree_digest(root))
    (root1, one), (root3, three) = results[1], results[3]
    assert one == three  # paths, modes, contents (root name substituted), link targets
    tree = InstallTree(root3)
    assert len(tree.specs()) == N
    for i in (0, 3, 24):  # packages with a program: it runs, loading its library by RUNPATH
        inst = next(s for s in tree.specs().values() if s.name == f"dagpkg{i:04d}")
        out = subprocess.run([f"{inst.prefix}/bin/dagpkg{i:04d}"], capture_output=True,
                             text=True, check=True).stdout
        assert "answer=42" in out and f"data={inst.prefix}/share/dagb" in out.replace("//", "/")
        assert dag["root"] not in out and root1 not in out
        # The RUNPATH, slash-padded in the build tree (as Spack pads), points into this root.
        dynamic = subprocess.run(["readelf", "-d", f"{inst.prefix}/bin/dagpkg{i:04d}"],
                                 capture_output=True, text=True).stdout
        assert f"[{inst.prefix}/lib:" in dynamic and dag["root"] not in dynamic


def test_database_is_spacks_and_dependents_counted(dag, tmp_path):
    root = _same_length_root(tmp_path, dag, "db")
    api.install(["/" + dag["hashes"][0]], mirrors=[dag["mirror"]], root=root, unsigned=True)
    api.install(["/" + h for h in dag["hashes"]], mirrors=[dag["mirror"]], root=root, unsigned=True)
    # Everything is in index.json itself (what Spack reads), not only in bincache's journal.
    with open(os.path.join(root, ".spack-db", "index.json")) as f:
        db = json.load(f)["database"]
    assert db["version"] in ("7", "8") and len(db["installs"]) == N
    by_name = {rec["spec"]["name"]: rec for rec in db["installs"].values()}
    # dagpkg0018 is depended on by dagpkg0019 (the base chain) and dagpkg0021 (the fan).
    for name, rec in by_name.items():
        assert rec["ref_count"] == sum(1 for r in db["installs"].values()
                                       for d in r["spec"].get("dependencies", [])
                                       if d["name"] == name), name
    assert by_name["dagpkg0018"]["ref_count"] == 2
    assert all(os.path.isdir(r["path"]) for r in db["installs"].values())


KILLER = r"""
import os, signal, sys
from bincache import api
seen = []
def progress(step, plan):
    if step == "installed":
        seen.append(plan)
        if len(seen) == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)
api.install(sys.argv[3].split(","), mirrors=[sys.argv[1]], root=sys.argv[2], unsigned=True,
            progress=progress)
"""


def test_killed_while_recording_loses_nothing_and_leaves_no_half_prefix(dag, tmp_path):
    root = _same_length_root(tmp_path, dag, "kill")
    selectors = ",".join("/" + h for h in dag["hashes"])
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", KILLER, dag["mirror"], root, selectors, "9"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Every prefix that was published is known to the tree, whole (its spec file is there).
    tree = InstallTree(root)
    found = tree.specs()
    assert len(found) >= 9
    for inst in found.values():
        assert os.path.isfile(os.path.join(inst.prefix, ".spack", "spec.json"))
        assert inst.nodes[0].hash == inst.hash
    published = [d for d in os.listdir(os.path.join(root, "linux-x86_64"))]
    assert len(published) == len(found)
    # The next run installs the rest, clears the killed run's staging and records everything.
    res = api.install(selectors.split(","), mirrors=[dag["mirror"]], root=root, unsigned=True)
    assert len(res.installed) == N - len(found)
    staging = os.path.join(root, ".bincache-staging")
    assert not os.path.exists(staging) or os.listdir(staging) == []
    with open(os.path.join(root, ".spack-db", "index.json")) as f:
        assert len(json.load(f)["database"]["installs"]) == N


def test_opening_a_tree_reads_no_prefix_spec_file(dag, tmp_path, monkeypatch):
    root = _same_length_root(tmp_path, dag, "open")
    api.install(["/" + h for h in dag["hashes"]], mirrors=[dag["mirror"]], root=root, unsigned=True)
    from bincache import tree as tree_module

    reads = []
    real = tree_module.read_prefix_specfile
    monkeypatch.setattr(tree_module, "read_prefix_specfile", lambda p: reads.append(p) or real(p))
    tree = InstallTree(root)
    assert len(tree.specs()) == N and reads == []
    leaf = tree.select(["dagpkg0025"])[0]
    assert {n.name for n in leaf.nodes} >= {"dagpkg0025", "dagpkg0024", "dagpkg0000"}
    assert len(reads) == 1


def test_install_into_a_large_tree_spack_never_opened_leaves_index_json_complete(dag, tmp_path):
    # A tree of 5,000 records (over 1 MiB of index.json, no Spack lock): an install's records
    # no longer wait in bincache's journal, where Spack does not look.
    root = _same_length_root(tmp_path, dag, "big")
    db_dir = os.path.join(root, ".spack-db")
    os.makedirs(db_dir)
    others = {f"{i:032d}": {"spec": {"name": f"other{i}", "version": "1"}, "ref_count": 0,
                            "path": f"{root}/gone/other{i}", "installed": True,
                            "explicit": True, "installation_time": float(i)} for i in range(5000)}
    with open(os.path.join(db_dir, "index.json"), "w") as f:
        json.dump({"database": {"version": "8", "installs": others}}, f, separators=(",", ":"))
    assert os.path.getsize(os.path.join(db_dir, "index.json")) > 1 << 20
    api.install(["/" + h for h in dag["hashes"][:3]], mirrors=[dag["mirror"]], root=root,
                unsigned=True, jobs=2)
    with open(os.path.join(db_dir, "index.json")) as f:
        installs = json.load(f)["database"]["installs"]
    mine = {h for h, r in installs.items() if not r["spec"]["name"].startswith("other")}
    assert len(installs) == 5000 + len(mine) and len(mine) >= 3
    assert os.path.getsize(os.path.join(db_dir, "bincache-journal.jsonl")) == 0
