"""Patch statistics read straight from the patched ONNX (the verifier's own parse): how many
patches, which gate, how large the patch values are, and how much the model grew."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["patch_statistics"]

_PREFIX = "prune/patch/"


def patch_statistics(patched: bytes | None, original_size: int | None) -> dict[str, Any]:
    """Counts and magnitudes of the ``prune/patch/*`` initializers of the patched model's bytes
    (as read once by the report); sizes in bytes. Unreadable models, and models with any tensor
    stored as external data (decoding it would open a path on the auditor's disk), give
    ``{"status": "unreadable"}`` (the verification outcomes say why)."""
    import onnx
    from onnx import numpy_helper

    if patched is None:
        return {"status": "unreadable"}
    try:
        model = onnx.load_from_string(patched)
    except Exception:  # any decode error: the structure checks report it precisely
        return {"status": "unreadable"}
    if any(
        t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
        for t in model.graph.initializer
    ):
        return {"status": "unreadable"}
    params = {
        t.name[len(_PREFIX) :]: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.name.startswith(_PREFIX)
    }
    meta = {p.key: p.value for p in model.metadata_props}
    d = params.get("d")
    stats: dict[str, Any] = {
        "format": meta.get("prune.format", "missing"),
        "gate": meta.get("prune.gate", "missing"),
        "cut": meta.get("prune.cut", "missing"),
        "patches": int(d.shape[0]) if d is not None and d.ndim == 2 else 0,
        "affine_patches": "C" in params,
        "patch_parameters": int(sum(a.size for a in params.values())),
        "patched_model_bytes": len(patched),
    }
    if d is not None and d.size:
        stats["max_abs_patch_value"] = float(np.abs(d).max())
        stats["median_abs_patch_value"] = float(np.median(np.abs(d).max(axis=1)))
    if "n" in params:
        stats["support_sharpness_n"] = float(params["n"])
    if original_size:
        stats["original_model_bytes"] = original_size
        stats["size_growth"] = f"{stats['patched_model_bytes'] / original_size:.3f}x"
    return stats
