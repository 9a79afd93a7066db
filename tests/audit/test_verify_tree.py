"""The verifier's reading of the tree gate's router (audit/verify/_tree.py): an honest tree
parses and routes every pattern home; each way of bending its shape is refused with its reason,
before any canonical comparison."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest

from audit.verify._framework import CheckUnavailable
from audit.verify._tree import read_tree_routing
from prune.export import export_patched
from prune.model import load_model
from prune.patched import PatchSet, patch_bounds
from prune.regions import InputBox, patterns_of
from tests.prune._engine_models import digits_work

BOX = InputBox(0.0, 1.0, "data-range")


@pytest.fixture(scope="module")
def honest() -> tuple[bytes, int, int]:
    """A tree-gated digits model with 40 patches: ``(model bytes, patches, hidden)``."""
    work = digits_work()
    model = load_model(work.raw)
    act = patterns_of(model.head, work.x_train[:400].astype(np.float64))
    _, first = np.unique(act, axis=0, return_index=True)
    rows = np.sort(first)[:40]
    d = np.zeros((len(rows), model.head.classes))
    d[:, 1] = 2.0
    patches = PatchSet(
        "tree", 1000.0, act[rows], d, None, patch_bounds(None, d, BOX), np.ones(len(rows), int)
    )
    return export_patched(model, patches, BOX), len(rows), model.head.n_hidden


def _attribute(proto: Any, name: str) -> Any:
    node = next(n for n in proto.graph.node if n.name == "prune/patch/route/tree")
    return next(a for a in node.attribute if a.name == name)


def test_honest_tree_routes_every_pattern_home(honest: tuple[bytes, int, int]) -> None:
    raw, patches, hidden = honest
    routing = read_tree_routing(onnx.load_from_string(raw), patches=patches, hidden=hidden)
    assert len(routing.feature) == 2 * patches - 1 and routing.depth >= 2
    np.testing.assert_array_equal(routing.walk(routing.patterns), np.arange(patches))


def _drop_last_node(proto: Any) -> None:
    for name in ("nodes_nodeids", "nodes_treeids", "nodes_featureids"):
        del _attribute(proto, name).ints[-1]


def _second_tree(proto: Any) -> None:
    _attribute(proto, "nodes_treeids").ints[-1] = 1


def _leaf_to_branch(proto: Any) -> None:
    modes = _attribute(proto, "nodes_modes").strings
    modes[len(modes) - 1] = b"BRANCH_GTE"


def _neuron_out_of_range(proto: Any) -> None:
    _attribute(proto, "nodes_featureids").ints[0] = 10_000


def _shared_child(proto: Any) -> None:
    """The root's false child made its true child: a node with two parents, one orphan."""
    true = _attribute(proto, "nodes_truenodeids").ints
    _attribute(proto, "nodes_falsenodeids").ints[0] = true[0]


def _patch_twice(proto: Any) -> None:
    weights = _attribute(proto, "target_weights").floats
    weights[1] = weights[0]


def _fractional_patch(proto: Any) -> None:
    _attribute(proto, "target_weights").floats[0] += 0.5


def _target_not_a_leaf(proto: Any) -> None:
    _attribute(proto, "target_nodeids").ints[0] = 0


def _pattern_off_its_path(proto: Any) -> None:
    """Patch 0's stored pattern flipped at the root's neuron: it now walks to another leaf."""
    from onnx import numpy_helper

    k = _attribute(proto, "nodes_featureids").ints[0]
    tensor = next(t for t in proto.graph.initializer if t.name == "prune/patch/route/patterns")
    table = numpy_helper.to_array(tensor).copy()
    table[0, k // 8] ^= 1 << (k % 8)
    tensor.CopyFrom(numpy_helper.from_array(table, tensor.name))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_drop_last_node, "is missing or not"),
        (_second_tree, "one tree listed"),
        (_leaf_to_branch, "not a later node"),
        (_neuron_out_of_range, "tests no hidden neuron"),
        (_shared_child, "exactly one parent"),
        (_patch_twice, "each once"),
        (_fractional_patch, "each once"),
        (_target_not_a_leaf, "the targets must be the leaves"),
        (_pattern_off_its_path, "routes to patch"),
    ],
)
def test_bent_trees_are_refused(
    honest: tuple[bytes, int, int], edit: Callable[[Any], None], reason: str
) -> None:
    raw, patches, hidden = honest
    proto = onnx.load_from_string(raw)
    edit(proto)
    with pytest.raises(CheckUnavailable, match=reason):
        read_tree_routing(proto, patches=patches, hidden=hidden)
