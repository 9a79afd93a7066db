"""The model zoo: small seeded classifiers trained on scikit-learn's digits (8x8, 10 classes)
and exported by the real exporters at test time: ``torch.onnx.export`` with the dynamo exporter
(torch's default; weights in a ``.onnx.data`` file), the legacy TorchScript exporter
(``dynamo=False``), and skl2onnx. Each entry names the ops it covers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

__all__ = ["ZOO", "Digits", "ZooModel", "digits"]


@dataclass(frozen=True)
class Digits:
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]


def digits() -> Digits:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)  # [N, 64]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return Digits(x[:1400], y[:1400], x[1400:], y[1400:])


class _Net(nn.Module):
    """A torch classifier; ``softmax`` appends a Softmax output tail."""

    def __init__(self, body: nn.Module, *, softmax: bool = False) -> None:
        super().__init__()
        self.body = body
        self.softmax = softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)
        return torch.softmax(logits, dim=1) if self.softmax else logits


class _Residual(nn.Module):
    """``relu(x + conv(relu(conv(x))))`` (a ResNet basic block without downsampling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.b1 = nn.BatchNorm2d(channels)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.b2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class _Image(nn.Module):
    """``[N, 64] -> [N, 1, 8, 8]`` by a constant-shape Reshape (``nn.Unflatten``, which the
    legacy exporter turns into a run-time shape computation with Shape/Slice/Mod, is
    ``leg_cnn_unflatten``'s)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, 1, 8, 8)


class _Mean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _mlp_leaky() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.LeakyReLU(0.1), nn.Dropout(0.1), nn.Linear(32, 10)
    )


def _mlp_prelu() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.PReLU(64), nn.Linear(64, 10))


def _mlp_bn() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
    )


def _cnn_gap() -> nn.Module:
    return nn.Sequential(
        _Image(),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def _cnn_mean() -> nn.Module:
    return nn.Sequential(
        _Image(),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.LeakyReLU(0.05),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        _Mean(),
        nn.Linear(16, 10),
    )


def _cnn_maxpool() -> nn.Module:
    return nn.Sequential(
        _Image(),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _cnn_maxpool_linear() -> nn.Module:
    """The classic small CNN: no activation after the pooling, so the only cut is the input
    and the MaxPool sits inside the patched head (rewritten on import)."""
    return nn.Sequential(
        _Image(),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def _cnn_unflatten() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _resnet() -> nn.Module:
    return nn.Sequential(
        _Image(),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        _Residual(8),
        nn.Flatten(),
        nn.Linear(512, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _mlp_relu6() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 64),
        nn.ReLU6(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _mlp_hardtanh() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 48),
        nn.Hardtanh(),
        nn.Linear(48, 32),
        nn.ReLU6(),
        nn.Linear(32, 10),
    )


@dataclass(frozen=True)
class ZooModel:
    name: str
    exporter: str  # "dynamo" | "legacy" | "skl2onnx"
    build: Callable[[], nn.Module] | None
    softmax: bool
    covers: tuple[str, ...]
    epochs: int = 12
    dynamic: bool = True  # False: the exporter's default, the example's batch of 4 fixed
    float64: bool = False  # skl2onnx on scikit-learn's own float64 rows (a double model)

    def export(
        self, data: Digits, folder: Path
    ) -> tuple[Path, Callable[[NDArray[np.float32]], NDArray[np.float64]]]:
        """Train (seeded), export to ``folder/model.onnx``; return the path and a function giving
        the framework's own class scores (logits or probabilities) for the comparison."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        if self.exporter == "skl2onnx":
            return path, _sklearn(data, path, float64=self.float64)
        assert self.build is not None
        torch.manual_seed(0)
        net = _Net(self.build(), softmax=self.softmax)
        _train(net, data, epochs=self.epochs)
        net.eval()
        x = torch.from_numpy(data.x_train[:4].reshape(4, -1))
        batch = torch.export.Dim("batch", min=1)
        if self.exporter == "dynamo" and not self.dynamic:
            torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
        elif self.exporter == "dynamo":
            torch.onnx.export(
                net, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                dynamic_shapes=({0: batch},), verbose=False, external_data=True,
            )  # fmt: skip
        elif not self.dynamic:
            torch.onnx.export(net, (x,), str(path), dynamo=False)
        else:
            torch.onnx.export(
                net, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            )  # fmt: skip

        def scores(xs: NDArray[np.float32]) -> NDArray[np.float64]:
            with torch.no_grad():
                out = net(torch.from_numpy(xs.reshape(len(xs), -1)))
            return out.numpy().astype(np.float64)

        return path, scores


def _train(net: nn.Module, data: Digits, *, epochs: int) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1))
    y = torch.from_numpy(data.y_train)
    net.train()
    softmax = getattr(net, "softmax", False)
    net.softmax = False  # type: ignore[assignment]
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
    net.softmax = softmax  # type: ignore[assignment]


