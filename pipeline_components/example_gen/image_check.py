"""Decide whether one file becomes a training example: name rules, format sniffing, decode check.

The check is `tf.io.decode_image(..., expand_animations=False)`, the decoder the Trainer and the
serving signature use, so a file that passes can never crash training. Pure functions apart from
TensorFlow; ExampleGen's Beam DoFn calls `check_image` once per file.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline_components.core import image_header
from pipeline_components.core.image_header import DEFAULT_MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    import tensorflow as tf

# Formats tf.io.decode_image reads and we keep. WebP is stored re-encoded as lossless PNG of the
# pixels tf.io.decode_image gives: the documented image/format is jpeg|png|gif|bmp, and the serving
# signature's input check accepts only those four.
KEPT_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx"}
# A file with one of these extensions that is not an image is a stray document, not a bad image.
DOCUMENT_EXTENSIONS = {
    ".txt", ".md", ".rst", ".json", ".csv", ".tsv", ".xml", ".html", ".htm",
    ".yaml", ".yml", ".ini", ".cfg", ".log", ".pdf", ".db",
}  # fmt: skip
_BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]")


class SkipFile(Exception):
    """The file is not an example. `bad` files count against --max-bad-fraction; hidden files,
    stray documents and files outside class folders do not."""

    def __init__(self, reason: str, bad: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.bad = bad
        self.sha256 = ""  # of the file's bytes, once read


@dataclass(frozen=True)
class StoredImage:
    encoded: bytes
    fmt: str  # of `encoded`
    height: int
    width: int
    channels: int
    source_fmt: str  # sniffed from the file's bytes


def name_problem(name: str) -> str | None:
    """Why a file or folder name cannot be written byte-exactly wherever names go (labels.txt
    lines, TFRecord UTF-8 strings, CSV rows, YAML, the console), or None. Any alphabet, emoji
    and spaces are fine; bytes that are not UTF-8 (a surrogate after Python's decoding) and
    control characters (line breaks among them) are not."""
    for ch in name:
        category = unicodedata.category(ch)
        if category == "Cs":
            return _not_utf8(name)
        if category in ("Cc", "Zl", "Zp"):
            return f"holds the control character U+{ord(ch):04X}"
    return None


def _not_utf8(name: str) -> str:
    try:  # the bytes as listed (undoing Python's surrogateescape)
        os.fsencode(name).decode("utf-8")
    except UnicodeError:
        return "is not valid UTF-8"
    return (  # Python in a C locale with UTF-8 mode switched off
        f"is UTF-8 but this process reads file names as {sys.getfilesystemencoding()} "
        "(run it with PYTHONUTF8=1 or a UTF-8 locale)"
    )


def shown(name: str) -> str:
    """A name for a one-line message: what name_problem refuses as escapes (\\xff for a byte
    that is not UTF-8, \\n, \\u2028), everything else as it is."""
    out = []
    for ch in name:
        code, category = ord(ch), unicodedata.category(ch)
        if category == "Cs":
            out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
        elif category in ("Cc", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def name_skip_reason(parts: list[str]) -> str | None:
    """Skip reason from the path alone (`parts` = path components below the split folder)."""
    if any(p.startswith(".") or p.lower() in SYSTEM_FILES for p in parts):
        return "hidden or system file"
    if len(parts) < 2:
        return "not inside a class folder"
    return None


def sniff_format(data: bytes) -> str | None:
    """The real format from the leading bytes (never the extension); None if not an image."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:2] == b"\xff\x0a" or data[4:12] == b"JXL \r\n\x87\n":
        return "jxl"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif"):
        return "heif/avif"
    if data[:4] == b"\x00\x00\x01\x00":
        return "ico"
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tf_message(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    return " ".join(_TF_NOISE.sub("", text).split())


def decode(data: bytes, channels: int = 0) -> tf.Tensor:
    """tf.io.decode_image as training uses it; a decode failure raises SkipFile."""
    import tensorflow as tf

    try:
        return tf.io.decode_image(data, channels=channels, expand_animations=False)
    except tf.errors.OpError as e:
        fmt = sniff_format(data)
        raise SkipFile(
            f"undecodable {fmt} (corrupt, truncated or unsupported): {_tf_message(e)}"
        ) from None


def _too_large(data: bytes, max_image_pixels: int) -> str | None:
    try:
        header = image_header.read_header(data)
    except image_header.HeaderError:
        return None  # the decoder says what is wrong
    return header.too_large(max_image_pixels)


def check_image(
    relpath: str,
    data: bytes,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> StoredImage:
    """The image to store for one file's bytes, or SkipFile with the reason. An image whose
    header claims more than max_image_pixels pixels is skipped before it is decoded.

    The stored bytes are the file's own (WebP, which serving does not take, as lossless PNG of
    the same pixels): training, the Evaluator and serving all decode the same pixels. There is
    no downscaling option: a re-encoded copy would be what the gates score while clients send
    the originals (train/serve skew no gate could see)."""
    if not data:
        raise SkipFile("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        ext = posixpath.splitext(relpath)[1].lower()
        if ext in DOCUMENT_EXTENSIONS:
            raise SkipFile(f"not an image ({ext} file)", bad=False)
        raise SkipFile("not an image (unrecognized content)")
    if fmt not in KEPT_FORMATS:
        raise SkipFile(f"unsupported image format {fmt} (kept: {', '.join(KEPT_FORMATS)})")
    if max_image_pixels:
        too_large = _too_large(data, max_image_pixels)
        if too_large:
            raise SkipFile(too_large)
    image = decode(data)
    height, width, channels = (int(d) for d in image.shape)
    if fmt == "webp":
        import tensorflow as tf

        return StoredImage(tf.io.encode_png(image).numpy(), "png", height, width, channels, fmt)
    return StoredImage(data, fmt, height, width, channels, fmt)
