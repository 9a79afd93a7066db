"""Reference models: architecture read from ONNX (plain, patched, CNN refused), balanced
membership, determinism whatever the parallel backend, and refusal of overlapping data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from torch import nn

from audit.errors import InputError
from audit.mia import Architecture, TrainingRecipe, resolve_architecture, train_reference_models
from audit.mia._reference import balanced_membership
from tests.audit.test_mia_support import digits_split, export_onnx

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10)
    )


def test_mlp_widths_are_read_from_the_onnx_graph(tmp_path: Path) -> None:
    path = export_onnx(_mlp(), tmp_path / "m.onnx", (64,))
    arch = resolve_architecture(onnx_model=path, declared=None, input_shape=(64,), classes=10)
    assert arch == Architecture("mlp", (48, 24), (64,), 10, "onnx")
    assert sum(p.numel() for p in arch.build().parameters()) == sum(
        p.numel() for p in _mlp().parameters()
    )


def test_a_patched_model_is_read_through_its_original_output(tmp_path: Path) -> None:
    """A patch subgraph (here an extra Sigmoid branch, not part of a ReLU MLP) must be ignored."""
    proto = onnx.load(str(export_onnx(_mlp(), tmp_path / "m.onnx", (64,))))
    g = proto.graph
    g.node.append(onnx.helper.make_node("Sigmoid", ["logits"], ["prune/patch/s"]))
    g.node.append(onnx.helper.make_node("Add", ["logits", "prune/patch/s"], ["prune/output"]))
    del g.output[:]
    g.output.append(
        onnx.helper.make_tensor_value_info("prune/output", onnx.TensorProto.FLOAT, None)
    )
    proto.metadata_props.append(
        onnx.StringStringEntryProto(key="prune.original_output", value="logits")
    )
    arch = resolve_architecture(
        onnx_model=proto.SerializeToString(), declared=None, input_shape=(64,), classes=10
    )
    assert arch.hidden == (48, 24)


def test_a_cnn_is_rebuilt_from_its_graph_or_read_as_declared(tmp_path: Path) -> None:
    declared = Architecture("cnn", (32,), (1, 8, 8), 10)
    path = export_onnx(declared.build(), tmp_path / "c.onnx", (1, 8, 8))
    own = resolve_architecture(onnx_model=path, declared=None, input_shape=(1, 8, 8), classes=10)
    assert own.kind == "onnx" and own.graph == path.read_bytes()  # the target's own graph
    with pytest.raises(InputError, match="outputs of shape"):
        resolve_architecture(onnx_model=path, declared=None, input_shape=(1, 8, 8), classes=3)
    arch = resolve_architecture(onnx_model=path, declared="cnn", input_shape=(1, 8, 8), classes=10)
    assert (arch.kind, arch.hidden) == ("cnn", (32,))
    explicit = resolve_architecture(
        onnx_model=None, declared="mlp:7,5", input_shape=(64,), classes=10
    )
    assert explicit.hidden == (7, 5)
    for bad, message in (("rnn", "unknown architecture"), ("mlp:a", "integers"), ("mlp", "widths")):
        with pytest.raises(InputError, match=message):
            resolve_architecture(onnx_model=None, declared=bad, input_shape=(64,), classes=10)
    with pytest.raises(InputError, match="outputs"):
        resolve_architecture(onnx_model=path, declared="cnn", input_shape=(1, 8, 8), classes=3)


@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_membership_is_balanced(count: int) -> None:
    mask = balanced_membership(count, 400, np.random.default_rng(0))
    assert mask.shape == (count, 400)
    if count >= 2:
        assert (mask.sum(axis=0) == count // 2).all()
        assert abs(mask.sum(axis=1) - 400 * (count // 2) / count).max() < 60
    else:
        assert 150 < mask.sum() < 250


def test_training_is_deterministic_across_backends_and_jobs() -> None:
    split = digits_split(1)
    arch = Architecture("mlp", (16,), (64,), 10)

    def run(jobs: int, backend: str):
        refs = train_reference_models(
            split.reference.x,
            split.reference.y,
            architecture=arch,
            count=2,
            recipe=TrainingRecipe(epochs=2),
            seed=11,
            jobs=jobs,
            backend=backend,
        )
        return refs.logits(split.members.x, split.members.y), refs.in_reference

    base_logits, base_mask = run(1, "sequential")
    for jobs, backend in ((2, "threading"), (2, "loky")):
        logits, mask = run(jobs, backend)
        np.testing.assert_array_equal(mask, base_mask)
        np.testing.assert_array_equal(logits, base_logits)  # bit for bit: threads fixed per task
    with pytest.raises(InputError, match="unknown backend"):
        run(1, "carrier-pigeon")


def test_scoring_reference_data_is_refused_and_candidates_keep_their_membership() -> None:
    split = digits_split(2)
    cand = (split.members.x[:50], split.members.y[:50])
    refs = train_reference_models(
        split.reference.x,
        split.reference.y,
        architecture=Architecture("mlp", (8,), (64,), 10),
        count=4,
        recipe=TrainingRecipe(epochs=1),
        seed=0,
        candidates=cand,
    )
    with pytest.raises(InputError, match="disjoint"):
        refs.membership(split.reference.x[:3], split.reference.y[:3])
    inside = refs.membership(*cand)
    np.testing.assert_array_equal(inside, refs.in_candidates)
    assert not refs.membership(split.non_members.x, split.non_members.y).any()
    assert refs.describe()["online"] is True and refs.describe()["models"] == 4


@pytest.mark.parametrize(("backend", "package"), [("ray", "ray"), ("dask", "distributed")])
def test_cluster_backends_say_what_to_install(backend: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    split = digits_split(1)
    with pytest.raises(InputError, match=f"backend '{backend}' needs"):
        train_reference_models(
            split.reference.x,
            split.reference.y,
            architecture=Architecture("mlp", (4,), (64,), 10),
            count=2,
            recipe=TrainingRecipe(epochs=1),
            seed=0,
            backend=backend,
        )
