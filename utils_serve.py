"""Codecs: base64 to validated images, and hashing.

Everything a client sends passes through here before a model sees it, so the
limits live here: decoded size, pixel count (decompression bombs), a format
allow-list checked when the file is opened, and EXIF orientation so that boxes
refer to the upright image the user sees.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedFormat

# A truncated upload must fail loudly, not decode as a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)
# What rb"\s" matches; bytes.translate drops it 15x faster than a regex (0.04 vs 0.59 ms for 90 KB).
_WHITESPACE = b" \t\n\r\x0b\x0c"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image and the digest of the bytes it came from."""

    image: Image.Image
    digest: str

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def digest(*parts: bytes | str) -> str:
    """A short stable hash of the parts (cache keys, content identity)."""
    h = hashlib.blake2b(digest_size=20)
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Strict base64 (standard alphabet, MIME line breaks and a data: URL prefix tolerated)."""
    text = _DATA_URL.sub("", text, count=1)
    raw = text.encode("ascii", errors="replace").translate(None, _WHITESPACE)
    # Refuse before decoding: the decoded size is known from the length.
    if len(raw) // 4 * 3 > max_bytes + 2:
        raise PayloadTooLarge(f"decoded image is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image content is not valid base64") from None
    if not data:
        raise InvalidInput("image content is empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"decoded image is larger than {max_bytes} bytes")
    return data


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open, check and fully decode an image file; returns an upright RGB image."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is larger than {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit is checked below from the header; Pillow's
            # warning would only duplicate it (its hard error still applies).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(limits.formats))
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidInput("image has no pixels")
            if width * height > limits.max_pixels:
                raise PayloadTooLarge(
                    f"image has {width}x{height} pixels, more than the limit of {limits.max_pixels}"
                )
            # Multi-frame files (animated GIF, multi-page TIFF): the first frame.
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (InvalidInput, PayloadTooLarge):
        raise
    except UnidentifiedImageError:
        raise _unidentified(data, limits.formats) from None
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"image has more pixels than the limit of {limits.max_pixels}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError):
        # Pillow reports truncated and corrupt data through these.
        raise InvalidInput("image data is truncated or corrupt") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the models. 16-bit grey (PNG, TIFF) is scaled to 8 bits first:
    Pillow's own conversion clips it, turning most photos white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((np.minimum(wide, 65535) // 257).astype(np.uint8))
    return image.convert("RGB")


def _unidentified(data: bytes, allowed: Sequence[str]) -> InvalidInput:
    """Tell an unsupported format from data that is no image at all.

    The format is named from its magic bytes alone (each Pillow plugin's
    ``accept`` test): no parser of a format outside the allow-list runs, not
    even on the header (EPS, FITS ... headers have had their own CVEs).
    """
    found = sniff_format(data)
    if found in allowed:  # an allowed format whose header does not parse
        return InvalidInput("image data is truncated or corrupt")
    if found:
        return UnsupportedFormat(
            f"{found} images are not accepted",
            details={"format": found, "allowed": sorted(allowed)},
        )
    return InvalidInput("data is not an image")


def sniff_format(data: bytes) -> str | None:
    """The Pillow format whose signature ``data`` starts with, or None."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # a plugin's test that chokes on odd bytes: not this format
            continue
    return None


def decode_image(content: str, limits: ImageLimits) -> DecodedImage:
    """base64 text to a checked upright RGB image with the digest of its bytes."""
    data = decode_base64(content, limits.max_bytes)
    return DecodedImage(image=open_image(data, limits), digest=digest(data))


def load_image_file(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Raw uploaded bytes (multipart) to a checked image."""
    if not data:
        raise InvalidInput("uploaded image is empty")
    return DecodedImage(image=open_image(data, limits), digest=digest(data))
