"""EXIF orientation of a JPEG, read and applied inside the TensorFlow graph.

A phone stores a photo taken upright as the sensor's landscape pixels plus an EXIF orientation
tag (1-8) saying how to turn them; viewers apply it, `tf.io.decode_image` does not. With
`example_gen.exif_transpose` (the default) `export.decode_and_resize`, the one decoder of the
Trainer's input pipeline, the Evaluator and the SavedModel's `serving_default`, turns the decoded
pixels as the tag says, as `PIL.ImageOps.exif_transpose` does. Being graph ops, the same code
runs in training and in TF Serving, so a raw upright phone JPEG gives the pixels training saw.

Only JPEG (where cameras write EXIF) is read: the APP1 segment that starts with `Exif\\0\\0`
within the first SEARCH_BYTES; in its TIFF header's first IFD, the first MAX_ENTRIES entries are
searched for tag 0x0112 (SHORT, count 1) inside the segment. Anything else (no EXIF, a PNG, a
truncated or malformed segment, offsets pointing outside it, a value outside 1-8) reads as 1:
the pixels stay as decoded. Nothing here can fail; every read is a bounded slice of the encoded
string, padded with zeros past its end. The turn is a transpose and flips of the resized image.
"""

from __future__ import annotations

import tensorflow as tf

# Bytes searched for the EXIF segment: it comes first after SOI, or after JFIF's APP0.
SEARCH_BYTES = 65536
# IFD0 entries searched for the orientation tag (entries are sorted by tag; 0x0112 comes early).
MAX_ENTRIES = 64
ORIENTATION_TAG = 0x0112
_SHORT = 3
_EXIF = "Exif\0\0"
# orientation - 1 -> (transpose, flip rows, flip columns), applied in that order: 5-8 swap
# height and width, 2 mirrors, 3 turns 180 degrees, 6 turns 90 degrees clockwise, 8 90 degrees
# counter-clockwise, 4, 5 and 7 mirror too.
_TRANSPOSE = (False, False, False, False, True, True, True, True)
_FLIP_ROWS = (False, False, True, True, False, False, True, True)
_FLIP_COLUMNS = (False, True, True, False, False, True, True, False)
_PERMS = ((0, 1, 2), (1, 0, 2))


def orientation(encoded: tf.Tensor) -> tf.Tensor:
    """int32 scalar 1-8: the EXIF orientation of an encoded JPEG; 1 for anything else.

    The APP1 segment is found by its `Exif\\0\\0` header within the first SEARCH_BYTES (a JPEG's
    compressed data cannot hold the FF E1 marker before it: FF is stuffed there), then checked:
    SOI at 0, the FF E1 marker and a length before the header, II or MM and 42 in the TIFF
    header; IFD0's first MAX_ENTRIES entries are searched for tag 0x0112 (SHORT, count 1) lying
    wholly inside the segment. No loop and no branch (in a tf.data map a branch is a function
    call that costs more than these few dozen ops)."""
    table_bytes = 2 + 12 * MAX_ENTRIES
    head = tf.strings.substr(encoded, 0, SEARCH_BYTES)
    parts = tf.concat([tf.strings.split(head, sep=_EXIF, maxsplit=1), [""]], axis=0)
    found = tf.equal(tf.strings.substr(encoded, 0, 2), b"\xff\xd8") & (tf.size(parts) > 2)
    at = tf.strings.length(parts[0], unit="BYTE")  # where "Exif" starts
    # the 4 bytes before it (FF E1 and the segment's length), and the TIFF data after it,
    # followed by zeros so that every read below is in range
    marker = tf.strings.substr(tf.strings.join(["\0\0\0\0", parts[0]]), at, 4)
    tiff = tf.strings.join([parts[1], "\0" * table_bytes])
    marker = tf.io.decode_raw(marker, tf.uint16, little_endian=False)
    segment_end = tf.cast(at - 2 + tf.cast(marker[1], tf.int32), tf.int64)  # from SOI
    head8 = tf.strings.substr(tiff, 0, 8)
    byte_order = tf.io.decode_raw(head8, tf.uint16)[0]
    little, big = tf.equal(byte_order, 0x4949), tf.equal(byte_order, 0x4D4D)  # "II", "MM"
    header = _words(head8, little)  # order, 42, IFD0's offset from the TIFF header (2 words)
    ifd = tf.where(little, header[2] + 65536 * header[3], 65536 * header[2] + header[3])
    last = tf.cast(tf.strings.length(tiff), tf.int64) - table_bytes  # past it: only zeros
    table = _words(tf.strings.substr(tiff, tf.minimum(ifd, last), table_bytes), little)
    entries = tf.reshape(table[1:], [MAX_ENTRIES, 6])  # tag, type, count (2 words), value, -
    # tag, type SHORT, count 1 (two words, low one first in II)
    wanted = tf.where(
        little,
        tf.constant([ORIENTATION_TAG, _SHORT, 1, 0], tf.int64),
        tf.constant([ORIENTATION_TAG, _SHORT, 0, 1], tf.int64),
    )
    ends = tf.cast(at, tf.int64) + 6 + ifd + 2 + 12 * tf.range(1, MAX_ENTRIES + 1, dtype=tf.int64)
    match = (
        (tf.range(MAX_ENTRIES, dtype=tf.int64) < table[0])
        & (ends <= segment_end)  # wholly inside the segment
        & tf.reduce_all(tf.equal(entries[:, 0:4], wanted), axis=1)
    )
    value = tf.reduce_max(tf.where(match, entries[:, 4], 0))
    valid = (
        found
        & (at >= 6)
        & tf.equal(marker[0], 0xFFE1)
        & (little | big)
        & tf.equal(header[1], 42)
        & (value >= 1)
        & (value <= 8)
    )
    return tf.cast(tf.where(valid, value, 1), tf.int32)


def _words(data: tf.Tensor, little: tf.Tensor) -> tf.Tensor:
    """int64 16-bit words of an even-length string in the TIFF's byte order."""
    le = tf.io.decode_raw(data, tf.uint16, little_endian=True)
    be = tf.io.decode_raw(data, tf.uint16, little_endian=False)
    return tf.cast(tf.where(little, le, be), tf.int64)


def swaps_sides(value: tf.Tensor) -> tf.Tensor:
    """Bool scalar: does orientation `value` swap height and width (5-8)?"""
    return tf.gather(tf.constant(_TRANSPOSE), tf.clip_by_value(value, 1, 8) - 1)


def apply_orientation(image: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """[H, W, C] pixels turned as EXIF orientation `value` (1-8) says, as
    PIL.ImageOps.exif_transpose turns them (5-8 swap height and width). Turning commutes with
    a bilinear resize (half-pixel centres: the sampling grid is symmetric), so it may run on the
    resized image, the cheaper one, resized to the swapped size when swaps_sides."""
    i = tf.clip_by_value(value, 1, 8) - 1
    perm = tf.gather(tf.constant(_PERMS), tf.cast(tf.gather(tf.constant(_TRANSPOSE), i), tf.int32))
    flips = tf.gather(tf.constant([_FLIP_ROWS, _FLIP_COLUMNS]), i, axis=1)
    turned = tf.reverse(tf.transpose(image, perm), tf.reshape(tf.where(flips), [-1]))
    turned.set_shape([None, None, image.shape[-1]])
    return turned
