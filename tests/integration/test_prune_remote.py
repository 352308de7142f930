"""`bincache prune` on S3 (a real moto_server) and on OCI registries (a real docker-registry,
with deletes allowed and, as Debian configures it, refused), and a prune while a real push runs
into the same directory mirror."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time

import boto3
import pytest
import requests

from bincache import api
from tests.conftest import REPO, run_cli
from tests.fixtures.registry import needs_registry, start_registry
from tests.integration import test_prune, test_s3
from tests.integration.test_prune import reference_closure, register_dag, state

s3_server = test_s3.s3_server
pushed = test_prune.pushed  # the 200-package directory mirror of test_prune
pytest_plugins = ["tests.fixtures.registry"]
N = 16


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """16 registered prefixes, each depending on up to 2 earlier ones (seeded)."""
    root = tmp_path_factory.mktemp("prune-remote") / "root"
    deps, _ = register_dag(root, [f"p{i:02d}" for i in range(N)], random.Random(7), 2, 10)
    return {"root": root, "deps": deps}


ROOTS = ["p15", "p07"]


def test_prune_on_s3_keeps_the_closures_and_leaves_no_orphan(small, s3_server, tmp_path):
    env = dict(s3_server)
    url = "s3://cache/pruned"
    run_cli("--root", str(small["root"]), "create", "--unsigned", url, "--rebuild-index", env=env, check=True)
    s3 = boto3.client("s3", endpoint_url=env["BINCACHE_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")

    def objects() -> dict[str, bytes]:
        keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="cache", Prefix="pruned/")
                for o in p.get("Contents", [])]
        return {k[len("pruned/"):]: s3.get_object(Bucket="cache", Key=k)["Body"].read() for k in keys}

    expected = reference_closure(small["deps"], ROOTS)
    assert 2 < len(expected) < N - 2
    before = objects()
    r = run_cli("prune", url, "--keep", *ROOTS, "--grace", "0", "--json", env=env, check=True)
    assert objects() == before  # a dry run
    assert len(json.loads(r.stdout)["mirrors"][0]["deleted"]) == N - len(expected)
    # Pushed seconds ago: within the default grace (1 h) every package counts as a root.
    young = run_cli("prune", url, "--keep", *ROOTS, "--yes", env=env, check=True)
    assert f"{N - 2} packages pushed within --grace kept as roots" in young.stdout
    assert {k for k in objects() if k.startswith(("blobs/", "v3/manifests/spec/"))} == \
        {k for k in before if k.startswith(("blobs/", "v3/manifests/spec/"))}
    run_cli("prune", url, "--keep", *ROOTS, "--grace", "0", "--yes", env=env, check=True)
    after = objects()
    names, named = set(), set()
    for key, data in after.items():
        if key.startswith("v3/manifests/"):
            for rec in json.loads(data).get("data", []):
                named.add(f"blobs/sha256/{rec['checksum'][:2]}/{rec['checksum']}")
            if key.endswith(".spec.manifest.json"):
                names.add(key.rsplit("/", 1)[1].split("-")[0])
    assert names == expected
    assert {k for k in after if k.startswith("blobs/")} == named  # no orphan, none missing
    listed = json.loads(run_cli("list", url, "--json", env=env, check=True).stdout)
    assert {e["name"] for e in listed} == expected
    new_root = tmp_path / "installed"
    run_cli("--root", str(new_root), "install", "--unsigned", "--mirror", url, "p15", env=env, check=True)


def registry_state(reg, repo) -> tuple[set[str], set[str], set[str]]:
    """(package names tagged, blobs linked in the repository, blobs its manifests name)."""
    base = f"{reg.http_url}/v2/{repo}"
    tags = requests.get(f"{base}/tags/list", timeout=10).json().get("tags") or []
    named: set[str] = set()
    accept = "application/vnd.oci.image.manifest.v1+json"
    for tag in tags:
        doc = requests.get(f"{base}/manifests/{tag}", headers={"Accept": accept}, timeout=10).json()
        named |= {d["digest"] for d in [doc["config"], *doc.get("layers", [])]}
    layers = reg.storage / "repositories" / repo / "_layers" / "sha256"
    linked = {f"sha256:{d.name}" for d in layers.iterdir() if (d / "link").exists()}
    names = {t.split("-")[0] for t in tags if t.endswith(".spack") and t != "index.spack"}
    return names, linked, named


@needs_registry
def test_prune_on_oci_deletes_images_and_unlinks_their_blobs(small, tmp_path, registry_factory):
    reg = registry_factory("http")
    url = f"{reg.url}/prune/cache"
    run_cli("--root", str(small["root"]), "create", "--unsigned", url, "--rebuild-index", check=True)
    expected = reference_closure(small["deps"], ROOTS)
    before = registry_state(reg, "prune/cache")
    dry = json.loads(run_cli("prune", url, "--keep", *ROOTS, "--json", check=True).stdout)
    assert len(dry["mirrors"][0]["deleted"]) == N - len(expected)
    assert registry_state(reg, "prune/cache") == before
    run_cli("prune", url, "--keep", *ROOTS, "--yes", check=True)
    names, linked, named = registry_state(reg, "prune/cache")
    assert names == expected
    assert linked == named  # every blob of a deleted image is unlinked; none a kept one names
    listed = json.loads(run_cli("list", url, "--json", check=True).stdout)
    assert {e["name"] for e in listed} == expected
    run_cli("--root", str(tmp_path / "installed"), "install", "--unsigned", "--mirror", url, "p15", check=True)


@needs_registry
def test_a_registry_that_refuses_deletes_changes_nothing(small, tmp_path):
    reg = start_registry(tmp_path / "registry", "http", delete=False)
    try:
        url = f"{reg.url}/nodelete/cache"
        run_cli("--root", str(small["root"]), "create", "--unsigned", url, "--rebuild-index", check=True)
        before = registry_state(reg, "nodelete/cache")
        index = requests.head(f"{reg.http_url}/v2/nodelete/cache/manifests/index.spack", timeout=10,
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        r = run_cli("prune", url, "--keep", *ROOTS, "--yes")
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
        assert "does not allow deletes" in r.stderr and "nothing was deleted" in r.stderr
        assert "Traceback" not in r.stderr
        assert registry_state(reg, "nodelete/cache") == before
        r = run_cli("prune", url, "--keep", "p15", "nosuch", "--yes")
        assert r.returncode == 1 and r.stderr == 'error: root "nosuch" is not in the mirror; nothing was deleted\n'
        assert registry_state(reg, "nodelete/cache") == before
        again = requests.head(f"{reg.http_url}/v2/nodelete/cache/manifests/index.spack", timeout=10,
                              headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert again.headers["Docker-Content-Digest"] == index.headers["Docker-Content-Digest"]
    finally:
        reg.stop()


def test_a_push_running_during_the_prune_loses_nothing(pushed, tmp_path):
    """A real `bincache create` of 40 new packages runs while `prune --yes` sweeps the mirror
    (its old unreferenced blobs aged past the grace period): every package the push wrote is
    complete afterwards, and the prune still deleted what the roots do not reach."""
    mirror = tmp_path / "mirror"
    shutil.copytree(pushed["mirror"], mirror)
    past = time.time() - 7200
    for d, _, files in os.walk(mirror):
        for f in files:
            os.utime(os.path.join(d, f), (past, past))
    root = tmp_path / "new"
    for i in range(40):
        prefix = root / "opt" / f"late{i:02d}"
        (prefix / "share").mkdir(parents=True)
        (prefix / "share" / "data.txt").write_text(f"late {i}\n" * 2000)
        api.register(str(prefix), f"late{i:02d}", "1.0", root=str(root))
    env = dict(os.environ, PYTHONPATH=REPO)
    push = subprocess.Popen([sys.executable, "-m", "bincache", "--root", str(root), "create",
                             "--unsigned", "-j", "1", "--rebuild-index", str(mirror)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spec_dir = mirror / "v3" / "manifests" / "spec"
    deadline = time.time() + 60
    while not any(p.name.startswith("late") for p in spec_dir.iterdir()) and time.time() < deadline:
        time.sleep(0.02)
    roots = ["pkg199", "pkg150", "pkg042"]
    assert push.poll() is None, "the push ended before the prune started"
    prune = run_cli("prune", str(mirror), "--keep", *roots, "--grace", "60", "--yes", "--json", check=True)
    out, err = push.communicate(timeout=300)
    assert push.returncode == 0, err
    doc = json.loads(prune.stdout)
    # The packages the push had written when the prune listed the mirror were kept as roots.
    assert doc["young"]
    names, blobs, named = state(mirror)
    assert named <= blobs  # no manifest names a missing blob
    assert {n for n in names if n.startswith("late")} == {f"late{i:02d}" for i in range(40)}
    assert {n for n in names if n.startswith("pkg")} == reference_closure(pushed["deps"], roots)
    assert doc["mirrors"][0]["blobs_deleted"] > 0  # the old garbage did go
    run_cli("--root", str(tmp_path / "inst"), "install", "--unsigned", "--mirror", str(mirror), "late39",
            check=True)
