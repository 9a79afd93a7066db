"""What the checks work on: the auditor's inputs (read eagerly, so a bad path is exit 2 before
anything runs) and the owner's artifacts (read lazily and memoised, so that a broken artifact
fails exactly the checks that need it, each with the same message).

Every value derived from the owner's files is computed here by the verifier itself: the head is
found in the original graph, the hidden pre-activations come from onnxruntime runs of the
original model, the patch parameters are read from the patched model's initializers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from audit.errors import InputError, VerificationError
from audit.proof import (
    PROOF_FILES,
    Limits,
    check_input_file,
    load_forget,
    load_public_key,
    load_reference,
    read_bounded,
)
from audit.runtime import OnnxModel, available_providers
from audit.verify._affine import AffineHead, parse_head
from audit.verify._framework import CheckUnavailable, Policy
from audit.verify._graph import (
    PATCH_OUTPUT,
    Head,
    find_head,
    load_onnx,
    metadata,
    sub_model,
    up_to,
)
from audit.verify._patch import ROUTED_GATES, PatchParams, read_patch
from prune.formats import (
    PAYLOAD_TYPE,
    Envelope,
    FormatError,
    Openings,
    Statement,
    UnlearningPredicate,
    sha256_hex,
    verify_envelope,
)

__all__ = ["Evaluation", "NonFiniteOutput", "VerifyContext", "VerifyInputs", "require_finite"]

T = TypeVar("T")
_BATCH = 1024  # keeps the patch subgraph's [batch, P, O] intermediates small (peak memory)
F64 = NDArray[np.float64]


class NonFiniteOutput(CheckUnavailable):
    """A model output the verifier reads holds NaN or infinity: every check that reads it fails
    (``argmax`` would pick a NaN, and every ``<``/``>`` comparison with NaN is False)."""


def require_finite(values: NDArray[Any], what: str) -> None:
    """Raise :class:`NonFiniteOutput` unless every entry of ``values`` is finite (numeric
    arrays only; any other dtype is refused as well)."""
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.number):
        raise NonFiniteOutput(f"{what}: non-numeric output of type {array.dtype}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).reshape(len(array), -1).any(axis=1).sum())
        raise NonFiniteOutput(f"{what}: NaN or infinity in {bad} of {len(array)} rows")


@dataclass(frozen=True, kw_only=True)
class VerifyInputs:
    """Paths given by the auditor. ``proof`` and ``public_key`` are always needed; the others
    enable the checks that need them (see :class:`~audit.verify.Policy`)."""

    proof: Path
    public_key: Path
    original: Path | None = None
    forget: Path | None = None
    reference: Path | None = None
    nonce_store: Path | None = None

    @property
    def given(self) -> frozenset[str]:
        names = {"original": self.original, "forget": self.forget, "reference": self.reference}
        return frozenset(k for k, v in names.items() if v is not None)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The original model on a batch, as measured by the verifier: the flattened cut ``x``
    ``[N, d]``, the concatenated hidden pre-activations ``z`` ``[N, H]`` and the logits."""

    x: NDArray[np.float32]
    z: NDArray[np.float32]
    logits: NDArray[np.float32]
    extra: dict[str, Any] = field(default_factory=dict)


class _Failed:
    def __init__(self, exc: VerificationError) -> None:
        self.exc = exc


