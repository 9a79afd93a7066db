"""onnxruntime sessions for the verifier: CUDA when onnxruntime-gpu sees a device, CPU otherwise.

Every session lives in the sandbox's worker process (:mod:`audit.sandbox`), behind the static
admission test. The verifier only ever runs models through here, so that every replayed query uses the same
runtime the model will be served with, never the owner's PyTorch code."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.proof import Limits, read_bounded
from audit.sandbox import ModelRunError, Sandbox, admit, current

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
    """A loaded ONNX model with batched float32 inference, run in the sandbox.

    The graph passes :func:`audit.sandbox.admit` first (bounded ops, static shapes, declared
    sizes under the budget); the session lives in the command's sandbox worker
    (:func:`audit.sandbox.current`), never in this process. ``extra_outputs`` exposes
    intermediate tensors (e.g. hidden pre-activations) as additional outputs of an in-memory
    copy; the file on disk is never changed. A model given as a path is read with the bounded,
    no-follow loader. Failures are :class:`~audit.sandbox.ModelRunError` (the model's fault, a
    failed check) or :class:`~audit.sandbox.SandboxLimitError` (a limit was hit)."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        extra_outputs: Sequence[str] = (),
        device: str = "auto",
        threads: int | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        import onnx

        box = sandbox or current()
        if isinstance(model, Path):
            raw = read_bounded(model, Limits().model_bytes, what=f"model {model}")
        else:
            raw = model
        try:
            proto = onnx.load_from_string(raw)
        except Exception as exc:  # onnx raises DecodeError subclasses of Exception
            raise ModelRunError(f"not an ONNX model ({exc.__class__.__name__})") from exc
        self.logits_name: str | None = _declared_logits(proto)
        wanted = [*extra_outputs]
        if self.logits_name is not None:
            wanted.append(self.logits_name)
        known = {o.name for o in proto.graph.output}
        if any(name not in known for name in wanted):
            for name in dict.fromkeys(wanted):
                if name not in known:
                    proto.graph.output.append(onnx.ValueInfoProto(name=name))
            raw = proto.SerializeToString()
        self._cost = admit(proto, budget=box.limits.tensor_budget)
        providers = available_providers(device)
        self._box = box
        self._worker, answer = box.load(raw, providers=providers, threads=threads)
        self._id = int(answer["id"])
        weakref.finalize(self, box.drop, self._worker, self._id)
        inputs = answer["inputs"]
        if len(inputs) != 1:
            raise ModelRunError(f"the model must have exactly one input, it has {len(inputs)}")
        self.input_name: str = str(inputs[0][0])
        self.input_shape: tuple[Any, ...] = tuple(inputs[0][1])
        self.output_names: list[str] = [str(o) for o in answer["outputs"]]
        self.providers: list[str] = [str(p) for p in answer["providers"]]

    def run(
        self,
        x: NDArray[np.float32],
        *,
        outputs: Sequence[str] | None = None,
        batch_size: int = 4096,
    ) -> list[NDArray[np.float32]]:
        """Run in batches; returns one array per requested output (default: all outputs).
        Batches are cut so that the graph's declared values fit the sandbox's tensor budget."""
        names = list(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise InputError(f"the model has no output {unknown[0][:60]!r}")
        expected = tuple(d for d in self.input_shape[1:])
        if all(isinstance(d, int) for d in expected) and tuple(x.shape[1:]) != expected:
            raise InputError(
                f"samples have shape {tuple(x.shape[1:])}, the model expects {expected}"
            )
        rows = min(batch_size, self._cost.max_rows(self._box.limits.tensor_budget))
        parts: list[list[NDArray[np.float32]]] = [[] for _ in names]
        for i in range(0, max(len(x), 1), rows):
            batch = np.ascontiguousarray(x[i : i + rows], dtype=np.float32)
            outs = self._box.run(
                self._worker, self._id, batch, names, max_bytes=self._box.limits.max_memory
            )
            for j, out in enumerate(outs):
                parts[j].append(out)
        return [np.concatenate(p) if p else np.zeros((0,), np.float32) for p in parts]

    @classmethod
    def for_logits(cls, model: bytes, *, device: str = "auto") -> OnnxModel:
        """The model cut down to its declared logits (:func:`_declared_logits`): the output
        tail after them (Softmax, ArgMax, ``ai.onnx.ml`` label maps that the sandbox does not
        run) is a function of the logits, checked node for node by ``audit verify``'s
        ``structure.patch``; whoever needs only the classifier's scores runs this."""
        import onnx

        from audit.verify._graph import up_to

        try:
            proto = onnx.load_from_string(model)
        except Exception as exc:  # onnx raises DecodeError subclasses of Exception
            raise ModelRunError(f"not an ONNX model ({exc.__class__.__name__})") from exc
        name = _declared_logits(proto)
        if name is None:
            raise ModelRunError(
                f"the model has {len(proto.graph.output)} outputs and no Softmax/LogSoftmax/"
                "ArgMax to tell its logits from them"
            )
        if [o.name for o in proto.graph.output] != [name]:
            model = up_to(proto, [name])
        return cls(model, device=device)

    def logits(self, x: NDArray[np.float32], *, batch_size: int = 4096) -> NDArray[np.float32]:
        """The declared logits (:func:`_declared_logits`): ``prune/output`` of a patched model,
        else the tensor the output tail reads (skl2onnx's label + probabilities models have
        their logits inside the graph), else the single output."""
        if self.logits_name is None:
            raise ModelRunError(
                f"the model has {len(self.output_names)} outputs and no Softmax/LogSoftmax/"
                "ArgMax to tell its logits from them"
            )
        return self.run(x, outputs=[self.logits_name], batch_size=batch_size)[0]


def _declared_logits(proto: Any) -> str | None:
    """The logits tensor of ``proto``: ``prune/output`` when the graph outputs it (a patched
    model, docs/FORMATS.md "Output tail"), else the verifier's own output-tail reading of the
    graph; ``None`` when it has several outputs and no tail to tell the logits by."""
    from audit.verify._framework import CheckUnavailable
    from audit.verify._graph import PATCH_OUTPUT, output_tail

    if any(o.name == PATCH_OUTPUT for o in proto.graph.output):
        return PATCH_OUTPUT
    try:
        return output_tail(proto)[0]
    except CheckUnavailable:
        return None
