"""The patched model ``M(x) = f(x) + sum_u h_u(x)`` (DESIGN.md §3.4-3.5) as a torch module.

Patch network of patch u: ``p_u(x) = x C_u + d_u``,
``h_u = ReLU(p_u + K_u g_u - K_u) - ReLU(-p_u + K_u g_u - K_u)``.

Invariants: where ``g_u = 1``, ``h_u = p_u`` exactly (for any ``K_u >= 0``); where ``g_u = 0``,
``h_u = 0`` as long as ``|p_u| <= K_u``, which :func:`patch_bounds` guarantees on the input box
(for constant patches, everywhere). Between the two (the ``1/n`` band around the region) ``h_u``
interpolates; a band may reach into a neighbouring patch's region, so two patches with
*different* targets whose regions touch can interfere on that band - certificates are stated for
each region in isolation, and the pipeline re-checks every forget point on the exported model.

This module is the reference the ONNX export (:mod:`prune.export`) is tested against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from prune.gates import ROUTED_GATES, make_gate
from prune.model import PLHead
from prune.regions import InputBox

__all__ = ["PatchSet", "PatchedHead", "patch_bounds"]


@dataclass(frozen=True, eq=False)
class PatchSet:
    """``P`` patches over one head. ``active [P,H]`` region patterns, ``d [P,O]``,
    ``C [P,d,O]`` or ``None``, ``K [P]``, ``targets [P]``; ``gate`` and ``n`` name the support
    construction and its sharpness."""

    gate: str
    n: float
    active: NDArray[np.bool_]
    d: NDArray[np.float64]
    C: NDArray[np.float64] | None
    K: NDArray[np.float64]
    targets: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.d.shape[0])

    def parameters(self, head: PLHead, box: InputBox) -> dict[str, NDArray[Any]]:
        """Patch parameters under their FORMATS.md names (without ``prune/patch/``): float32,
        except the routed gate's packed patterns (uint8) and tree tables (int64)."""
        n_patches, n_out = self.d.shape
        params: dict[str, NDArray[Any]] = {
            "n": np.asarray(self.n, dtype=np.float32),
            "K": self.K.astype(np.float32).reshape(n_patches, 1),
            "d": self.d.astype(np.float32),
        }
        if self.C is not None and self.gate in ROUTED_GATES:
            params["C"] = np.ascontiguousarray(self.C, dtype=np.float32)  # [P, d, O]: gathered
        elif self.C is not None:
            # column u*O + o holds C_u[:, o]
            params["C"] = np.ascontiguousarray(
                self.C.transpose(1, 0, 2).reshape(head.input_dim, n_patches * n_out),
                dtype=np.float32,
            )
        params.update(make_gate(self.gate).parameters(head, self.active, box))
        return params


def patch_bounds(
    C: NDArray[np.float64] | None, d: NDArray[np.float64], box: InputBox
) -> NDArray[np.float64]:
    """``K_u >= max_{x in box} |p_u(x)|_inf`` in closed form. Constant patches: ``max |d_u|``
    (exact, and preserved by float32 rounding, which is monotone). Affine patches:
    ``max_o |d_o + mid sum C[:,o]| + rad sum |C[:,o]|`` plus a rigorous bound of the float32
    evaluation of ``x C + d`` (``gamma_{dim+2} (|d_o| + max|box| sum |C[:,o]|)``, the verifier's
    own term in ``region.certificate``), rounded up to float32."""
    if C is None:
        return np.asarray(np.abs(d).max(axis=1), dtype=np.float64)
    unit = 2.0**-24
    n = C.shape[1] + 2
    gamma = n * unit / (1.0 - n * unit)
    size = np.abs(C).sum(axis=1)
    centre = np.abs(d + box.mid * C.sum(axis=1))
    rounding = gamma * (np.abs(d) + max(abs(box.low), abs(box.high)) * size)
    bound = (centre + box.radius * size + rounding).max(axis=1) * (1.0 + 1e-6) + 1e-6
    up = bound.astype(np.float32)
    up = np.where(up < bound, np.nextafter(up, np.float32(np.inf)), up)
    return np.asarray(up, dtype=np.float64)


class PatchedHead(torch.nn.Module):
    """``forward(x)`` maps flattened cut values ``[N, d]`` to patched logits ``[N, O]``."""

    def __init__(
        self, head: PLHead, patches: PatchSet, box: InputBox, *, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.weights = [torch.from_numpy(layer.weight.T.copy()).to(dtype) for layer in head.layers]
        self.biases = [torch.from_numpy(layer.bias.copy()).to(dtype) for layer in head.layers]
        params = patches.parameters(head, box)
        self.params = {
            k: torch.from_numpy(np.asarray(v)).to(dtype if v.dtype == np.float32 else None)
            for k, v in params.items()
        }
        self.gate = make_gate(patches.gate)
        self.n = float(np.float32(patches.n))
        self.n_patches = len(patches)
        self.dtype = dtype
        self.slopes = [
            torch.from_numpy(head.slope(i).copy()).to(dtype) for i in range(len(head.hidden_sizes))
        ]

    def original(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpatched logits and concatenated pre-activations ``z``."""
        h = x.to(self.dtype)
        zs = []
        for w, b, slope in zip(self.weights[:-1], self.biases[:-1], self.slopes, strict=True):
            z = h @ w + b
            zs.append(z)
            h = torch.where(z >= 0, z, z * slope)
        logits = h @ self.weights[-1] + self.biases[-1]
        z_all = torch.cat(zs, dim=1) if zs else torch.zeros(len(h), 0, dtype=self.dtype)
        return logits, z_all

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        _, z = self.original(x)
        return self.gate.torch_gate(x.to(self.dtype), z, self.params, self.n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        logits, z = self.original(x)
        g = self.gate.torch_gate(x, z, self.params, self.n)
        k = self.params["K"].view(1, -1, 1)
        shift = g.unsqueeze(2) * k - k  # [N, P, 1]
        if "C" in self.params and self.params["C"].ndim == 3:  # routed layout [P, d, O]
            p = torch.einsum("nd,pdo->npo", x, self.params["C"]) + self.params["d"]
        elif "C" in self.params:
            p = (x @ self.params["C"]).reshape(len(x), self.n_patches, -1) + self.params["d"]
        else:
            p = self.params["d"].unsqueeze(0)
        h = torch.relu(p + shift) - torch.relu(-p + shift)
        return logits + h.sum(dim=1)
