"""Command-line image arguments -> files: a file, a folder (its images, recursively) or a glob."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable

from .common import ClientError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
GLOB_CHARS = ("*", "?", "[")


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def local_folder(path: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if is_image_name(f)]
    return found


def expand_inputs(
    arguments: Iterable[str],
    *,
    isdir: Callable[[str], bool] = os.path.isdir,
    isfile: Callable[[str], bool] = os.path.isfile,
    folder: Callable[[str], list[str]] = local_folder,
    matches: Callable[[str], list[str]] = lambda p: sorted(glob.glob(p, recursive=True)),
) -> list[str]:
    """Files in the order given; a folder's images and a glob's matches sorted. A missing file,
    an empty folder or a glob matching nothing is a one-line error before anything is sent."""
    files: list[str] = []
    for argument in arguments:
        if any(c in argument for c in GLOB_CHARS) and not isfile(argument):
            found = [p for p in matches(argument) if not isdir(p)]
            if not found:
                raise ClientError(f"no file matches {argument}")
            files += found
        elif isdir(argument):
            found = folder(argument)
            if not found:
                raise ClientError(f"folder {argument} holds no {'/'.join(IMAGE_EXTENSIONS)} image")
            files += found
        elif isfile(argument):
            files.append(argument)
        else:
            raise ClientError(f"image file {argument} does not exist")
    return files
