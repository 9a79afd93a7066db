"""Tiny models for the patch-engine tests, built in a temporary folder: seeded random-weight
MLPs, a small digits MLP and CNN trained for a few epochs, and hand-written ONNX graphs."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from prune.data import load_dataset
from prune.train import TrainConfig, export_onnx, model_input, train

__all__ = [
    "DigitsWork",
    "digits_work",
    "graph_model",
    "random_mlp",
    "single_thread",
]


def random_mlp(
    path: Path, *, dims: tuple[int, ...] = (6, 8, 8, 4), seed: int = 0, bias_scale: float = 0.3
) -> bytes:
    """A seeded random ReLU MLP ``d-h1-...-O`` exported like ``prune train`` does."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1])
        with torch.no_grad():
            lin.bias.uniform_(-bias_scale, bias_scale)
        layers.append(lin)
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    export_onnx(model, path, input_shape=(dims[0],))
    return path.read_bytes()


class DigitsWork:
    """A trained digits model folder: ``model.onnx`` and the split arrays."""

    def __init__(self, folder: Path, arch: str, hidden: tuple[int, ...], epochs: int) -> None:
        data = load_dataset("digits")
        model, result = train(
            data,
            TrainConfig(arch=arch, hidden=hidden, epochs=epochs, seed=0),  # type: ignore[arg-type]
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.model_path = folder / "model.onnx"
        export_onnx(model, self.model_path, input_shape=result.input_shape)
        self.raw = self.model_path.read_bytes()
        self.x_train: NDArray[np.float32] = model_input(arch, data.x_train)  # type: ignore[arg-type]
        self.y_train = data.y_train
        self.x_test: NDArray[np.float32] = model_input(arch, data.x_test)  # type: ignore[arg-type]
        self.y_test = data.y_test
        np.savez(folder / "train.npz", x=self.x_train, y=self.y_train)
        np.savez(folder / "test.npz", x=self.x_test, y=self.y_test)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny torch workloads run far faster on one thread when the shared machine is loaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def digits_work(arch: str = "mlp") -> DigitsWork:
    """Trained once per test process (read-only for the tests; the folder is removed at exit)."""
    folder = Path(_TMP.name) / arch
    with single_thread():
        if arch == "mlp":
            return DigitsWork(folder, "mlp", (16, 16), epochs=8)
        return DigitsWork(folder, "cnn", (16,), epochs=1)


_TMP = tempfile.TemporaryDirectory(prefix="prune-engine-tests-")


def graph_model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, NDArray[np.float32]],
    *,
    inputs: tuple[str, list[int | str]] = ("input", ["batch", 4]),
    output: tuple[str, list[int | str]] = ("logits", ["batch", 3]),
    opset: int = 17,
) -> bytes:
    """A hand-written single-input, single-output ONNX graph."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(inputs[0], TensorProto.FLOAT, inputs[1])],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return bytes(model.SerializeToString())
