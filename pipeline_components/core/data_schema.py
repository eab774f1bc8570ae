"""The Schema contract (`schema.yaml`, written by SchemaGen, read by the ExampleValidator): what
every run's data is expected to look like, as an editable, commented YAML file a team commits
and passes back in with `schema_gen.schema_path`.

    version: 1
    classes: [circles, squares]        # exactly these classes (labels.txt), in any order
    formats: [jpeg]                    # image/format values allowed
    channels: [3]                      # image/channels values allowed
    max_fraction_outside: 0.01         # share of a split's images allowed outside a range below
    image:                             # every {min, max} is inclusive; null = unbounded
      width: {min: 16, max: 64}        # pixels
      height: {min: 16, max: 64}
      megapixels: {min: 0.000256, max: 0.004096}
      encoded_bytes: {min: 300, max: 4000}
    splits:                            # a split not listed here is not checked
      train:
        num_examples: {min: 12, max: null}
        class_shares:
          circles: {min: 0.4, max: 0.6}

`parse` checks all of it and names the field at fault in one line; `render` writes it back with
the comments that explain each field.
"""

from __future__ import annotations

import decimal
import math
import re
from typing import Any

import yaml

from pipeline_components.core import fsutil
from pipeline_components.core.config import safe_load
from pipeline_components.core.data_stats import FEATURES, UNITS
from pipeline_components.core.errors import PipelineError

VERSION = 1
TOP_KEYS = ("version", "classes", "formats", "channels", "max_fraction_outside", "image", "splits")
SPLIT_KEYS = ("num_examples", "class_shares")


