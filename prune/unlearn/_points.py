"""The forget points as the deployed runtime sees them: cut values, activation patterns, logits,
the targets each one may not take and the certified margin each one needs; and the declared
input box of the cut space."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from prune.errors import DataError
from prune.model import ImportedModel, OrtRunner
from prune.proofs._duals import float32_logit_error
from prune.regions import InputBox, box_from_data
from prune.unlearn._request import ForgetRequest
from prune.unlearn._strategies import ForgetPoints

__all__ = ["FLOAT32_SLACK", "declare_box", "forget_points"]

FLOAT32_SLACK = 1e-3
"""Certified margins get ``FLOAT32_SLACK * (1 + max_j |f_j(x)|)`` on top of the requested
margin, for the float32 evaluation of head and patch (see :mod:`prune.unlearn._pipeline`)."""


def declare_box(imported: ImportedModel, x_train: NDArray[np.float32]) -> InputBox:
    """The input box of the cut space, from the training data (:func:`box_from_data`)."""
    if imported.input_space:
        return box_from_data(x_train.reshape(len(x_train), -1), input_space=True)
    return box_from_data(imported.cut_values(x_train), input_space=False)


def forget_points(
    imported: ImportedModel,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    request: ForgetRequest,
    margin: float,
    box: InputBox,
    threads: int | None,
) -> tuple[ForgetPoints, NDArray[np.int64]]:
    """Cut values, runtime activation patterns and logits of the forget points. The pattern is
    the one onnxruntime computes (``z >= 0`` active), the convention the auditor replays."""
    head = imported.head
    names = [
        n for n in dict.fromkeys((head.cut, *head.hidden, head.output)) if n != imported.input_name
    ]
    runs = OrtRunner(imported.raw, outputs=names, threads=threads).run(x)
    outs: dict[str, NDArray[np.float32]] = dict(zip(names, runs, strict=True))
    outs[imported.input_name] = x
    cut = outs[head.cut].reshape(len(x), -1)
    z = (
        np.concatenate(
            [
                outs[n].reshape(len(x), -1) - np.float32(head.offset(i))
                for i, n in enumerate(head.hidden)
            ],
            axis=1,
        )
        if head.hidden
        else np.zeros((len(x), 0), dtype=np.float32)
    )
    cut64 = cut.astype(np.float64)
    logits64, _ = head.forward(cut64)
    forbidden = np.zeros((len(x), head.classes), dtype=bool)
    forbidden[np.arange(len(x)), y] = True
    if request.forget_class is not None:
        forbidden[:, request.forget_class] = True
    active = np.asarray(z >= 0)
    # the float32 budget: a rigorous bound of the served logits' rounding on the point's region
    # (both logits of a spec row), plus the relative budget for the rest (patch add, float64)
    rigorous = 2.0 * float32_logit_error(head, active, box).max(axis=1)
    slack = FLOAT32_SLACK * (1.0 + np.abs(logits64).max(axis=1)) + rigorous
    points = ForgetPoints(
        x=cut64,
        active=active,
        logits=logits64,
        forbidden=forbidden,
        required=margin + slack,
    )
    if not box.contains(cut64).all():
        raise DataError("a forget point lies outside the declared input box")
    return points, np.asarray(outs[head.output].argmax(axis=1), dtype=np.int64)
