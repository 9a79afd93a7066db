"""onnxruntime sessions on the owner side: the original model's prefix (to reach the cut tensor)
and the patched model (to re-check every claim with the runtime that will serve it).

The device is a parameter (``cpu`` or ``auto``, which takes CUDA when onnxruntime-gpu sees one);
nothing is chosen at import time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError

__all__ = ["Device", "OrtRunner"]

Device = Literal["cpu", "auto"]


class OrtRunner:
    """A float32 onnxruntime session over in-memory model bytes. ``outputs`` names the tensors to
    return (graph outputs or intermediate tensors, which are added as extra outputs of an
    in-memory copy)."""

    def __init__(
        self,
        raw: bytes,
        *,
        outputs: Sequence[str],
        device: Device = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnx
        import onnxruntime as ort

        proto = onnx.load_from_string(raw)
        known = {o.name for o in proto.graph.output}
        extra = [name for name in outputs if name not in known]
        for name in extra:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
        if extra:
            raw = proto.SerializeToString()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device == "auto" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(raw, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelImportError(f"onnxruntime cannot load the model: {first}") from exc
        self._input = self._session.get_inputs()[0].name
        self._outputs = list(outputs)

    def run(self, x: NDArray[np.float32], *, batch_size: int = 4096) -> list[NDArray[np.float32]]:
        """One float32 array per requested output, computed in batches of ``batch_size``.

        After the first batch (which gives the outputs' shapes), onnxruntime writes every batch
        straight into rows of the result arrays (I/O binding): the same kernels on the same
        rows, so the same values, without a per-batch output array and a final concatenation
        (measured on the Fashion-MNIST CNN's 60,000 x 784 cut values: a third fewer page
        faults and the 0.3-0.4 s of the copy). Outputs that are not float32 ``[rows, ...]``
        arrays are collected and converted as before."""
        if len(x) == 0:
            return self._collect(x, batch_size)
        first = self._batch(x, 0, batch_size)
        outs = self._session.run(self._outputs, {self._input: first})
        rows = len(first)
        if not all(o.dtype == np.float32 and o.ndim >= 1 and len(o) == rows for o in outs):
            parts = [[np.asarray(o, dtype=np.float32)] for o in outs]
            return self._collect(x, batch_size, start=rows, parts=parts)
        result = [np.empty((len(x), *o.shape[1:]), dtype=np.float32) for o in outs]
        for r, o in zip(result, outs, strict=True):
            r[:rows] = o
        binding = self._session.io_binding()
        for i in range(rows, len(x), batch_size):
            batch = self._batch(x, i, batch_size)
            binding.bind_cpu_input(self._input, batch)
            for name, r in zip(self._outputs, result, strict=True):
                part = r[i : i + len(batch)]
                binding.bind_output(name, "cpu", 0, np.float32, list(part.shape), part.ctypes.data)
            self._session.run_with_iobinding(binding)
        return result

    def _collect(
        self,
        x: NDArray[np.float32],
        batch_size: int,
        *,
        start: int = 0,
        parts: list[list[NDArray[np.float32]]] | None = None,
    ) -> list[NDArray[np.float32]]:
        """Batches from ``start`` on, each output converted to float32 and concatenated."""
        parts = parts if parts is not None else [[] for _ in self._outputs]
        for i in range(start, len(x), batch_size):
            batch = self._batch(x, i, batch_size)
            for j, out in enumerate(self._session.run(self._outputs, {self._input: batch})):
                parts[j].append(np.asarray(out, dtype=np.float32))
        return [np.concatenate(p) for p in parts]

    @staticmethod
    def _batch(x: NDArray[np.float32], i: int, batch_size: int) -> NDArray[np.float32]:
        return np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