class _Checker:
    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, what: str, value: Any) -> None:
        raise PipelineError(f"{self.source}: {where}: {what}, got {value!r}")

    def mapping(self, value: Any, where: str, keys: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            self.fail(where, "expected a mapping", value)
        if keys is not None:
            for key in value:
                if key not in keys:
                    self.fail(where, f"unknown key {key!r} (known: {', '.join(keys)})", key)
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(where, "expected a list of names", value)
        if len(set(value)) != len(value):
            self.fail(where, "expected names without repeats", value)
        return list(value)

    def number(self, value: Any, where: str, low: float = 0.0, high: float = math.inf) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not (low <= value <= high) or not math.isfinite(value):
            span = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
            self.fail(where, f"expected a number {span}", value)
        return value

    def bounds(self, value: Any, where: str, high: float = math.inf) -> dict:
        self.mapping(value, where, ("min", "max"))
        out = {}
        for key in ("min", "max"):
            v = value.get(key)
            out[key] = None if v is None else self.number(v, f"{where}.{key}", 0.0, high)
        if out["min"] is not None and out["max"] is not None and out["min"] > out["max"]:
            self.fail(where, "min must not exceed max", value)
        return out


def parse(data: Any, source: str = "schema") -> dict:
    """A checked schema dict from YAML data; one-line PipelineError naming the field at fault."""
    c = _Checker(source)
    c.mapping(data, "top level", TOP_KEYS)
    if data.get("version") != VERSION:
        c.fail("version", f"expected {VERSION}", data.get("version"))
    schema: dict[str, Any] = {"version": VERSION}
    for key in ("classes", "formats"):
        if key not in data:
            c.fail(key, "is required", None)
        schema[key] = c.strings(data[key], key)
    channels = data.get("channels", [1, 2, 3, 4])
    if not isinstance(channels, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4 for v in channels
    ):
        c.fail("channels", "expected a list of channel counts (1 to 4)", channels)
    schema["channels"] = channels
    schema["max_fraction_outside"] = c.number(
        data.get("max_fraction_outside", 0.0), "max_fraction_outside", 0.0, 1.0
    )
    image = c.mapping(data.get("image") or {}, "image", FEATURES)
    schema["image"] = {f: c.bounds(v, f"image.{f}") for f, v in image.items()}
    splits = c.mapping(data.get("splits") or {}, "splits")
    schema["splits"] = {}
    for split, spec in splits.items():
        where = f"splits.{split}"
        c.mapping(spec, where, SPLIT_KEYS)
        out: dict[str, Any] = {}
        if "num_examples" in spec:
            out["num_examples"] = c.bounds(spec["num_examples"], f"{where}.num_examples")
        shares = c.mapping(spec.get("class_shares") or {}, f"{where}.class_shares")
        for name in shares:
            if name not in schema["classes"]:
                c.fail(f"{where}.class_shares", "names a class not in 'classes'", name)
        out["class_shares"] = {
            name: c.bounds(b, f"{where}.class_shares.{name}", 1.0) for name, b in shares.items()
        }
        schema["splits"][split] = out
    return schema


def loads(text: str, source: str = "schema") -> dict:
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise PipelineError(
            f"{source} is not valid YAML{where}: {getattr(e, 'problem', e)}"
        ) from None
    return parse(data, source)


def load(path: str) -> dict:
    """Read and check a schema file."""
    try:
        text = fsutil.read_text(path)
    except Exception:
        raise PipelineError(f"schema {path} does not exist or cannot be read") from None
    return loads(text, f"schema {path}")


# --------------------------------------------------------------------------------- writing


def _value(v: Any) -> str:
    """YAML for a bound: positional notation (PyYAML reads `1e-05` as a string), exact."""
    if v is None:
        return "null"
    if isinstance(v, float):
        text = format(decimal.Decimal(repr(v)), "f")
        return text if "." in text else text + ".0"
    return str(v)


def _bounds(b: dict) -> str:
    return f"{{min: {_value(b.get('min'))}, max: {_value(b.get('max'))}}}"


# What a YAML double-quoted scalar may hold as it is: the characters PyYAML's reader accepts,
# less the ones YAML folds as line breaks (NEL, LS, PS) and the byte-order mark. Everything
# else is escaped, and no character outside the BMP is (json.dumps writes a surrogate pair,
# `\ud83d\udc36`, which YAML reads back as two lone surrogates instead of one emoji).
_LITERAL = re.compile(
    "[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def quote(text: str) -> str:
    """`text` as a YAML double-quoted scalar that reads back as exactly `text` (any alphabet,
    emoji included, written as themselves; quotes, backslashes and control characters escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif _LITERAL.match(ch):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02X}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04X}")
    return '"' + "".join(out) + '"'


def _names(names: list) -> str:
    return "[" + ", ".join(quote(n) if isinstance(n, str) else str(n) for n in names) + "]"


HEADER = """\
# Data schema for transfer-pipeline: what the ExampleValidator expects of every run's data.
# {origin}
# Edit it, commit it, and pass it in with `schema_gen: {{schema_path: <this file>}}`: a schema
# passed in is used as it is. Every {{min, max}} is inclusive; null means unbounded.
# How severe each anomaly is (fail stops the run before the Trainer, warn is reported) and the
# drift thresholds against the previous run's statistics are in pipeline.yaml, section
# example_validator.
"""


def render(schema: dict, origin: str = "") -> str:
    """The schema as commented YAML (parse(yaml.safe_load(render(s))) == s)."""
    lines = [HEADER.format(origin=origin or "Written by SchemaGen.").rstrip("\n")]
    lines += [
        f"version: {VERSION}",
        "# the classes (labels.txt): one missing from the data, or one not listed, is an anomaly",
        f"classes: {_names(schema['classes'])}",
        "# image/format values allowed (jpeg, png, gif, bmp)",
        f"formats: {_names(schema['formats'])}",
        "# image/channels values allowed (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)",
        f"channels: {_names(schema['channels'])}",
        "# the share of a split's images allowed outside a range of `image` (estimated from the",
        "# statistics' quantiles, to within one quantile step)",
        f"max_fraction_outside: {_value(schema['max_fraction_outside'])}",
        "image:",
    ]
    for feature, b in schema.get("image", {}).items():
        lines.append(f"  {feature}: {_bounds(b)}  # {UNITS[feature]}")
    lines += [
        "# per split: how many examples, and each class's share of them",
        "splits:" + ("" if schema.get("splits") else " {}"),
    ]
    for split, spec in schema.get("splits", {}).items():
        lines.append(f"  {split}:")
        if "num_examples" in spec:
            lines.append(f"    num_examples: {_bounds(spec['num_examples'])}")
        shares = spec.get("class_shares") or {}
        lines.append("    class_shares:" + ("" if shares else " {}"))
        for name, b in shares.items():
            lines.append(f"      {quote(name)}: {_bounds(b)}")
    return "\n".join(lines) + "\n"
