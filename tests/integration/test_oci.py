"""OCI registries as build caches, as a user meets them: `bincache create oci+http://...`,
`list`, `update-index`, `install`, and real clients (skopeo, umoci, chroot) on the images.

Every registry here is Debian's docker-registry (distribution 2.8) started by the test session;
the programs are the gcc-built demo stack, and the tests run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bincache import api
from bincache.errors import BincacheError, BlobNotFound, IntegrityError, SignatureError
from bincache.index import update_index
from bincache.mirror import MirrorRef, open_cache
from bincache.oci import image as img
from bincache.oci.client import (
    OCI_MANIFEST,
    Descriptor,
    RegistryClient,
    RetryPolicy,
    sha256_digest,
)
from bincache.oci.reference import ImageReference
from tests.conftest import run_cli

pytest_plugins = ["tests.fixtures.registry"]
pytestmark = pytest.mark.registry

TOOLS = all(shutil.which(t) for t in ("skopeo", "umoci", "busybox", "gcc"))
needs_tools = pytest.mark.skipif(not TOOLS, reason="needs skopeo, umoci, busybox and gcc")
_counter = iter(range(10_000))


def repo(reg, name: str | None = None) -> str:
    """A fresh repository URL on `reg` (tests share registries, never repositories)."""
    return f"{reg.url}/t{next(_counter)}/{name or 'cache'}"


def tag_of(spec) -> str:
    return img.package_tag(spec.name, spec.version, spec.hash)


def skopeo(*args: str, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def install_from(url: str, root: Path, *specs: str, **kw):
    return api.install(list(specs), mirrors=[kw.pop("ref", None) or MirrorRef(url)],
                       root=str(root), unsigned=kw.pop("unsigned", True), **kw)


def run_hello(prefix: str) -> str:
    proc = subprocess.run([os.path.join(prefix, "bin", "hello")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="session")
def stack(demo_stack_factory):
    return demo_stack_factory


@pytest.fixture(scope="session")
def busybox_image(registry_http, tmp_path_factory) -> str:
    """`<host>/base/busybox:1`: busybox plus the loader and libc, so gcc-built programs run."""
    work = tmp_path_factory.mktemp("busybox")
    layout, bundle = work / "layout", work / "bundle"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:latest"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], check=True,
                   capture_output=True)
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox"), rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sh").symlink_to("busybox")
    for lib in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
        target = rootfs / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(lib), target)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:latest", str(bundle)], check=True)
    subprocess.run(["umoci", "config", "--image", f"{layout}:latest", "--config.env", "PATH=/bin",
                    "--config.cmd", "/bin/sh", "--architecture", "amd64", "--os", "linux"],
                   check=True)
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
           f"docker://{registry_http.host}/base/busybox:1")
    return f"{registry_http.host}/base/busybox:1"


def pull_rootfs(reg, image: str, dest: Path) -> Path:
    """What `docker pull` + create does: skopeo copy to an OCI layout, umoci unpack it."""
    dest.mkdir(parents=True, exist_ok=True)
    layout = dest / "layout"
    skopeo("copy", *_src_args(reg), f"docker://{image}", f"oci:{layout}:x", env=reg.env())
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:x", str(dest / "bundle")],
                   check=True, capture_output=True)
    return dest / "bundle" / "rootfs"


def _src_args(reg) -> list[str]:
    args = ["--src-tls-verify=false"] if reg.kind != "tls" else ["--src-cert-dir",
                                                                  str(reg.ca_file.parent)]
    if reg.username:
        args += ["--src-creds", f"{reg.username}:{reg.password}"]
    return args


# --- push, list, index, install, run --------------------------------------------------------
def test_push_list_index_install_and_run(registry_http, stack, tmp_path):
    url = repo(registry_http)
    out = run_cli("--root", stack.root, "create", "--unsigned", url, "hello", check=True)
    assert "3 pushed" in out.stdout

    listed = run_cli("list", url, check=True)
    assert "has no index" in listed.stderr and "3 packages" in listed.stdout
    updated = run_cli("update-index", url, "--json", check=True)
    assert json.loads(updated.stdout) == {"packages": 3, "fetched": 3}
    listed = run_cli("list", url, "--json", check=True)
    assert sorted(p["name"] for p in json.loads(listed.stdout)) == ["greet", "hello", "shout"]
    assert "no index" not in listed.stderr

    again = run_cli("--root", stack.root, "create", "--unsigned", url, "hello", check=True)
    assert "nothing to push: 3 already in the mirror" in again.stdout

    root = tmp_path / "elsewhere"
    run_cli("--root", str(root), "install", "--mirror", url, "--unsigned", "hello", check=True)
    (hello,) = [str(p.parent.parent) for p in root.glob("*/hello-3.2-*/bin/hello")]
    output = run_hello(hello)
    assert output.startswith("HEY! hello, world")
    assert f"libgreet: {tmp_path / 'elsewhere'}" in output


def test_real_clients_see_tags_layers_env_and_files(registry_http, stack, tmp_path):
    url = repo(registry_http)
    run_cli("--root", stack.root, "create", "--unsigned", url, "hello", "--rebuild-index",
            check=True)
    image = url.split("://", 1)[1]
    tag = tag_of(stack.hello.spec)
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{image}:{tag}").stdout)
    assert {tag, tag_of(stack.greet.spec), tag_of(stack.shout.spec), "index.spack"} <= \
        set(info["RepoTags"])
    assert len(info["Layers"]) == 3  # greet, shout, hello
    env = dict(e.split("=", 1) for e in info["Env"])
    assert env["PATH"].split(":")[0] == f"{stack.hello.prefix}/bin"
    raw = json.loads(skopeo("inspect", "--tls-verify=false", "--config", "--raw",
                            f"docker://{image}:{tag}").stdout)
    assert raw["spec"]["nodes"][0]["hash"] == stack.hello.hash
    assert raw["rootfs"]["diff_ids"] and raw["binary_cache_checksum"]["hash_algorithm"] == "sha256"

    rootfs = pull_rootfs(registry_http, f"{image}:{tag}", tmp_path / "pulled")
    for inst in (stack.greet, stack.shout, stack.hello):
        assert (rootfs / inst.prefix.lstrip("/") / ".spack" / "spec.json").is_file()
    program = rootfs / stack.hello.prefix.lstrip("/") / "bin" / "hello"
    assert program.read_bytes() == Path(stack.program).read_bytes()


@needs_tools
def test_base_image_makes_a_runnable_image(registry_http, busybox_image, stack, tmp_path):
    url = repo(registry_http)
    run_cli("--root", stack.root, "create", "--unsigned", url, "hello",
            "--base-image", busybox_image, "--tag", "whole-env", check=True)
    image = url.split("://", 1)[1]
    base = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{busybox_image}").stdout)
    for tag in (tag_of(stack.hello.spec), "whole-env"):
        info = json.loads(skopeo("inspect", "--tls-verify=false",
                                 f"docker://{image}:{tag}").stdout)
        assert info["Layers"][: len(base["Layers"])] == base["Layers"]
        assert len(info["Layers"]) == len(base["Layers"]) + 3
        env = dict(e.split("=", 1) for e in info["Env"])
        assert env["PATH"].endswith(":/bin")  # the base's PATH, behind the packages'
    rootfs = pull_rootfs(registry_http, f"{image}:whole-env", tmp_path / "pulled")
    proc = subprocess.run(["chroot", str(rootfs), f"{stack.hello.prefix}/bin/hello", "container"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("HEY! hello, container")
    # The base's shell is there too: the image is a whole system, not just files.
    proc = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c",
                           f"PATH={stack.hello.prefix}/bin:/bin hello sh"],
                          capture_output=True, text=True)
    assert proc.stdout.startswith("HEY! hello, sh"), proc.stderr


# --- auth -----------------------------------------------------------------------------------
def test_tls_registry_with_credentials_from_mirror_config(registry_tls, stack, tmp_path):
    url = repo(registry_tls)
    env = registry_tls.env() | {"REG_PASSWORD": registry_tls.password}
    run_cli("mirror", "add", "secure", url, "--oci-username", registry_tls.username,
            "--oci-password-variable", "REG_PASSWORD", env=env, check=True)
    run_cli("--root", stack.root, "create", "--unsigned", "secure", "greet",
            "--rebuild-index", env=env, check=True)
    listed = run_cli("list", "secure", "--json", env=env, check=True)
    assert [p["name"] for p in json.loads(listed.stdout)] == ["greet"]

    bad = run_cli("--root", stack.root, "create", "--unsigned", "secure", "greet", "--force",
                  env=env | {"REG_PASSWORD": "wrong-password"})
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines == [f"error: registry {registry_tls.host} refused the credentials for user "
                     "'alice': wrong username or password"]
    assert "wrong-password" not in bad.stderr + bad.stdout


def test_token_registry_push_sign_and_verified_install(registry_token, stack, tmp_path):
    from bincache import signing

    key = signing.create_key("OCI Signer", "oci@example.com")
    url = repo(registry_token)
    ref = MirrorRef(url, username="alice", password="secret")
    pushed = api.push(ref, ["hello"], root=stack.root, signed=True)
    assert len(pushed.pushed) == 3
    cache = open_cache(ref)
    tags = cache.client.list_tags(cache.image)
    digest = cache.client.manifest_digest(cache.image.with_tag(tag_of(stack.hello.spec)))
    # distribution 2.8 has no referrers API: the signature sits at the fallback tag.
    assert img.signature_tag(digest) in tags
    manifest = cache.fetch_manifest(stack.hello.spec)
    assert manifest.signed and b"BEGIN PGP SIGNED MESSAGE" in manifest.raw

    reader = MirrorRef(url, username="reader", password="readonly")
    result = install_from(url, tmp_path / "signed", "hello", ref=reader, unsigned=False)
    hello = next(p.prefix for p in result.installed if p.spec.name == "hello")
    assert run_hello(hello).startswith("HEY! hello, world")

    # The same signature from a key that is no longer trusted: refused, nothing installed.
    signing.set_trust([key.fingerprint], False)
    with pytest.raises(BincacheError, match="NOT trusted"):
        install_from(url, tmp_path / "untrusted", "hello", ref=reader, unsigned=False)
    assert not list((tmp_path / "untrusted").rglob("spec.json"))

    # A signature moved onto another image is refused, whoever signed it.
    greet_digest = cache.client.manifest_digest(cache.image.with_tag(tag_of(stack.greet.spec)))
    moved = cache.client.fetch_manifest(cache.image.with_tag(img.signature_tag(digest)))
    cache.client.put_manifest(cache.image.with_tag(img.signature_tag(greet_digest)), moved.data,
                              OCI_MANIFEST)
    # (Checked on the signed text, so even an install that skips verification refuses it.)
    with pytest.raises(SignatureError, match="was made for another image"):
        install_from(url, tmp_path / "moved", "greet", ref=reader, unsigned=True)
    assert not list((tmp_path / "moved").rglob("spec.json"))


def test_unsigned_package_is_refused_unless_allowed(registry_http, stack, tmp_path):
    url = repo(registry_http)
    api.push(MirrorRef(url), ["greet"], root=stack.root, signed=False)
    with pytest.raises(Exception, match="not signed: refusing to install"):
        install_from(url, tmp_path / "strict", "greet", unsigned=False)
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").rglob("spec.json"))


# --- faults, produced for real --------------------------------------------------------------
def test_missing_tag_is_a_clear_error(registry_http, stack):
    url = repo(registry_http)
    out = run_cli("--root", stack.root, "create", "--unsigned", url, "greet",
                  "--base-image", f"{registry_http.host}/base/nothing:1")
    assert out.returncode == 1
    assert out.stderr.strip() == (f"error: registry {registry_http.host} has no image with tag "
                                  "'1' in repository base/nothing (manifest unknown)")
    cache = open_cache(MirrorRef(url))
    with pytest.raises(BlobNotFound, match=f"has no package greet@1.0/{stack.greet.hash[:7]}"):
        cache.fetch_manifest(stack.greet.spec)


def test_corrupted_blob_in_registry_storage_is_refused(registry_factory, stack, tmp_path):
    registry_http = registry_factory("http")  # its storage gets damaged: not a shared one
    url = repo(registry_http)
    api.push(MirrorRef(url), ["greet"], root=stack.root, signed=False)
    cache = open_cache(MirrorRef(url))
    record = cache.fetch_manifest(stack.greet.spec).tarball
    stored = registry_http.blob_path("sha256:" + record.checksum)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    target = tmp_path / "victim"
    with pytest.raises(BincacheError, match="does not match its digest"):
        install_from(url, target, "greet")
    with pytest.raises(IntegrityError, match="does not match its digest"):
        cache.fetch_blob(record, str(tmp_path / "tarball"))
    assert not (tmp_path / "tarball").exists()
    assert not list(target.rglob("spec.json"))  # nothing half-installed


def test_download_cache_serves_verified_blobs_again(registry_factory, stack, tmp_path,
                                                   monkeypatch):
    registry_http = registry_factory("http")  # it loses a blob: not a shared one
    monkeypatch.setenv("BINCACHE_CACHE_DIR", str(tmp_path / "dlcache"))
    url = repo(registry_http)
    api.push(MirrorRef(url), ["greet"], root=stack.root, signed=False)
    install_from(url, tmp_path / "one", "greet")
    record = open_cache(MirrorRef(url)).fetch_manifest(stack.greet.spec).tarball
    assert (tmp_path / "dlcache" / "blobs" / "sha256" / record.checksum).is_file()
    # The registry loses the blob: the second install does not need it.
    registry_http.blob_path("sha256:" + record.checksum).unlink()
    result = install_from(url, tmp_path / "two", "greet")
    assert [p.spec.name for p in result.installed] == ["greet"]


@pytest.mark.slow
def test_registry_killed_mid_push_then_rerun_uploads_only_what_is_missing(
        registry_factory, tmp_path):
    from bincache.demo import build_stack, padded_root
    from bincache.tree import register_prefix

    reg = registry_factory("http")
    stack = build_stack(padded_root(str(tmp_path / "build"), 100))
    big = Path(stack.root) / "linux-x86_64" / "big-1.0"
    (big / "share").mkdir(parents=True)
    with open(big / "share" / "noise.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1 << 20))  # incompressible: a slow upload to interrupt
    register_prefix(str(big), "big", "1.0", deps=[stack.hello.prefix], root=stack.root)
    url = repo(reg)
    env = {"BINCACHE_OCI_RETRIES": "1"}
    hello_tag = tag_of(stack.hello.spec)
    probe = RegistryClient(ImageReference.from_url(url), retry_policy=RetryPolicy(attempts=1))
    killed = threading.Event()

    def kill_when_hello_is_in() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                # Only a tag that resolves is committed (distribution lists a tag as soon as
                # its directory exists, before the link inside is written).
                if probe.manifest_digest(ImageReference.from_url(url).with_tag(hello_tag)):
                    reg.stop()
                    killed.set()
                    return
            except Exception:
                pass
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_when_hello_is_in)
    watcher.start()
    first = run_cli("--root", stack.root, "create", "--unsigned", url, "big", env=env)
    watcher.join()
    assert killed.is_set()
    assert first.returncode == 1
    assert len(first.stderr.strip().splitlines()) == 1
    assert f"registry {reg.host}" in first.stderr

    reg.start()
    cache = open_cache(MirrorRef(url))
    from bincache import create
    from bincache.tree import InstallTree

    tree = InstallTree(stack.root)
    result = create.push(tree, tree.select(["big"]), cache)
    assert sorted(s.name for s in result.skipped) == ["greet", "hello", "shout"]
    assert [p.spec.name for p in result.pushed] == ["big"]
    # Only big's tarball (unless it made it before the kill) and its config went up.
    assert 1 <= cache.client.stats["PUT upload"] <= 2
    assert cache.client.stats["PUT manifest"] == 1
    installed = install_from(url, tmp_path / "after", "big")
    assert sorted(p.spec.name for p in installed.installed) == ["big", "greet", "hello", "shout"]


# --- scale ----------------------------------------------------------------------------------
def _tiny_package(i: int, layer: Descriptor) -> tuple[str, bytes, bytes]:
    """(tag, config, manifest) of a tiny package image number `i`."""
    from bincache.spec import Spec, make_node, specfile_bytes

    spec = Spec.from_node(make_node(f"pkg{i}", "1.0", [], {"platform": "linux",
                                                          "platform_os": "debian12",
                                                          "target": "x86_64"}))
    config = img.dumps(img.build_config(
        layers=[img.Layer(layer.digest, layer.digest, layer.size)], env=[],
        spack_keys=img.spack_config_keys(specfile_bytes([spec]), layer.digest)))
    manifest = img.dumps(img.build_manifest(
        config=Descriptor(img.CONFIG, sha256_digest(config), len(config)), layers=[layer]))
    return tag_of(spec), config, manifest


@pytest.mark.slow
def test_update_index_over_2000_tags_then_one_new_push(registry_factory, capsys):
    reg = registry_factory("http")
    url = f"{reg.url}/scale/cache"
    image = ImageReference.from_url(url)
    client = RegistryClient(image, pool_size=16)
    payload = b"tiny layer"
    layer = Descriptor(img.LAYER_GZIP, sha256_digest(payload), len(payload))
    client.upload_blob(image, payload, layer.digest)
    # 2,000 pushes through the API take 25-45 s here: the images are written into the
    # registry's storage instead (it serves them like pushed ones); the new one is pushed.
    for i in range(2000):
        tag, config, manifest = _tiny_package(i, layer)
        reg.seed_image("scale/cache", tag, manifest, {sha256_digest(config): config})
    assert len(client.list_tags(image)) == 2000

    cache = open_cache(MirrorRef(url))
    t0 = time.perf_counter()
    index, fetched = update_index(cache, jobs=16)
    t_first = time.perf_counter() - t0
    assert fetched == 2000 and len(index.packages()) == 2000

    tag, config, manifest = _tiny_package(2000, layer)
    client.upload_blob(image, config, sha256_digest(config))
    client.put_manifest(image.with_tag(tag), manifest, OCI_MANIFEST)
    cache = open_cache(MirrorRef(url))
    t0 = time.perf_counter()
    index, fetched = update_index(cache, jobs=16)
    t_second = time.perf_counter() - t0
    assert fetched == 1 and len(index.packages()) == 2001
    # One new tag: its manifest and config - not 2,001 configs; the index itself comes from the
    # local index cache (this machine wrote it), checked with a HEAD of index.spack.
    assert cache.client.stats["GET blob"] == 1  # the new config
    assert cache.client.stats["GET manifest"] == 1  # the new tag
    with capsys.disabled():
        print(f"\n[oci scale] update-index over 2000 tags {t_first:.1f}s, "
              f"after one new push {t_second:.2f}s")


@needs_tools
def test_base_layers_are_mounted_on_the_same_registry_and_copied_from_another(
        registry_http, registry_factory, busybox_image, stack):
    from bincache import create
    from bincache.tree import InstallTree

    tree = InstallTree(stack.root)
    base_layers = json.loads(skopeo("inspect", "--tls-verify=false",
                                    f"docker://{busybox_image}").stdout)["Layers"]
    for reg, how in ((registry_http, "mounted"), (registry_factory("http"), "copied")):
        cache = open_cache(MirrorRef(repo(reg)))
        cache.configure_push(base_image=f"oci+http://{busybox_image}")
        create.push(tree, tree.select(["greet"]), cache)
        manifest = cache.client.fetch_manifest(cache.tag_ref("greet", "1.0", stack.greet.hash))
        assert [d["digest"] for d in manifest.json()["layers"]][:-1] == base_layers
        # greet's tarball and config always go up; the base's layers only when copied.
        uploads = cache.client.stats["PUT upload"]
        assert uploads == (2 if how == "mounted" else 2 + len(base_layers)), how


def test_tag_names_a_whole_environment_even_when_everything_was_pushed(registry_http, stack):
    from bincache import create
    from bincache.tree import InstallTree

    url = repo(registry_http)
    tree = InstallTree(stack.root)
    create.push(tree, tree.select(["hello"]), open_cache(MirrorRef(url)))
    cache = open_cache(MirrorRef(url))
    cache.configure_push(tag="my-env")
    result = create.push(tree, tree.select(["hello"]), cache)
    assert not result.pushed and len(result.skipped) == 3
    cache.finish_push(result)
    info = json.loads(skopeo("inspect", "--tls-verify=false",
                             f"docker://{url.split('://', 1)[1]}:my-env").stdout)
    hello = json.loads(skopeo("inspect", "--tls-verify=false",
                              f"docker://{url.split('://', 1)[1]}:{tag_of(stack.hello.spec)}"
                              ).stdout)
    assert sorted(info["Layers"]) == sorted(hello["Layers"])
    path = dict(e.split("=", 1) for e in info["Env"])["PATH"].split(":")
    assert {f"{i.prefix}/bin" for i in (stack.greet, stack.shout, stack.hello)} <= set(path)


def test_a_tag_left_half_written_by_a_crash_is_pushed_again(registry_factory, stack,
                                                            monkeypatch):
    monkeypatch.setenv("BINCACHE_OCI_RETRIES", "1")
    reg = registry_factory("http")
    url = repo(reg)
    api.push(MirrorRef(url), ["greet"], root=stack.root, signed=False)
    # What a registry killed between creating a tag's directory and writing its link leaves.
    name = url.split("/", 3)[3]
    (reg.storage / "repositories" / name / "_manifests" / "tags" / tag_of(stack.greet.spec)
     / "current" / "link").unlink()
    assert not open_cache(MirrorRef(url)).has_package(stack.greet.spec)
    again = api.push(MirrorRef(url), ["greet"], root=stack.root, signed=False)
    assert [p.spec.name for p in again.pushed] == ["greet"]
    assert open_cache(MirrorRef(url)).has_package(stack.greet.spec)
