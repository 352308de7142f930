"""`bincache create` into directory mirrors, as a user runs it: real gcc-built stack, real tar."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time

import pytest
import yaml

from tests.conftest import run_cli


def _snapshot(mirror: str) -> dict[str, bytes]:
    out = {}
    for path in glob.glob(os.path.join(mirror, "**"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, mirror)] = f.read()
    return out


def _manifests(mirror: str) -> dict[str, dict]:
    out = {}
    for path in glob.glob(os.path.join(mirror, "v3/manifests/spec/*/*.spec.manifest.json")):
        out[os.path.basename(path)] = json.load(open(path))
    return out


def _tarball(mirror: str, name: str) -> str:
    (path,) = glob.glob(os.path.join(mirror, f"v3/manifests/spec/{name}/*.spec.manifest.json"))
    rec = json.load(open(path))["data"][0]
    return os.path.join(mirror, "blobs", "sha256", rec["checksum"][:2], rec["checksum"])


@pytest.fixture
def stack(tmp_path):
    from bincache.demo import build_stack, padded_root

    return build_stack(padded_root(str(tmp_path / "build"), 100))


def test_create_twice_gives_identical_bytes(stack, tmp_path):
    m1, m2 = str(tmp_path / "m1"), str(tmp_path / "m2")
    run_cli("--root", stack.root, "create", "--unsigned", m1, "--rebuild-index", check=True)
    run_cli("--root", stack.root, "create", "--unsigned", "-j", "2", m2, "--rebuild-index", check=True)
    s1, s2 = _snapshot(m1), _snapshot(m2)
    assert s1 == s2  # tarballs, spec files, manifests and the index
    assert len(_manifests(m1)) == 3


def test_tarballs_written_around_the_page_cache_or_through_it_are_the_same(stack, tmp_path):
    # auto (the default) writes a local mirror's tarballs with O_DIRECT, 0 never, 1 wherever
    # the file system takes it: the mirror is the same, and installs.
    snaps = {}
    for setting in ("auto", "0", "1"):
        mirror = str(tmp_path / f"m-{setting}")
        run_cli("--root", stack.root, "create", "--unsigned", mirror, "--rebuild-index",
                env={"BINCACHE_DIRECT_IO": setting}, check=True)
        snaps[setting] = _snapshot(mirror)
    assert snaps["auto"] == snaps["0"] == snaps["1"]
    dest = str(tmp_path / "dest")
    run_cli("--root", dest, "install", "--unsigned", "--mirror", str(tmp_path / "m-auto"), "hello",
            check=True)
    (hello,) = glob.glob(os.path.join(dest, "*", "hello-*", "bin", "hello"))
    assert subprocess.run([hello], capture_output=True, text=True, check=True).stdout
    p = run_cli("--root", stack.root, "create", "--unsigned", str(tmp_path / "m-bad"),
                env={"BINCACHE_DIRECT_IO": "yes"})
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("error: BINCACHE_DIRECT_IO='yes': use 0 (never), 1 (always) "
                                "or auto")
    assert not os.path.exists(tmp_path / "m-bad" / "blobs")


def test_every_gzip_reader_accepts_the_tarball_and_links_and_modes_come_back(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "hello", check=True)
    tb = _tarball(mirror, "hello")
    # the manifest's checksum and size are the blob's
    (mpath,) = glob.glob(os.path.join(mirror, "v3/manifests/spec/hello/*.json"))
    rec = json.load(open(mpath))["data"][0]
    data = open(tb, "rb").read()
    assert rec["contentLength"] == len(data) and rec["checksum"] == hashlib.sha256(data).hexdigest()
    subprocess.run(["gzip", "-t", tb], check=True)
    listing = subprocess.run(["tar", "-tzf", tb], check=True, capture_output=True, text=True).stdout.split()
    prefix = stack.hello.prefix.lstrip("/")
    assert listing[0] == prefix.split("/")[0] + "/"  # parent directories first
    assert listing[-1] == prefix + "/.spack/binary_distribution"  # buildinfo last
    with tarfile.open(tb, "r:gz") as tf:
        members = {m.name: m for m in tf.getmembers()}
    for m in members.values():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xzf", tb, "-C", str(out)], check=True)
    src, dst = stack.hello.prefix, str(out) + stack.hello.prefix
    for dirpath, dirnames, files in os.walk(src):
        for name in dirnames + files:
            a = os.path.join(dirpath, name)
            b = os.path.join(dst, os.path.relpath(a, src))
            if a.endswith("binary_distribution"):
                continue
            sa, sb = os.lstat(a), os.lstat(b)
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), a
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), a
            if os.path.islink(a):
                assert os.readlink(a) == os.readlink(b)
            elif os.path.isfile(a):
                assert open(a, "rb").read() == open(b, "rb").read()
    # the hardlink came back as a hardlink
    assert os.stat(os.path.join(dst, "bin/hello")).st_ino == os.stat(os.path.join(dst, "libexec/hello-again")).st_ino
    assert members[prefix + "/libexec/hello-again"].islnk()


def test_buildinfo_lists_what_to_relocate_with_offsets_that_hold_the_prefix(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "hello", check=True)
    with tarfile.open(_tarball(mirror, "hello"), "r:gz") as tf:
        info = yaml.safe_load(tf.extractfile(tf.getmembers()[-1]).read())
    # register's record of the dependencies' prefixes is relocated with them
    assert set(info["relocate_textfiles"]) == {"bin/hello-wrapper", "share/hello/README",
                                               ".spack/dependency_prefixes.json"}
    assert info["relocate_binaries"] == ["bin/hello"]
    assert info["relocate_links"] == ["share/hello/motd.txt"]
    assert info["hardlinks_deduped"] is True
    assert info["hash_to_prefix"][stack.greet.hash] == stack.greet.prefix
    bc = info["bincache"]
    exe = open(os.path.join(stack.hello.prefix, "bin/hello"), "rb").read()
    found = set()
    for idx, off in bc["offsets"]["bin/hello"]:
        p = bc["prefixes"][idx].encode()
        assert exe[off:off + len(p)] == p
        found.add(bc["prefixes"][idx])
    # RUNPATH names both libraries' prefixes; a string constant names hello's own
    assert {stack.greet.prefix, stack.shout.prefix, stack.hello.prefix} <= found


def test_only_package_skip_existing_and_force(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    out = run_cli("--root", stack.root, "create", "--unsigned", "--only", "package", mirror, "hello", check=True).stdout
    assert set(_manifests(mirror)) == {f"{stack.hello.spec.dag_name}.spec.manifest.json"}
    out = run_cli("--root", stack.root, "create", "--unsigned", mirror, "hello", "--json", check=True).stdout
    doc = json.loads(out)
    assert {p["name"] for p in doc["pushed"]} == {"greet", "shout"}
    assert [s["name"] for s in doc["skipped"]] == ["hello"]
    before = os.stat(glob.glob(os.path.join(mirror, "v3/manifests/spec/hello/*"))[0]).st_mtime_ns
    time.sleep(0.01)
    doc = json.loads(run_cli("--root", stack.root, "create", "--unsigned", "--force", mirror, "hello", "--json", check=True).stdout)
    assert len(doc["pushed"]) == 3
    assert os.stat(glob.glob(os.path.join(mirror, "v3/manifests/spec/hello/*"))[0]).st_mtime_ns != before


def test_index_and_list(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "--rebuild-index", check=True)
    idx_manifest = json.load(open(os.path.join(mirror, "v3/manifests/index/index.manifest.json")))
    rec = idx_manifest["data"][0]
    assert rec["mediaType"] == "application/vnd.spack.db.v8+json"
    blob = os.path.join(mirror, "blobs/sha256", rec["checksum"][:2], rec["checksum"])
    db = json.load(open(blob))["database"]
    assert db["version"] == "8"
    assert set(db["installs"]) == {stack.greet.hash, stack.shout.hash, stack.hello.hash}
    assert all(r["in_buildcache"] for r in db["installs"].values())
    listed = json.loads(run_cli("list", mirror, "--json", check=True).stdout)
    assert sorted(p["name"] for p in listed) == ["greet", "hello", "shout"]
    hello = next(p for p in listed if p["name"] == "hello")
    assert hello["hash"] == stack.hello.hash and hello["size"] == os.path.getsize(_tarball(mirror, "hello"))
    human = run_cli("list", mirror, check=True).stdout
    assert "hello" in human and stack.hello.hash[:7] in human and "3 packages" in human


def test_update_index_reads_only_new_manifests(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", "--only", "package", mirror, "greet", check=True)
    first = json.loads(run_cli("update-index", mirror, "--json", check=True).stdout)
    assert first == {"packages": 1, "fetched": 1}
    run_cli("--root", stack.root, "create", "--unsigned", mirror, check=True)
    second = json.loads(run_cli("update-index", mirror, "--json", check=True).stdout)
    assert second == {"packages": 3, "fetched": 2}


def test_unknown_spec_and_missing_mirror_name_are_one_line_errors(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    p = run_cli("--root", stack.root, "create", "--unsigned", mirror, "nosuchpkg")
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert 'no installed spec matches "nosuchpkg"' in p.stderr and "Traceback" not in p.stderr
    p = run_cli("--root", stack.root, "create", "--unsigned", "mymirror")
    assert p.returncode == 1 and 'no mirror named "mymirror". Did you mean ./mymirror?' in p.stderr
    assert not os.path.exists(mirror)


def test_fifo_in_a_prefix_is_refused_and_the_mirror_is_left_as_it_was(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "greet", check=True)
    before = _snapshot(mirror)
    fifo = os.path.join(stack.hello.prefix, "share", "a-fifo")
    os.mkfifo(fifo)
    try:
        p = run_cli("--root", stack.root, "create", "--unsigned", mirror, "hello")
    finally:
        os.unlink(fifo)
    assert p.returncode == 1
    assert "a-fifo is a fifo" in p.stderr and "Traceback" not in p.stderr
    after = _snapshot(mirror)
    # shout may have been pushed before hello failed; nothing of hello, nothing partial
    assert not [k for k in after if "hello" in k]
    assert all(after[k] == v for k, v in before.items())
    assert not os.path.exists(os.path.join(mirror, ".bincache-staging")) or not os.listdir(os.path.join(mirror, ".bincache-staging"))


def test_a_dependency_that_fails_keeps_its_dependents_out_of_the_mirror(stack, tmp_path):
    # greet <- shout <- hello: packed concurrently, but committed only after their dependencies.
    mirror = str(tmp_path / "mirror")
    fifo = os.path.join(stack.greet.prefix, "share", "a-fifo")
    os.mkfifo(fifo)
    try:
        p = run_cli("--root", stack.root, "create", "--unsigned", "-j", "3", mirror)
    finally:
        os.unlink(fifo)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "a-fifo is a fifo" in p.stderr
    assert _manifests(mirror) == {}
    blobs = glob.glob(os.path.join(mirror, "blobs", "**"), recursive=True)
    assert not [b for b in blobs if os.path.isfile(b)]  # not even the blobs of shout and hello
    staging = os.path.join(mirror, ".bincache-staging")
    assert not os.path.exists(staging) or not os.listdir(staging)


def test_missing_prefix_and_mirror_path_that_is_a_file(stack, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    p = run_cli("--root", stack.root, "create", "--unsigned", str(afile))
    assert p.returncode == 1 and "is a file, not a directory" in p.stderr
    p = run_cli("--root", str(tmp_path / "nope"), "create", "--unsigned", str(tmp_path / "m"))
    assert p.returncode == 1 and "does not exist" in p.stderr


def _mirror_consistent(mirror: str) -> None:
    """Every manifest names blobs that exist whole (size and checksum)."""
    for m in glob.glob(os.path.join(mirror, "v3/manifests/**/*.json"), recursive=True):
        for rec in json.load(open(m))["data"]:
            blob = os.path.join(mirror, "blobs/sha256", rec["checksum"][:2], rec["checksum"])
            data = open(blob, "rb").read()
            assert len(data) == rec["contentLength"] and hashlib.sha256(data).hexdigest() == rec["checksum"], m


def test_full_disk_is_a_clear_error_and_leaves_no_half_package(stack, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        # A file big enough not to compress into 64 KB.
        with open(os.path.join(stack.hello.prefix, "share", "hello", "random.bin"), "wb") as f:
            f.write(os.urandom(256 * 1024))
        mirror = str(mnt / "mirror")
        p = run_cli("--root", stack.root, "create", "--unsigned", mirror)
        assert p.returncode == 1, p.stdout
        assert "no space left" in p.stderr.lower() and "Traceback" not in p.stderr
        _mirror_consistent(mirror)
        assert not glob.glob(os.path.join(mirror, "v3/manifests/spec/hello/*"))
    finally:
        os.unlink(os.path.join(stack.hello.prefix, "share", "hello", "random.bin"))
        subprocess.run(["umount", str(mnt)], check=False)


def test_interrupted_run_leaves_no_manifest_without_its_blobs(stack, tmp_path):
    big = os.path.join(stack.hello.prefix, "share", "hello", "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(48 * 1024 * 1024))
    mirror = str(tmp_path / "mirror")
    try:
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        import sys
        proc = subprocess.Popen([sys.executable, "-m", "bincache", "--root", stack.root, "create",
                                 "--unsigned", "--compression-level", "9", mirror], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline and not glob.glob(os.path.join(mirror, "v3/manifests/spec/shout/*")):
            time.sleep(0.01)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _mirror_consistent(mirror)
        assert not glob.glob(os.path.join(mirror, "v3/manifests/spec/hello/*")), "the kill came too late to test anything"
        # running again completes the job
        run_cli("--root", stack.root, "create", "--unsigned", mirror, check=True)
        _mirror_consistent(mirror)
        assert len(_manifests(mirror)) == 3
    finally:
        os.unlink(big)


def test_spec_blob_is_the_dag_spec_file_with_the_tarball_checksum(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "hello", check=True)
    (mpath,) = glob.glob(os.path.join(mirror, "v3/manifests/spec/hello/*.json"))
    tar_rec, spec_rec = json.load(open(mpath))["data"]
    # A media type names the version the document is (issue 9): no v6 alias of a v5 blob.
    assert spec_rec["mediaType"] == "application/vnd.spack.spec.v5+json"
    blob = os.path.join(mirror, "blobs/sha256", spec_rec["checksum"][:2], spec_rec["checksum"])
    doc = json.loads(gzip.decompress(open(blob, "rb").read()))
    assert [n["name"] for n in doc["spec"]["nodes"]] == ["hello", "shout", "greet"]
    assert doc["spec"]["_meta"]["version"] == 5
    assert doc["binary_cache_checksum"]["hash"] == tar_rec["checksum"]
    shutil.rmtree(mirror)


def test_unreadable_file_is_named_and_the_mirror_is_left_as_it_was(stack, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's read-anything capability")
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", mirror, "greet", check=True)
    before = _snapshot(mirror)
    secret = os.path.join(stack.hello.prefix, "share", "hello", "secret.txt")
    with open(secret, "w") as f:
        f.write("x")
    os.chmod(secret, 0)
    try:
        import sys
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # Root reads any file; without CAP_DAC_OVERRIDE/READ_SEARCH it meets the mode like anyone.
        p = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                            "--inh-caps=-dac_override,-dac_read_search", sys.executable, "-m", "bincache",
                            "--root", stack.root, "create", "--unsigned", mirror, "hello"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=repo))
    finally:
        os.unlink(secret)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "secret.txt" in p.stderr and "Permission denied" in p.stderr and "Traceback" not in p.stderr
    after = _snapshot(mirror)
    assert not [k for k in after if "hello" in k]
    assert all(after[k] == v for k, v in before.items())


def test_names_of_one_file_become_one_file_and_hardlinks_wherever_they_sit(tmp_path):
    # The walk stats nothing until a file with several links was packed; every later name of
    # it, in the same or a later directory, becomes a hardlink member; modes follow Spack.
    import io
    import tarfile

    from bincache import _native
    from bincache.tar.pack import pack_prefix

    prefix = tmp_path / "opt" / "pkg"
    (prefix / "a").mkdir(parents=True)
    (prefix / "z").mkdir()
    (prefix / "a" / "first").write_bytes(b"shared")
    (prefix / "a" / "first").chmod(0o750)
    os.link(prefix / "a" / "first", prefix / "a" / "second")
    os.link(prefix / "a" / "first", prefix / "z" / "third")
    (prefix / "z" / "plain").write_bytes(b"plain")
    buf = io.BytesIO()
    w = _native.TarWriter(buf, prefixes=[])
    report = pack_prefix(w, str(prefix), [])
    w.finish()
    member = str(prefix).lstrip("/")
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        first = tf.getmember(f"{member}/a/first")
        assert first.isfile() and first.mode == 0o755
        for name in ("a/second", "z/third"):
            m = tf.getmember(f"{member}/{name}")
            assert m.islnk() and m.linkname == first.name and m.mode == 0o755
        assert tf.getmember(f"{member}/z/plain").mode == 0o644
    assert report.hardlinks == {"a/second": "a/first", "z/third": "a/first"}
    assert report.files == 2
