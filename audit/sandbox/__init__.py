"""Running untrusted models: a static admission test on the graph (:func:`admit`) and one
long-lived child process with hard limits per command (:class:`Sandbox`). Every onnxruntime run
of an owner-supplied model on the auditor side goes through :class:`audit.runtime.OnnxModel`,
which uses both."""

from __future__ import annotations

from audit.sandbox._policy import (
    ALLOWED_OPS,
    GraphCost,
    UnsafeModelError,
    admit,
    has_external_data,
)
from audit.sandbox._process import (
    ModelRunError,
    Sandbox,
    SandboxLimitError,
    SandboxLimits,
    configure,
    current,
    sandboxed,
)

__all__ = [
    "ALLOWED_OPS",
    "GraphCost",
    "ModelRunError",
    "Sandbox",
    "SandboxLimitError",
    "SandboxLimits",
    "UnsafeModelError",
    "admit",
    "configure",
    "current",
    "has_external_data",
    "sandboxed",
]
