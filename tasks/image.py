"""Tasks whose input is one image file: the shared decoding, and image classification.

On the wire an image is its file (JPEG, PNG ...) in base64; internal callers
(the multipart route, the WebSocket stream) may pass the file's raw bytes.
Decoding checks size, pixel count and format and gives the adapter an upright
RGB ``PIL.Image.Image``; the cache keys on the digest of the file's bytes.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, WithJsonSchema

from serving.errors import InvalidInput, ServeError, invalid
from tasks.base import Decoded, Limits, Task, name_field
from tasks.classification import Classifies
from tasks.fields import IMAGE_SCHEMA
from tasks.results import Classification
from tasks.tensors import BYTES, TensorSpec, byte_strings, utf8
from utils_serve import DecodedImage, decode_image, load_image_file, sniff_format

# The docs' example image: a 96x108 JPEG of a face (scikit-image's astronaut
# photo, public domain), 3 KB; the face detector finds it.
EXAMPLE_IMAGE_FILE = Path(__file__).with_name("example.jpg")
EXAMPLE_IMAGE = base64.b64encode(EXAMPLE_IMAGE_FILE.read_bytes()).decode("ascii")


def decode_image_item(item: Any, limits: Limits, field: str) -> DecodedImage:
    """A base64 string (or a raw file's bytes) as a checked image; errors name ``field``."""
    try:
        if isinstance(item, str):
            return decode_image(item, limits.image)
        if isinstance(item, (bytes, bytearray)):
            return load_image_file(bytes(item), limits.image)
    except ServeError as error:
        raise name_field(error, field) from None
    raise invalid(field, "Input should be a base64-encoded image file (a string)", "string_type")


class ImageTask(Task):
    """One input is one image file."""

    item_type = Annotated[str, WithJsonSchema(IMAGE_SCHEMA)]
    takes_files = True

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        image = decode_image_item(item, limits, field)
        return Decoded(image.image, image.digest)

    def check(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> None:
        # A job's images are decoded by the worker: one unreadable image fails
        # its own result line there, not the whole submission.
        if not isinstance(item, str):
            raise invalid(field, "Input should be a base64-encoded image file (a string)", "string_type")
        if not item:
            raise name_field(InvalidInput("image content is empty"), field)

    def default_example(self) -> Any:
        return EXAMPLE_IMAGE

    def item_from_file(self, data: bytes, field: str) -> Any:
        return base64.b64encode(data).decode("ascii")

    def tensor_inputs(self) -> list[TensorSpec]:
        return [TensorSpec("image", BYTES, (-1,))]

    def items_from_tensors(self, tensors: dict[str, np.ndarray], field: str = "inputs") -> list[Any]:
        """One image file per element: raw bytes (binary data), or base64 text (JSON)."""
        images = self.expect_tensors(tensors, field)["image"]
        items = []
        for value in byte_strings(images, f"{field}.image"):
            # base64 sent as binary data is text, not an image file.
            if isinstance(value, bytes) and sniff_format(value) is None and value.isascii():
                value = value.decode("ascii")
            items.append(value)
        return items

    def item_from_line(self, value: Any, field: str) -> Any:
        if isinstance(value, dict) and set(value) == {"image"}:
            return value["image"]
        return value


class ImageClassification(Classifies, ImageTask):
    """Image -> `{category, scores}` (the model's top labels)."""

    name = "image-classification"

    def tensor_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("label", BYTES, (-1,)),
            TensorSpec("top_labels", BYTES, (-1, -1)),
            TensorSpec("top_scores", "FP32", (-1, -1)),
        ]

    def tensors_from_results(self, results: list[Classification], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        """``label``, and the model's top labels and their scores, best first, per image."""
        ranked = [sorted((r.scores or {}).items(), key=lambda pair: -pair[1]) for r in results]
        width = min((len(pairs) for pairs in ranked), default=0)
        top_labels = np.empty((len(results), width), dtype=np.object_)
        top_labels[:] = [[label.encode("utf-8") for label, _ in pairs[:width]] for pairs in ranked]
        return {
            "label": utf8([r.label for r in results]),
            "top_labels": top_labels,
            "top_scores": np.array([[p for _, p in pairs[:width]] for pairs in ranked], dtype=np.float32).reshape(len(results), width),
        }