def _sklearn(
    data: Digits, path: Path, *, float64: bool = False
) -> Callable[[NDArray[np.float32]], NDArray[np.float64]]:
    import warnings

    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x = data.x_train.reshape(len(data.x_train), -1)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=150, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, data.y_train)
    example = x[:1].astype(np.float64) if float64 else x[:1]
    path.write_bytes(to_onnx(clf, example).SerializeToString())

    def scores(xs: NDArray[np.float32]) -> NDArray[np.float64]:
        return np.asarray(clf.predict_proba(xs.reshape(len(xs), -1)), dtype=np.float64)

    return scores


ZOO: tuple[ZooModel, ...] = (
    ZooModel(
        "skl_mlp",
        "skl2onnx",
        None,
        False,
        ("Cast", "MatMul+Add", "[1,H] bias", "Softmax", "ArgMax", "ZipMap", "ai.onnx.ml tail"),
    ),
    ZooModel(
        "skl_mlp_float64",
        "skl2onnx",
        None,
        False,
        ("double input and weights (converted to float32 on import)", "ZipMap"),
        float64=True,
    ),
    ZooModel(
        "dyn_leaky_dropout",
        "dynamo",
        _mlp_leaky,
        True,
        ("external data", "LeakyRelu", "Dropout", "Gemm", "Softmax"),
    ),
    ZooModel(
        "leg_leaky_dropout", "legacy", _mlp_leaky, False, ("LeakyRelu", "Dropout", "Gemm transB")
    ),
    ZooModel("dyn_prelu", "dynamo", _mlp_prelu, False, ("PRelu", "external data")),
    ZooModel("leg_prelu", "legacy", _mlp_prelu, True, ("PRelu", "Softmax")),
    ZooModel("leg_bn", "legacy", _mlp_bn, False, ("BatchNormalization",)),
    ZooModel(
        "dyn_cnn_gap",
        "dynamo",
        _cnn_gap,
        False,
        ("Reshape", "Conv", "BatchNormalization", "AveragePool", "ReduceMean"),
        epochs=4,
    ),
    ZooModel(
        "leg_cnn_gap",
        "legacy",
        _cnn_gap,
        True,
        ("Reshape", "Conv", "AveragePool", "GlobalAveragePool", "Flatten", "Softmax"),
        epochs=4,
    ),
    ZooModel(
        "leg_cnn_mean", "legacy", _cnn_mean, False, ("ReduceMean", "LeakyRelu", "Conv"), epochs=4
    ),
    ZooModel(
        "dyn_cnn_maxpool",
        "dynamo",
        _cnn_maxpool,
        False,
        ("MaxPool (prefix; default cut after it)",),
        epochs=4,
    ),
    ZooModel(
        "leg_resnet",
        "legacy",
        _resnet,
        True,
        ("residual Add inside the head (carried units)", "Conv", "BatchNormalization"),
        epochs=4,
    ),
    ZooModel(
        "dyn_resnet",
        "dynamo",
        _resnet,
        False,
        ("residual Add inside the head (carried units)", "external data"),
        epochs=4,
    ),
    ZooModel(
        "leg_cnn_unflatten",
        "legacy",
        _cnn_unflatten,
        False,
        ("run-time shape computation (Shape/Slice/Mod) admitted by the sandbox",),
        epochs=4,
    ),
    ZooModel(
        "leg_relu6",
        "legacy",
        _mlp_relu6,
        False,
        ("Clip in the head (min/max from Constant nodes)", "cut at the input"),
    ),
    ZooModel(
        "dyn_relu6",
        "dynamo",
        _mlp_relu6,
        True,
        ("Clip in the head (min/max initializers)", "cut at the input", "Softmax"),
    ),
    ZooModel(
        "dyn_hardtanh",
        "dynamo",
        _mlp_hardtanh,
        False,
        ("Clip in the head (Hardtanh [-1, 1], then Relu6)", "cut at the input"),
    ),
    ZooModel(
        "leg_hardtanh",
        "legacy",
        _mlp_hardtanh,
        True,
        ("Clip in the head (Hardtanh, Relu6)", "cut at the input", "Softmax"),
    ),
    ZooModel(
        "dyn_cnn_maxpool_head",
        "dynamo",
        _cnn_maxpool_linear,
        False,
        ("MaxPool inside the head (no activation after it; rewritten on import)", "Conv"),
        epochs=4,
    ),
    ZooModel(
        "leg_cnn_maxpool_head",
        "legacy",
        _cnn_maxpool_linear,
        True,
        ("MaxPool inside the head, fixed batch of 4", "Softmax"),
        epochs=4,
        dynamic=False,
    ),
    ZooModel(
        "dyn_fixed_batch_cnn",
        "dynamo",
        _cnn_gap,
        False,
        ("fixed batch of 4: default export options, Reshape to [4, ...] (freed on import)",),
        epochs=4,
        dynamic=False,
    ),
    ZooModel(
        "leg_fixed_batch_bn",
        "legacy",
        _mlp_bn,
        True,
        ("fixed batch of 4: default export options (freed on import)", "Softmax"),
        dynamic=False,
    ),
)
