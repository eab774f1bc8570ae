"""The serving contract of a SavedModel: what a gRPC client relies on, and how two differ.

A client of a served model depends on
- its labels (`assets/labels.txt`): the set, and the order (class id i means labels[i]);
- its signatures: their names, and each input's and output's name, dtype and shape
  (`probabilities` [-1, C] carries the number of classes);
- the input it expects (`assets/preprocessing.json`, written at export: image size, channels,
  colour order, pixel range, resize method, whether a JPEG's EXIF orientation is applied), which
  `predict_pixels` clients reproduce.

Explanation signatures (`grad_cam`: trainer/explain.py) are read into `explanations`, apart from
`signatures`: the Evaluator calls them, no client relies on them, so adding or dropping one is a
note of `compare`, not a difference.

`read_contract(saved_model)` reads these without loading the model (saved_model.pb is parsed as
a protocol buffer); `differences(served, candidate)` names every difference in words, e.g.
`labels changed: removed 'two'` or `output 'probabilities' shape [-1,3] -> [-1,2] in
serving_default, predict_pixels`. The Pusher refuses a candidate whose contract differs from
the newest served version's unless `pusher.allow_contract_change` is set.
"""

from __future__ import annotations

from typing import Any

from pipeline_components.core import artifacts, fsutil
from pipeline_components.core.errors import PipelineError

# preprocessing.json keys a client must match; the others (backbone, ...) are informational
CLIENT_PREPROCESSING_KEYS = ("image_size", "channels", "color", "pixel_range", "resize")
# What a key recorded since means for a model exported before it (the EXIF orientation was
# ignored until `example_gen.exif_transpose`).
ABSENT_PREPROCESSING = {"exif_transpose": False}
# Keys whose change is noted, never refused: clients send the same bytes either way (a JPEG's
# EXIF orientation applied or not changes what the model sees of a rotated photo, not the API).
NOTED_PREPROCESSING_KEYS = ("exif_transpose",)


def read_signature_defs(path: str) -> dict:
    """The SignatureDefs of the `serve` MetaGraph (protos), as TF Serving reports them."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb = fsutil.join(path, artifacts.SAVED_MODEL_PB)
    if fsutil.exists(pb):
        saved_model.ParseFromString(fsutil.read_bytes(pb))
    else:
        text_format.Parse(
            fsutil.read_text(fsutil.join(path, artifacts.SAVED_MODEL_FILES[1])), saved_model
        )
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError("the SavedModel has no MetaGraph tagged 'serve'")


def _tensor(info: Any) -> dict:
    from tensorflow.core.framework import types_pb2

    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    return {"dtype": types_pb2.DataType.Name(info.dtype), "shape": shape}


def read_contract(saved_model: str) -> dict:
    """{"labels", "signatures": {name: {"inputs", "outputs"}}, "preprocessing"} of a SavedModel
    (preprocessing None when it was exported without assets/preprocessing.json)."""
    try:
        defs = read_signature_defs(saved_model)
    except Exception as e:
        raise PipelineError(f"cannot read the signatures of {saved_model}: {e}") from None
    signatures = {
        name: {
            "inputs": {k: _tensor(v) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _tensor(v) for k, v in sorted(sig.outputs.items())},
        }
        for name, sig in sorted(defs.items())
        if not name.startswith("__")  # __saved_model_init_op: not a serving signature
    }
    # explanations (grad_cam) are recorded apart: no client of the served model relies on them
    explanations = {
        name: signatures.pop(name)
        for name in artifacts.EXPLANATION_SIGNATURES
        if name in signatures
    }
    labels = None
    if fsutil.exists(artifacts.labels_asset(saved_model)):
        labels = artifacts.read_labels_asset(saved_model)
    return {
        "labels": labels,
        "signatures": signatures,
        "explanations": explanations,
        "preprocessing": artifacts.read_preprocessing_asset(saved_model),
    }


def shape_text(shape: list[int] | None) -> str:
    return "unknown" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def _label_differences(old: list[str] | None, new: list[str] | None) -> list[str]:
    if old == new:
        return []
    if old is None or new is None:
        return [f"labels changed: assets/labels.txt {'added' if old is None else 'removed'}"]
    removed = [x for x in old if x not in new]
    added = [x for x in new if x not in old]
    parts = [f"removed {x!r}" for x in removed] + [f"added {x!r}" for x in added]
    if not parts:
        parts = [f"order {old} -> {new}"]
    return ["labels changed: " + ", ".join(parts)]


def _image_size(contract: dict) -> list[int] | None:
    """The input image size: recorded at export, else from a 4-D float input's shape."""
    recorded = (contract.get("preprocessing") or {}).get("image_size")
    if recorded:
        return [int(x) for x in recorded]
    for sig in contract["signatures"].values():
        for tensor in sig["inputs"].values():
            shape = tensor["shape"]
            if shape and len(shape) == 4 and tensor["dtype"] in ("DT_FLOAT", "DT_HALF"):
                return [int(shape[1]), int(shape[2])]
    return None


