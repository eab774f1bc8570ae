"""Image sizes from the encoded bytes' headers, without decoding (decompression bombs).

A few KB of PNG, GIF or JPEG can claim billions of pixels; `tf.io.decode_image` allocates them
all. `read_header` reads the sizes the decoders will use, so a caller can refuse an image before
decoding it: ExampleGen's per-file check and the server's batching (which images may share a
batch). The exported `serving_default` signature does the same in the graph
(`export.image_header`).

Pure Python, a few microseconds per image (a GIF's block structure is walked: frames count).
"""

from __future__ import annotations

import dataclasses
import struct

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
_GIF_MAX_SUB_BLOCKS = 2_000_000  # ~0.5 s of Python; a GIF that needs more is "incomplete"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class HeaderError(ValueError):
    """The bytes do not start like a complete header of a known image format."""


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    fmt: str  # jpeg | png | gif | bmp | webp
    width: int
    height: int
    pixels: int  # what the decoder allocates per channel: GIF and WebP count every frame
    frames: int = 1
    complete: bool = True  # ends as the format says (PNG IEND, JPEG EOI, GIF trailer)

    def too_large(self, max_pixels: int) -> str | None:
        """A skip reason when over max_pixels, else None."""
        if self.pixels <= max_pixels:
            return None
        if self.frames > 1 or self.pixels > self.width * self.height:
            return (
                f"too large: {self.frames} frames of up to {self.width}x{self.height} "
                f"({self.pixels} pixels) > {max_pixels} pixels"
            )
        return f"too large: {self.width}x{self.height} > {max_pixels} pixels"


def read_header(data: bytes) -> ImageHeader:
    """Sizes of a JPEG, PNG, GIF, BMP or WebP image; HeaderError if the header is unreadable."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:4] == b"GIF8":
        return _gif(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    raise HeaderError("not a JPEG, PNG, GIF, BMP or WebP image")


def _need(data: bytes, end: int, what: str) -> None:
    if len(data) < end:
        raise HeaderError(f"truncated {what} header")


def _jpeg(data: bytes) -> ImageHeader:
    pos = 2
    while True:
        _need(data, pos + 4, "JPEG")
        if data[pos] != 0xFF:
            raise HeaderError("corrupt JPEG marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("JPEG without a frame header")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            _need(data, pos + 9, "JPEG")
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            complete = data.rfind(b"\xff\xd9") > pos
            return ImageHeader("jpeg", width, height, width * height, 1, complete)
        pos += 2 + length


def _png(data: bytes) -> ImageHeader:
    _need(data, 24, "PNG")
    if data[12:16] != b"IHDR":
        raise HeaderError("PNG without IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("png", width, height, width * height, 1, data.rfind(b"IEND") > 33)


def _gif(data: bytes) -> ImageHeader:
    _need(data, 13, "GIF")
    screen_w, screen_h, packed = struct.unpack("<HHB", data[6:11])

    def table(flags: int) -> int:
        return 3 * (2 << (flags & 7)) if flags & 0x80 else 0

    pos = 13 + table(packed)
    frames = total = max_w = max_h = steps = 0
    complete = False
    while pos < len(data) and steps < _GIF_MAX_SUB_BLOCKS:
        block = data[pos]
        if block == 0x3B:
            complete = True
            break
        if block == 0x2C:
            _need(data, pos + 10, "GIF image descriptor")
            width, height = struct.unpack("<HH", data[pos + 5 : pos + 9])
            frames, total = frames + 1, total + width * height
            max_w, max_h = max(max_w, width), max(max_h, height)
            pos += 10 + table(data[pos + 9]) + 1
        elif block == 0x21:
            pos += 2
        else:
            break  # junk where a block should start: the decoder stops (or fails) here
        while pos < len(data) and data[pos] and steps < _GIF_MAX_SUB_BLOCKS:  # data sub-blocks
            pos, steps = pos + 1 + data[pos], steps + 1
        pos += 1
    pixels = max(screen_w * screen_h, total)
    return ImageHeader(
        "gif", max(screen_w, max_w), max(screen_h, max_h), pixels, max(frames, 1), complete
    )


def _bmp(data: bytes) -> ImageHeader:
    _need(data, 26, "BMP")
    # TensorFlow's decoder reads signed 32-bit width and height at 18 and 22 whatever the
    # header's version, so these are the sizes it allocates.
    width, height = (abs(v) for v in struct.unpack("<ii", data[18:26]))
    return ImageHeader("bmp", width, height, width * height)


def _webp(data: bytes) -> ImageHeader:
    pos = 12
    width = height = frames = total = 0
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if kind == b"VP8X" and len(body) >= 10:
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
        elif kind == b"VP8L" and len(body) >= 5 and not width:
            bits = int.from_bytes(body[1:5], "little")
            width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        elif kind == b"VP8 " and len(body) >= 10 and not width:
            width = int.from_bytes(body[6:8], "little") & 0x3FFF
            height = int.from_bytes(body[8:10], "little") & 0x3FFF
        elif kind == b"ANMF" and len(body) >= 12:
            frames += 1
            w = 1 + int.from_bytes(body[6:9], "little")
            h = 1 + int.from_bytes(body[9:12], "little")
            total += w * h
        pos += 8 + size + (size & 1)
    if not width:
        raise HeaderError("WebP without a VP8/VP8L/VP8X header")
    return ImageHeader("webp", width, height, max(width * height, total), max(frames, 1))
