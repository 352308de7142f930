"""`bincache create --layout v2`: caches for Spack < 1.0, written as Spack 0.23 writes them.

The paths, the spec file's fields and the key layout are checked against the names Spack 0.23's
binary_distribution.py gives them (tarball_name, tarball_directory_name, push_keys); the
signature is checked with the real gpg; then bincache installs from its own v2 cache and the
relocated program runs. (Spack 0.23 itself reads these caches in test_spack_live.py.)
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess

import pytest

from bincache.mirror import open_cache
from bincache.mirror.config import MirrorRef
from bincache.mirror.layout_v2 import LayoutV2Cache
from bincache.mirror.layout_v3 import LayoutV3Cache
from tests.fixtures.registered_stack import build_registered_stack, run_sqprog
from tests.fixtures.spack_tree import MIRROR_UNSIGNED, spack_tree
from tests.integration.test_create import _snapshot as _files
from tests.integration.test_layout_v2 import s3_env  # noqa: F401 (a fixture)


def _stem(inst) -> str:
    """Spack 0.23's tarball_name for a node without a compiler (bincache's register): its
    format_path renders the missing compiler's name and version as empty strings."""
    n = inst.spec.node
    a = n["arch"]
    return f"{a['platform']}-{a['platform_os']}-{a['target']}---{n['name']}-{n['version']}-{n['hash']}"


def _tarball_rel(inst) -> str:
    n = inst.spec.node
    a = n["arch"]
    return (f"build_cache/{a['platform']}-{a['platform_os']}-{a['target']}/-/{n['name']}-{n['version']}/"
            f"{_stem(inst)}.spack")


def _gpg_verify(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["gpg", "--homedir", os.environ["BINCACHE_GNUPGHOME"], "--batch", "--verify", path],
                          capture_output=True, text=True)


def _hello(root) -> str:
    (exe,) = glob.glob(os.path.join(str(root), "*", "hello-3.2-*", "bin", "hello"))
    return subprocess.run([exe, "v2"], capture_output=True, text=True, check=True).stdout


def test_signed_v2_cache_has_spacks_layout_and_installs(demo_stack_factory, tmp_path, cli):
    stack = demo_stack_factory
    cli("keys", "create", "V2 Builder", "v2@example.org", check=True)
    mirror = str(tmp_path / "mirror")
    cli("--root", stack.root, "create", "--layout", "v2", mirror, "--rebuild-index", check=True)
    files = _files(mirror)
    assert not any(rel.startswith("v3") or rel.startswith("blobs") for rel in files), sorted(files)

    fpr = json.loads(cli("keys", "list", "--json", check=True).stdout)[0]["fingerprint"]
    for inst in (stack.greet, stack.shout, stack.hello):
        tarball = files[_tarball_rel(inst)]
        sig_rel = f"build_cache/{_stem(inst)}.spec.json.sig"
        assert f"build_cache/{_stem(inst)}.spec.json" not in files  # signed: only the .sig
        signed = files[sig_rel]
        assert signed.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
        verified = _gpg_verify(os.path.join(mirror, sig_rel))
        assert verified.returncode == 0 and "Good signature" in verified.stderr, verified.stderr
        assert fpr[-16:] in verified.stderr.replace(" ", "") or fpr in verified.stderr.replace(" ", "")
        text = signed.split(b"\n\n", 1)[1].split(b"-----BEGIN PGP SIGNATURE-----")[0]
        doc = json.loads(text)
        assert doc["buildcache_layout_version"] == 2
        assert doc["binary_cache_checksum"] == {"hash_algorithm": "sha256",
                                                "hash": hashlib.sha256(tarball).hexdigest()}
        assert doc["spec"]["nodes"][0]["hash"] == inst.hash
        # indent=0: one key per line, as Spack writes it (gpg truncates very long lines).
        assert max(len(line) for line in text.splitlines()) < 200

    # Keys where Spack's push_keys puts them, and the key index its generate_key_index writes.
    assert files["build_cache/_pgp/index.json"] and json.loads(files["build_cache/_pgp/index.json"]) == {
        "keys": {fpr: {}}}
    assert files[f"build_cache/_pgp/{fpr}.pub"].startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")

    # The index: Spack's database version 7, and its hash file.
    index = files["build_cache/index.json"]
    assert files["build_cache/index.json.hash"].decode() == hashlib.sha256(index).hexdigest()
    db = json.loads(index)["database"]
    assert db["version"] == "7"
    assert {h for h, r in db["installs"].items() if r["in_buildcache"]} == {
        stack.greet.hash, stack.shout.hash, stack.hello.hash}

    # bincache reads its own v2 cache back: listed, verified, installed, and the program runs.
    assert isinstance(open_cache(MirrorRef(mirror)), LayoutV2Cache)
    listed = json.loads(cli("list", mirror, "--json", check=True).stdout)
    assert sorted(r["name"] for r in listed) == ["greet", "hello", "shout"]
    new_root = tmp_path / "new"
    cli("--root", str(new_root), "install", "--mirror", mirror, "hello", check=True)
    out = _hello(new_root)
    assert "HEY! hello, v2" in out and stack.root not in out