def _tensor_differences(kind: str, old: dict, new: dict) -> list[str]:
    """The differences between the inputs (or outputs) of one signature in two contracts."""
    found = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            found.append(f"{kind} {name!r} removed")
        elif name not in old:
            found.append(f"{kind} {name!r} added")
        else:
            a, b = old[name], new[name]
            if a["dtype"] != b["dtype"]:
                found.append(f"{kind} {name!r} dtype {a['dtype']} -> {b['dtype']}")
            if a["shape"] != b["shape"]:
                old_shape, new_shape = shape_text(a["shape"]), shape_text(b["shape"])
                found.append(f"{kind} {name!r} shape {old_shape} -> {new_shape}")
    return found


def differences(served: dict, candidate: dict) -> list[str]:
    """Every difference between two contracts (read_contract), in words; [] when a client of
    `served` works unchanged with `candidate`."""
    found = _label_differences(served.get("labels"), candidate.get("labels"))
    old_sigs, new_sigs = served["signatures"], candidate["signatures"]
    for name in sorted(set(old_sigs) - set(new_sigs)):
        found.append(f"signature {name!r} removed")
    for name in sorted(set(new_sigs) - set(old_sigs)):
        found.append(f"signature {name!r} added")
    merged: dict[str, list[str]] = {}
    for name in [n for n in old_sigs if n in new_sigs]:
        for kind in ("input", "output"):
            old_t, new_t = old_sigs[name][kind + "s"], new_sigs[name][kind + "s"]
            for text in _tensor_differences(kind, old_t, new_t):
                merged.setdefault(text, []).append(name)
    found += [f"{text} in {', '.join(names)}" for text, names in merged.items()]
    old_size, new_size = _image_size(served), _image_size(candidate)
    if old_size != new_size:
        found.append(f"input image size {shape_text(old_size)} -> {shape_text(new_size)}")
    old_pre, new_pre = served.get("preprocessing"), candidate.get("preprocessing")
    if old_pre is not None and new_pre is not None:
        for key in CLIENT_PREPROCESSING_KEYS:
            old_v = old_pre.get(key, ABSENT_PREPROCESSING.get(key))
            new_v = new_pre.get(key, ABSENT_PREPROCESSING.get(key))
            if key != "image_size" and old_v != new_v:
                found.append(f"preprocessing {key!r} {old_v} -> {new_v}")
    return found


def compare(served_model: str, candidate_model: str) -> dict:
    """{"differences": [...], "notes": [...]} between a served SavedModel and a candidate."""
    served, candidate = read_contract(served_model), read_contract(candidate_model)
    notes = []
    old_x, new_x = set(served.get("explanations") or {}), set(candidate.get("explanations") or {})
    for name in sorted(new_x - old_x):
        notes.append(f"explanation signature {name!r} added (not part of the serving contract)")
    for name in sorted(old_x - new_x):
        notes.append(f"explanation signature {name!r} removed (not part of the serving contract)")
    if served.get("preprocessing") is None:
        notes.append(
            f"{served_model} was exported without {artifacts.ASSETS_DIR}/"
            f"{artifacts.PREPROCESSING_ASSET}: its input image size comes from its signatures"
        )
    old_pre, new_pre = served.get("preprocessing") or {}, candidate.get("preprocessing") or {}
    for key in NOTED_PREPROCESSING_KEYS:
        old_v = old_pre.get(key, ABSENT_PREPROCESSING.get(key))
        new_v = new_pre.get(key, ABSENT_PREPROCESSING.get(key))
        if served.get("preprocessing") is not None and old_v != new_v:
            notes.append(f"preprocessing {key!r} {old_v} -> {new_v} (same request; not refused)")
    return {"differences": differences(served, candidate), "notes": notes}
