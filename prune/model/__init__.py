"""Model import: an ONNX model in, its piecewise-linear head after a cut tensor out.

The prefix (everything before the cut) may use any ONNX op and is evaluated with onnxruntime;
the head (cut to logits) must be affine ops and Relu and is converted to dense float64 layers.
Default cut: the model input when the whole model converts, else the tensor ``features`` (the CNN
feature tensor of ``prune train``), else the caller must name one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError
from prune.model._graph import GraphIndex, default_opset, parse_model
from prune.model._head import AffineLayer, PLHead, extract_head
from prune.model._runtime import Device, OrtRunner

__all__ = [
    "DEFAULT_FEATURE_CUT",
    "AffineLayer",
    "Device",
    "ImportedModel",
    "OrtRunner",
    "PLHead",
    "load_model",
]

DEFAULT_FEATURE_CUT = "features"


@dataclass(frozen=True, eq=False)
class ImportedModel:
    """An ONNX model ready to patch: the original bytes (never modified), its single input and
    per-sample input shape, and the PL head after the cut."""

    raw: bytes
    proto: Any
    input_name: str
    input_shape: tuple[int, ...]
    head: PLHead
    opset: int

    @property
    def input_space(self) -> bool:
        """True when the cut is the model input (the region lives in input space)."""
        return self.head.cut == self.input_name

    def cut_values(
        self, x: NDArray[np.float32], *, device: Device = "cpu", batch_size: int = 4096
    ) -> NDArray[np.float32]:
        """The cut tensor for each sample, flattened to ``[N, d]`` (float32, as the runtime
        computes it: the prefix runs in onnxruntime)."""
        if self.input_space:
            return np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        runner = OrtRunner(self.raw, outputs=[self.head.cut], device=device)
        return runner.run(x, batch_size=batch_size)[0].reshape(len(x), -1)

    def logits(
        self, x: NDArray[np.float32], *, device: Device = "cpu", batch_size: int = 4096
    ) -> NDArray[np.float32]:
        """The original model's logits by onnxruntime."""
        runner = OrtRunner(self.raw, outputs=[self.head.output], device=device)
        return runner.run(x, batch_size=batch_size)[0]


def load_model(raw: bytes, *, cut: str | None = None) -> ImportedModel:
    """Parse ``raw`` ONNX bytes and extract the head after ``cut`` (see the module docstring for
    the default). Raises :class:`ModelImportError` naming the op and node that blocks it."""
    proto = parse_model(raw)
    index = GraphIndex.build(proto)
    input_shape = index.sample_shape(index.input_name)
    if cut is not None:
        head = extract_head(index, cut)
    else:
        try:
            head = extract_head(index, index.input_name)
        except ModelImportError as at_input:
            if DEFAULT_FEATURE_CUT not in index.tensor_names():
                raise ModelImportError(
                    f"cannot patch at the model input: {at_input}; pass --cut NAME (a tensor after "
                    "which the model is piecewise linear)"
                ) from at_input
            head = extract_head(index, DEFAULT_FEATURE_CUT)
    return ImportedModel(
        raw=raw,
        proto=proto,
        input_name=index.input_name,
        input_shape=input_shape,
        head=head,
        opset=default_opset(proto),
    )
