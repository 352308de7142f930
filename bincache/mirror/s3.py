"""A mirror in an S3 bucket (``s3://bucket/path``), through boto3.

The endpoint and credentials come from boto3's usual sources (environment, ~/.aws) or
``BINCACHE_S3_ENDPOINT_URL`` for S3-compatible servers. An S3 PUT is atomic: readers see the
old object or the new one, never a part.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..errors import BlobNotFound, MirrorError
from ..limits import check_size
from ..redact import redact_url

try:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as e:  # boto3 is optional: only s3:// mirrors need it
    raise ImportError(f"boto3 is not installed ({e})") from None


class S3Backend:
    def __init__(self, url: str, endpoint_url: str | None = None):
        parsed = urlparse(url)
        self.url = redact_url(url.rstrip("/"))  # for messages: never a password
        self.bucket = parsed.netloc
        self.base = parsed.path.strip("/")
        endpoint = endpoint_url or os.environ.get("BINCACHE_S3_ENDPOINT_URL") or None
        self._s3 = boto3.client("s3", endpoint_url=endpoint)

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if self.base else rel

    def _fail(self, action: str, rel: str, e: Exception) -> MirrorError:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "") if isinstance(e, ClientError) else ""
        if code in ("404", "NoSuchKey", "NotFound"):
            return BlobNotFound(f"{self.url}/{rel} does not exist")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return MirrorError(f"{self.url}: access denied ({code}); check the S3 credentials")
        if code == "NoSuchBucket":
            return MirrorError(f"{self.url}: bucket {self.bucket} does not exist")
        return MirrorError(f"cannot {action} {self.url}/{rel}: {code or e.__class__.__name__}")

    def check_writable(self) -> None:
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("reach", "", e) from None

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

    def local_path(self, rel: str) -> None:
        return None

    def write(self, rel: str, data: bytes) -> None:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("write", rel, e) from None

    def put_file(self, rel: str, src: str) -> None:
        try:
            self._s3.upload_file(src, self.bucket, self._key(rel))
        except (ClientError, BotoCoreError) as e:
            raise self._fail("write", rel, e) from None
        except Exception as e:  # boto3's S3UploadFailedError wraps ClientError
            raise MirrorError(f"cannot write {self.url}/{rel}: {e}") from None

    def list(self, rel_dir: str) -> list[str]:
        prefix = self._key(rel_dir).rstrip("/") + "/"
        out = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    out.append(key[len(self.base) + 1:] if self.base else key)
        except (ClientError, BotoCoreError) as e:
            raise self._fail("list", rel_dir, e) from None
        return sorted(out)
