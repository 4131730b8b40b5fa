"""A job's inputs named by reference: ``POST /v1/jobs`` with ``inputs_uri``
(``s3://bucket/key`` or a local path) instead of ``inputs``.

The object is JSON lines (one input per line, as the upload route reads
them) or a zip of images (its files in name order), told apart by its first
bytes. Only what ``SERVE_JOB_INPUT_URIS`` allows may be named: S3 prefixes
(``s3://bucket/inputs/``) and local folders (``/data/inputs``, symbolic
links resolved before the check); nothing else, so that a client cannot have
the server read what its credentials can but the client should not.

The web process reads the object once when the job is submitted, streaming:
every line is checked as an inline input would be, and what it keeps is each
shard's place in the object (a byte range of JSON lines, or the names of its
zip members), never the inputs. A worker then reads its own shard alone (one
ranged GET, or a seek), so no process holds the whole input in memory.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from jobs.results import s3_client
from jobs.uploads import ZIP_MAGIC, job_members, line_item, open_zip, read_member
from serving.errors import ServeError, invalid
from tasks.base import Limits, Task

JSON_LINES = "jsonl"
ZIP = "zip"
#: Bytes read ahead per ranged GET while the web process indexes an S3 object.
READ_AHEAD = 8 * 1024 * 1024


class S3Object(io.RawIOBase):
    """A seekable, read-only view of one S3 object: each read is a ranged GET
    (wrap it in ``io.BufferedReader``); what ``zipfile`` needs to open an
    archive in a bucket without downloading it."""

    def __init__(self, client, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: one GET."""
        if end <= start or start >= self.size:
            return b""
        body = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end - 1}")["Body"]
        return body.read()

    def readinto(self, buffer) -> int:
        data = self.read_range(self.position, min(self.size, self.position + len(buffer)))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


@dataclass(frozen=True)
class Location:
    """An allowed input object: in a bucket (``bucket``, ``key``) or on local disk (``path``)."""

    uri: str
    bucket: str = ""
    key: str = ""
    path: Path | None = None


@dataclass
class Indexed:
    """What the web process keeps of an input object: its count, the steps
    its inputs take, and each shard's place in it."""

    total: int = 0
    steps_total: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)


