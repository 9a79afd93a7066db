"""Reference models: seeded ReLU MLPs and small CNNs trained with PyTorch and exported to ONNX.

The MLP takes flat inputs ``[N, d]``; the CNN takes images ``[N, 1, H, W]``. Both end in a
``logits`` output. The CNN's feature tensor (the input of its ReLU head) is exported under the
name :data:`CNN_FEATURE_TENSOR` so that it can be used as the patch cut.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prune.data import Dataset, save_npz
from prune.errors import PruneError

__all__ = [
    "CNN_FEATURE_TENSOR",
    "DEFAULT_EPOCHS",
    "DEFAULT_HIDDEN",
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "build_model",
    "export_onnx",
    "model_input",
    "train",
    "train_to_folder",
]

Arch = Literal["mlp", "cnn"]
CNN_FEATURE_TENSOR = "features"
DEFAULT_HIDDEN = {"digits": (64, 64), "fashion-mnist": (256, 256)}
DEFAULT_EPOCHS = {"digits": 60, "fashion-mnist": 12}


@dataclass(frozen=True)
class TrainConfig:
    arch: Arch = "mlp"
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    dataset: str
    config: TrainConfig
    input_shape: tuple[int, ...]
    classes: int
    train_accuracy: float
    test_accuracy: float
    seconds: float
    feature_tensor: str | None
    torch_version: str = field(default=torch.__version__)


class _CNN(nn.Module):
    def __init__(self, image_shape: tuple[int, ...], classes: int, hidden: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.prefix = nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        feat = 16 * (h // 4) * (w // 4)
        self.head = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.prefix(x))  # type: ignore[no-any-return]


def build_model(
    arch: Arch, *, input_shape: tuple[int, ...], classes: int, hidden: Sequence[int]
) -> nn.Module:
    """A ReLU MLP ``d-h1-...-classes`` or the small CNN (conv-pool-conv-pool, ReLU head)."""
    if arch == "mlp":
        dims = [int(np.prod(input_shape)), *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], classes))
        return nn.Sequential(*layers)
    if arch == "cnn":
        return _CNN(input_shape, classes, hidden[0] if hidden else 64)
    raise PruneError(f"unknown architecture {arch!r} (choose mlp or cnn)")


def model_input(arch: Arch, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Reshape ``[N, 1, H, W]`` images to what the architecture takes."""
    return x.reshape(len(x), -1) if arch == "mlp" else x


def train(
    data: Dataset, config: TrainConfig, *, progress: bool = False
) -> tuple[nn.Module, TrainResult]:
    """Train with Adam and cross-entropy, seeded by ``config.seed`` (data order and init)."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    x_tr = torch.from_numpy(model_input(config.arch, data.x_train))
    y_tr = torch.from_numpy(data.y_train)
    model = build_model(
        config.arch,
        input_shape=data.image_shape,
        classes=data.classes,
        hidden=config.hidden,
    )
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    epochs = range(config.epochs)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc="train", unit="epoch")
    model.train()
    for _ in epochs:
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
    model.eval()
    seconds = time.perf_counter() - start
    result = TrainResult(
        dataset=data.name,
        config=config,
        input_shape=tuple(model_input(config.arch, data.x_train[:1]).shape[1:]),
        classes=data.classes,
        train_accuracy=accuracy(model, model_input(config.arch, data.x_train), data.y_train),
        test_accuracy=accuracy(model, model_input(config.arch, data.x_test), data.y_test),
        seconds=seconds,
        feature_tensor=CNN_FEATURE_TENSOR if config.arch == "cnn" else None,
    )
    return model, result


@torch.no_grad()
def accuracy(model: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    logits = model(torch.from_numpy(x))
    return float((logits.argmax(1).numpy() == y).mean())


def export_onnx(model: nn.Module, path: Path, *, input_shape: tuple[int, ...]) -> None:
    """Export with the TorchScript exporter (plain Gemm/Relu/Conv nodes), dynamic batch axis.

    For the CNN, the head's input is exposed as the named tensor ``features``."""
    import onnx

    model.eval()
    dummy = torch.zeros((1, *input_shape), dtype=torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        # the TorchScript exporter is deliberate: it emits plain Gemm/Relu/Conv nodes
        warnings.simplefilter("ignore", DeprecationWarning)
        _export_torchscript(model, dummy, tmp)
    proto = onnx.load(str(tmp))
    if isinstance(model, _CNN):
        _rename_feature_tensor(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def _export_torchscript(model: nn.Module, dummy: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def _rename_feature_tensor(proto: object) -> None:
    """Give the Flatten output (the head's input) the stable name ``features``."""
    graph = proto.graph  # type: ignore[attr-defined]
    flat = [n for n in graph.node if n.op_type == "Flatten"]
    if len(flat) != 1:
        raise PruneError("CNN export: expected exactly one Flatten node")
    old = flat[0].output[0]
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = CNN_FEATURE_TENSOR
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = CNN_FEATURE_TENSOR


def train_to_folder(
    data: Dataset, config: TrainConfig, out: Path, *, progress: bool = False
) -> TrainResult:
    """``prune train``: write ``model.onnx``, ``train.npz``, ``test.npz``, ``train.json`` in ``out``.

    Files are written into a temporary sibling folder which is renamed at the end, so a failed run
    leaves nothing half-written."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise PruneError(f"output folder {out} exists and is not empty")
    model, result = train(data, config, progress=progress)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise PruneError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        export_onnx(model, tmp / "model.onnx", input_shape=result.input_shape)
        save_npz(tmp / "train.npz", model_input(config.arch, data.x_train), data.y_train)
        save_npz(tmp / "test.npz", model_input(config.arch, data.x_test), data.y_test)
        doc = {"version": 1, **asdict(result)}
        (tmp / "train.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PruneError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
