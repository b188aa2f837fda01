"""Where a store lives: a local folder, or an object-store URL (`s3://bucket/path`) through fsspec.

Local stores are read with os calls (the direct shard path's pread). S3 stores go through
`s3fs`: zarr opens them with its FsspecStore, and the direct shard reader makes ranged GETs.
Credentials and endpoint come from the standard AWS settings as boto3 reads them
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws/...), with the
endpoint of an S3-compatible service in AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL.

C2F_CACHE_DIR, when set, is a local read cache for remote stores: a shard is downloaded whole on
first use and read locally after that. Shards of committed blocks never change; after
rebuilding a block of a remote store, empty the cache.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Location", "StorageError", "as_location", "is_remote"]

CACHE_ENV = "C2F_CACHE_DIR"
REMOTE_PROTOCOLS = ("s3",)


class StorageError(ValueError):
    """A store location that cannot be used: what is wrong and what to do."""


def is_remote(path: str | Path | "Location") -> bool:
    if isinstance(path, Location):
        return path.fs is not None
    return "://" in str(path) and not str(path).startswith("file://")


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_options() -> dict:
    """s3fs keywords from the environment (botocore finds the credentials itself)."""
    endpoint = _endpoint()
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def _check_s3(url: str) -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError as err:
        raise StorageError(
            f"{url}: S3 stores need s3fs, which does not import here ({err}); install it with "
            "`pip install 'c2f[s3]'` (scripts/install.sh does)") from None
    import botocore.session

    if botocore.session.Session().get_credentials() is None:
        raise StorageError(
            f"{url}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(and AWS_ENDPOINT_URL for an S3-compatible service), or AWS_PROFILE")


def _filesystem(protocol: str, url: str):
    if protocol not in REMOTE_PROTOCOLS:
        raise StorageError(f"{url}: unsupported storage {protocol}://; use a local path or s3://bucket/path")
    _check_s3(url)
    import fsspec

    return fsspec.filesystem(protocol, **s3_options())  # instances are cached per process


@dataclass(frozen=True)
class Location:
    """A file or folder of a store. fs is None for the local filesystem (path is an OS path)."""

    url: str  # as shown to the user: a local path or protocol://bucket/key
    path: str  # path for os calls (local) or for fs (bucket/key)
    fs: object = None
    protocol: str = ""

    def child(self, *parts: str) -> "Location":
        if self.fs is None:
            p = str(Path(self.path, *parts))
            return Location(p, p)
        tail = "/".join(parts)
        return Location(f"{self.url.rstrip('/')}/{tail}", f"{self.path.rstrip('/')}/{tail}", self.fs, self.protocol)

    def __truediv__(self, part: str) -> "Location":
        return self.child(*str(part).split("/"))

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def exists(self) -> bool:
        return os.path.exists(self.path) if self.fs is None else self.fs.exists(self.path)

    def is_file(self) -> bool:
        return os.path.isfile(self.path) if self.fs is None else self.fs.isfile(self.path)

    def remove(self) -> None:
        """Delete this file; nothing if it is not there."""
        if self.fs is None:
            Path(self.path).unlink(missing_ok=True)
        elif self.fs.exists(self.path):
            self.fs.rm_file(self.path)

    def read_bytes(self) -> bytes:
        if self.fs is None:
            return Path(self.path).read_bytes()
        return self.fs.cat_file(self.path)

    def write_bytes(self, data: bytes) -> None:
        if self.fs is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_bytes(data)
        else:
            self.fs.pipe_file(self.path, data)

    def zarr_store(self, read_only: bool):
        """What zarr.open_group/open_array take for this location."""
        if self.fs is None:
            # absolute: zarr's local store cuts its own folder's name out of every key by a plain text
            # replace, so a relative store named "test" lost it from the middle of "test/ids" too
            # (an absolute path still collides only for a store right under "/" named like a key)
            return os.path.abspath(self.path)
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(self.url, storage_options=s3_options(), read_only=read_only)

    def check_bucket(self, option: str = "--out") -> None:
        """For a build into a remote location: the bucket must exist (we never create one).
        `option` is the command-line option that named the location."""
        if self.fs is None:
            return
        bucket = self.path.split("/", 1)[0]
        try:
            found = self.fs.exists(bucket)
        except PermissionError as err:
            raise StorageError(f"{self.url}: access to bucket {bucket!r} denied ({err}); check the credentials") from None
        if not found:
            where = f" at {_endpoint()}" if _endpoint() else ""
            raise StorageError(f"{self.url}: bucket {bucket!r} does not exist{where}; create it first "
                               f"(e.g. `aws s3 mb s3://{bucket}`) or choose another {option}")

    def local_copy(self) -> str | None:
        """For a remote file, its path in the read cache (downloaded on first use), or None when
        no cache is set (C2F_CACHE_DIR) or the location is local."""
        root = os.environ.get(CACHE_ENV)
        if self.fs is None or not root:
            return None
        key = hashlib.sha256(self.url.encode()).hexdigest()[:32]
        target = Path(root) / key[:2] / key
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{key}.{os.getpid()}.part")
            self.fs.get_file(self.path, str(tmp))  # FileNotFoundError if the object is absent
            os.replace(tmp, target)  # atomic: readers never see half a shard
        return str(target)


def as_location(path: str | Path | Location) -> Location:
    """A local path or a URL (s3://bucket/path) as a Location; clear errors for what cannot work."""
    if isinstance(path, Location):
        return path
    text = str(path)
    if not is_remote(text):
        text = text.removeprefix("file://")
        return Location(text, text)
    protocol, _, rest = text.partition("://")
    rest = rest.strip("/")
    if not rest:
        raise StorageError(f"{text}: no bucket in the URL; use {protocol}://bucket/path")
    return Location(f"{protocol}://{rest}", rest, _filesystem(protocol, text), protocol)
