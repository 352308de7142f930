"""A real Spack 0.23 install tree and real Spack caches (tests/fixtures/spack/), without Spack.

Spack built libgreet and hello (which links it) into a padded install tree
(``install_tree:padded_length: 128``): its store sits four ``__spack_path_placeholder__`` levels
below the configured root, and every node depends on two externals at /usr (glibc, the implicit
libc, and gcc-runtime). Spack pushed them to layout v2 mirrors, signed and unsigned.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
import yaml

from tests.fixtures.spack_tree import MIRROR_SIGNED, MIRROR_UNSIGNED, SPACK_CONFIG, spack_tree


@pytest.fixture(scope="module")
def tree():
    return spack_tree()


def blob(mirror: str, record: dict) -> bytes:
    c = record["checksum"]
    with open(os.path.join(mirror, "blobs", "sha256", c[:2], c), "rb") as f:
        data = f.read()
    return gzip.decompress(data) if record["compression"] == "gzip" else data


def manifest(mirror: str, name: str) -> dict:
    (path,) = glob.glob(os.path.join(mirror, "v3", "manifests", "spec", name, "*.spec.manifest.json"))
    with open(path) as f:
        return json.load(f)


def index_doc(mirror: str) -> tuple[str, dict]:
    with open(os.path.join(mirror, "v3", "manifests", "index", "index.manifest.json")) as f:
        (rec,) = json.load(f)["data"]
    return rec["mediaType"], json.loads(blob(mirror, rec))


def run_hello(root: str) -> tuple[str, str]:
    (prog,) = glob.glob(os.path.join(root, "linux-x86_64", "hello-1.0-*", "bin", "hello"))
    out = subprocess.run([prog, "bincache"], capture_output=True, text=True, check=True).stdout
    ldd = subprocess.run(["ldd", prog], capture_output=True, text=True, check=True).stdout
    return out, ldd


def assert_runs_from(root: str) -> None:
    out, ldd = run_hello(root)
    lines = out.splitlines()
    assert lines[0].startswith("Hello, bincache! (data in ")
    data_dir = os.path.normpath(lines[0].split("(data in ", 1)[1].rstrip(")"))
    assert data_dir.startswith(root + "/linux-x86_64/libgreet-1.0-")
    assert os.path.isfile(os.path.join(data_dir, "greeting.txt"))
    assert os.path.normpath(lines[1].split(" at ", 1)[1]).startswith(root + "/linux-x86_64/hello-1.0-")
    (greet,) = [line for line in ldd.splitlines() if "libgreet.so" in line]
    assert f"=> {root}/linux-x86_64/libgreet-1.0-" in greet, ldd


def target_db(root: str) -> dict:
    with open(os.path.join(root, ".spack-db", "index.json")) as f:
        return json.load(f)["database"]


def test_padded_spack_tree_is_pushed_without_externals_and_installs_relocated(tree, cli, tmp_path):
    mirror, root = str(tmp_path / "mirror"), str(tmp_path / "root")
    # --root is Spack's configured root: the padded store below it is found.
    out = cli("--root", tree["configured_root"], "create", "--unsigned", mirror, "hello",
              "--rebuild-index", check=True).stdout
    assert "libgreet@1.0" in out and "hello@1.0" in out
    assert "glibc" not in out and "gcc-runtime" not in out
    assert sorted(os.listdir(os.path.join(mirror, "v3", "manifests", "spec"))) == ["hello", "libgreet"]
    total = sum(os.path.getsize(p) for p in glob.glob(f"{mirror}/blobs/sha256/*/*"))
    assert total < 100_000  # two small packages: /usr was not packed

    # Externals are out of hash_to_prefix (never relocated) and indexed as Spack indexes them.
    rec = manifest(mirror, "hello")["data"][0]
    with tarfile.open(fileobj=io.BytesIO(blob(mirror, rec))) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(".spack/binary_distribution")]
        info = yaml.safe_load(tar.extractfile(member))
        names = tar.getnames()
    assert set(info["hash_to_prefix"]) == {tree["hashes"]["hello"], tree["hashes"]["libgreet"]}
    assert "/usr" not in info["hash_to_prefix"].values()
    assert not any(n.startswith("usr/") for n in names)
    _, index = index_doc(mirror)
    installs = index["database"]["installs"]
    for ext in tree["externals"].values():
        assert installs[ext["hash"]]["in_buildcache"] is False
        assert installs[ext["hash"]]["spec"]["external"]["path"] == "/usr"

    cli("--root", root, "install", "--unsigned", "--mirror", mirror, "hello", check=True)
    assert_runs_from(root)
    db = target_db(root)
    for ext in tree["externals"].values():
        recorded = db["installs"][ext["hash"]]
        assert recorded["path"] == "/usr" and recorded["spec"]["external"]["path"] == "/usr"
        assert recorded["explicit"] is False
    assert not os.path.exists(os.path.join(root, "usr"))


def test_spack_config_yaml_names_the_tree(tree, cli, tmp_path):
    out = cli("--root", SPACK_CONFIG, "create", "--unsigned", str(tmp_path / "m"), "libgreet",
              check=True).stdout
    assert "libgreet@1.0" in out


def test_an_external_cannot_be_pushed_and_an_empty_tree_says_what_was_looked_for(tree, cli, tmp_path):
    proc = cli("--root", tree["configured_root"], "create", "--unsigned", str(tmp_path / "m"), "glibc")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "external" in proc.stderr and "/usr" in proc.stderr
    assert not os.path.exists(tmp_path / "m")

    empty = tmp_path / "empty"
    (empty / "__spack_path_placeholder__").mkdir(parents=True)
    proc = cli("--root", str(empty), "create", "--unsigned", str(tmp_path / "m2"))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert ".spack-db/index.json" in proc.stderr and "__spack_path_placeholder__" in proc.stderr


def test_spack_made_signed_v2_cache_installs_and_runs(cli, tmp_path):
    cli("keys", "install", MIRROR_SIGNED, "--trust", check=True)
    root = str(tmp_path / "root")
    cli("--root", root, "install", "--mirror", MIRROR_SIGNED, "hello", check=True)
    assert_runs_from(root)
    db = target_db(root)
    assert db["version"] == "7"  # Spack 0.23 reads the tree bincache made
    names = {r["spec"]["name"]: r for r in db["installs"].values()}
    assert names["glibc"]["path"] == "/usr" and "external" in names["glibc"]["spec"]
    # The installed spec file stays the v4 document Spack wrote.
    (spec_json,) = glob.glob(os.path.join(root, "linux-x86_64", "hello-1.0-*", ".spack", "spec.json"))
    with open(spec_json) as f:
        assert json.load(f)["spec"]["_meta"]["version"] == 4


def _copy_with(tmp_path, edit) -> str:
    mirror = str(tmp_path / "mirror")
    shutil.copytree(MIRROR_UNSIGNED, mirror)
    edit(mirror)
    return mirror


def test_an_external_missing_on_the_target_is_one_error_and_nothing_is_written(cli, tmp_path):
    def move_glibc(mirror):
        for path in glob.glob(os.path.join(mirror, "build_cache", "*.spec.json")):
            with open(path) as f:
                doc = json.load(f)
            for node in doc["spec"]["nodes"]:
                if node["name"] == "glibc":
                    node["external"]["path"] = "/nonexistent/glibc"
            with open(path, "w") as f:
                json.dump(doc, f)

    mirror = _copy_with(tmp_path, move_glibc)
    root = tmp_path / "root"
    proc = cli("--root", str(root), "install", "--unsigned", "--mirror", mirror, "hello")
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "glibc" in proc.stderr and "/nonexistent/glibc" in proc.stderr
    assert not root.exists()


def test_an_index_of_an_unknown_db_version_is_one_error_and_nothing_is_written(cli, tmp_path):
    def bump(mirror):
        path = os.path.join(mirror, "build_cache", "index.json")
        with open(path) as f:
            doc = json.load(f)
        doc["database"]["version"] = "9"
        data = json.dumps(doc).encode()
        with open(path, "wb") as f:
            f.write(data)
        with open(path + ".hash", "w") as f:
            f.write(hashlib.sha256(data).hexdigest())

    mirror = _copy_with(tmp_path, bump)
    root = tmp_path / "root"
    proc = cli("--root", str(root), "install", "--unsigned", "--mirror", mirror, "hello")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "version 9" in proc.stderr
    assert not root.exists()


def test_discovery_follows_padding_and_reads_spack_config(tmp_path):
    from bincache.errors import SpecError
    from bincache.tree import find_store

    store = tmp_path / "opt" / "__spack_path_placeholder__" / "__spack_path_placeholder__" / "__spack_pa"
    (store / ".spack-db").mkdir(parents=True)
    (tmp_path / "opt" / "bin").mkdir()  # Spack's sbang sits beside the padding
    assert find_store(str(tmp_path / "opt")) == str(store)
    config = tmp_path / "config.yaml"
    config.write_text("config:\n  install_tree:\n    root: opt\n    padded_length: 64\n")
    assert find_store(str(config)) == str(store)
    config.write_text("config:\n  install_tree:\n    root: $spack/opt/spack\n")
    with pytest.raises(SpecError, match=r"\$spack.*--root"):
        find_store(str(config))
