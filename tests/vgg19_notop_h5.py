"""A stand-in for Keras's VGG19 ImageNet no-top weights file, for machines without egress.

    python3 tests/vgg19_notop_h5.py OUT.h5

Writes VGG19(include_top=False) with random weights in the file's own layout: a legacy Keras
HDF5 weights file (top-level `layer_names`, one group per layer with its `weight_names`), the
format keras.applications downloads (vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5) and
`Model.load_weights` reads with its legacy loader for a name ending in `.h5` (not
`.weights.h5`). Same layer names and shapes as the real file, so whatever loads this loads the
real one; the values are random, so a model on them learns little. Used by tests/test_deploy.py
and, mounted into the image, by docker/image-test.sh.
"""

from __future__ import annotations

import os
import sys


def write(path: str, seed: int = 0) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG19(weights=None, include_top=False)
    part = path + ".part"
    with h5py.File(part, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    os.replace(part, path)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".h5"):
        sys.exit("usage: python3 tests/vgg19_notop_h5.py OUT.h5")
    write(sys.argv[1])
    print(f"wrote {sys.argv[1]}: VGG19 no-top, legacy Keras HDF5 layout, random weights")
