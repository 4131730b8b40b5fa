"""The Open Inference Protocol's wire format: tensors in JSON, and the binary
tensor data extension (what ``tritonclient`` sends by default).

A request is a JSON header, optionally followed by binary blobs: with the
``Inference-Header-Content-Length`` header the body's first N bytes are the
JSON and each input whose parameters give ``binary_data_size`` is that many
bytes of the rest, in input order. Numbers travel little-endian, row-major;
a ``BYTES`` tensor in binary is each element as a 4-byte little-endian length
and its bytes. The response is built the same way for the outputs asked in
binary (``outputs[].parameters.binary_data`` or the request's
``binary_data_output``). Every problem is a ``ServeError`` (400 or 422).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError

from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType, invalid
from tasks.base import Strict, schema_error
from tasks.tensors import BYTES, DATATYPES, datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_TYPE = "application/octet-stream"
#: Request parameters that belong to the protocol (and MLServer's content_type hint), not to the model's task.
PROTOCOL_PARAMETERS = frozenset(
    {"binary_data_output", "binary_data", "binary_data_size", "classification", "headers", "content_type"}
)
# Bounds from the request itself: a shape's element count may not exceed the body's size by far.
MAX_DIMENSIONS = 8

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]


class RequestInput(Strict):
    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=MAX_DIMENSIONS, description="Dimensions, row first.")
    datatype: Datatype
    parameters: dict[str, Any] = Field(default_factory=dict, description="binary_data_size for binary data.")
    data: Any = Field(None, description="The elements, row-major, flat or nested; absent with binary data.")


class RequestOutput(Strict):
    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] = Field(default_factory=dict, description="binary_data: true for binary data.")


class InferenceRequest(Strict):
    """``POST /v2/models/{name}/infer``'s JSON (the header, with binary data)."""

    id: Optional[str] = Field(None, max_length=256)
    parameters: dict[str, Any] = Field(default_factory=dict, description="The task's request parameters, and binary_data_output.")
    inputs: list[RequestInput] = Field(min_length=1, max_length=64)
    outputs: Optional[list[RequestOutput]] = Field(None, max_length=64)


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Optional[dict[str, Any]] = None
    data: Optional[list[Any]] = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[ResponseOutput]


@dataclass
class Request:
    """A parsed inference request: its tensors by name and what to answer how."""

    id: str | None
    parameters: dict[str, Any]
    tensors: dict[str, np.ndarray]
    outputs: dict[str, bool] | None  # requested output -> in binary
    binary_output: bool = False
    task_parameters: dict[str, Any] = field(default_factory=dict)


