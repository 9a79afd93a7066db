"""The check framework: a :class:`Check` answers one narrow question about the evidence; the
runner applies the policy and turns everything into :class:`CheckOutcome` values.

Fail-closed rules (the verdict's invariants):

* a check whose inputs are missing and required by the :class:`Policy` is a **fail**
  ("not run: ..."); missing inputs the policy does not require give **not-run**;
* a check that does not apply (e.g. no previous batch to be consistent with) is **not-run**;
* a check that raises :class:`~audit.errors.VerificationError` (or anything unexpected) is a
  **fail**, never a skip; :class:`~audit.errors.InputError` propagates (the auditor's problem);
* the verdict is ``verified`` only if no outcome failed and at least one passed; an empty list of
  checks is an error, never a pass."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from audit.errors import AuditError, InputError, VerificationError

if TYPE_CHECKING:
    from audit.verify._membership import MembershipPolicy

__all__ = [
    "INPUTS",
    "Check",
    "CheckOutcome",
    "CheckUnavailable",
    "Input",
    "Policy",
    "Status",
    "plain",
    "run_checks",
]

Status = Literal["pass", "fail", "not-run"]
Input = Literal["original", "forget", "reference", "sample", "model"]
INPUTS: Mapping[str, str] = {
    "original": "--original (the committed original model)",
    "forget": "--forget (the forget-set openings, PROOF/forget.npz)",
    "reference": "--reference (reference data, e.g. WORK/test.npz)",
    "sample": "--sample and --label (the data subject's own sample)",
    "model": "--model (the deployed patched model, PROOF/model.onnx)",
}

Ctx = TypeVar("Ctx")


class CheckUnavailable(VerificationError):
    """A check cannot run because something it needs is broken (a malformed certificate, a model
    onnxruntime cannot load). Counted as a failure, fail-closed."""


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check. ``evidence`` holds JSON-ready measured values (counts, digests,
    worst margins) so that a report can show *why*, not only *whether*."""

    name: str
    status: Status
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "evidence": dict(self.evidence),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CheckOutcome:
        status = doc["status"]
        if status not in ("pass", "fail", "not-run"):
            raise InputError(f"verification report: unknown status {status!r}")
        return cls(
            name=str(doc["name"]),
            status=status,
            detail=str(doc["detail"]),
            evidence=dict(doc.get("evidence", {})),
            seconds=float(doc.get("seconds", 0.0)),
        )


@dataclass(frozen=True, kw_only=True)
class Policy:
    """What the auditor demands; every number here is documented in docs/VERIFY.md.

    ``required_inputs``: inputs whose absence fails the checks that need them (default: all of
    them, so that "verified" always means every check ran). ``margin_tolerance``: absolute slack
    on a claimed logit margin (float32 execution of a float64 certificate). ``locality_atol``:
    largest allowed |patched - original| outside every patch support. ``utility_tolerance``:
    allowed excess of the measured accuracy drop over the certified one (fraction).
    ``min_certified_margin``: the smallest certified margin a claim may state (a hair margin
    cannot survive the float32 execution of the model). ``accept_point_only``: the auditor
    accepts claims that hold only at the sample (verdict ``point-only``, exit 0).
    ``expected_class``: see the field.
    ``probe_claims``: certified claims probed (at random; ``None``: all). Probes are defence in
    depth: every certified claim is proved by ``region.certificate``. ``lp_claims``: probed
    claims (weakest probe slack first) whose region the probes also minimise exactly by LP;
    ``lp_classes``: at most this many LPs per such claim (0: as many as the classes need)."""

    required_inputs: frozenset[str] = frozenset({"original", "forget", "reference", "sample"})
    max_age: timedelta = timedelta(days=365)
    max_clock_skew: timedelta = timedelta(minutes=5)
    margin_tolerance: float = 1e-4
    locality_atol: float = 1e-6
    utility_tolerance: float = 0.01
    probe_directions: int = 4
    probe_points: int = 4
    probe_claims: int | None = 64
    bisection_steps: int = 10
    lp_claims: int = 1
    lp_classes: int = 2
    min_certified_margin: float = 0.01
    accept_point_only: bool = False
    min_class_margin: float = 4.0
    """Smallest margin a class-suppression claim may state. The suppressed class keeps at most
    ``e^-m`` of the top class's probability; a model retrained without the class gives it about
    nothing, and below ``m = 4`` (1.8 %) the class stays a near-tie runner-up wherever it was the
    top class, which memorised records of the class still show (``class_residual``)."""
    band_work: float = 1e12
    """Most multiply-adds the thin-band rule of ``structure.patch`` may spend on the deeper
    rows of the claims' regions (``audit.verify._bands``; one ``sum_l H_l H_(l-1) d`` per claim
    whose pairs the first layer leaves open; an honest Fashion-MNIST MLP proof needs 5e7 per such
    claim; 1e12 is a minute or two of float64 BLAS on one core). Beyond it the check fails: its
    bands are not shown bounded. Resource limit on an owner who separates every pair of patches
    only deep in the network."""
    min_gate_sharpness: float = 100.0
    """Smallest gate sharpness ``n`` a patch may declare. Inside a certified region, another
    patch's gate can be on only within its band (activation gate: summed |pre-activation| of the
    differing neurons below ``1/n``), the one exception of ``region.certificate``; a small ``n``
    would widen that exception at will (``prune unlearn`` uses 1000)."""
    expected_class: int | None = None
    """The class whose deletion the auditor was asked to check (``--expect-class``): a
    certificate of another mode or class fails ``class.reference``. ``None``: the certificate's
    own mode is taken as what was requested."""
    membership: MembershipPolicy | None = None
    """A :class:`audit.verify.MembershipPolicy` enables the optional membership check."""

    def __post_init__(self) -> None:
        unknown = set(self.required_inputs) - set(INPUTS)
        if unknown:
            raise InputError(f"policy: unknown input {', '.join(sorted(unknown))}")
        if self.lp_claims < 0 or self.lp_classes < 0:
            raise InputError("policy: LP claims and classes must be at least 0")
        if self.probe_directions < 1 or self.probe_points < 1 or self.bisection_steps < 1:
            raise InputError("policy: probe counts and bisection steps must be at least 1")
        if self.max_age <= timedelta(0) or self.margin_tolerance < 0 or self.locality_atol < 0:
            raise InputError("policy: max age must be positive and tolerances non-negative")

    def partial(self) -> Policy:
        """The same policy with no required inputs (``--partial``)."""
        from dataclasses import replace

        return replace(self, required_inputs=frozenset())


