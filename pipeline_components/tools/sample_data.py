"""Generate an honest, learnable image dataset: procedurally drawn shapes, one class per shape.

`transfer-pipeline sample-data --output data/shapes --classes circles squares --per-class 40 15 15`
writes `<output>/{train,validation,test}/<class>/NNNN.jpg`. No download. With `--photo-like` the
images are large, textured JPEGs whose size and decode cost resemble camera photos (benchmarks).
"""

from __future__ import annotations

import argparse
import io
import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circles", "squares", "triangles", "stripes")
SPLITS = ("train", "validation", "test")


def _background(rng: np.random.Generator, w: int, h: int, photo_like: bool) -> Image.Image:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (
        np.linspace(0.0, 1.0, w)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(0.0, 1.0, h)[:, None, None]
    )
    img = (c0 * (1 - t) + c1 * t) * np.ones((h, w, 1))
    img += rng.normal(0, 25 if photo_like else 12, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def draw_shape(
    kind: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (64, 64),
    photo_like: bool = False,
) -> Image.Image:
    """One image of class `kind`: a randomly placed, sized, coloured and rotated shape."""
    w, h = size
    img = _background(rng, w, h, photo_like)
    if photo_like:  # clutter so the JPEG carries photo-like entropy
        clutter = ImageDraw.Draw(img)
        for _ in range(30):
            x, y = rng.integers(0, w), rng.integers(0, h)
            dot = int(rng.integers(2, max(3, min(w, h) // 12)))  # radius
            clutter.ellipse(
                [x - dot, y - dot, x + dot, y + dot],
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            )
        img = img.filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(img)
    s = min(w, h)
    r = rng.uniform(0.22, 0.38) * s
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    color = tuple(int(v) for v in rng.integers(0, 256, 3))
    # keep the shape visible against its background
    bg = np.asarray(img.getpixel((int(cx), int(cy))), dtype=float)
    if np.abs(np.asarray(color) - bg).sum() < 150:
        color = tuple(int(255 - v) for v in bg)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circles":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind in ("squares", "triangles"):
        n = 4 if kind == "squares" else 3
        pts = [
            (
                cx + r * math.cos(angle + 2 * math.pi * i / n),
                cy + r * math.sin(angle + 2 * math.pi * i / n),
            )
            for i in range(n)
        ]
        draw.polygon(pts, fill=color)
    elif kind == "stripes":
        step = max(2, int(s / rng.uniform(5, 9)))
        for off in range(-2 * s, 2 * s, 2 * step):
            dx, dy = math.cos(angle), math.sin(angle)
            x0, y0 = cx + off * -dy, cy + off * dx
            draw.line(
                [(x0 - 2 * s * dx, y0 - 2 * s * dy), (x0 + 2 * s * dx, y0 + 2 * s * dy)],
                fill=color,
                width=max(1, step // 2),
            )
    else:
        raise ValueError(f"unknown shape class {kind!r}; known: {', '.join(SHAPES)}")
    return img


def encode(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    pil_format = {
        "jpg": "JPEG",
        "jpeg": "JPEG",
        "png": "PNG",
        "bmp": "BMP",
        "gif": "GIF",
        "webp": "WEBP",
    }[fmt.lower()]
    img.save(
        buf, format=pil_format, **({"quality": quality} if pil_format in ("JPEG", "WEBP") else {})
    )
    return buf.getvalue()


def generate(
    output: str,
    classes: Sequence[str] = ("circles", "squares"),
    per_split: Sequence[int] = (40, 15, 15),
    size: tuple[int, int] = (64, 64),
    fmt: str = "jpg",
    seed: int = 0,
    photo_like: bool = False,
    splits: Sequence[str] = SPLITS,
) -> dict[str, dict[str, int]]:
    """Write the dataset; returns {split: {class: count}}. Splits with count 0 are not created."""
    rng = np.random.default_rng(seed)

    def write(cls: str, _index: int, path: str) -> None:
        with open(path, "wb") as f:
            f.write(encode(draw_shape(cls, rng, size, photo_like), fmt))

    return write_tree(output, classes, per_split, fmt, splits, write)


def write_tree(
    output: str,
    classes: Sequence[str],
    per_split: Sequence[int],
    fmt: str,
    splits: Sequence[str],
    write: Callable[[str, int, str], None],
) -> dict[str, dict[str, int]]:
    """Lay out `<output>/<split>/<class>/NNNN.<fmt>`, calling write(class, index, path) for
    each file; `index` counts a class's files across splits (0, 1, 2, ...), so no two files
    of a class share one. Returns {split: {class: count}}; splits with count 0 are skipped."""
    used = dict.fromkeys(classes, 0)
    counts: dict[str, dict[str, int]] = {}
    for split, n in zip(splits, per_split, strict=True):
        if n <= 0:
            continue
        for cls in classes:
            folder = os.path.join(output, split, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                write(cls, used[cls] + i, os.path.join(folder, f"{i:04d}.{fmt}"))
            used[cls] += n
            counts.setdefault(split, {})[cls] = n
    return counts


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfer-pipeline sample-data", description=__doc__.splitlines()[0]
    )
    p.add_argument("--output", required=True, help="dataset root to write")
    p.add_argument("--classes", nargs="+", default=["circles", "squares"], choices=SHAPES)
    p.add_argument(
        "--per-class",
        nargs=3,
        type=int,
        default=[40, 15, 15],
        metavar=("TRAIN", "VAL", "TEST"),
        help="images per class in train, validation, test (0 = omit the split)",
    )
    p.add_argument("--size", type=_size, default=(64, 64), help="WxH, e.g. 64x64 or 500x375")
    p.add_argument("--format", default="jpg", choices=["jpg", "png", "bmp", "gif", "webp"])
    p.add_argument("--photo-like", action="store_true", help="textured, photo-sized JPEG content")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = generate(
        args.output,
        args.classes,
        args.per_class,
        args.size,
        args.format,
        args.seed,
        args.photo_like,
    )
    total = sum(sum(c.values()) for c in counts.values())
    print(
        f"wrote {total} images to {args.output}: "
        + ", ".join(f"{s}={sum(c.values())}" for s, c in counts.items())
    )
    return 0
