"""zstd tarballs (`--compression zstd`, per-mirror `compression: zstd`): what a user sees.

Real parts: the gcc-built demo stack, the zstd and tar programs, a real registry with skopeo and
umoci; the installed program is run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess

import pytest
import zstandard

from bincache.mirror.layout_v3 import MT_TARBALL_ZSTD, BlobRecord, manifest_bytes
from tests.conftest import run_cli

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@pytest.fixture(scope="module")
def stack(demo_stack_factory):
    return demo_stack_factory


def _tarball(mirror: str, name: str) -> tuple[str, dict, str]:
    (manifest,) = glob.glob(os.path.join(mirror, f"v3/manifests/spec/{name}/*.spec.manifest.json"))
    doc = json.load(open(manifest))
    rec = doc["data"][0]
    return manifest, rec, os.path.join(mirror, "blobs/sha256", rec["checksum"][:2], rec["checksum"])


def _run_hello(root) -> str:
    (hello,) = glob.glob(os.path.join(str(root), "*", "hello-3.2-*", "bin", "hello"))
    proc = subprocess.run([hello], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_zstd_package_round_trips_and_its_program_runs(stack, tmp_path):
    mirror = str(tmp_path / "mirror")
    p = run_cli("--root", stack.root, "create", "--unsigned", "--compression", "zstd", mirror,
                check=True)
    assert "Spack does not" in p.stderr  # the warning: Spack reads gzip only
    _, rec, blob = _tarball(mirror, "hello")
    assert rec["mediaType"] == MT_TARBALL_ZSTD and rec["compression"] == "zstd"
    data = open(blob, "rb").read()
    assert data[:4] == ZSTD_MAGIC and hashlib.sha256(data).hexdigest() == rec["checksum"]
    # Other readers: the zstd program checks every frame's checksum, GNU tar lists it.
    subprocess.run(["zstd", "-q", "-t", blob], check=True)
    listing = subprocess.run(["tar", "--zstd", "-tf", blob], check=True, capture_output=True,
                             text=True).stdout.split()
    assert listing[-1].endswith("/.spack/binary_distribution")
    root = tmp_path / "sw"
    run_cli("--root", str(root), "install", "-m", mirror, "--unsigned", "hello", check=True)
    out = _run_hello(root)
    assert out.startswith("HEY! hello, world") and f"libgreet: {root}" in out


def test_zstd_is_smaller_than_the_default_gzip_and_a_level_is_taken(stack, tmp_path):
    sizes = {}
    for name, args in (("gzip", []), ("zstd", ["--compression", "zstd"]),
                       ("zstd19", ["--compression", "zstd", "--compression-level", "19"])):
        mirror = str(tmp_path / name)
        run_cli("--root", stack.root, "create", "--unsigned", *args, mirror, "hello", check=True)
        sizes[name] = os.path.getsize(_tarball(mirror, "hello")[2])
    assert sizes["zstd"] < sizes["gzip"] and sizes["zstd19"] <= sizes["zstd"]
    bad = run_cli("--root", stack.root, "create", "--unsigned", "--compression", "zstd",
                  "--compression-level", "25", str(tmp_path / "bad"), "hello")
    assert bad.returncode == 1 and "zstd compression level must be 1-19" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_mirror_configured_with_compression_zstd_gets_zstd(stack, tmp_path, _isolated_home):
    mirror = tmp_path / "cache"
    conf = _isolated_home / ".bincache" / "mirrors.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"mirrors:\n  z:\n    url: {mirror}\n    signed: false\n    compression: zstd\n")
    run_cli("--root", stack.root, "create", "z", "greet", check=True)
    assert _tarball(str(mirror), "greet")[1]["compression"] == "zstd"
    # --compression wins over the mirror's setting
    run_cli("--root", stack.root, "create", "--compression", "gzip", "z", "shout", check=True)
    assert _tarball(str(mirror), "shout")[1]["compression"] == "gzip"
    conf.write_text(f"mirrors:\n  z:\n    url: {mirror}\n    compression: lz4\n")
    bad = run_cli("--root", stack.root, "create", "z", "hello")
    assert bad.returncode == 1 and "compression" in bad.stderr and "gzip or zstd" in bad.stderr


def test_layout_v2_refuses_zstd_and_writes_nothing(stack, tmp_path):
    mirror = tmp_path / "v2"
    p = run_cli("--root", stack.root, "create", "--unsigned", "--layout", "v2", "--compression",
                "zstd", str(mirror))
    assert p.returncode == 2 and "Traceback" not in p.stderr  # a usage error
    assert p.stderr.startswith("error:") and "Spack 0.2x" in p.stderr and "gzip" in p.stderr
    assert not glob.glob(str(mirror / "build_cache" / "**" / "*.spack"), recursive=True)


def _forge(mirror: str, name: str, data: bytes) -> None:
    """Replace the package's tarball by ``data`` and point its (unsigned) manifest at it."""
    manifest, _, _ = _tarball(mirror, name)
    doc = json.load(open(manifest))
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(mirror, "blobs/sha256", digest[:2], digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    records = [BlobRecord.from_dict(r) for r in doc["data"]]
    records[0] = BlobRecord(len(data), MT_TARBALL_ZSTD, "zstd", digest)
    with open(manifest, "wb") as f:
        f.write(manifest_bytes(records))


@pytest.mark.parametrize("case", ["truncated", "bomb", "wide-window", "garbage-after"])
def test_hostile_zstd_is_one_error_line_and_installs_nothing(stack, tmp_path, case):
    mirror = str(tmp_path / "mirror")
    run_cli("--root", stack.root, "create", "--unsigned", "--compression", "zstd", mirror,
            "greet", check=True)
    _, _, blob = _tarball(mirror, "greet")
    good = open(blob, "rb").read()
    if case == "truncated":
        data = good[: len(good) - 40]
    elif case == "bomb":
        # 512 MiB of zeros in a few KB: extraction must stream it into the tar reader, not memory.
        data = zstandard.ZstdCompressor(level=1).compress(b"\0" * (64 << 20)) * 8
    elif case == "wide-window":
        params = zstandard.ZstdCompressionParameters(window_log=30, compression_level=1)
        # Streamed (no size known): the frame declares the 1 GiB window it was made with.
        comp = zstandard.ZstdCompressor(compression_params=params).compressobj()
        data = comp.compress(os.urandom(1 << 16)) + comp.flush()
    else:
        data = good + b"not a zstd frame"
    _forge(mirror, "greet", data)
    root = tmp_path / "sw"
    p = subprocess.run(["prlimit", "--as=2000000000", "--", "python3", "-m", "bincache",
                        "--root", str(root), "install", "-m", mirror, "--unsigned", "greet"],
                       capture_output=True, text=True, env=_env())
    assert p.returncode == 1, p.stdout
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    expect = {"truncated": "truncated zstd", "bomb": "", "wide-window": "MAX_ZSTD_WINDOW",
              "garbage-after": "not another frame"}[case]
    assert expect in errors[0]
    assert not glob.glob(str(root / "*" / "greet-*"))


def _env() -> dict:
    from tests.conftest import REPO

    return {**os.environ, "PYTHONPATH": REPO}


pytest_plugins = ["tests.fixtures.registry"]


@pytest.mark.registry
@pytest.mark.skipif(not all(shutil.which(t) for t in ("skopeo", "umoci")),
                    reason="needs skopeo and umoci")
def test_oci_zstd_layers_unpack_with_umoci_and_install(registry_http, stack, tmp_path):
    url = f"{registry_http.url}/zstd/cache"
    run_cli("--root", stack.root, "create", "--unsigned", "--compression", "zstd", url, "hello",
            check=True)
    tag = next(t for t in json.loads(subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{registry_http.host}/zstd/cache"],
        capture_output=True, text=True, check=True).stdout)["Tags"] if t.startswith("hello-"))
    image = f"docker://{registry_http.host}/zstd/cache:{tag}"
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", image],
                                    capture_output=True, text=True, check=True).stdout)
    assert {layer["mediaType"] for layer in raw["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"}
    layout = tmp_path / "layout"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", image, f"oci:{layout}:x"],
                   check=True, capture_output=True)
    un = subprocess.run(["umoci", "unpack", "--image", f"{layout}:x", str(tmp_path / "b1")],
                        capture_output=True, text=True)
    # umoci 0.4.7 (Debian 12) predates zstd layers: it refuses the media type, not the data.
    assert un.returncode != 0 and "not correct mediatype" in un.stderr
    # skopeo 1.9 (containers/image, klauspost's zstd) decompresses every frame to re-gzip it;
    # umoci then unpacks the very same tar.
    gz = tmp_path / "gz-layout"
    subprocess.run(["skopeo", "copy", "--dest-compress-format", "gzip", "--dest-compress",
                    f"oci:{layout}:x", f"oci:{gz}:gz"], check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--image", f"{gz}:gz", str(tmp_path / "b2")],
                   check=True, capture_output=True)
    (hello,) = glob.glob(str(tmp_path / "b2" / "rootfs" / "**" / "bin" / "hello"), recursive=True)
    assert os.path.getsize(hello) > 0
    root = tmp_path / "sw"
    run_cli("--root", str(root), "install", "-m", url, "--unsigned", "hello", check=True)
    assert _run_hello(root).startswith("HEY! hello, world")
