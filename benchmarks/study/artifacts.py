"""Cached, shared inputs of the cells, each built once (in its own process) and reused.

| kind        | key                                  | holds                                          |
| ----------- | ------------------------------------ | ---------------------------------------------- |
| ``original``  | dataset, arch, seed                | the ``prune train`` model (ONNX + state), split |
| ``reference`` | dataset, arch, seed, setting       | retrained without the forget set, same seed     |
| ``sisa``      | dataset, arch, seed                | SISA ensemble (5 shards) before any deletion    |
| ``amnesiac``  | dataset, arch, seed                | the original retrained with a full update log   |
| ``mia-refs``  | dataset, arch, seed                | the auditor's reference models (RMIA/LiRA)      |
| ``prepared``  | dataset, arch, seed                | ``prune prepare``: cross-fitted out-logits      |

Every folder is written under a temporary name and renamed when complete, with a ``meta.json``
that records how long it took and the builder's peak memory. Nothing here knows a forget set
except ``reference`` (which *is* the retrained model): SISA and Amnesiac prepare without it.
Forget sets and the MIA data split are pure functions of the seed (no files).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from benchmarks.study.common import (
    StudyError,
    atomic_folder,
    machine,
    peak_rss_mb,
    read_json,
    train_config,
    write_json,
)
from prune.baselines import (
    Amnesiac,
    AmnesiacModel,
    Sisa,
    SisaEnsemble,
    TrainRecipe,
    UpdateLog,
    fit,
    recipe_for,
    retain_indices,
)
from prune.calibrate import DEFAULT_FOLDS
from prune.data import load_dataset, load_npz, save_npz
from prune.train import export_onnx, model_input

__all__ = [
    "BUILDERS",
    "MIA_REFERENCE_MODELS",
    "SISA_SHARDS",
    "ArtifactKey",
    "Original",
    "forget_indices",
    "load_amnesiac",
    "load_mia_references",
    "load_original",
    "load_prepared_references",
    "load_sisa",
    "mia_non_member_rows",
    "mia_reference_rows",
]

SISA_SHARDS = 5
MIA_REFERENCE_MODELS = 8
# prune prepare's default (10 since the fifth session; the first recordings used 5): a prepared
# set of another fold count is stale and is built again.
PREPARE_FOLDS = DEFAULT_FOLDS


@dataclass(frozen=True, kw_only=True)
class ArtifactKey:
    kind: str
    dataset: str
    arch: str
    seed: int
    setting: str | None = None

    def folder(self, work: Path) -> Path:
        tail = f"-{self.setting}" if self.setting else ""
        return work / self.kind / f"{self.dataset}-{self.arch}-s{self.seed}{tail}"

    def ready(self, work: Path) -> bool:
        meta = self.folder(work) / "meta.json"
        if not meta.is_file():
            return False
        if self.kind == "prepared":
            return bool(read_json(meta).get("folds") == PREPARE_FOLDS)
        return True


@dataclass(frozen=True, kw_only=True)
class Original:
    recipe: TrainRecipe
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    onnx: bytes
    meta: Mapping[str, Any]

    def model(self, folder: Path) -> nn.Module:
        return _load_state(self.recipe, folder / "state.pt")


def forget_indices(setting: str, y_train: NDArray[np.int64], seed: int) -> NDArray[np.int64]:
    """The rows to forget: ``random-<k>`` (k points), ``random-<p>pct`` (p % of the rows,
    rounded), ``class-<c>`` (every row of class c). Seeded by ``seed`` and the setting's name."""
    kind, _, arg = setting.partition("-")
    n = len(y_train)
    if kind == "class":
        out = np.flatnonzero(y_train == int(arg)).astype(np.int64)
    elif kind == "random":
        k = round(n * float(arg[:-3]) / 100) if arg.endswith("pct") else int(arg)
        if not 0 < k < n:
            raise StudyError(f"setting {setting}: cannot forget {k} of {n} rows")
        rng = np.random.default_rng([seed, zlib.crc32(setting.encode())])
        out = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
    else:
        raise StudyError(f"unknown setting {setting!r} (random-<k>, random-<p>pct, class-<c>)")
    if out.size == 0:
        raise StudyError(f"setting {setting} selects no training rows")
    return out


