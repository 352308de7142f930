"""The OCI registry client against real registries (Debian's docker-registry, distribution 2.8):
plain http, TLS + htpasswd basic auth, and Bearer tokens from a token server.

Protocol variants distribution 2.8 never produces (201 on POST, relative Location, Link
pagination, 429/503 with Retry-After, connection resets, redirects to storage hosts) are
served by a small scripted HTTP server, the only stand-in in this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bincache.errors import AuthError, BlobNotFound, IntegrityError, RegistryError, UsageError
from bincache.oci import image as img
from bincache.oci.auth import Credentials, parse_challenges
from bincache.oci.client import (
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    RegistryClient,
    RetryPolicy,
    sha256_digest,
)
from bincache.oci.reference import ImageReference

pytest_plugins = ["tests.fixtures.registry"]
pytestmark = pytest.mark.registry

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def client_for(reg, repo: str = "test/repo", creds: Credentials | None = None,
               **kw) -> tuple[RegistryClient, ImageReference]:
    ref = ImageReference.from_url(f"{reg.url}/{repo}")
    if creds is None and reg.username:
        creds = Credentials(reg.username, reg.password)
    verify = str(reg.ca_file) if reg.ca_file else None
    return RegistryClient(ref, creds, verify=verify, retry_policy=kw.pop("retry", FAST), **kw), ref


def push_image(client: RegistryClient, ref: ImageReference, payload: bytes,
               arch: str = "amd64") -> tuple[str, int]:
    """A tiny real image (one layer of `payload`); returns (manifest digest, size)."""
    layer_digest = sha256_digest(payload)
    client.upload_blob(ref, payload, layer_digest)
    config = img.dumps({"architecture": arch, "os": "linux",
                        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}})
    client.upload_blob(ref, config, sha256_digest(config))
    manifest = img.dumps(img.build_manifest(
        config=Descriptor(img.CONFIG, sha256_digest(config), len(config)),
        layers=[Descriptor(img.LAYER_GZIP, layer_digest, len(payload))]))
    digest, _ = client.put_manifest(ref, manifest, OCI_MANIFEST)
    return digest, len(manifest)


# --- references, tags, challenges (pure) ----------------------------------------------------
@pytest.mark.parametrize("text, domain, name, tag, api", [
    ("ubuntu", "docker.io", "library/ubuntu", "latest", "registry-1.docker.io"),
    ("ubuntu:24.04", "docker.io", "library/ubuntu", "24.04", "registry-1.docker.io"),
    ("spack/ubuntu-jammy", "docker.io", "spack/ubuntu-jammy", "latest", "registry-1.docker.io"),
    ("ghcr.io/Org/Cache:v1", "ghcr.io", "org/cache", "v1", "ghcr.io"),
    ("localhost/x", "localhost", "x", "latest", "localhost"),
    ("127.0.0.1:5000/a/b/c:t_1.x-y", "127.0.0.1:5000", "a/b/c", "t_1.x-y", "127.0.0.1:5000"),
])
def test_reference_expands_short_names_and_lowercases(text, domain, name, tag, api):
    ref = ImageReference.from_string(text)
    assert (ref.domain, ref.name, ref.tag, ref.api_host) == (domain, name, tag, api)


def test_reference_urls_and_schemes():
    digest = "sha256:" + "ab" * 32
    ref = ImageReference.from_url(f"oci+http://127.0.0.1:5000/cache/x@{digest}")
    assert ref.scheme == "http" and ref.digest == digest
    assert ref.manifest_url() == f"http://127.0.0.1:5000/v2/cache/x/manifests/{digest}"
    assert ref.blob_url(digest) == f"http://127.0.0.1:5000/v2/cache/x/blobs/{digest}"
    assert ref.uploads_url() == "http://127.0.0.1:5000/v2/cache/x/blobs/uploads/"
    assert ref.tags_url() == "http://127.0.0.1:5000/v2/cache/x/tags/list"
    assert ImageReference.from_url("oci://ghcr.io/o/c").manifest_url() == \
        "https://ghcr.io/v2/o/c/manifests/latest"
    assert ImageReference.from_url("oci://ghcr.io/o/c", insecure=True).scheme == "http"
    # Location headers may be absolute or relative; both resolve against the registry.
    assert ref.endpoint("/v2/cache/x/blobs/uploads/u1?_state=s") == \
        "http://127.0.0.1:5000/v2/cache/x/blobs/uploads/u1?_state=s"


@pytest.mark.parametrize("bad", ["", "UPPER:tag:x", "a//b", "x@sha256:123", "s3://bucket/x",
                                 "host/name:" + "t" * 129])
def test_reference_rejects_invalid_input_with_a_usage_error(bad):
    with pytest.raises(UsageError, match="invalid image reference|not an OCI|invalid digest"):
        ImageReference.from_url(bad)


def test_tags_are_sanitized_to_the_grammar_and_keep_the_hash():
    h = "tjxrikaqcjryjzyqg56auvjqb653pbox"
    assert img.package_tag("hello", "3.2+x~y", h) == f"hello-3.2_x_y-{h}.spack"
    long = img.package_tag("p" * 150, "1.0", h)
    assert len(long) == 128 and long.endswith(f"-{h}.spack")
    assert img.hash_from_tag(long) == h
    assert img.hash_from_tag("index.spack") is None
    assert img.hash_from_tag("sha256-" + "a" * 64 + ".sig") is None
    assert img.sanitize_tag(".hidden") == "_.hidden"


def test_www_authenticate_challenges_are_parsed():
    [c] = parse_challenges('Bearer realm="https://auth.example/token",service="reg",'
                           'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg",
                        "scope": "repository:a/b:pull,push"}
    both = parse_challenges('Basic realm="x", Bearer realm="https://t/",error="insufficient_scope"')
    assert [c.scheme for c in both] == ["basic", "bearer"]
    assert both[1].params["error"] == "insufficient_scope"


# --- a plain-http registry ------------------------------------------------------------------
def test_blobs_round_trip_and_are_skipped_when_present(registry_http, tmp_path):
    client, ref = client_for(registry_http, "client/blobs")
    data = os.urandom(300_000)
    digest = sha256_digest(data)
    assert not client.blob_exists(ref, digest)
    assert client.upload_blob(ref, data, digest) == "uploaded"
    assert client.upload_blob(ref, data, digest) == "exists"
    dest = tmp_path / "blob"
    client.fetch_blob(ref, digest, dest, len(data))
    assert dest.read_bytes() == data
    # A file upload streams from disk.
    path = tmp_path / "big"
    path.write_bytes(os.urandom(3 << 20))
    file_digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert client.upload_blob(ref, path, file_digest) == "uploaded"
    assert client.stats["PUT upload"] == 2


def test_fetch_refuses_a_blob_damaged_in_registry_storage(registry_http, tmp_path):
    client, ref = client_for(registry_http, "client/damaged")
    data = b"precious bytes" * 1000
    digest = sha256_digest(data)
    client.upload_blob(ref, data, digest)
    stored = registry_http.blob_path(digest)
    stored.write_bytes(b"X" + stored.read_bytes()[1:])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with pytest.raises(IntegrityError, match="does not match its digest"):
        client.fetch_blob(ref, digest, downloads / "blob", len(data))
    assert list(downloads.iterdir()) == []  # no partial file left behind
    with pytest.raises(IntegrityError):
        client.fetch_blob_bytes(ref, digest, len(data))


def test_manifests_and_a_missing_tag(registry_http):
    client, ref = client_for(registry_http, "client/manifests")
    digest, size = push_image(client, ref.with_tag("v1"), b"layer one")
    fetched = client.fetch_manifest(ref.with_tag("v1"))
    assert fetched.digest == digest and fetched.media_type == OCI_MANIFEST
    assert client.fetch_manifest(ref.with_digest(digest)).data == fetched.data
    assert client.manifest_digest(ref.with_tag("v1")) == digest
    assert client.manifest_digest(ref.with_tag("nope")) is None
    with pytest.raises(BlobNotFound, match=rf"{registry_http.host} has no image with tag 'nope' "
                                           "in repository client/manifests"):
        client.fetch_manifest(ref.with_tag("nope"))
    assert client.list_tags(ref) == ["v1"]
    assert client.list_tags(ref.with_name("client/never-pushed")) == []


def test_image_index_resolves_to_the_requested_platform(registry_http):
    client, ref = client_for(registry_http, "client/multiarch")
    amd, amd_size = push_image(client, ref.with_tag("amd"), b"amd64 layer", "amd64")
    arm, arm_size = push_image(client, ref.with_tag("arm"), b"arm64 layer", "arm64")
    index = img.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd, "size": amd_size,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": arm, "size": arm_size,
         "platform": {"architecture": "arm64", "os": "linux"}}]})
    client.put_manifest(ref.with_tag("multi"), index, OCI_INDEX)
    manifest, config = client.fetch_image(ref.with_tag("multi"), Platform("arm64"))
    assert manifest.digest == arm and config["architecture"] == "arm64"
    assert client.resolve_image(ref.with_tag("multi")).digest == amd
    with pytest.raises(RegistryError, match="no linux/s390x variant .*linux/amd64, linux/arm64"):
        client.resolve_image(ref.with_tag("multi"), Platform("s390x"))


def test_cross_repository_mount_copies_nothing(registry_http):
    client, ref = client_for(registry_http, "client/mount-src")
    data = os.urandom(50_000)
    digest = sha256_digest(data)
    client.upload_blob(ref, data, digest)
    target = ref.with_name("client/mount-dst")
    before = client.stats["PUT upload"]
    assert client.upload_blob(target, data, digest, mount_from=[ref.name]) == "mounted"
    assert client.stats["PUT upload"] == before
    assert client.blob_exists(target, digest)
    assert not client.mount_blob(target.with_name("client/other"), sha256_digest(b"absent"),
                                 ref.name)


# --- TLS with basic auth --------------------------------------------------------------------
def test_a_manifest_put_racing_a_reupload_of_its_blob_is_retried(registry_http):
    # distribution 2.8 rewrites a blob's link in place when the blob is uploaded again (two
    # pushers of one dependency, two writers of the same index): a manifest PUT that reads the
    # link in between is answered 400 (DIGEST_INVALID / MANIFEST_BLOB_UNKNOWN), about one in
    # eight here under this churn. It is retried, so no push fails for it.
    churner, ref = client_for(registry_http, "race/link")
    pusher, _ = client_for(registry_http, "race/link",
                           retry=RetryPolicy(attempts=10, base_delay=0.02, max_delay=0.1))
    payload = b"a layer two pushers share"
    layer = Descriptor(img.LAYER_GZIP, sha256_digest(payload), len(payload))
    churner.upload_blob(ref, payload, layer.digest, check_exists=False)
    config = Descriptor(img.CONFIG, sha256_digest(img.EMPTY_JSON), len(img.EMPTY_JSON))
    churner.upload_blob(ref, img.EMPTY_JSON, config.digest, check_exists=False)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            churner.upload_blob(ref, payload, layer.digest, check_exists=False)

    threads = [threading.Thread(target=churn) for _ in range(3)]
    for t in threads:
        t.start()
    pushed = 0
    try:
        # Until the race was met (a PUT sent again) after at least 40, at most 300 PUTs.
        while pushed < 300 and (pushed < 40 or pusher.stats["PUT manifest"] == pushed):
            doc = img.dumps(img.build_manifest(config=config, layers=[layer],
                                               annotations={"n": str(pushed)}))
            pusher.put_manifest(ref.with_tag(f"t{pushed}"), doc, OCI_MANIFEST)
            pushed += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(pusher.list_tags(ref)) == pushed


def test_tls_registry_with_basic_auth(registry_tls):
    client, ref = client_for(registry_tls, "client/tls")
    client.ping()
    digest, _ = push_image(client, ref.with_tag("t"), b"over tls")
    assert client.fetch_manifest(ref.with_tag("t")).digest == digest


def test_wrong_password_is_one_clear_line_naming_the_registry(registry_tls):
    client, ref = client_for(registry_tls, "client/tls", Credentials("alice", "wrong"))
    with pytest.raises(AuthError) as info:
        client.list_tags(ref)
    message = str(info.value)
    assert "\n" not in message and registry_tls.host in message
    assert "wrong username or password" in message and "'alice'" in message
    anonymous = RegistryClient(ref, None, verify=str(registry_tls.ca_file), retry_policy=FAST)
    with pytest.raises(AuthError, match=f"registry {registry_tls.host} requires a username"):
        anonymous.ping()


def test_an_unknown_certificate_authority_is_refused(registry_tls):
    ref = ImageReference.from_url(f"{registry_tls.url}/client/tls")
    client = RegistryClient(ref, Credentials("alice", "secret"), verify=True, retry_policy=FAST)
    with pytest.raises(RegistryError, match="TLS error .*certificate verify failed"):
        client.ping()


# --- Bearer tokens --------------------------------------------------------------------------
def test_token_auth_fetches_one_token_per_scope(registry_token):
    client, ref = client_for(registry_token, "client/token")
    for i in range(5):
        push_image(client, ref.with_tag(f"t{i}"), f"token layer {i}".encode())
    assert client.list_tags(ref) == [f"t{i}" for i in range(5)]
    # Dozens of requests, a handful of tokens: pull and pull+push, cached and reused.
    assert sum(client.stats.values()) > 30
    assert client.auth.token_requests <= 3


def test_token_is_refreshed_when_it_expires(registry_token):
    registry_token.token_server.lifetime = 1
    try:
        client, ref = client_for(registry_token, "client/expiry")
        client.list_tags(ref)
        first = client.auth.token_requests
        client.list_tags(ref)
        assert client.auth.token_requests == first  # still valid: reused
        time.sleep(1.1)
        client.list_tags(ref)
        assert client.auth.token_requests == first + 1
    finally:
        registry_token.token_server.lifetime = 300


def test_token_scope_limits_are_reported(registry_token):
    owner, ref = client_for(registry_token, "client/scoped")
    push_image(owner, ref.with_tag("x"), b"scoped")
    reader, _ = client_for(registry_token, "client/scoped", Credentials("reader", "readonly"))
    assert reader.list_tags(ref) == ["x"]
    with pytest.raises(AuthError, match=f"registry {registry_token.host} refused the credentials "
                                        "for user 'reader': not allowed to pull\\+push client/scoped"):
        reader.upload_blob(ref, b"nope", sha256_digest(b"nope"))
    bad, _ = client_for(registry_token, "client/scoped", Credentials("alice", "wrong"))
    with pytest.raises(AuthError, match="wrong username or password"):
        bad.list_tags(ref)


# --- protocol variants, from a scripted server ----------------------------------------------
Handler = Callable[[BaseHTTPRequestHandler], bool]


class Scripted:
    """An HTTP server answering from a list of handlers; the first that returns True wins."""

    def __init__(self) -> None:
        self.handlers: list[Handler] = []
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                outer.seen.append((self.command, self.path, dict(self.headers)))
                for handler in list(outer.handlers):
                    if handler(self):
                        return
                reply(self, 404, b"{}")

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


def scripted_client(server: Scripted, **kw) -> tuple[RegistryClient, ImageReference]:
    ref = ImageReference.from_url(f"oci+http://{server.host}/s/repo")
    return RegistryClient(ref, kw.pop("creds", None), retry_policy=kw.pop("retry", FAST),
                          **kw), ref


def test_upload_accepts_201_on_post_and_relative_locations(scripted):
    data = b"small blob"
    digest = sha256_digest(data)

    def post_created(h):
        if h.command == "POST" and "digest=" in h.path:
            assert h.body == data
            reply(h, 201, headers={"Location": f"/v2/s/repo/blobs/{digest}"})
            return True
        return False

    scripted.handlers = [post_created]
    client, ref = scripted_client(scripted, single_post_limit=1024)
    assert client.upload_blob(ref, data, digest, check_exists=False) == "uploaded"
    assert [m for m, _, _ in scripted.seen] == ["POST"]

    scripted.seen.clear()
    puts: list[str] = []

    def post_relative(h):
        if h.command == "POST":
            reply(h, 202, headers={"Location": "/v2/s/repo/blobs/uploads/abc?_state=xyz"})
            return True
        if h.command == "PUT":
            puts.append(h.path)
            assert h.headers["Content-Type"] == "application/octet-stream"
            assert h.body == data
            reply(h, 201)
            return True
        return False

    scripted.handlers = [post_relative]
    client, ref = scripted_client(scripted)
    assert client.upload_blob(ref, data, digest, check_exists=False) == "uploaded"
    assert puts == [f"/v2/s/repo/blobs/uploads/abc?_state=xyz&digest={digest.replace(':', '%3A')}"]


def test_tags_follow_link_pagination(scripted):
    pages = {"/v2/s/repo/tags/list?n=2": (["a", "b"], '</v2/s/repo/tags/list?n=2&last=b>; rel="next"'),
             "/v2/s/repo/tags/list?n=2&last=b": (["c", "d"], f'<http://{scripted.host}/v2/s/repo/tags/list?n=2&last=d>; rel="next"'),
             "/v2/s/repo/tags/list?n=2&last=d": (["e"], None)}

    def tags(h):
        if h.path in pages:
            names, link = pages[h.path]
            reply(h, 200, json.dumps({"tags": names}).encode(), {"Link": link} if link else {})
            return True
        return False

    scripted.handlers = [tags]
    client, ref = scripted_client(scripted)
    assert client.list_tags(ref, page_size=2) == ["a", "b", "c", "d", "e"]
    assert client.stats["GET tags"] == 3


def test_retry_after_is_honoured_and_5xx_retried(scripted):
    calls = {"n": 0}

    def busy_then_ok(h):
        calls["n"] += 1
        if calls["n"] == 1:
            reply(h, 429, b"slow down", {"Retry-After": "1"})
        elif calls["n"] == 2:
            reply(h, 503)
        else:
            reply(h, 200, b"{}")
        return True

    scripted.handlers = [busy_then_ok]
    client, _ = scripted_client(scripted)
    start = time.monotonic()
    client.ping()
    assert calls["n"] == 3 and time.monotonic() - start >= 1.0

    scripted.handlers = [lambda h: reply(h, 503) or True]
    client, _ = scripted_client(scripted, retry=RetryPolicy(attempts=2, base_delay=0.01))
    with pytest.raises(RegistryError, match=f"registry {scripted.host} answered HTTP 503"):
        client.ping()


def test_connection_reset_is_retried(scripted):
    calls = {"n": 0}

    def reset_once(h):
        calls["n"] += 1
        if calls["n"] == 1:
            h.close_connection = True
            h.connection.shutdown(2)  # drop the connection without an answer
            return True
        reply(h, 200, b"{}")
        return True

    scripted.handlers = [reset_once]
    client, _ = scripted_client(scripted)
    client.ping()
    assert calls["n"] == 2


def test_credentials_are_not_forwarded_to_a_storage_redirect(scripted):
    storage = Scripted()
    try:
        blob = b"stored elsewhere"
        digest = sha256_digest(blob)
        storage.handlers = [lambda h: reply(h, 200, blob) or True]

        def registry(h):
            if h.headers.get("Authorization") is None:
                reply(h, 401, b"{}", {"WWW-Authenticate": 'Basic realm="r"'})
            elif "/blobs/" in h.path:
                reply(h, 307, headers={"Location": f"http://{storage.host}/data/{digest}"})
            else:
                reply(h, 200, b"{}")
            return True

        scripted.handlers = [registry]
        client, ref = scripted_client(scripted, creds=Credentials("alice", "secret"))
        assert client.fetch_blob_bytes(ref, digest, len(blob)) == blob
        assert any("Authorization" in hdrs for _, _, hdrs in scripted.seen)
        assert storage.seen and all("Authorization" not in hdrs for _, _, hdrs in storage.seen)
    finally:
        storage.close()


def test_http_realm_is_refused_for_an_https_registry():
    from bincache.oci.auth import Authenticator

    auth = Authenticator("ghcr.example", Credentials("u", "p"), insecure=False)

    class R:
        headers = {"WWW-Authenticate": 'Bearer realm="http://evil.example/token",service="x"'}

    with pytest.raises(AuthError, match="not https: refusing to send credentials"):
        auth.handle_unauthorized(R(), ("repository:a:pull",), None)  # type: ignore[arg-type]


@pytest.mark.parametrize("target, arch", [("x86_64", "amd64"), ("x86_64_v3", "amd64"),
                                          ("zen3", "amd64"), ("aarch64", "arm64"),
                                          ("neoverse_v1", "arm64"), ("ppc64le", "ppc64le")])
def test_spack_targets_map_to_oci_architectures(target, arch):
    assert img.goarch(target) == arch


def test_image_env_puts_package_dirs_before_the_base(tmp_path):
    pkg, dep = tmp_path / "pkg", tmp_path / "dep"
    (pkg / "bin").mkdir(parents=True)
    (dep / "lib" / "pkgconfig").mkdir(parents=True)
    env = dict(e.split("=", 1) for e in img.image_env([str(pkg), str(dep)],
                                                      ["PATH=/bin", "LANG=C"]))
    assert env["PATH"] == f"{pkg}/bin:{dep}/bin:/bin"
    assert env["PKG_CONFIG_PATH"] == f"{dep}/lib/pkgconfig"
    assert env["LANG"] == "C" and env["CMAKE_PREFIX_PATH"] == f"{pkg}:{dep}"
    merged = img.merge_env([["PATH=/b/bin:/bin", "LANG=x"], ["PATH=/a/bin:/b/bin:/bin"]],
                           ["PATH=/bin", "LANG=C"])
    assert merged == ["PATH=/b/bin:/a/bin:/bin", "LANG=C"]


def test_plain_http_needs_an_insecure_mirror(registry_http):
    from bincache.mirror import MirrorRef, open_cache

    url = f"oci://{registry_http.host}/client/insecure"
    with pytest.raises(RegistryError, match=f"registry {registry_http.host} does not speak TLS: "
                                            ".*use oci\\+http://"):
        open_cache(MirrorRef(url)).list_package_refs()
    cache = open_cache(MirrorRef(url, insecure=True))
    assert cache.image.scheme == "http" and cache.list_package_refs() == []


def test_download_cache_drops_a_damaged_entry(tmp_path):
    from bincache.oci.blobcache import BlobCache

    cache = BlobCache(tmp_path / "cache")
    data = b"verified once"
    digest = sha256_digest(data)
    cache.add_bytes(digest, data)
    assert cache.copy_to(digest, tmp_path / "out", len(data))
    assert (tmp_path / "out").read_bytes() == data
    cache.path(digest).write_bytes(b"verified twice")  # same size, other bytes
    assert not cache.copy_to(digest, tmp_path / "again", len(data))
    assert not cache.path(digest).exists() and not (tmp_path / "again").exists()