def decompressed(body: bytes, encoding: str, limit: int | None) -> bytes:
    """The body as sent before ``Content-Encoding`` (gzip or deflate, which
    tritonclient can use), no larger than ``limit`` once inflated."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, (limit or 0) + 1 if limit else 0)
    except zlib.error:
        raise InvalidInput(f"the body is not valid {encoding} data") from None
    if limit and (len(data) > limit or inflater.unconsumed_tail):
        raise PayloadTooLarge(f"the inflated body is larger than {limit} bytes")
    return data


def _flag(value: Any) -> bool:
    return value is True


def parse(body: bytes, header_length: str | None) -> Request:
    """The request of a body, binary data or JSON alone."""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be a number of bytes") from None
        if not 0 < size <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} is {size}, the body has {len(body)} bytes")
        head, blobs = body[:size], memoryview(body)[size:]
    else:
        head, blobs = body, memoryview(b"")
    try:
        raw = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise InvalidInput("the inference request is not valid JSON") from None
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as error:
        raise schema_error(error, "", "inference request") from None
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if item.name in tensors:
            raise invalid(f"{where}.name", f"input {item.name!r} is given twice")
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(blobs):
                raise invalid(f"{where}.parameters.binary_data_size", "does not fit the binary data that follows the header")
            tensors[item.name] = from_binary(bytes(blobs[offset:offset + size]), item.datatype, item.shape, where)
            offset += size
        else:
            tensors[item.name] = from_json(item.data, item.datatype, item.shape, where)
    if offset != len(blobs):
        raise InvalidInput(f"{len(blobs) - offset} bytes of binary data belong to no input")
    outputs = None
    if request.outputs is not None:
        outputs = {o.name: _flag(o.parameters.get("binary_data")) for o in request.outputs}
    parameters = dict(request.parameters)
    return Request(
        id=request.id,
        parameters=parameters,
        tensors=tensors,
        outputs=outputs,
        binary_output=_flag(parameters.get("binary_data_output")),
        task_parameters={k: v for k, v in parameters.items() if k not in PROTOCOL_PARAMETERS},
    )


def _count(shape: list[int], where: str) -> int:
    if any(d < 0 for d in shape):
        raise invalid(f"{where}.shape", "dimensions are zero or more")
    count = 1
    for d in shape:
        count *= d
    return count


def from_json(data: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """A tensor from its JSON elements (flat or nested, row-major)."""
    if data is None:
        raise invalid(f"{where}.data", "missing (or give binary_data_size and binary data)")
    count = _count(shape, where)
    try:
        flat = np.asarray(data if isinstance(data, list) else [data], dtype=object).reshape(-1)
    except (ValueError, RecursionError):  # ragged or absurdly nested lists
        raise invalid(f"{where}.data", f"the elements do not form a tensor of shape {shape}") from None
    if flat.size != count:
        raise invalid(f"{where}.data", f"{flat.size} elements for shape {shape}")
    if datatype == BYTES:
        values = flat.tolist()
        if not all(isinstance(v, str) for v in values):
            raise invalid(f"{where}.data", "BYTES elements in JSON are strings")
        array = np.empty(count, dtype=np.object_)
        array[:] = [v.encode("utf-8") for v in values]
        return array.reshape(shape)
    values = flat.tolist()
    if datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in values)
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if datatype not in ("FP16", "FP32", "FP64"):
            ok = ok and all(isinstance(v, int) for v in values)
    if not ok:
        raise invalid(f"{where}.data", f"elements of a {datatype} tensor must be {datatype.lower()} values")
    try:
        return np.array(values, dtype=DATATYPES[datatype]).reshape(shape)
    except (OverflowError, ValueError):
        raise invalid(f"{where}.data", f"a value does not fit {datatype}") from None


def from_binary(data: bytes, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """A tensor from its binary data."""
    count = _count(shape, where)
    if datatype == BYTES:
        elements, offset = [], 0
        while offset < len(data):
            if offset + 4 > len(data):
                raise invalid(where, "BYTES data ends inside an element's length")
            (length,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if offset + length > len(data):
                raise invalid(where, "BYTES data ends inside an element")
            elements.append(data[offset:offset + length])
            offset += length
        if len(elements) != count:
            raise invalid(where, f"{len(elements)} BYTES elements for shape {shape}")
        array = np.empty(count, dtype=np.object_)
        array[:] = elements
        return array.reshape(shape)
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise invalid(where, f"{len(data)} bytes of binary data for {count} {datatype} elements")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def to_binary(array: np.ndarray) -> bytes:
    if array.dtype == np.object_:
        parts = []
        for value in array.reshape(-1).tolist():
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json(array: np.ndarray) -> list[Any]:
    if array.dtype == np.object_:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]
    return array.reshape(-1).tolist()


def encode(
    model: str, version: str, request: Request, tensors: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON and binary blobs."""
    if request.outputs is not None:
        unknown = sorted(set(request.outputs) - set(tensors))
        if unknown:
            raise invalid("outputs", f"model {model!r} has no output {', '.join(unknown)}; it has {', '.join(tensors)}")
        chosen = {name: binary or request.binary_output for name, binary in request.outputs.items()}
    else:
        chosen = {name: request.binary_output for name in tensors}
    outputs, blobs = [], []
    for name, binary in chosen.items():
        array = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            blob = to_binary(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json(array)
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    head = orjson.dumps(response)
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(head))}