def _test_halves(n_test: int, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    perm = np.random.default_rng([seed, 7]).permutation(n_test).astype(np.int64)
    return np.sort(perm[: n_test // 2]), np.sort(perm[n_test // 2 :])


def mia_reference_rows(n_test: int, seed: int) -> NDArray[np.int64]:
    """The auditor's reference data: one half of the test split (the same for every setting, so
    the reference models are shared), disjoint from every scored sample."""
    return _test_halves(n_test, seed)[0]


def mia_non_member_rows(
    setting: str, forget_size: int, y_test: NDArray[np.int64], seed: int
) -> NDArray[np.int64]:
    """Held-out non-members from the other half of the test split, following the forget set's
    classes: for ``class-c`` every row of class c in that half, otherwise
    ``min(forget_size, half)`` random rows of it."""
    pool = _test_halves(len(y_test), seed)[1]
    if setting.startswith("class-"):
        same: NDArray[np.int64] = pool[y_test[pool] == int(setting.partition("-")[2])]
        return same
    pick = np.random.default_rng([seed, zlib.crc32(setting.encode()), 1])
    rows: NDArray[np.int64] = np.sort(
        pick.choice(pool, size=min(forget_size, len(pool)), replace=False)
    )
    return rows


def _save_state(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def _load_state(recipe: TrainRecipe, path: Path) -> nn.Module:
    model = recipe.build()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def _meta(folder: Path, start: float, **facts: Any) -> None:
    write_json(
        folder / "meta.json",
        {
            "version": 1,
            "seconds": round(time.perf_counter() - start, 3),
            "builder_peak_rss_mb": round(peak_rss_mb(), 1),
            "machine": machine(),
            **facts,
        },
    )


def _build_original(key: ArtifactKey, work: Path) -> None:
    data = load_dataset(key.dataset, seed=key.seed)  # type: ignore[arg-type]
    recipe = recipe_for(data, train_config(key.dataset, key.arch, key.seed))
    x, xt = model_input(key.arch, data.x_train), model_input(key.arch, data.x_test)  # type: ignore[arg-type]
    with atomic_folder(key.folder(work)) as tmp:
        start = time.perf_counter()
        model = fit(recipe, x, data.y_train)
        seconds = time.perf_counter() - start
        export_onnx(model, tmp / "model.onnx", input_shape=recipe.input_shape)
        _save_state(model, tmp / "state.pt")
        save_npz(tmp / "train.npz", x, data.y_train)
        save_npz(tmp / "test.npz", xt, data.y_test)
        _meta(tmp, start, train_seconds=round(seconds, 3), recipe=_recipe_json(recipe))


def _recipe_json(recipe: TrainRecipe) -> dict[str, Any]:
    c = recipe.config
    return {
        "arch": c.arch,
        "hidden": list(c.hidden),
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "lr": c.lr,
        "seed": c.seed,
        "input_shape": list(recipe.input_shape),
        "classes": recipe.classes,
    }


def load_original(work: Path, dataset: str, arch: str, seed: int) -> Original:
    folder = ArtifactKey(kind="original", dataset=dataset, arch=arch, seed=seed).folder(work)
    meta = read_json(folder / "meta.json")
    x, y = load_npz(folder / "train.npz")
    xt, yt = load_npz(folder / "test.npz")
    r = meta["recipe"]
    recipe = TrainRecipe(
        config=train_config(dataset, arch, seed),
        input_shape=tuple(r["input_shape"]),
        classes=int(r["classes"]),
    )
    return Original(
        recipe=recipe,
        x_train=x,
        y_train=y,
        x_test=xt,
        y_test=yt,
        onnx=(folder / "model.onnx").read_bytes(),
        meta=meta,
    )


def _build_reference(key: ArtifactKey, work: Path) -> None:
    if key.setting is None:
        raise StudyError("the reference artifact needs a setting")
    orig = load_original(work, key.dataset, key.arch, key.seed)
    forget = forget_indices(key.setting, orig.y_train, key.seed)
    keep = retain_indices(forget, len(orig.y_train))
    with atomic_folder(key.folder(work)) as tmp:
        start = time.perf_counter()
        model = fit(orig.recipe, orig.x_train[keep], orig.y_train[keep])
        seconds = time.perf_counter() - start
        export_onnx(model, tmp / "model.onnx", input_shape=orig.recipe.input_shape)
        _meta(tmp, start, train_seconds=round(seconds, 3), forget=len(forget))


def _build_sisa(key: ArtifactKey, work: Path) -> None:
    orig = load_original(work, key.dataset, key.arch, key.seed)
    with atomic_folder(key.folder(work)) as tmp:
        start = time.perf_counter()
        ens = Sisa(shards=SISA_SHARDS).prepare(orig.x_train, orig.y_train, recipe=orig.recipe)
        seconds = time.perf_counter() - start
        if not isinstance(ens, SisaEnsemble):
            raise StudyError("Sisa.prepare did not return an ensemble")
        for s, member in enumerate(ens.members):
            _save_state(member, tmp / f"member-{s}.pt")
        lengths = np.array([len(r) for r in ens.shard_rows], dtype=np.int64)
        np.savez(tmp / "shards.npz", rows=np.concatenate(ens.shard_rows), lengths=lengths)
        export_onnx(ens, tmp / "model.onnx", input_shape=orig.recipe.input_shape)
        _meta(
            tmp, start, prepare_seconds=round(seconds, 3), shards=SISA_SHARDS, seeds=list(ens.seeds)
        )


def load_sisa(work: Path, orig: Original, dataset: str, arch: str, seed: int) -> SisaEnsemble:
    folder = ArtifactKey(kind="sisa", dataset=dataset, arch=arch, seed=seed).folder(work)
    meta = read_json(folder / "meta.json")
    with np.load(folder / "shards.npz", allow_pickle=False) as z:
        rows = np.split(np.asarray(z["rows"]), np.cumsum(np.asarray(z["lengths"]))[:-1])
    members = [_load_state(orig.recipe, folder / f"member-{s}.pt") for s in range(len(rows))]
    return SisaEnsemble(
        members,
        recipe=orig.recipe,
        shard_rows=tuple(r.astype(np.int64) for r in rows),
        seeds=tuple(int(s) for s in meta["seeds"]),
        retrain_counts=(0,) * len(rows),
    )


def _build_amnesiac(key: ArtifactKey, work: Path) -> None:
    orig = load_original(work, key.dataset, key.arch, key.seed)
    source = ArtifactKey(kind="original", dataset=key.dataset, arch=key.arch, seed=key.seed)
    reference = orig.model(source.folder(work))
    with atomic_folder(key.folder(work)) as tmp:
        start = time.perf_counter()
        model = Amnesiac(log_dir=tmp / "log").prepare(
            orig.x_train, orig.y_train, recipe=orig.recipe
        )
        seconds = time.perf_counter() - start
        if not isinstance(model, AmnesiacModel):
            raise StudyError("Amnesiac.prepare did not return an AmnesiacModel")
        same = all(
            torch.equal(a, b)
            for a, b in zip(
                model.net.state_dict().values(), reference.state_dict().values(), strict=True
            )
        )
        _save_state(model.net, tmp / "state.pt")
        _meta(
            tmp,
            start,
            prepare_seconds=round(seconds, 3),
            log_bytes=model.log.nbytes,
            log_steps=model.log.steps,
            same_weights_as_original=same,
        )


def load_amnesiac(work: Path, orig: Original, dataset: str, arch: str, seed: int) -> AmnesiacModel:
    folder = ArtifactKey(kind="amnesiac", dataset=dataset, arch=arch, seed=seed).folder(work)
    return AmnesiacModel(
        _load_state(orig.recipe, folder / "state.pt"), UpdateLog.open(folder / "log")
    )


def _mia_architecture(orig: Original) -> Any:
    from audit.mia import Architecture

    c = orig.recipe.config
    return Architecture(
        kind=c.arch,
        hidden=tuple(c.hidden),
        input_shape=orig.recipe.input_shape,
        classes=orig.recipe.classes,
    )


def _mia_recipe(orig: Original) -> Any:
    from audit.mia import TrainingRecipe

    c = orig.recipe.config
    return TrainingRecipe(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr)


def _build_mia_refs(key: ArtifactKey, work: Path) -> None:
    from audit.mia import train_reference_models
    from audit.mia._arch import state_to_numpy

    orig = load_original(work, key.dataset, key.arch, key.seed)
    ref_rows = mia_reference_rows(len(orig.y_test), key.seed)
    with atomic_folder(key.folder(work)) as tmp:
        start = time.perf_counter()
        refs = train_reference_models(
            orig.x_test[ref_rows],
            orig.y_test[ref_rows],
            architecture=_mia_architecture(orig),
            count=MIA_REFERENCE_MODELS,
            recipe=_mia_recipe(orig),
            seed=key.seed,
        )
        for k, m in enumerate(refs.models):
            np.savez(tmp / f"model-{k}.npz", **state_to_numpy(m))
        np.savez(tmp / "membership.npz", in_reference=refs.in_reference, rows=ref_rows)
        _meta(tmp, start, models=refs.count, train_accuracy=list(refs.train_accuracy))


def load_mia_references(work: Path, orig: Original, dataset: str, arch: str, seed: int) -> Any:
    """The cached :class:`audit.mia.ReferenceSet` (offline: no candidates)."""
    from audit.mia import ReferenceSet
    from audit.mia._arch import module_from_state

    folder = ArtifactKey(kind="mia-refs", dataset=dataset, arch=arch, seed=seed).folder(work)
    meta = read_json(folder / "meta.json")
    with np.load(folder / "membership.npz", allow_pickle=False) as z:
        in_ref, rows = np.asarray(z["in_reference"]), np.asarray(z["rows"])
    arch_ = _mia_architecture(orig)
    models = []
    for k in range(int(meta["models"])):
        with np.load(folder / f"model-{k}.npz", allow_pickle=False) as z:
            models.append(module_from_state(arch_, {name: np.asarray(z[name]) for name in z.files}))
    return ReferenceSet(
        architecture=arch_,
        recipe=_mia_recipe(orig),
        seed=seed,
        x=orig.x_test[rows],
        y=orig.y_test[rows],
        in_reference=in_ref,
        candidates_x=orig.x_test[:0],
        candidates_y=orig.y_test[:0],
        in_candidates=np.zeros((len(models), 0), dtype=bool),
        models=tuple(models),
        train_accuracy=tuple(float(a) for a in meta["train_accuracy"]),
        backend="loky",
    )


def _build_prepared(key: ArtifactKey, work: Path) -> None:
    """``prune prepare`` for the original: cross-fitted out-logits (the owner's one-time cost)."""
    from prune.calibrate import prepare, save_prepared

    orig = load_original(work, key.dataset, key.arch, key.seed)
    with atomic_folder(key.folder(work)) as tmp:
        start = time.perf_counter()
        prepared = prepare(
            orig.onnx,
            orig.x_train,
            orig.y_train,
            recipe=orig.recipe,
            folds=PREPARE_FOLDS,
            x_heldout=orig.x_test,
            seed=key.seed,
        )
        save_prepared(prepared, tmp / "prepared")
        _meta(tmp, start, folds=PREPARE_FOLDS, prepare_seconds=round(prepared.seconds, 3))


def load_prepared_references(work: Path, orig: Original, dataset: str, arch: str, seed: int) -> Any:
    from prune.calibrate import load_prepared

    folder = ArtifactKey(kind="prepared", dataset=dataset, arch=arch, seed=seed).folder(work)
    return load_prepared(
        folder / "prepared", model=orig.onnx, x_train=orig.x_train, y_train=orig.y_train
    )


BUILDERS: Mapping[str, Callable[[ArtifactKey, Path], None]] = {
    "original": _build_original,
    "reference": _build_reference,
    "sisa": _build_sisa,
    "amnesiac": _build_amnesiac,
    "mia-refs": _build_mia_refs,
    "prepared": _build_prepared,
}