def test_a_v2_mirror_stays_v2_and_unsigned_replaces_signed(demo_stack_factory, tmp_path, cli):
    stack = demo_stack_factory
    cli("keys", "create", "V2 Builder", "v2@example.org", check=True)
    mirror = str(tmp_path / "mirror")
    cli("--root", stack.root, "create", "--layout", "v2", mirror, "greet", check=True)
    # No --layout: the mirror holds a v2 cache and no v3, so v2 it stays (push and index).
    cli("--root", stack.root, "create", mirror, "hello", check=True)
    cli("update-index", mirror, check=True)
    files = _files(mirror)
    assert not any(rel.startswith(("v3", "blobs")) for rel in files), sorted(files)
    assert _tarball_rel(stack.hello) in files and _tarball_rel(stack.shout) in files
    assert json.loads(files["build_cache/index.json"])["database"]["version"] == "7"
    assert {"greet", "shout", "hello"} <= {r["name"] for r in json.loads(cli("list", mirror, "--json").stdout)}

    # --force --unsigned replaces the signed spec file: a reader never finds the stale .sig.
    cli("--root", stack.root, "create", "--force", "--unsigned", mirror, "greet", "--only", "package",
        check=True)
    files = _files(mirror)
    plain = f"build_cache/{_stem(stack.greet)}.spec.json"
    assert plain in files and plain + ".sig" not in files
    assert json.loads(files[plain])["spec"]["nodes"][0]["hash"] == stack.greet.hash
    new_root = tmp_path / "r"
    refused = cli("--root", str(new_root), "install", "--mirror", mirror, "greet")
    assert refused.returncode == 1 and "not signed" in refused.stderr


def test_a_mirror_holding_v2_and_v3_needs_a_layout(demo_stack_factory, tmp_path, cli):
    stack = demo_stack_factory
    mirror = str(tmp_path / "mirror")
    cli("--root", stack.root, "create", "--unsigned", "--layout", "v2", mirror, "greet", check=True)
    cli("--root", stack.root, "create", "--unsigned", "--layout", "v3", mirror, "greet", check=True)
    before = _files(mirror)
    for args in (("--root", stack.root, "create", "--unsigned", mirror, "hello"), ("update-index", mirror)):
        res = cli(*args)
        assert res.returncode == 1, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert "both a layout v2 cache" in lines[0] and "--layout v2 or --layout v3" in lines[0]
        assert "Traceback" not in res.stderr
        assert _files(mirror) == before  # nothing written
    # Reading is not ambiguous: a mirror migrated in place reads as v3.
    assert isinstance(open_cache(MirrorRef(mirror)), LayoutV3Cache)
    cli("--root", stack.root, "create", "--unsigned", "--layout", "v2", mirror, "hello", check=True)
    assert _tarball_rel(stack.hello) in _files(mirror)


def test_layout_is_refused_for_oci(demo_stack_factory, cli):
    for args in (("--root", demo_stack_factory.root, "create", "--layout", "v2", "oci://127.0.0.1:1/x"),
                 ("update-index", "--layout", "v3", "oci://127.0.0.1:1/x")):
        res = cli(*args)
        assert res.returncode == 2 and "--layout is for directory, http and s3 mirrors" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize("layout", ["v2", "v3"])
def test_update_index_with_a_layout_writes_that_layouts_index(demo_stack_factory, tmp_path, cli, layout):
    stack = demo_stack_factory
    mirror = str(tmp_path / "mirror")
    cli("--root", stack.root, "create", "--unsigned", "--layout", layout, mirror, "greet", check=True)
    cli("update-index", "--layout", layout, mirror, check=True)
    files = _files(mirror)
    if layout == "v2":
        assert "build_cache/index.json" in files and not any(r.startswith("v3") for r in files)
    else:
        assert "v3/manifests/index/index.manifest.json" in files and "build_cache/index.json" not in files


