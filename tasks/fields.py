"""Field types for the input models of custom tasks.

``Base64Image`` is a string on the wire (base64 of a JPEG, PNG ... file) and a
checked, upright RGB ``PIL.Image.Image`` in the validated model: the server's
image limits (size, pixels, format allow-list) apply exactly as for the
built-in image tasks. A model's ``model.py`` declares, for example::

    class DigitInput(BaseModel):
        image: Base64Image

and its ``preprocess`` gets ``item.image`` as a PIL image.

Decoding needs the limits, which the task passes as validation context; an
image that cannot be read raises the service's own error (400 or 413), which
pydantic lets through unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from PIL import Image
from pydantic import PlainValidator, ValidationInfo, WithJsonSchema
from pydantic_core import PydanticCustomError

from utils_serve import ImageLimits, decode_image, load_image_file

LIMITS_CONTEXT = "limits"

# ``format: byte`` is OpenAPI's name for base64 (and nothing else beside it, so
# a generator that knows the format is used for the whole value).
IMAGE_SCHEMA = {
    "type": "string",
    "format": "byte",
    "description": "An image file (JPEG, PNG, ...) in base64.",
}


def _decode(value: Any, info: ValidationInfo) -> Image.Image:
    limits = (info.context or {}).get(LIMITS_CONTEXT)
    if not isinstance(limits, ImageLimits):
        raise RuntimeError("Base64Image needs the image limits as validation context")
    if isinstance(value, (bytes, bytearray)):  # a raw file from a multipart upload or a stream
        return load_image_file(bytes(value), limits).image
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "Input should be a base64-encoded image file (a string)")
    return decode_image(value, limits).image


Base64Image = Annotated[Image.Image, PlainValidator(_decode), WithJsonSchema(IMAGE_SCHEMA)]
