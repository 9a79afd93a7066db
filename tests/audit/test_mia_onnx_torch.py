"""Reference models of the target's own architecture, from its ONNX file: the conversion is
faithful (with the file's weights it reproduces onnxruntime), fresh weights are new, and the
module trains. Three graphs: a skl2onnx MLP classifier (probabilities output, softmax tail),
a torch.onnx residual CNN (Conv, BatchNorm, residual Add, pooling) and the project's
Fashion-MNIST CNN."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from audit.errors import InputError
from audit.mia import TrainingRecipe, resolve_architecture, train_reference_models
from audit.mia._onnx_torch import OnnxModule, logits_tensor
from audit.runtime import OnnxModel
from tests.audit.test_mia_support import export_onnx

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        h = nn.functional.leaky_relu(h + self.block(h), 0.1)
        h = nn.functional.max_pool2d(h, 2)
        h = nn.functional.avg_pool2d(h, 2)
        return self.fc(h.flatten(1))


def _skl_mlp(path: Path) -> tuple[Path, tuple[int, ...]]:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.random((60, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier((16, 8), max_iter=30, random_state=0).fit(x, np.arange(60) % 3)
    proto = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    path.write_bytes(proto.SerializeToString())
    return path, (8,)


def _residual(path: Path) -> tuple[Path, tuple[int, ...]]:
    torch.manual_seed(0)
    module = _Residual()
    with torch.no_grad():  # non-trivial BatchNorm statistics before the export folds them
        module.bn.running_mean.uniform_(-0.5, 0.5)
        module.bn.running_var.uniform_(0.5, 2.0)
    return export_onnx(module, path, (1, 8, 8)), (1, 8, 8)


def _fashion_cnn(path: Path) -> tuple[Path, tuple[int, ...]]:
    from prune.train import build_model
    from prune.train import export_onnx as prune_export

    torch.manual_seed(0)
    module = build_model("cnn", input_shape=(1, 28, 28), classes=10, hidden=(16,))
    prune_export(module, path, input_shape=(1, 28, 28))
    return path, (1, 28, 28)


GRAPHS = {"skl2onnx-mlp": _skl_mlp, "residual-cnn": _residual, "fashion-cnn": _fashion_cnn}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_the_conversion_reproduces_onnxruntime_and_fresh_weights_train(
    name: str, tmp_path: Path
) -> None:
    path, shape = GRAPHS[name](tmp_path / f"{name}.onnx")
    raw = path.read_bytes()
    x = np.random.default_rng(1).random((32, *shape)).astype(np.float32)
    proto = onnx.load_from_string(raw)
    want_name = logits_tensor(proto)
    copy = OnnxModule(raw, mode="copy").eval()
    with torch.no_grad():
        got = copy(torch.from_numpy(x)).numpy()
    if want_name in [o.name for o in proto.graph.output]:
        want = OnnxModel(path).run(x, outputs=[want_name])[0]
    else:  # skl2onnx: the logits feed a Softmax; the probabilities are the graph output (its
        # label tail uses ai.onnx.ml ops, which the auditor's sandboxed runtime refuses to run,
        # so plain onnxruntime is the reference here; the converter needs only the logits path)
        import onnxruntime as ort

        session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
        probs = session.run(["probabilities"], {session.get_inputs()[0].name: x})[0]
        want = np.log(probs)
        got = torch.log_softmax(torch.from_numpy(got), 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    classes = got.shape[1]
    arch = resolve_architecture(onnx_model=path, declared=None, input_shape=shape, classes=classes)
    assert arch.kind == "onnx" or name == "skl2onnx-mlp"  # an MLP chain is read as mlp widths
    arch = resolve_architecture(
        onnx_model=path, declared="onnx", input_shape=shape, classes=classes
    )
    torch.manual_seed(5)
    fresh = arch.build()
    assert {k for k, _ in fresh.named_parameters()} == {k for k, _ in copy.named_parameters()}
    for (_, a), (_, b) in zip(fresh.named_parameters(), copy.named_parameters(), strict=True):
        assert a.shape == b.shape and not torch.equal(a, b)  # fresh, not the owner's weights

    # learnable: reference models trained from the ONNX file fit a small labelled set
    y = (x.reshape(len(x), -1).sum(1) > np.median(x.reshape(len(x), -1).sum(1))).astype(np.int64)
    refs = train_reference_models(
        np.concatenate([x, x]),
        np.concatenate([y, y]),
        architecture=arch,
        count=2,
        recipe=TrainingRecipe(epochs=60, batch_size=16, lr=1e-2),
        seed=0,
    )
    assert min(refs.train_accuracy) > 0.8
    assert refs.describe()["architecture"].startswith("onnx:sha256=")


def test_a_patched_model_trains_its_original_network_and_unknown_ops_are_refused(
    tmp_path: Path,
) -> None:
    path, _shape = _residual(tmp_path / "r.onnx")
    proto = onnx.load(str(path))
    node = onnx.helper.make_node("Erf", ["logits"], ["patched"])
    proto.graph.node.append(node)
    proto.graph.output.insert(0, onnx.helper.make_tensor_value_info("patched", 1, None))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "prune.original_output", "logits"
    module = OnnxModule(proto.SerializeToString())
    assert all(n.op_type != "Erf" for n in module.nodes)  # the patch is not rebuilt
    del proto.metadata_props[:]
    with pytest.raises(InputError, match="op Erf is not supported"):
        OnnxModule(proto.SerializeToString())
