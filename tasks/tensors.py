"""Tensors of the Open Inference Protocol (KServe V2) as each task maps them.

A task says which named tensors its model takes and gives (``TensorSpec``:
name, datatype, shape with -1 for "any"), turns request tensors into its
wire items (``items_from_tensors``), and results into response tensors
(``tensors_from_outputs``). Tensors are numpy arrays; ``BYTES`` tensors are
object arrays of ``bytes``. The HTTP layer (``api/v2.py``) reads and writes
them as JSON or binary; the rest of the request goes through the one predict
path, as every route does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import invalid

BYTES = "BYTES"

#: V2 datatypes and the numpy dtypes they travel as (BYTES: Python bytes in an object array).
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    BYTES: np.object_,
}
NUMERIC = {name for name in DATATYPES if name not in (BYTES, "BOOL")}


def datatype_of(array: np.ndarray) -> str:
    """The V2 datatype of a numpy array."""
    if array.dtype == np.object_:
        return BYTES
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no V2 datatype for {array.dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a model, as V2 model metadata lists it."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def rows(tensor: np.ndarray, field: str) -> int:
    """The batch size of a tensor: its first dimension."""
    if tensor.ndim == 0:
        raise invalid(field, "a tensor needs a batch dimension (shape [N, ...])")
    return int(tensor.shape[0])


def one_per_row(tensor: np.ndarray, field: str) -> np.ndarray:
    """A tensor of one element per row, ``[N]`` or ``[N, 1]``, as a flat array."""
    if tensor.ndim == 2 and tensor.shape[1] == 1:
        return tensor[:, 0]
    if tensor.ndim != 1:
        raise invalid(field, f"expected shape [N] or [N, 1], got {list(tensor.shape)}")
    return tensor


def texts(tensor: np.ndarray, field: str) -> list[str]:
    """A BYTES tensor of one UTF-8 text per row."""
    if tensor.dtype != np.object_:
        raise invalid(field, "expected a BYTES tensor of texts")
    found = []
    for i, value in enumerate(one_per_row(tensor, field).tolist()):
        try:
            found.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError:
            raise invalid(f"{field}[{i}]", "a text must be UTF-8") from None
    return found


def byte_strings(tensor: np.ndarray, field: str) -> list[Any]:
    """A BYTES tensor of one element per row, each as it came (bytes, or text from JSON)."""
    if tensor.dtype != np.object_:
        raise invalid(field, "expected a BYTES tensor")
    return one_per_row(tensor, field).tolist()


def utf8(values: list[str]) -> np.ndarray:
    """Texts as a BYTES tensor ``[N]``."""
    array = np.empty(len(values), dtype=np.object_)
    array[:] = [value.encode("utf-8") for value in values]
    return array
