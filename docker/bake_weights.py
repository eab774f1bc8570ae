"""The VGG19 ImageNet no-top weights baked into the image (the Dockerfile's `weights` stage).

    python3 docker/bake_weights.py --bake 1 --source /tmp/weights --dest /keras/models \
        --md5 253f8cb515780f3b799900260a226db6 --url https://.../vgg19_..._notop.h5

--bake 1 copies FILE from --source (a folder of the build context, for builders without egress)
when it is there, else downloads --url; either way the file must match --md5, the hash Keras
itself checks the download against (keras/src/applications/vgg19.py). --bake 0 bakes nothing.
Errors are one line naming both ways to supply the weights; nothing half-written stays.
Standard library only: it runs on the bare base image.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request

FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_MD5 = "253f8cb515780f3b799900260a226db6"  # keras.applications.vgg19, include_top=False
WAYS = (
    f"put {FILE} in weights/ of the build context, or build with BAKE_IMAGENET_WEIGHTS=0 and"
    " supply it at run time (trainer.weights: a file on a mounted volume, or a gs:// path)"
)


def md5_of(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bake(source: str, dest: str, md5: str, url: str) -> str:
    """Place FILE in dest, checked against md5; returns how it came ('copied' or 'downloaded')."""
    os.makedirs(dest, exist_ok=True)
    local = os.path.join(source, FILE)
    with tempfile.NamedTemporaryFile(dir=dest, prefix=".part-", delete=False) as part:
        try:
            if os.path.isfile(local):
                how = f"copied from {local}"
                with open(local, "rb") as f:
                    shutil.copyfileobj(f, part)
            else:
                how = f"downloaded from {url}"
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        shutil.copyfileobj(response, part)
                except (OSError, ValueError) as e:
                    raise SystemExit(f"bake_weights: cannot download {url} ({e}); {WAYS}") from None
            part.close()
            got = md5_of(part.name)
            if got != md5.lower():
                raise SystemExit(
                    f"bake_weights: {FILE} {how} has MD5 {got}, not {md5} (Keras's VGG19 no-top"
                    f" file has {KERAS_MD5}; build arg VGG19_NOTOP_MD5)"
                )
            os.replace(part.name, os.path.join(dest, FILE))
        finally:
            if os.path.exists(part.name):
                os.remove(part.name)
    return how


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bake", choices=["0", "1"], required=True, help="BAKE_IMAGENET_WEIGHTS")
    p.add_argument("--source", required=True, help="folder that may hold FILE (no download)")
    p.add_argument("--dest", required=True, help="$KERAS_HOME/models of the image")
    p.add_argument("--md5", default=KERAS_MD5, help="the file's expected MD5")
    p.add_argument("--url", required=True, help="where to download FILE from otherwise")
    args = p.parse_args(argv)
    os.makedirs(args.dest, exist_ok=True)
    if args.bake == "0":
        print("bake_weights: BAKE_IMAGENET_WEIGHTS=0: no weights in the image")
        return
    how = bake(args.source, args.dest, args.md5, args.url)
    print(f"bake_weights: {os.path.join(args.dest, FILE)} {how}, MD5 {args.md5}")


if __name__ == "__main__":
    sys.exit(main())
