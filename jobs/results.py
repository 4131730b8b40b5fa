"""Where a job's results go: one part per shard while it runs (JSON lines, in
input order within the shard), one JSON-lines file when it is done (the join
writes it, parts in shard order). Local disk by default, S3-compatible
storage for scale-out.

Parts make a retry cheap: a worker that takes over a job skips every shard
whose part exists. Every write is atomic (a part or the result is either whole
or absent), so a worker killed mid-write leaves nothing half-written behind.

A job whose results are files (a text-to-image job's PNGs) stores each one
under ``files/`` beside them, before the part that names it; a job's files
live as long as its results.

Each job also has a small marker (``job.json``: id, model, total, created_at),
written when it is submitted, right after its record: what the storage holds
of a job whose record the job backend then lost is that job's trace, so that
``GET /v1/jobs/{id}`` can say 410 "lost" rather than 404 "never was", and the
job sweep can find and delete it (``jobs/maintenance.py``).
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

_PART = re.compile(r"(\d{8})\.jsonl$")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: A job's file: its input's index and the task's suffix (``00000003.png``).
FILE_NAME = re.compile(r"\d{8}\.[a-z0-9]{1,8}")
MARKER = "job.json"
#: The upload of a job's joined parts to object storage: multipart chunks of
#: this, one at a time (S3's smallest part is 5 MiB).
JOIN_CHUNK = 8 * 1024 * 1024


def file_name(index: int, suffix: str) -> str:
    return f"{index:08d}.{suffix}"


def media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _part_name(index: int) -> str:
    return f"{index:08d}.jsonl"


def s3_client(endpoint_url: str | None, region: str):
    """A boto3 S3 client (standard retries, SigV4); made per process by its users:
    a client's connection pool must not cross a fork."""
    import boto3  # only the scale-out path needs it
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=region,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, signature_version="s3v4"),
    )


class ResultStorage(Protocol):
    def write_part(self, job_id: str, index: int, data: bytes) -> None:
        """Shard ``index``'s results, written whole or not at all."""

    def has_part(self, job_id: str, index: int) -> bool: ...

    def parts(self, job_id: str) -> set[int]: ...

    def write_file(self, job_id: str, name: str, data: bytes) -> None:
        """One of the job's files (``FILE_NAME``), written whole or not at all."""

    def has_file(self, job_id: str, name: str) -> bool: ...

    def finalize(self, job_id: str, count: int) -> None:
        """Join parts 0..count-1 into the result, then drop the parts."""

    def has_result(self, job_id: str) -> bool:
        """Whether the joined result exists (a retry after the join need not recompute)."""

    def delete(self, job_id: str) -> None: ...

    def write_marker(self, job_id: str, fields: dict[str, Any]) -> None:
        """The job's marker: what is left of it should its record be lost."""

    def trace(self, job_id: str) -> dict[str, Any] | None:
        """None if the storage holds nothing of the job; else its marker's fields ({} without one)."""

    def jobs(self) -> Iterator[tuple[str, float]]:
        """(job id, time of its last write) of every job the storage holds something of."""


