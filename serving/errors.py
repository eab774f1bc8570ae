"""A gRPC status carried as an exception, and TensorFlow errors turned into one-line statuses."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    import tensorflow as tf

# tf.errors codes are the gRPC codes (both follow google.rpc.Code).
_CODES = {code.value[0]: code for code in grpc.StatusCode}

_NOISE = ("Graph execution error", "Detected at node", "<stack traces unavailable>")


class StatusError(Exception):
    """A request failed with this gRPC status code and one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        self.message = " ".join(str(message).split())
        super().__init__(f"{code.name}: {self.message}")


MAX_ECHO = 64  # characters of a client-supplied string echoed in a message or a log line


def clip(text: object, limit: int = MAX_ECHO) -> str:
    """A client-supplied string, cut to `limit` characters (with the full length) for echoing."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} chars)"


def invalid(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.INVALID_ARGUMENT, message)


def code_from_number(number: int) -> grpc.StatusCode:
    return _CODES.get(int(number), grpc.StatusCode.UNKNOWN)


def clean_tf_message(message: str) -> str:
    """The one informative line of a TensorFlow runtime error (no node names, no op suffix)."""
    lines = []
    for line in str(message).splitlines():
        line = line.strip()
        if not line or line.startswith("[[") or line.startswith(_NOISE):
            continue
        lines.append(line)
    text = lines[0] if lines else str(message).strip()
    text = re.sub(r"\s*\[Op:[^\]]*\]$", "", text).replace("\\'", "'")
    # tf.debugging.Assert: "assertion failed: [message]" -> "message"
    match = re.fullmatch(r"assertion failed: \[(.*)\]", text)
    return match.group(1) if match else text


def from_tf_error(error: tf.errors.OpError) -> StatusError:
    """tf.errors.OpError -> StatusError with the same code and a clean message."""
    return StatusError(code_from_number(error.error_code), clean_tf_message(error.message))
