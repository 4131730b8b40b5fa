"""Inputs from an uploaded file: JSON lines (one input per line), or a zip of files.

Everything here is client input: sizes are checked before anything is held in
memory, a zip member is read no further than the limit whatever its header
claims, and every problem is a clear 4xx error naming the line or member.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from typing import IO, Any

from serving.errors import InvalidInput, PayloadTooLarge, invalid
from tasks.base import Task

ZIP_MAGIC = b"PK\x03\x04"


def read_inputs(data: bytes, task: Task, max_inputs: int, max_item_bytes: int) -> list[Any]:
    """The inputs of ``task``'s model: one per JSON line, or one per file of a zip."""
    if data.startswith(ZIP_MAGIC):
        return _zip_files(io.BytesIO(data), task, max_inputs, max_item_bytes)
    return _json_lines(data, task, max_inputs)


def _json_lines(data: bytes, task: Task, max_inputs: int) -> list[Any]:
    """One input per non-blank line, as the task reads a line (``{"text": ...}`` is a text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the inputs file is neither UTF-8 JSON lines nor a zip file") from None
    inputs: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        inputs.append(line_item(task, line, f"inputs line {number}"))
        if len(inputs) > max_inputs:
            raise invalid("inputs", f"at most {max_inputs} inputs per job")
    if not inputs:
        raise invalid("inputs", "the inputs file holds no inputs")
    return inputs


def line_item(task: Task, line: str | bytes, field: str) -> Any:
    """One JSON line as the task reads a line of an inputs file."""
    try:
        value = json.loads(line)
    except ValueError:
        raise invalid(field, "not valid JSON") from None
    return task.item_from_line(value, field)


def open_zip(stream: IO[bytes]) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        raise InvalidInput("the inputs file is not a valid zip file") from None


def zip_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The archive's inputs: its files in name order (folders, dot files and ``__MACOSX/`` skipped)."""
    return sorted(
        (info for info in archive.infolist()
         if not info.is_dir() and not info.filename.startswith("__MACOSX/")
         and not info.filename.rsplit("/", 1)[-1].startswith(".")),
        key=lambda info: info.filename,
    )


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_item_bytes: int) -> bytes:
    """One member's bytes, read no further than the limit whatever its header claims."""
    if info.file_size > max_item_bytes:
        raise PayloadTooLarge(f"{info.filename} is larger than {max_item_bytes} bytes")
    try:
        with archive.open(info) as member:
            raw = member.read(max_item_bytes + 1)  # never trust the header's size
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, ValueError):
        raise InvalidInput(f"{info.filename} cannot be read from the zip file") from None
    if len(raw) > max_item_bytes:
        raise PayloadTooLarge(f"{info.filename} is larger than {max_item_bytes} bytes")
    return raw


def job_members(archive: zipfile.ZipFile, task: Task, max_inputs: int) -> list[zipfile.ZipInfo]:
    """The archive's inputs (``zip_members``), refused unless there are some,
    no more than ``max_inputs``, and ``task`` takes files."""
    members = zip_members(archive)
    if not members:
        raise invalid("inputs", "the zip file holds no files")
    if len(members) > max_inputs:
        raise invalid("inputs", f"at most {max_inputs} inputs per job, the zip holds {len(members)}")
    if not task.takes_files:
        raise invalid("inputs", f"a zip of images needs an image model; {task.model.name!r} does {task.name}")
    return members


def _zip_files(stream: IO[bytes], task: Task, max_inputs: int, max_item_bytes: int) -> list[Any]:
    """Every file of the archive, in name order, as the task reads a file."""
    archive = open_zip(stream)
    return [task.item_from_file(read_member(archive, info, max_item_bytes), f"inputs {info.filename}")
            for info in job_members(archive, task, max_inputs)]
