"""Inputs from an uploaded file: JSON lines of texts, or a zip of images.

Everything here is client input: sizes are checked before anything is held in
memory, a zip member is read no further than the limit whatever its header
claims, and every problem is a clear 4xx error naming the line or member.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
import zlib
from typing import IO

from serving.errors import InvalidInput, PayloadTooLarge, ValidationFailed

ZIP_MAGIC = b"PK\x03\x04"


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details=[{"field": field, "message": message, "type": "value_error"}])


def read_inputs(data: bytes, max_inputs: int, max_item_bytes: int) -> tuple[str, list[str]]:
    """``("texts", [...])`` from JSON lines, ``("images", [base64, ...])`` from a zip."""
    if data.startswith(ZIP_MAGIC):
        return "images", _zip_images(io.BytesIO(data), max_inputs, max_item_bytes)
    return "texts", _json_lines(data, max_inputs)


def _json_lines(data: bytes, max_inputs: int) -> list[str]:
    """One input per non-blank line: a JSON string, or an object with ``text`` or ``image``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the inputs file is neither UTF-8 JSON lines nor a zip file") from None
    inputs: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        field = f"inputs line {number}"
        try:
            value = json.loads(line)
        except ValueError:
            raise _invalid(field, "not valid JSON") from None
        if isinstance(value, dict):
            value = value.get("text", value.get("image"))
        if not isinstance(value, str):
            raise _invalid(field, 'each line must be a JSON string or an object with "text" or "image"')
        inputs.append(value)
        if len(inputs) > max_inputs:
            raise _invalid("inputs", f"at most {max_inputs} inputs per job")
    if not inputs:
        raise _invalid("inputs", "the inputs file holds no inputs")
    return inputs


def _zip_images(stream: IO[bytes], max_inputs: int, max_item_bytes: int) -> list[str]:
    """Every file of the archive, in name order, as base64 (folders and dot files skipped)."""
    try:
        archive = zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        raise InvalidInput("the inputs file is not a valid zip file") from None
    members = sorted(
        (info for info in archive.infolist()
         if not info.is_dir() and not info.filename.startswith("__MACOSX/")
         and not info.filename.rsplit("/", 1)[-1].startswith(".")),
        key=lambda info: info.filename,
    )
    if not members:
        raise _invalid("inputs", "the zip file holds no files")
    if len(members) > max_inputs:
        raise _invalid("inputs", f"at most {max_inputs} inputs per job, the zip holds {len(members)}")
    images: list[str] = []
    for info in members:
        if info.file_size > max_item_bytes:
            raise PayloadTooLarge(f"{info.filename} is larger than {max_item_bytes} bytes")
        try:
            with archive.open(info) as member:
                raw = member.read(max_item_bytes + 1)  # never trust the header's size
        except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, ValueError):
            raise InvalidInput(f"{info.filename} cannot be read from the zip file") from None
        if len(raw) > max_item_bytes:
            raise PayloadTooLarge(f"{info.filename} is larger than {max_item_bytes} bytes")
        images.append(base64.b64encode(raw).decode("ascii"))
    return images