class InputSources:
    """Finds, checks and reads input objects; ``allowed`` is ``SERVE_JOB_INPUT_URIS``."""

    def __init__(self, allowed: str, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        entries = [entry.strip() for entry in allowed.split(",") if entry.strip()]
        self.prefixes = [entry for entry in entries if entry.startswith("s3://")]
        self.folders = [Path(entry).resolve() for entry in entries if not entry.startswith("s3://")]
        self.endpoint_url, self.region = endpoint_url or None, region
        self._client = None
        self._pid = 0

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():  # per process: never across a fork
            self._client = s3_client(self.endpoint_url, self.region)
            self._pid = os.getpid()
        return self._client

    def locate(self, uri: str) -> Location:
        """The allowed object ``uri`` names, or a 422 saying why not."""
        if not self.prefixes and not self.folders:
            raise invalid("inputs_uri", "inputs by reference are off on this server: SERVE_JOB_INPUT_URIS"
                                        " names the S3 prefixes and folders jobs may read")
        if uri.startswith("s3://"):
            parts = urlsplit(uri)
            if not parts.netloc or not parts.path.strip("/") or parts.query or parts.fragment:
                raise invalid("inputs_uri", "an S3 input is s3://bucket/key")
            if not any(uri.startswith(prefix) for prefix in self.prefixes):
                raise invalid("inputs_uri", f"{uri} is not under an S3 prefix SERVE_JOB_INPUT_URIS allows")
            return Location(uri, bucket=parts.netloc, key=parts.path[1:])
        raw = uri[len("file://"):] if uri.startswith("file://") else uri
        if not os.path.isabs(raw) or "\x00" in raw:
            raise invalid("inputs_uri", "name the inputs as s3://bucket/key or an absolute local path")
        path = Path(raw).resolve()
        if not any(path.is_relative_to(folder) for folder in self.folders):
            raise invalid("inputs_uri", f"{raw} is not under a folder SERVE_JOB_INPUT_URIS allows")
        return Location(uri, path=path)

    def open(self, location: Location, buffering: int = READ_AHEAD) -> IO[bytes]:
        """The object, seekable; a missing or unreadable one is a 422."""
        from botocore.exceptions import ClientError

        try:
            if location.path is not None:
                return open(location.path, "rb", buffering=buffering)
            return io.BufferedReader(S3Object(self.client, location.bucket, location.key), buffer_size=buffering)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
            raise invalid("inputs_uri", f"{location.uri} cannot be read ({type(error).__name__})") from None
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "403", "AccessDenied"):
                raise invalid("inputs_uri", f"{location.uri} cannot be read ({code})") from None
            raise

    # --- in the web process, at submission ------------------------------------

    def index(self, uri: str, task: Task, parameters: Any, limits: Limits, shard_size: int,
              max_inputs: int) -> Indexed:
        """Read the object once, streaming: check every input as an inline one
        is checked, and cut it into shards of ``shard_size`` inputs."""
        location = self.locate(uri)
        with self.open(location) as stream:
            head = stream.peek(4)[:4] if hasattr(stream, "peek") else b""
            if head == ZIP_MAGIC:
                return self._index_zip(stream, uri, task, limits, shard_size, max_inputs)
            return self._index_lines(stream, uri, task, parameters, limits, shard_size, max_inputs)

    def _index_lines(self, stream: IO[bytes], uri: str, task: Task, parameters: Any, limits: Limits,
                     shard_size: int, max_inputs: int) -> Indexed:
        indexed = Indexed()
        # A line holds one input at most: a base64 image, or a text of JSON escapes.
        longest = max(limits.image.max_bytes * 4 // 3, limits.max_text_chars * 6) + 4096
        offset = 0
        shard: dict[str, Any] | None = None
        for number, line in enumerate(iter(lambda: stream.readline(longest + 1), b""), start=1):
            start, offset = offset, offset + len(line)
            if len(line) > longest:
                raise invalid(f"inputs line {number}", f"longer than {longest} bytes")
            if not line.strip():
                continue
            field_name = f"inputs line {number}"
            try:
                item = line_item(task, line, field_name)
            except UnicodeDecodeError:
                raise invalid(field_name, "not UTF-8") from None
            task.check(item, parameters, limits, field_name)
            indexed.steps_total += task.steps(item, parameters, limits)
            if shard is None or shard["count"] == shard_size:
                shard = {"uri": uri, "format": JSON_LINES, "start": start, "end": offset, "line": number, "count": 0}
                indexed.shards.append(shard)
            shard["end"] = offset
            shard["count"] += 1
            indexed.total += 1
            if indexed.total > max_inputs:
                raise invalid("inputs", f"at most {max_inputs} inputs per job")
        if not indexed.total:
            raise invalid("inputs", "the inputs file holds no inputs")
        return indexed

    def _index_zip(self, stream: IO[bytes], uri: str, task: Task, limits: Limits, shard_size: int,
                   max_inputs: int) -> Indexed:
        members = job_members(open_zip(stream), task, max_inputs)
        for info in members:  # from the central directory: nothing is decompressed here
            if info.file_size > limits.image.max_bytes:
                raise invalid(f"inputs {info.filename}", f"larger than {limits.image.max_bytes} bytes")
        names = [info.filename for info in members]
        shards = [{"uri": uri, "format": ZIP, "members": names[lo : lo + shard_size]}
                  for lo in range(0, len(names), shard_size)]
        return Indexed(total=len(names), shards=shards)

    # --- in a worker, per shard -------------------------------------------------

    def read(self, spec: dict[str, Any], task: Task, limits: Limits) -> list[Any]:
        """One shard's inputs, read from the object alone."""
        location = self.locate(spec["uri"])
        if spec["format"] == JSON_LINES:
            if location.path is not None:
                with open(location.path, "rb") as file:
                    file.seek(spec["start"])
                    data = file.read(spec["end"] - spec["start"])
            else:
                data = S3Object(self.client, location.bucket, location.key).read_range(spec["start"], spec["end"])
            items = [line_item(task, line, f"inputs line {spec['line'] + number}")
                     for number, line in enumerate(data.split(b"\n")) if line.strip()]
            if len(items) != spec["count"]:
                raise RuntimeError(f"{spec['uri']} changed since the job was submitted")
            return items
        with self.open(location, buffering=1024 * 1024) as stream:
            archive = open_zip(stream)
            items = []
            for name in spec["members"]:
                try:
                    items.append(task.item_from_file(read_member(archive, archive.getinfo(name), limits.image.max_bytes),
                                                     f"inputs {name}"))
                except (KeyError, ServeError):  # gone or unreadable: that input's own error line
                    items.append(None)
            return items


def read_shard(spec: Any, task: Task, limits: Limits, sources: InputSources | None) -> list[Any]:
    """A shard's inputs: carried in the record (a list), or read by reference."""
    if isinstance(spec, list):
        return spec
    if sources is None:
        raise RuntimeError("this worker reads no inputs by reference (no InputSources)")
    return sources.read(spec, task, limits)
