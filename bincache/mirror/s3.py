"""A mirror in an S3 bucket (``s3://bucket/path``), through boto3.

Per mirror, as Spack spells it: ``access_pair`` (access key id and secret), ``profile`` (a
profile of ~/.aws/config) and ``endpoint_url`` (an S3-compatible server); otherwise boto3's
usual sources (environment, ~/.aws), and ``BINCACHE_S3_ENDPOINT_URL``. An S3 PUT is atomic:
readers see the old object or the new one, never a part.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import unquote, urlparse

from ..config import mask_url
from ..errors import BlobNotFound, MirrorError
from ..limits import check_size
from ..redact import redact, redact_url

if TYPE_CHECKING:
    from .base import DirListing

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
    )
except ImportError as e:  # boto3 is optional: only s3:// mirrors need it
    raise ImportError(f"boto3 is not installed ({e})") from None

#: Connections per client (one client per thread; boto3's transfers use up to 10 threads).
_CONFIG = Config(max_pool_connections=16)
#: Below this size a file goes up in one PutObject (boto3's own multipart threshold: 8 MiB).
_MULTIPART = 8 << 20

_CREDENTIALS_HINT = (
    "give the mirror an access key (bincache mirror set --s3-access-key-id ID "
    "--s3-access-key-secret-variable VAR NAME) or a profile (--s3-profile), or set "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)


class S3Backend:
    """Objects below a key prefix of a bucket."""

    transport: ClassVar[str] = "s3"
    writable: ClassVar[bool] = True
    root = None  # no local directory: readers fetch, writers upload

    def __init__(
        self,
        url: str,
        endpoint_url: str | None = None,
        profile: str | None = None,
        access_key: tuple[str, str] | None = None,
    ):
        parsed = urlparse(url)
        self.url = redact_url(url.rstrip("/"))  # for messages: never a password
        # s3://KEY:SECRET@bucket/path: the user info is credentials, never part of the bucket.
        userinfo, _, self.bucket = parsed.netloc.rpartition("@")
        if access_key is None and ":" in userinfo:
            key_id, _, secret = userinfo.partition(":")
            access_key = (unquote(key_id), unquote(secret))
        self.base = parsed.path.strip("/")
        self.endpoint = endpoint_url or os.environ.get("BINCACHE_S3_ENDPOINT_URL") or None
        self._keys = {}
        if access_key is not None:
            self._keys = {"aws_access_key_id": access_key[0], "aws_secret_access_key": access_key[1]}
        self._local = threading.local()
        self._writable = False
        #: Requests sent, by S3 operation ("PutObject", "HeadObject", ...): what a push costs.
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._clients_lock = threading.Lock()
        self._owners: dict[int, object] = {}  # thread ident -> its client
        try:
            # One session (not thread-safe: clients are made from it under the lock); its
            # service model is loaded once, so each further client costs ~30 ms, not ~400.
            self._session = boto3.session.Session(profile_name=profile or None)
        except ProfileNotFound:
            raise self._no_profile(profile) from None
        self._profile = profile
        self._local.client = self._client()  # a bad endpoint is reported now, not later
        self._owners[threading.get_ident()] = self._local.client

    def _no_profile(self, profile: str | None) -> MirrorError:
        return MirrorError(
            f"{self.url}: S3 profile {profile!r} is not in ~/.aws/config or "
            "~/.aws/credentials; add it there or change the mirror's --s3-profile")

    @property
    def _s3(self):
        """This thread's client, with its own connection pool kept open between requests.

        A thread that ends leaves its client to the next new thread (a push's workers, then
        the presence checks), so clients are made once per concurrent thread, not per task.
        """
        client = getattr(self._local, "client", None)
        if client is None:
            me = threading.get_ident()
            with self._clients_lock:
                alive = {t.ident for t in threading.enumerate()}
                # An ident of a thread that ended (or reused by this new thread): free to take.
                free = [i for i in self._owners if i == me or i not in alive]
                client = self._owners.pop(free[0]) if free else self._client()
                self._owners[me] = client
            self._local.client = client
        return client

    def _client(self):
        try:
            client = self._session.client("s3", endpoint_url=self.endpoint, config=_CONFIG,
                                          **self._keys)
        except ProfileNotFound:
            raise self._no_profile(self._profile) from None
        except ValueError:  # an endpoint_url that is not a URL
            raise MirrorError(
                f"{self.url}: S3 endpoint {mask_url(str(self.endpoint))!r} is not usable; "
                "give --s3-endpoint-url as http(s)://HOST[:PORT]"
            ) from None
        client.meta.events.register("before-send.s3", self._count)
        return client

    def _count(self, event_name: str = "", **_kwargs) -> None:
        with self._stats_lock:
            self.stats[event_name.rsplit(".", 1)[-1]] += 1

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if self.base else rel

    def _fail(self, action: str, rel: str, e: Exception) -> MirrorError:
        """One line that says what to do, never botocore's class name or a credential."""
        where = f"{self.url}/{rel}" if rel else self.url
        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return MirrorError(f"cannot {action} {where}: no S3 credentials; {_CREDENTIALS_HINT}")
        if isinstance(e, EndpointConnectionError):
            endpoint = mask_url(self.endpoint) if self.endpoint else "AWS"
            return MirrorError(
                f"cannot {action} {where}: cannot connect to the S3 endpoint {endpoint}; check "
                "that it runs, or the mirror's endpoint_url (--s3-endpoint-url)"
            )
        err = getattr(e, "response", {}).get("Error", {}) if isinstance(e, ClientError) else {}
        code = str(err.get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            return BlobNotFound(f"{where} does not exist")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken"):
            return MirrorError(
                f"{self.url}: the S3 server refused the credentials ({code}); {_CREDENTIALS_HINT}"
            )
        if code in ("403", "AccessDenied", "AllAccessDisabled"):
            return MirrorError(
                f"{self.url}: access denied; the S3 credentials in use may not {action} "
                f"bucket {self.bucket} (check the bucket policy, or use other credentials)"
            )
        if code == "NoSuchBucket":
            return MirrorError(
                f"{self.url}: bucket {self.bucket} does not exist; create it, or check the "
                "mirror URL and endpoint_url"
            )
        detail = str(err.get("Message") or code) if err else str(e)
        return MirrorError(f"cannot {action} {where}: {redact(detail) or 'S3 request failed'}")

    def check_writable(self) -> None:
        """The bucket answers (once per backend: a push of N packages asks once, not N times)."""
        with self._check_lock:  # the workers of a push start together: one of them asks
            if self._writable:
                return
            try:
                self._s3.head_bucket(Bucket=self.bucket)
            except (ClientError, BotoCoreError) as e:
                raise self._fail("reach", "", e) from None
            self._writable = True

    def exists(self, rel: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(rel))
            return True
        except ClientError as e:
            if isinstance(self._fail("check", rel, e), BlobNotFound):
                return False
            raise self._fail("check", rel, e) from None
        except BotoCoreError as e:
            raise self._fail("check", rel, e) from None

    def read(self, rel: str, max_size: int | None = None) -> bytes:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"]
            data = body.read() if max_size is None else body.read(max_size + 1)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("read", rel, e) from None
        if max_size is not None:
            check_size(len(data), max_size, f"{self.url}/{rel}")
        return data

    def get_file(self, rel: str, dest: str, max_size: int | None = None) -> None:
        # boto3's parallel download: its size is checked against the manifest right after.
        try:
            self._s3.download_file(self.bucket, self._key(rel), dest)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("read", rel, e) from None

    def local_path(self, rel: str) -> str | None:
        return None

    def write(self, rel: str, data: bytes) -> None:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("write", rel, e) from None

    # -- conditional writes (the index root): S3's If-Match / If-None-Match --------------------
    def read_tagged(self, rel: str, max_size: int | None = None,
                    known: str | None = None) -> tuple[bytes | None, str] | None:
        """(bytes, ETag), or None when absent; (None, ETag) when it still has ETag ``known``."""
        extra = {"IfNoneMatch": known} if known else {}
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self._key(rel), **extra)
            data = obj["Body"].read() if max_size is None else obj["Body"].read(max_size + 1)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if known and (status == 304 or str(e.response.get("Error", {}).get("Code")) == "304"):
                return None, known
            err = self._fail("read", rel, e)
            if isinstance(err, BlobNotFound):
                return None
            raise err from None
        except BotoCoreError as e:
            raise self._fail("read", rel, e) from None
        if max_size is not None:
            check_size(len(data), max_size, f"{self.url}/{rel}")
        return data, obj["ETag"]

    def write_if(self, rel: str, data: bytes, expect: str | None) -> bool:
        """Write only if the object still has ETag ``expect`` (None: only if absent)."""
        cond = {"IfMatch": expect} if expect else {"IfNoneMatch": "*"}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, **cond)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                        "NoSuchKey"):
                return False
            raise self._fail("write", rel, e) from None
        except BotoCoreError as e:
            raise self._fail("write", rel, e) from None
        return True

    def put_file(self, rel: str, src: str) -> None:
        try:
            if os.path.getsize(src) < _MULTIPART:
                # One PutObject from this thread: boto3's transfer manager would start a pool
                # of threads for what is one request anyway.
                with open(src, "rb") as f:
                    self._s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=f)
                return
            self._s3.upload_file(src, self.bucket, self._key(rel))
        except (ClientError, BotoCoreError) as e:
            raise self._fail("write", rel, e) from None
        except Exception as e:  # boto3's S3UploadFailedError wraps ClientError
            cause = e.__context__ if isinstance(e.__context__, (ClientError, BotoCoreError)) else e
            raise self._fail("write", rel, cause) from None

    def delete(self, rel: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(rel))
        except (ClientError, BotoCoreError) as e:
            raise self._fail("delete", rel, e) from None

    def list_stat(self, rel_dir: str) -> list[tuple[str, float, int]]:
        """(path, modification time, size) of the objects below a prefix, sorted by path."""
        prefix = self._key(rel_dir).rstrip("/") + "/"
        out = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    out.append((key[len(self.base) + 1:] if self.base else key,
                                obj["LastModified"].timestamp(), int(obj["Size"])))
        except (ClientError, BotoCoreError) as e:
            raise self._fail("list", rel_dir, e) from None
        return sorted(out)

    def list_dirs(self, rel_dir: str, since: float = -math.inf,
                  clock_dir: str | None = None) -> DirListing | None:
        return None  # keys, not directories: no change time to compare

    def list(self, rel_dir: str) -> list[str]:
        return [rel for rel, _, _ in self.list_stat(rel_dir)]
