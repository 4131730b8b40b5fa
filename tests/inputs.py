"""Hostile and odd inputs for the bad-input catalogue, built in memory.

Every builder returns the bytes a client would send: image files that are
truncated, bombs, of formats outside the allow-list, or odd-but-valid (CMYK,
16-bit, animated, EXIF-rotated).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image
from skimage import data as skdata


def encode(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


def png_bomb() -> bytes:
    """100 M pixels of one colour in a few KB of PNG."""
    return encode(Image.new("1", (10_000, 10_000)), "PNG")


def gif_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A GIF whose header claims 900 M pixels, with a one-pixel LZW stream."""
    screen = struct.pack("<6sHHBBB", b"GIF89a", width, height, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    # LZW minimum code size 2, then one sub-block: clear, one pixel, end.
    return screen + descriptor + b"\x02\x02\x44\x01\x00" + b";"


def fits_file() -> bytes:
    cards = ["SIMPLE  =                    T", "BITPIX  =                    8", "NAXIS   =                    2",
             "NAXIS1  =                    4", "NAXIS2  =                    4", "END"]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode("ascii")
    return header + bytes(16).ljust(2880, b"\0")


def eps_file() -> bytes:
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
        b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )


def pdf_file() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def cmyk_jpeg() -> bytes:
    return encode(astronaut().convert("CMYK"), "JPEG", quality=95)


def sixteen_bit_png() -> bytes:
    """The astronaut in 16-bit grey: values 0..65535."""
    grey = np.asarray(astronaut().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def animated_gif() -> tuple[bytes, bytes]:
    """A two-frame GIF whose first frame is the astronaut, and that frame alone as PNG."""
    first = astronaut().convert("P", palette=Image.Palette.ADAPTIVE)
    second = Image.new("P", first.size)
    gif = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    return gif, encode(Image.open(io.BytesIO(gif)).convert("RGB"), "PNG")


def exif_rotated(fmt: str = "PNG") -> tuple[bytes, bytes]:
    """The astronaut stored sideways with EXIF Orientation 6 (rotate 90 degrees
    clockwise to view), and the upright picture, both as ``fmt``."""
    upright = astronaut()
    # Orientation 6: the viewer rotates the stored pixels 90 degrees clockwise,
    # so they are stored rotated 90 degrees counter-clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    save = {"quality": 95} if fmt == "JPEG" else {}
    return encode(stored, fmt, exif=exif, **save), encode(upright, fmt, **save)