class Check(ABC, Generic[Ctx]):
    """One named check. ``requires`` lists the optional inputs it cannot run without; ``run``
    answers one question and returns an outcome made with :meth:`passed`, :meth:`failed` or
    :meth:`not_applicable` (or raises :class:`VerificationError`, which is a failure)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    requires: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def run(self, ctx: Ctx) -> CheckOutcome: ...

    def passed(self, detail: str, **evidence: Any) -> CheckOutcome:
        return CheckOutcome(self.name, "pass", detail, evidence)

    def failed(self, detail: str, **evidence: Any) -> CheckOutcome:
        return CheckOutcome(self.name, "fail", detail, evidence)

    def not_applicable(self, detail: str, **evidence: Any) -> CheckOutcome:
        return CheckOutcome(self.name, "not-run", detail, evidence)


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: numpy scalars to Python, tuples to lists, non-finite floats
    to strings (``"inf"``), so that evidence serialises as strict JSON and round-trips."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _missing_outcome(check: Check[Any], missing: Sequence[str], policy: Policy) -> CheckOutcome:
    needed = ", ".join(INPUTS[m] for m in missing)
    if set(missing) & policy.required_inputs:
        return check.failed(
            f"not run: {needed} not given, and the policy requires it", missing_inputs=missing
        )
    return check.not_applicable(
        f"not run: {needed} not given (partial verification)", missing_inputs=missing
    )


def run_checks(
    checks: Sequence[Check[Ctx]],
    ctx: Ctx,
    *,
    given: frozenset[str],
    policy: Policy,
    clock: Callable[[], float] = time.perf_counter,
    on_done: Callable[[CheckOutcome], None] | None = None,
    fail_fast: bool = False,
) -> tuple[CheckOutcome, ...]:
    """Run ``checks`` in order against ``ctx``. ``given`` names the optional inputs the auditor
    supplied. Never returns a "pass" that a check did not produce itself. ``fail_fast``: after
    the first failure the remaining checks are reported not-run (the verdict is failed anyway)."""
    if not checks:
        raise AuditError("no checks to run: an empty list of checks is never a pass")
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise AuditError("check names must be unique")
    outcomes: list[CheckOutcome] = []
    for check in checks:
        start = clock()
        missing = sorted(check.requires - given)
        if fail_fast and any(o.status == "fail" for o in outcomes):
            outcome = check.not_applicable("not run: an earlier check failed (fail-fast)")
        elif missing:
            outcome = _missing_outcome(check, missing, policy)
        else:
            try:
                outcome = check.run(ctx)
            except InputError:
                raise
            except VerificationError as exc:
                outcome = check.failed(str(exc))
            except AuditError:
                raise
            except Exception as exc:  # fail-closed: an unexpected error is never a pass
                outcome = check.failed(
                    f"not run: unexpected {exc.__class__.__name__}: {str(exc)[:200]}"
                )
            if outcome.name != check.name:
                raise AuditError(f"check {check.name} returned an outcome named {outcome.name}")
        outcome = CheckOutcome(
            outcome.name,
            outcome.status,
            outcome.detail,
            plain(outcome.evidence),
            round(clock() - start, 6),
        )
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return tuple(outcomes)