def test_registered_with_a_compiler_is_a_v4_spec_in_the_compilers_directory(tmp_path, cli):
    stack = build_registered_stack(str(tmp_path / "b"), cli)
    spec = json.load(open(os.path.join(stack.root, "sqprog", ".spack", "spec.json")))
    version = stack.compiler.split("@")[1]
    assert spec["spec"]["_meta"]["version"] == 4
    assert spec["spec"]["nodes"][0]["compiler"] == {"name": "gcc", "version": version}
    assert "annotations" not in spec["spec"]["nodes"][0]
    mirror = str(tmp_path / "mirror")
    cli("--root", stack.root, "create", "--unsigned", "--layout", "v2", mirror, check=True)
    files = _files(mirror)
    stem = f"linux-debian12-x86_64-gcc-{version}-sqprog-0.1-{stack.prog_hash}"
    assert f"build_cache/linux-debian12-x86_64/gcc-{version}/sqprog-0.1/{stem}.spack" in files
    assert f"build_cache/{stem}.spec.json" in files
    new_root = str(tmp_path / "new")
    cli("--root", new_root, "install", "--unsigned", "--mirror", mirror, "sqprog", check=True)
    assert re.search(f"data=/+{re.escape(new_root[1:])}/.*/share/sq$", run_sqprog(new_root).strip())

    bad = cli("--root", stack.root, "register", os.path.join(stack.root, "libsq"), "--name", "libsq",
              "--version", "1.0", "--compiler", "gcc 12", "--no-autopush")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        'error: invalid compiler "gcc 12": give NAME@VERSION, e.g. gcc@12.2.0']


def test_signed_v2_cache_on_s3_stays_v2_and_installs(demo_stack_factory, tmp_path, cli, s3_env):  # noqa: F811
    env, client = s3_env
    stack = demo_stack_factory
    cli("keys", "create", "V2 Builder", "v2@example.org", check=True)
    url = "s3://cache/spack0"
    cli("--root", stack.root, "create", "--layout", "v2", url, "greet", env=env, check=True)
    # No --layout: the key index the signed push published marks the mirror as v2.
    cli("--root", stack.root, "create", url, "hello", env=env, check=True)
    cli("update-index", url, env=env, check=True)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="cache", Prefix="spack0/")["Contents"]}
    assert all(k.startswith("spack0/build_cache/") for k in keys), sorted(keys)
    assert "spack0/" + _tarball_rel(stack.hello) in keys
    assert f"spack0/build_cache/{_stem(stack.hello)}.spec.json.sig" in keys
    index = client.get_object(Bucket="cache", Key="spack0/build_cache/index.json")["Body"].read()
    assert json.loads(index)["database"]["version"] == "7"
    new_root = tmp_path / "new"
    cli("--root", str(new_root), "install", "--mirror", url, "hello", env=env, check=True)
    assert "HEY! hello, v2" in _hello(new_root)


def test_v2_push_of_a_spack_tree_writes_what_spack_pushed(tmp_path, cli):
    """Real Spack 0.23 output as the reference: the committed fixture mirror is what `spack
    buildcache push --unsigned --update-index` wrote for this tree. bincache's v2 push of the
    same tree writes the same files, spec files byte for byte but for the tarball checksum (the
    tarballs are bincache's own), and an index with Spack's version, records and nodes."""
    info = spack_tree()
    mirror = str(tmp_path / "mirror")
    cli("--root", info["configured_root"], "create", "--unsigned", "--layout", "v2", mirror, "--rebuild-index",
        check=True)
    ours, spacks = _files(mirror), _files(MIRROR_UNSIGNED)
    assert sorted(ours) == sorted(spacks)
    specfiles = [rel for rel in spacks if rel.endswith(".spec.json")]
    assert len(specfiles) == 2
    for rel in specfiles:
        mine = json.loads(ours[rel])["binary_cache_checksum"]["hash"]
        theirs = json.loads(spacks[rel])["binary_cache_checksum"]["hash"]
        tar_rel = [r for r in ours if r.endswith(".spack") and os.path.basename(rel)[:-len(".spec.json")] in r]
        assert len(tar_rel) == 1 and hashlib.sha256(ours[tar_rel[0]]).hexdigest() == mine
        assert ours[rel].replace(mine.encode(), theirs.encode()) == spacks[rel]
    db, spack_db = json.loads(ours["build_cache/index.json"])["database"], json.loads(spacks["build_cache/index.json"])["database"]
    assert db["version"] == spack_db["version"] == "7"
    assert {h: (r["spec"], r["in_buildcache"], r["ref_count"]) for h, r in db["installs"].items()} == {
        h: (r["spec"], r["in_buildcache"], r["ref_count"]) for h, r in spack_db["installs"].items()}
