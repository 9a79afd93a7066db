"""The patch parameter digest that binds a certificate to the exact patch in the model.

``sha256(canonical_json({name: sha256(little-endian float32 bytes)}))`` over the initializers
whose names start with ``prune/patch/`` (docs/FORMATS.md). The routed gate's integer tables
(uint8 packed patterns, int32 tree) are digested as ``"<dtype>:" + sha256(little-endian bytes)``,
so a float32-only patch digests exactly as before and no value can pass for another dtype's. Values are decoded with ONNX's own
reader, so raw_data and float_data encodings of the same tensor give the same digest."""

from __future__ import annotations

from typing import Any

import numpy as np

from prune.formats._canonical import canonical_json, sha256_hex
from prune.formats.errors import MalformedError

__all__ = ["PATCH_PREFIX", "patch_parameter_digest"]

PATCH_PREFIX = "prune/patch/"
# ONNX TensorProto data types: FLOAT = 1, UINT8 = 2, INT32 = 6 -> (digest tag, numpy dtype)
_DTYPES = {1: ("", "<f4"), 2: ("uint8:", "u1"), 6: ("int32:", "<i4")}


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_model_from_string(bytes(model))
        except Exception as exc:  # protobuf's DecodeError has no stable public base class
            raise MalformedError(
                f"patch digest: not an ONNX model ({exc.__class__.__name__})"
            ) from exc
    if isinstance(model, onnx.ModelProto):
        return model
    raise MalformedError(
        f"patch digest: expected ONNX bytes or ModelProto, got {type(model).__name__}"
    )


def patch_parameter_digest(model: Any) -> str:
    """Digest (hex) of the ``prune/patch/`` initializers of ``model`` (``onnx.ModelProto`` or the
    serialized bytes). Every such initializer must be float32, uint8 or int32 and names must be
    unique; a model without patch initializers digests the empty object."""
    from onnx import TensorProto, numpy_helper

    proto = _load(model)
    digests: dict[str, str] = {}
    for tensor in proto.graph.initializer:
        if not tensor.name.startswith(PATCH_PREFIX):
            continue
        if tensor.name in digests:
            raise MalformedError(f"patch digest: initializer {tensor.name!r} appears twice")
        if tensor.data_type not in _DTYPES:
            raise MalformedError(
                f"patch digest: initializer {tensor.name!r} is not float32, uint8 or int32"
            )
        if tensor.data_location == TensorProto.EXTERNAL:
            # never follow a path chosen by the party being audited
            raise MalformedError(f"patch digest: initializer {tensor.name!r} uses external data")
        try:
            array = numpy_helper.to_array(tensor)
        except Exception as exc:  # a corrupt tensor
            raise MalformedError(f"patch digest: cannot read initializer {tensor.name!r}") from exc
        tag, dtype = _DTYPES[tensor.data_type]
        raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
        digests[tensor.name] = tag + sha256_hex(raw)
    return sha256_hex(canonical_json(digests))
