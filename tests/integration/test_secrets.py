"""Issue 10, finding 7: no password or token of a URL is ever printed or logged.

Each case gives bincache a URL with a secret in it (user info, or a token-like query value)
against a real server (the TLS registry with basic auth, an http server that refuses access,
boto3 for s3), and checks every line the user sees: errors, warnings, `mirror list`, config.
"""

from __future__ import annotations

import http.server
import threading

import pytest

from bincache.redact import redact, redact_url
from tests.conftest import run_cli

pytest_plugins = ["tests.fixtures.registry"]

SECRET = "hunter2-s3cr3t"


def _no_secret(p, secret=SECRET):
    out = p.stdout + p.stderr
    assert secret not in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize("url,shown", [
    ("oci://alice:PW@127.0.0.1:5000/c", "oci://alice:****@127.0.0.1:5000/c"),
    ("s3://AKIA:PW@bucket/x", "s3://AKIA:****@bucket/x"),
    ("https://h/m?token=PW&x=1", "https://h/m?token=****&x=1"),
    ("https://h/m?X-Amz-Signature=PW&X-Amz-Credential=PW", "https://h/m?X-Amz-Signature=****&X-Amz-Credential=****"),
    ("https://h/m?sv=1&sig=PW#frag", "https://h/m?sv=1&sig=****#frag"),
    ("https://h/m?access_token=PW", "https://h/m?access_token=****"),
    ("https://u@h/m?page=2", "https://u@h/m?page=2"),
    ("alice:PW@ghcr.io/org/cache", "alice:****@ghcr.io/org/cache"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    if "://" in url:  # inside a message, a URL is known by its scheme
        assert redact(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


def test_an_oci_url_with_a_password_is_never_echoed(registry_tls, tmp_path):
    url = f"oci://{registry_tls.username}:{registry_tls.password}@{registry_tls.host}/cache"
    env = registry_tls.env()
    (tmp_path / "r" / "p").mkdir(parents=True)
    run_cli("--root", str(tmp_path / "r"), "register", str(tmp_path / "r" / "p"), "--name", "p",
            "--version", "1", "--no-autopush", check=True)
    for args in (["install", "-m", url, "zlib"], ["list", url], ["create", url],
                 ["update-index", url]):
        p = run_cli("--root", str(tmp_path / "r"), *args, env=env)
        assert p.returncode in (1, 2), p.stdout
        _no_secret(p, f":{registry_tls.password}@")
        assert "oci://alice:****@" in p.stderr, p.stderr


def test_a_wrong_registry_password_is_not_printed(registry_tls, tmp_path):
    env = registry_tls.env() | {"REG_PASSWORD": SECRET}
    run_cli("mirror", "add", "secure", f"oci://{registry_tls.host}/cache", "--oci-username",
            "alice", "--oci-password-variable", "REG_PASSWORD", env=env, check=True)
    p = run_cli("--root", str(tmp_path / "r"), "install", "-m", "secure", "zlib", env=env)
    assert p.returncode == 1
    _no_secret(p)


def test_s3_user_info_is_masked_in_errors_and_warnings(tmp_path):
    p = run_cli("--root", str(tmp_path / "r"), "install", "--unsigned", "-m",
                f"s3://AKIAEXAMPLE:{SECRET}@bucket/cache", "zlib",
                env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                     "BINCACHE_S3_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert p.returncode == 1
    _no_secret(p)
    assert "s3://AKIAEXAMPLE:****@bucket" in p.stderr


@pytest.fixture
def refusing_server():
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(403)
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_token_query_parameters_are_masked_everywhere(refusing_server, tmp_path):
    url = f"{refusing_server}/cache?token={SECRET}&X-Amz-Signature={SECRET}"
    p = run_cli("--root", str(tmp_path / "r"), "install", "--unsigned", "-m", url, "zlib")
    assert p.returncode == 1, p.stderr
    _no_secret(p)
    assert "token=****" in p.stderr
    # A configured mirror: added, listed, shown, used.
    outputs = [run_cli("mirror", "add", "tok", url, check=True),
               run_cli("mirror", "list", check=True),
               run_cli("mirror", "list", "--json", check=True),
               run_cli("config", "get", "mirrors", check=True),
               run_cli("--root", str(tmp_path / "r"), "install", "--unsigned", "-m", "tok", "zlib")]
    for out in outputs:
        _no_secret(out)
    assert "token=****" in outputs[1].stdout