class LocalResults:
    """``<root>/<job id>/parts/NNNNNNNN.jsonl`` while running, ``<root>/<job id>/results.jsonl`` after."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def path(self, job_id: str) -> Path:
        return self.folder(job_id) / "results.jsonl"

    def _atomic_write(self, target: Path, chunks: Iterable[bytes]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def write_part(self, job_id: str, index: int, data: bytes) -> None:
        self._atomic_write(self.folder(job_id) / "parts" / _part_name(index), [data])

    def has_part(self, job_id: str, index: int) -> bool:
        return (self.folder(job_id) / "parts" / _part_name(index)).is_file()

    def parts(self, job_id: str) -> set[int]:
        folder = self.folder(job_id) / "parts"
        if not folder.is_dir():
            return set()
        return {int(m.group(1)) for p in folder.iterdir() if (m := _PART.match(p.name))}

    def write_file(self, job_id: str, name: str, data: bytes) -> None:
        self._atomic_write(self.file_path(job_id, name), [data])

    def file_path(self, job_id: str, name: str) -> Path:
        return self.folder(job_id) / "files" / name

    def has_file(self, job_id: str, name: str) -> bool:
        return self.file_path(job_id, name).is_file()

    def finalize(self, job_id: str, count: int) -> None:
        parts = self.folder(job_id) / "parts"
        self._atomic_write(
            self.path(job_id), ((parts / _part_name(i)).read_bytes() for i in range(count))
        )
        shutil.rmtree(parts, ignore_errors=True)

    def has_result(self, job_id: str) -> bool:
        return self.path(job_id).is_file()

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def write_marker(self, job_id: str, fields: dict[str, Any]) -> None:
        self._atomic_write(self.folder(job_id) / MARKER, [json.dumps(fields).encode()])

    def trace(self, job_id: str) -> dict[str, Any] | None:
        folder = self.folder(job_id)
        if not folder.is_dir():
            return None
        try:
            return json.loads((folder / MARKER).read_bytes())
        except (OSError, ValueError):  # parts or a result only (a job older than markers)
            return {}

    def jobs(self) -> Iterator[tuple[str, float]]:
        # A folder's mtime moves when its marker or result is written, parts/'s when a part is.
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in entries:
            if not (_JOB_ID.fullmatch(entry.name) and entry.is_dir()):
                continue
            times = []
            for path in (entry.path, os.path.join(entry.path, "parts")):
                try:
                    times.append(os.stat(path).st_mtime)
                except FileNotFoundError:
                    pass
            if times:  # gone since the listing: deleted meanwhile
                yield entry.name, max(times)


class S3Results:
    """The same layout under ``<prefix><job id>/`` in a bucket; downloads by pre-signed URL.

    A PUT is atomic in S3: an object is either the whole upload or absent.
    """

    def __init__(self, bucket: str, prefix: str = "jobs/", endpoint_url: str | None = None,
                 region: str = "us-east-1", url_expiry_s: int = 3600) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or None
        self.region = region
        self.url_expiry_s = url_expiry_s
        self._client = None
        self._pid = 0

    @property
    def client(self):
        # Made per process: a boto3 client's connection pool must not cross a fork.
        if self._client is None or self._pid != os.getpid():
            self._client = s3_client(self.endpoint_url, self.region)
            self._pid = os.getpid()
        return self._client

    def _key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}{job_id}/{name}"

    def write_part(self, job_id: str, index: int, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(job_id, "parts/" + _part_name(index)), Body=data)

    def write_file(self, job_id: str, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(job_id, "files/" + name), Body=data,
                               ContentType=media_type(name))

    def has_file(self, job_id: str, name: str) -> bool:
        return self._exists(self._key(job_id, "files/" + name))

    def file_url(self, job_id: str, name: str) -> str:
        """A pre-signed GET URL of one of the job's files, valid ``url_expiry_s`` seconds."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(job_id, "files/" + name)},
            ExpiresIn=self.url_expiry_s,
        )

    def _part_keys(self, job_id: str, folder: str = "parts/") -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(job_id, folder)):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def has_part(self, job_id: str, index: int) -> bool:
        return self._exists(self._key(job_id, "parts/" + _part_name(index)))

    def parts(self, job_id: str) -> set[int]:
        return {int(m.group(1)) for key in self._part_keys(job_id) if (m := _PART.search(key))}

    def finalize(self, job_id: str, count: int) -> None:
        # Join the parts in a file on local disk, then upload it by name: boto3
        # reads a named file part by part as it sends it (JOIN_CHUNK each, one
        # at a time), where a file object's parts are read into memory ahead,
        # so what the join holds in memory is bounded whatever the job's size.
        from boto3.s3.transfer import TransferConfig

        with tempfile.NamedTemporaryFile(prefix="serve-http-join-") as joined:
            for i in range(count):
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(job_id, "parts/" + _part_name(i)))["Body"]
                shutil.copyfileobj(body, joined)
            joined.flush()
            self.client.upload_file(
                joined.name, self.bucket, self._key(job_id, "results.jsonl"),
                ExtraArgs={"ContentType": "application/x-ndjson"},
                Config=TransferConfig(multipart_threshold=JOIN_CHUNK, multipart_chunksize=JOIN_CHUNK, max_concurrency=1),
            )
        self._delete_keys(self._part_keys(job_id))

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys[start : start + 1000]], "Quiet": True},
            )

    def has_result(self, job_id: str) -> bool:
        return self._exists(self._key(job_id, "results.jsonl"))

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def url(self, job_id: str) -> str:
        """A pre-signed GET URL of the result, valid ``url_expiry_s`` seconds."""
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(job_id, "results.jsonl")},
            ExpiresIn=self.url_expiry_s,
        )

    def delete(self, job_id: str) -> None:
        self._delete_keys(self._part_keys(job_id, folder=""))

    def write_marker(self, job_id: str, fields: dict[str, Any]) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(job_id, MARKER), Body=json.dumps(fields).encode(),
                               ContentType="application/json")

    def trace(self, job_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(job_id, ""), MaxKeys=1)
        if not listing.get("KeyCount"):
            return None
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(job_id, MARKER))["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return {}
            raise
        try:
            return json.loads(body)
        except ValueError:
            return {}

    def jobs(self) -> Iterator[tuple[str, float]]:
        # One listing of the prefix: about one request per 1,000 objects.
        last: dict[str, float] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                job_id = item["Key"][len(self.prefix):].split("/", 1)[0]
                if _JOB_ID.fullmatch(job_id):
                    written = item["LastModified"].timestamp()
                    last[job_id] = max(written, last.get(job_id, written))
        yield from last.items()