class VerifyContext:
    """Shared, memoised state of one verification run. Methods raise
    :class:`~audit.errors.VerificationError` subclasses when an artifact is unusable."""

    def __init__(
        self,
        inputs: VerifyInputs,
        *,
        policy: Policy,
        limits: Limits,
        now: datetime,
        rng: np.random.Generator,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        if not inputs.proof.is_dir():
            raise InputError(f"proof folder {inputs.proof} does not exist or is not a folder")
        if now.tzinfo is None:
            raise InputError("verification time must be timezone-aware")
        available_providers(device)  # --device cuda without CUDA is a usage error (exit 2)
        self.inputs = inputs
        self.policy = policy
        self.limits = limits
        self.now = now
        self.rng = rng
        self.device = device
        self.threads = threads
        self.public_key: ec.EllipticCurvePublicKey = load_public_key(
            inputs.public_key, limits=limits
        )
        if inputs.original is not None:
            check_input_file(inputs.original, what="original model")
        self.reference: tuple[NDArray[np.float32], NDArray[np.int64]] | None = None
        if inputs.reference is not None:
            self.reference = load_reference(inputs.reference, limits=limits)
        if inputs.forget is not None:
            check_input_file(inputs.forget, what="forget set")
        self._cache: dict[str, Any] = {}

    def memo(self, key: str, make: Callable[[], T]) -> T:
        """``make()`` once; a failure is remembered and raised again to every later caller."""
        if key in self._cache:
            value = self._cache[key]
            if isinstance(value, _Failed):
                raise value.exc
            return value  # type: ignore[no-any-return]  # stored by this method under key
        try:
            value = make()
        except VerificationError as exc:
            self._cache[key] = _Failed(exc)
            raise
        self._cache[key] = value
        return value

    def providers(self) -> list[str] | None:
        """onnxruntime's execution providers for the deployed model, once it has been loaded."""
        model = self._cache.get("ort:patched")
        return list(model.providers) if isinstance(model, OnnxModel) else None

    # -- the owner's files ------------------------------------------------------------------

    def proof_file(self, kind: str) -> bytes:
        limit = {
            "model": self.limits.model_bytes,
            "certificate": self.limits.certificate_bytes,
            "signature": self.limits.signature_bytes,
        }[kind]
        path = self.inputs.proof / PROOF_FILES[kind]
        return self.memo(f"file:{kind}", lambda: read_bounded(path, limit, what=PROOF_FILES[kind]))

    def original_bytes(self) -> bytes:
        """The committed original model's bytes (the auditor names the file, the owner made it:
        an oversized or broken original fails the checks that need it)."""
        path = self.inputs.original
        if path is None:
            raise CheckUnavailable("no --original given")
        return self.memo(
            "file:original",
            lambda: read_bounded(path, self.limits.model_bytes, what="original model"),
        )

    def envelope(self) -> Envelope:
        def make() -> Envelope:
            try:
                return Envelope.from_json(self.proof_file("certificate"))
            except FormatError as exc:
                raise CheckUnavailable(f"certificate unreadable: {exc}") from exc

        return self.memo("envelope", make)

    def statement(self) -> Statement:
        """The certificate's statement, parsed strictly but *not* authenticated here: the
        signature check does that, and a failed signature fails the verdict."""

        def make() -> Statement:
            try:
                return Statement.from_json(self.envelope().payload)
            except FormatError as exc:
                raise CheckUnavailable(f"certificate unreadable: {exc}") from exc

        return self.memo("statement", make)

    @property
    def predicate(self) -> UnlearningPredicate:
        return self.statement().predicate

    def openings(self) -> Openings:
        path = self.inputs.forget
        if path is None:
            raise CheckUnavailable("no --forget given")
        return self.memo("openings", lambda: load_forget(path, limits=self.limits))

    def patched_proto(self) -> Any:
        return self.memo(
            "proto:patched", lambda: load_onnx(self.proof_file("model"), what="model.onnx")
        )

    def original_proto(self) -> Any:
        return self.memo(
            "proto:original", lambda: load_onnx(self.original_bytes(), what="original model")
        )

    # -- derived by the verifier --------------------------------------------------------------

    def head(self) -> Head:
        """The head of the original model after the cut the patched model declares (the
        declaration is only a name; :func:`find_head` checks it against the original graph)."""

        def make() -> Head:
            cut = metadata(self.patched_proto()).get("prune.cut")
            if not cut:
                raise CheckUnavailable("patched model: metadata prune.cut is missing")
            return find_head(self.original_proto(), cut)

        return self.memo("head", make)

    def affine_head(self) -> AffineHead:
        """The verifier's own float64 parse of the head (:func:`parse_head`). The cut's
        per-sample shape comes from ONNX shape inference, or, where inference cannot follow the
        graph (shapes computed at run time), from running the original on the forget openings."""

        def make() -> AffineHead:
            try:
                return parse_head(self.original_proto(), self.head())
            except CheckUnavailable as exc:
                if "shape of the cut" not in str(exc):
                    raise
            shape = self.evaluate(self.openings().x, key="forget").extra["cut_shape"]
            return parse_head(self.original_proto(), self.head(), tuple(shape))

        return self.memo("affine", make)

    def patch(self) -> PatchParams:
        def make() -> PatchParams:
            gate = metadata(self.patched_proto()).get("prune.gate", "")
            hidden = self.hidden_width() if gate in ROUTED_GATES else None
            return read_patch(self.patched_proto(), gate=gate, hidden=hidden)

        return self.memo("patch", make)

    def authentic(self, *, original: bool) -> None:
        """Fail-closed gate before any owner model runs: the certificate's envelope verifies with
        the auditor's key, ``model.onnx`` is its signed subject and (``original``) ``--original``
        is its signed original. A proof that fails these never has a model executed; the checks
        that would run one fail with "not run" instead."""

        def make() -> bool:
            try:
                verify_envelope(self.envelope(), self.public_key, payload_type=PAYLOAD_TYPE)
            except FormatError as exc:
                raise CheckUnavailable(
                    "not run: the certificate's signature does not verify, so no model is run"
                ) from exc
            if sha256_hex(self.proof_file("model")) != self.statement().subject_sha256:
                raise CheckUnavailable(
                    "not run: model.onnx is not the certificate's signed subject, so it is not run"
                )
            return True

        self.memo("gate:patched", make)
        if original:

            def make_original() -> bool:
                if sha256_hex(self.original_bytes()) != self.predicate.original_model_sha256:
                    raise CheckUnavailable(
                        "not run: --original is not the certificate's signed original model, "
                        "so it is not run"
                    )
                return True

            self.memo("gate:original", make_original)

    def hidden_width(self) -> int:
        """``H``, the total width of the head's hidden tensors, by ONNX shape inference on the
        *original* graph (static per-sample shapes; a symbolic one is refused)."""

        def make() -> int:
            import onnx

            head = self.head()
            try:
                inferred = onnx.shape_inference.infer_shapes(self.original_proto())
            except Exception as exc:  # onnx raises several unrelated types
                raise CheckUnavailable(f"original model: shape inference failed ({exc})") from exc
            infos = {
                v.name: v
                for v in (
                    *inferred.graph.input,
                    *inferred.graph.value_info,
                    *inferred.graph.output,
                )
            }
            width = 0
            for name in head.hidden:
                dims = infos[name].type.tensor_type.shape.dim[1:] if name in infos else None
                if not dims or not all(d.HasField("dim_value") for d in dims):
                    raise CheckUnavailable(f"original model: the width of {name[:60]!r} is unknown")
                width += int(np.prod([d.dim_value for d in dims]))
            return width

        return self.memo("hidden_width", make)

    def original_model(self) -> OnnxModel:
        def make() -> OnnxModel:
            self.authentic(original=True)
            head = self.head()
            extra = [n for n in (head.cut, *head.hidden, head.output) if n != head.input]
            data = self.original_bytes()
            if head.tail:  # run up to the logits; the tail is checked node for node instead
                data = up_to(self.original_proto(), [head.output])
            return self._session(data, "original model", extra)

        return self.memo("ort:original", make)

    def patched_model(self) -> OnnxModel:
        """The deployed model as a black box: exactly the file's graph, no extra outputs; with
        an output tail (``prune.tail = replay``), the graph up to ``prune/output``: the tail is
        a function of it, checked node for node by ``structure.patch`` (it may hold ops such
        as ``ai.onnx.ml.ZipMap`` that the sandbox does not run)."""

        def make() -> OnnxModel:
            self.authentic(original=False)
            data = self.proof_file("model")
            proto = self.patched_proto()
            if [o.name for o in proto.graph.output] != [PATCH_OUTPUT]:
                data = up_to(proto, [PATCH_OUTPUT])
            return self._session(data, "model.onnx", [])

        return self.memo("ort:patched", make)

    def _session(self, data: bytes, what: str, extra: list[str]) -> OnnxModel:
        try:
            return OnnxModel(data, extra_outputs=extra, device=self.device, threads=self.threads)
        except (InputError, VerificationError) as exc:  # the owner's model: unusable is failed
            raise CheckUnavailable(f"{what}: {exc}") from exc

    def _run(
        self,
        model: OnnxModel,
        x: NDArray[np.float32],
        what: str,
        outputs: list[str] | None = None,
        *,
        batch_size: int = _BATCH,
    ) -> list[NDArray[np.float32]]:
        """Run ``model``; ``outputs`` names the tensors (default: every graph output)."""
        try:
            outs = model.run(x, outputs=outputs, batch_size=batch_size)
        except (InputError, VerificationError) as exc:  # incl. the sandbox's limits
            raise CheckUnavailable(f"{what}: {exc}") from exc
        except Exception as exc:  # onnxruntime's own failure types
            first = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
            raise CheckUnavailable(f"{what}: onnxruntime failed: {first}") from exc
        for name, out in zip(outputs or model.output_names, outs, strict=True):
            require_finite(out, f"{what} output {name[:40]!r}")
        return outs

    def evaluate(self, x: NDArray[np.float32], *, key: str | None = None) -> Evaluation:
        """Run the original model on ``x`` and collect cut, hidden and logits (memoised by
        ``key`` when given)."""

        def make() -> Evaluation:
            head = self.head()
            model = self.original_model()
            names = list(dict.fromkeys(n for n in (head.cut, *head.hidden, head.output)))
            names = [n for n in names if n != head.input]
            outs = dict(zip(names, self._run(model, x, "original model", names), strict=True))
            outs[head.input] = x
            cut = outs[head.cut]
            z = [
                outs[name].reshape(len(x), -1) - np.float32(head.offset(i))
                for i, name in enumerate(head.hidden)
            ]
            hidden = np.concatenate(z, axis=1) if z else np.zeros((len(x), 0), np.float32)
            return Evaluation(
                x=cut.reshape(len(x), -1),
                z=hidden,
                logits=outs[head.output].reshape(len(x), -1),
                extra={"cut_shape": tuple(int(s) for s in cut.shape[1:])},
            )

        return make() if key is None else self.memo(f"eval:{key}", make)

    def patched_logits(
        self, x: NDArray[np.float32], *, key: str | None = None, batch_size: int = _BATCH
    ) -> NDArray[np.float32]:
        """The deployed model's output on ``x``, queried ``batch_size`` rows at a time; NaN or
        infinity anywhere is :class:`NonFiniteOutput`."""

        def make() -> NDArray[np.float32]:
            out = self._run(
                self.patched_model(), x, "model.onnx", [PATCH_OUTPUT], batch_size=batch_size
            )[0]
            if out.ndim != 2 or len(out) != len(x):
                raise CheckUnavailable(
                    f"model.onnx: output has shape {out.shape}, expected [N, classes]"
                )
            return out

        return make() if key is None else self.memo(f"patched:{key}", make)

    def _head_sessions(self, cut_shape: tuple[int, ...]) -> tuple[OnnxModel, OnnxModel]:
        def make() -> tuple[OnnxModel, OnnxModel]:
            self.authentic(original=True)
            head = self.head()
            if head.cut == head.input:  # the head is the whole model: reuse the sessions
                return self.original_model(), self.patched_model()
            original = sub_model(
                self.original_proto(),
                cut=head.cut,
                cut_shape=cut_shape,
                outputs=[n for n in dict.fromkeys((*head.hidden, head.output)) if n != head.cut],
            )
            patched = sub_model(
                self.patched_proto(), cut=head.cut, cut_shape=cut_shape, outputs=[PATCH_OUTPUT]
            )
            return (
                self._session(original, "original head", []),
                self._session(patched, "patched head", []),
            )

        return self.memo("ort:heads", make)

    def original_head(
        self, x: NDArray[np.floating[Any]], cut_shape: tuple[int, ...]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(hidden pre-activations ``[N, H]``, logits ``[N, O]``) of the original model's head on
        flattened cut values ``x`` ``[N, d]``: the space in which regions and claims live."""
        head = self.head()
        model = self._head_sessions(cut_shape)[0]
        shaped = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *cut_shape)
        # the cut itself may be a breakpoint tensor (a cut at a Relu input): it is the input
        names = [n for n in dict.fromkeys((*head.hidden, head.output)) if n != head.cut]
        outs = dict(zip(names, self._run(model, shaped, "original head", names), strict=True))
        outs[head.cut] = shaped
        z = [
            outs[name].reshape(len(x), -1) - np.float32(head.offset(i))
            for i, name in enumerate(head.hidden)
        ]
        hidden = np.concatenate(z, axis=1) if z else np.zeros((len(x), 0), np.float32)
        return hidden, outs[head.output].reshape(len(x), -1)

    def patched_head(
        self, x: NDArray[np.floating[Any]], cut_shape: tuple[int, ...]
    ) -> NDArray[np.float32]:
        """The patched model's logits on flattened cut values ``x`` ``[N, d]``."""
        model = self._head_sessions(cut_shape)[1]
        shaped = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *cut_shape)
        return self._run(model, shaped, "patched head", [PATCH_OUTPUT])[0].reshape(len(x), -1)
