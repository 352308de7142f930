"""s3:// mirrors against a real S3-compatible server (moto_server) on loopback."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.conftest import run_cli
from tests.fixtures.moto import moto_server
from tests.fixtures.registry import free_port as _free_port

pytestmark = pytest.mark.skipif(shutil.which("moto_server") is None, reason="moto_server (pip moto[server]) is not installed")


@pytest.fixture
def s3_server():
    with moto_server() as (env, _client):
        yield env


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


# ------------------------------------------------------------------ Spack's per-mirror settings


@pytest.fixture
def no_aws_env(monkeypatch, _isolated_home):
    """Nothing but the mirror's own settings: no AWS_* keys, no endpoint variable, no ~/.aws."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_PROFILE", "BINCACHE_S3_ENDPOINT_URL", "AWS_CONFIG_FILE",
                 "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    # No instance-metadata lookups (seconds of timeouts), one attempt per request.
    return {"AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
            "AWS_DEFAULT_REGION": "us-east-1"}


def test_access_key_and_endpoint_from_the_mirror_entry(stack, s3_server, no_aws_env):
    endpoint = s3_server["BINCACHE_S3_ENDPOINT_URL"]
    env = {**no_aws_env, "CACHE_SECRET": "testing"}
    run_cli("mirror", "add", "--s3-access-key-id", "testing", "--s3-access-key-secret-variable",
            "CACHE_SECRET", "--s3-endpoint-url", endpoint, "s3m", "s3://cache/per-mirror",
            env=env, check=True)
    p = run_cli("--root", stack.root, "create", "--unsigned", "s3m", "--rebuild-index", env=env,
                check=True)
    assert "3 pushed" in p.stdout
    listed = run_cli("list", "s3m", env=env, check=True).stdout
    assert "hello" in listed
    # The secret comes from the variable: without it, one line that says which variable.
    p = run_cli("list", "s3m", env=no_aws_env)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == (
        'error: mirror "s3m": the fetch password comes from $CACHE_SECRET, which is not set')


def test_profile_from_the_mirror_entry(stack, s3_server, no_aws_env, _isolated_home):
    aws = _isolated_home / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    endpoint = s3_server["BINCACHE_S3_ENDPOINT_URL"]
    run_cli("mirror", "add", "--s3-profile", "ci", "--s3-endpoint-url", endpoint, "s3p",
            "s3://cache/by-profile", env=no_aws_env, check=True)
    p = run_cli("--root", stack.root, "create", "--unsigned", "s3p", env=no_aws_env, check=True)
    assert "3 pushed" in p.stdout

    run_cli("mirror", "set", "--s3-profile", "nosuch", "s3p", env=no_aws_env, check=True)
    p = run_cli("list", "s3p", env=no_aws_env)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "error: s3://cache/by-profile: S3 profile 'nosuch' is not in ~/.aws/config or "
        "~/.aws/credentials; add it there or change the mirror's --s3-profile")


def test_s3_errors_say_what_to_do(stack, s3_server, no_aws_env):
    endpoint = s3_server["BINCACHE_S3_ENDPOINT_URL"]
    # No credentials anywhere.
    run_cli("mirror", "add", "--s3-endpoint-url", endpoint, "nocreds", "s3://cache/x",
            env=no_aws_env, check=True)
    p = run_cli("--root", stack.root, "create", "--unsigned", "nocreds", env=no_aws_env)
    assert p.returncode == 1
    [line] = p.stderr.strip().splitlines()
    assert re.fullmatch(r"error: cannot \w+ s3://cache/x\S*: no S3 credentials; give the mirror "
                        r"an access key \(bincache mirror set --s3-access-key-id .*", line)
    assert "NoCredentialsError" not in line
    # Nothing listens at the endpoint.
    dead = f"http://127.0.0.1:{_free_port()}"
    env = {**no_aws_env, "SECRET": "testing"}
    run_cli("mirror", "add", "--s3-access-key-id", "testing", "--s3-access-key-secret-variable",
            "SECRET", "--s3-endpoint-url", dead, "dead", "s3://cache/x", env=env, check=True)
    p = run_cli("--root", stack.root, "create", "--unsigned", "dead", env=env)
    assert p.returncode == 1
    [line] = p.stderr.strip().splitlines()
    assert re.fullmatch(r"error: cannot \w+ s3://cache/x\S*: cannot connect to the S3 endpoint "
                        + re.escape(f"{dead}; check that it runs, or the mirror's endpoint_url "
                                    "(--s3-endpoint-url)"), line)
    assert "testing" not in p.stderr
