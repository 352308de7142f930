"""s3:// mirrors against a real S3-compatible server (moto_server) on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(shutil.which("moto_server") is None, reason="moto_server (pip moto[server]) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    port = _free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import requests

    for _ in range(100):
        try:
            requests.get(url, timeout=0.5)
            break
        except requests.RequestException:
            time.sleep(0.1)
    env = {"BINCACHE_S3_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CA_BUNDLE": "", "REQUESTS_CA_BUNDLE": ""}
    import boto3

    boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="cache")
    yield env
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def stack(tmp_path):
    from bincache.demo import build_stack, padded_root

    return build_stack(padded_root(str(tmp_path / "build"), 90))


def test_push_index_and_list_on_s3(stack, s3_server):
    p = run_cli("--root", stack.root, "create", "--unsigned", "s3://cache/builds", "--rebuild-index",
                env=s3_server, check=True)
    assert "3 pushed" in p.stdout
    listed = run_cli("list", "s3://cache/builds", env=s3_server, check=True).stdout
    for name in ("greet", "shout", "hello"):
        assert name in listed
    again = run_cli("--root", stack.root, "create", "--unsigned", "s3://cache/builds", env=s3_server, check=True)
    assert "nothing to push: 3 already in the mirror" in again.stdout


def test_missing_bucket_is_one_clear_line(stack, s3_server):
    p = run_cli("--root", stack.root, "create", "--unsigned", "s3://nobucket/x", env=s3_server)
    assert p.returncode == 1
    assert "nobucket" in p.stderr and "Traceback" not in p.stderr
