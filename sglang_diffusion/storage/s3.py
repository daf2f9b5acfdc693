"""S3-compatible object storage (AWS S3, MinIO, OSS, COS, ...) through boto3, an optional extra."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import quote

from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import ConfigError


class S3Storage:
    def __init__(self, args: ServerArgs):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("cloud_storage_type=s3 needs boto3: pip install 'sglang-diffusion[s3]'") from None
        if not args.s3_bucket_name:
            raise ConfigError("cloud_storage_type=s3 needs a bucket: s3_bucket_name (or SGLANG_S3_BUCKET_NAME)")
        self.bucket, self.endpoint_url, self.region = args.s3_bucket_name, args.s3_endpoint_url, args.s3_region_name
        self.presigned, self.expiry_s = args.s3_presigned_urls, args.s3_url_expiry_s
        # Bounded: a failed upload keeps the file locally, so waiting long gains nothing. An endpoint that
        # accepts connections but never answers costs at most max_attempts x (connect + read timeout).
        self.max_wait_s = args.s3_max_attempts * (args.s3_connect_timeout_s + args.s3_read_timeout_s)
        self._client = boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=args.s3_access_key_id, aws_secret_access_key=args.s3_secret_access_key,
            config=Config(retries={"total_max_attempts": args.s3_max_attempts, "mode": "standard"},
                          connect_timeout=args.s3_connect_timeout_s, read_timeout=args.s3_read_timeout_s))

    def upload(self, path: Path, key: str) -> None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def url(self, key: str) -> str:
        """A presigned GET URL (private bucket) or the object's public URL."""
        if self.presigned:
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.expiry_s)
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{self.bucket}/{quote(key)}"
        return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{quote(key)}"
