"""Tasks whose input is one image file: the shared decoding, and image classification.

On the wire an image is its file (JPEG, PNG ...) in base64; internal callers
(the multipart route, the WebSocket stream) may pass the file's raw bytes.
Decoding checks size, pixel count and format and gives the adapter an upright
RGB ``PIL.Image.Image``; the cache keys on the digest of the file's bytes.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from pydantic import BaseModel, WithJsonSchema

from serving.errors import InvalidInput, ServeError
from tasks.base import Decoded, Limits, Task, invalid, name_field
from tasks.classification import Classifies
from tasks.fields import IMAGE_SCHEMA
from utils_serve import DecodedImage, decode_image, load_image_file

# A 1x1 white PNG: a ready body that decodes (models answer little for it).
EXAMPLE_IMAGE = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
)


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

    def item_from_line(self, value: Any, field: str) -> Any:
        if isinstance(value, dict) and set(value) == {"image"}:
            return value["image"]
        return value


class ImageClassification(Classifies, ImageTask):
    """Image -> `{category, scores}` (the model's top labels)."""

    name = "image-classification"
