"""Codecs: base64, image checks, EXIF orientation, hashing."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import InvalidInput, PayloadTooLarge, UnsupportedFormat
from utils_serve import ImageLimits, decode_base64, decode_image, digest, open_image

LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=4_000_000, formats=("JPEG", "PNG", "GIF"))


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def rgb(w=40, h=30) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_base64_variants_are_accepted():
    raw = b"\x89PNG some bytes"
    text = base64.b64encode(raw).decode()
    assert decode_base64(text, 100) == raw
    assert decode_base64("data:image/png;base64," + text, 100) == raw
    assert decode_base64(text[:8] + "\n" + text[8:], 100) == raw  # MIME line breaks


@pytest.mark.parametrize("text", ["not base64!", "AAA", "ÄÖÜ", "", "===="])
def test_bad_base64_is_invalid_input(text):
    with pytest.raises(InvalidInput):
        decode_base64(text, 100)


def test_oversized_base64_is_refused_before_decoding():
    with pytest.raises(PayloadTooLarge):
        decode_base64("A" * 400, 100)


def test_image_is_rgb_and_upright():
    png = encode(rgb().convert("L"), "PNG")
    assert open_image(png, LIMITS).mode == "RGB"
    # A 40x30 photo stored sideways with EXIF orientation 6 (rotate 90 CW to view).
    sideways = rgb(40, 30).transpose(Image.Transpose.ROTATE_90)  # stored 30x40
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = open_image(encode(sideways, "JPEG", exif=exif), LIMITS)
    assert upright.size == (40, 30)


def test_cmyk_16bit_and_animated_gif_are_decoded():
    assert open_image(encode(rgb().convert("CMYK"), "JPEG"), LIMITS).mode == "RGB"
    deep = Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16))
    assert open_image(encode(deep, "PNG"), LIMITS).size == (20, 20)
    frames = [rgb(), rgb().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert open_image(gif, LIMITS).size == (40, 30)


def test_format_outside_allow_list_is_named():
    with pytest.raises(UnsupportedFormat) as info:
        open_image(encode(rgb(), "BMP"), LIMITS)
    [detail] = info.value.details
    assert (detail["field"], detail["type"], detail["format"]) == (None, "unsupported_format", "BMP")


def test_not_an_image_and_truncated_image():
    with pytest.raises(InvalidInput, match="not an image"):
        open_image(b"hello world, not an image", LIMITS)
    jpeg = encode(rgb(200, 200), "JPEG")
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        open_image(jpeg[: len(jpeg) // 2], LIMITS)


def test_decompression_bomb_is_refused_from_the_header():
    # 10000 x 10000 of one colour: a few KB of PNG, 100 M pixels once decoded.
    bomb = encode(Image.new("1", (10_000, 10_000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge, match="pixels"):
        open_image(bomb, LIMITS)


def test_decoded_image_digest_follows_bytes():
    data = encode(rgb(), "PNG")
    one = decode_image(base64.b64encode(data).decode(), LIMITS)
    two = decode_image("data:image/png;base64," + base64.b64encode(data).decode(), LIMITS)
    assert one.digest == two.digest == digest(data)
    assert digest(b"ab", b"c") != digest(b"a", b"bc")
