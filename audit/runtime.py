"""onnxruntime sessions for the verifier: CUDA when onnxruntime-gpu sees a device, CPU otherwise.

The verifier only ever runs models through here, so that every replayed query uses the same
runtime the model will be served with, never the owner's PyTorch code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError

__all__ = ["OnnxModel", "available_providers"]


def available_providers(prefer: str = "auto") -> list[Any]:
    """Execution providers in preference order. ``prefer``: ``auto``, ``cuda`` or ``cpu``."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    if prefer == "cpu":
        return ["CPUExecutionProvider"]
    if prefer == "cuda" and "CUDAExecutionProvider" not in have:
        raise InputError("--device cuda asked for, but onnxruntime has no CUDA provider here")
    # TF32 off: a verifier compares float32 margins against certified bounds, and TF32 matmuls
    # move H100/H200 logits by ~3e-3, more than the owner's float32 slack.
    chosen: list[Any] = (
        [("CUDAExecutionProvider", {"use_tf32": "0"})] if "CUDAExecutionProvider" in have else []
    )
    return [*chosen, "CPUExecutionProvider"]


class OnnxModel:
    """A loaded ONNX model with batched float32 inference.

    ``extra_outputs`` exposes intermediate tensors (e.g. hidden pre-activations) as additional
    outputs of an in-memory copy; the file on disk is never changed."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        extra_outputs: Sequence[str] = (),
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        import onnx
        import onnxruntime as ort

        try:
            raw = model.read_bytes() if isinstance(model, Path) else model
            proto = onnx.load_from_string(raw)
        except (OSError, Exception) as exc:  # onnx raises DecodeError subclasses of Exception
            raise InputError(
                f"cannot read ONNX model {model if isinstance(model, Path) else ''}: {exc.__class__.__name__}".strip()
            ) from exc
        if extra_outputs:
            known = {o.name for o in proto.graph.output}
            for name in extra_outputs:
                if name not in known:
                    proto.graph.output.append(onnx.ValueInfoProto(name=name))
            raw = proto.SerializeToString()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                raw, sess_options=opts, providers=available_providers(device)
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise InputError(
                f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}"
            ) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"the model must have exactly one input, it has {len(inputs)}")
        self.input_name: str = inputs[0].name
        self.input_shape: tuple[Any, ...] = tuple(inputs[0].shape)
        self.output_names: list[str] = [o.name for o in self._session.get_outputs()]
        self.providers: list[str] = list(self._session.get_providers())

    def run(
        self,
        x: NDArray[np.float32],
        *,
        outputs: Sequence[str] | None = None,
        batch_size: int = 4096,
    ) -> list[NDArray[np.float32]]:
        """Run in batches; returns one array per requested output (default: all outputs)."""
        names = list(outputs) if outputs is not None else self.output_names
        expected = tuple(d for d in self.input_shape[1:])
        if all(isinstance(d, int) for d in expected) and tuple(x.shape[1:]) != expected:
            raise InputError(
                f"samples have shape {tuple(x.shape[1:])}, the model expects {expected}"
            )
        parts: list[list[NDArray[np.float32]]] = [[] for _ in names]
        for i in range(0, max(len(x), 1), batch_size):
            batch = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
            for j, out in enumerate(self._session.run(names, {self.input_name: batch})):
                parts[j].append(np.asarray(out, dtype=np.float32))
        return [np.concatenate(p) if p else np.zeros((0,), np.float32) for p in parts]

    def logits(self, x: NDArray[np.float32], *, batch_size: int = 4096) -> NDArray[np.float32]:
        """The first graph output (the logits, by the format's convention)."""
        return self.run(x, outputs=[self.output_names[0]], batch_size=batch_size)[0]
