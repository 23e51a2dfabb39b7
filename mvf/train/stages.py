"""Stage kinds: what a training stage reads and how it turns a batch into a loss.

A stage (`mvf.train.config.StageConfig`) names its kind; `STAGE_KINDS` maps the kind to a
`StageKind`: the loss weights it uses, a dataset builder and a ``compute_loss`` function.
Adding a kind (issue 6: ``self_supervised``) means writing those two functions and adding one
entry to `STAGE_KINDS` (plus its weights to `LossWeights`); the loop needs no change.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from mvf.data import SynthDataset
from mvf.data.augment import augment_sample
from mvf.data.datasets import item_generator
from mvf.errors import MvfError, file_error
from mvf.losses.supervised import coefficient_prior, landmark_loss, param_loss, pose_loss, vertex_loss
from mvf.train import geometry_stage, selfsup_stage
from mvf.train.context import DataRequest, LossContext
from mvf.train.detector_sim import detector_batch, network_inputs
from mvf.train.schema import LossWeights, StageConfig


LossFn = Callable[[LossContext, torch.nn.Module, dict, LossWeights, StageConfig],
                  tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class StageKind:
    """A kind of stage.

    ``compute_loss(ctx, model, batch, weights, stage)`` runs the forward pass on a batch already
    on the device and returns ``(total, terms)``: the weighted scalar to minimise and each
    unweighted term (for the logs; keys are `LossWeights` field names). ``prepare(ctx, net,
    stage, seed)``, if given, runs when the stage starts at its first step (also on every rank:
    it must be deterministic for the seed).
    """

    loss_terms: tuple[str, ...]
    make_dataset: Callable[[DataRequest], Dataset]
    compute_loss: LossFn
    prepare: Callable | None = None  # (ctx, net, stage, seed) when the stage starts from its first step


# ----------------------------------------------------------------------------- data helpers
def dataset_subjects(root: str | Path) -> list[str]:
    """Subject ids listed in a synthetic dataset's ``index.json``; `MvfError` if there is none."""
    root = Path(root)
    if not root.is_dir():
        raise file_error(root, "data folder not found (make one with `mvf synth --out DIR`)")
    index = root / "index.json"
    if not index.is_file():
        raise file_error(root, "not a synthetic dataset (no index.json; make one with `mvf synth --out DIR`)")
    try:
        subjects = json.loads(index.read_text())["subjects"]
    except (OSError, ValueError, KeyError, TypeError):
        raise file_error(index, "unreadable dataset index (expected JSON with a 'subjects' list)") from None
    if not subjects:
        raise file_error(index, "the dataset has no subjects")
    return [str(s) for s in subjects]


def resolved(root: str | Path) -> str:
    return str(Path(root).resolve())


# ----------------------------------------------------------------------------- supervised
def supervised_dataset(req: DataRequest) -> Dataset:
    """Labelled synthetic triplets of the stage's root, minus the validation subjects."""
    d = req.stage.data
    subjects = dataset_subjects(d.root)
    held = req.exclude.get(resolved(d.root), set())
    subjects = [s for s in subjects if s not in held]
    if d.max_subjects is not None:
        subjects = subjects[: d.max_subjects]
    if not subjects:
        raise MvfError(f"{d.root}: no training subjects left after holding out the validation split")
    if d.cache:
        base = SynthDataset(d.root, subjects=subjects, augment=None, views=tuple(req.model_cfg.views),
                            size=req.model_cfg.image_size, seed=req.seed)
        return CachedSamples(base, d.augment, req.seed)
    return SynthDataset(d.root, subjects=subjects, augment=d.augment, views=tuple(req.model_cfg.views),
                        size=req.model_cfg.image_size, seed=req.seed)


class CachedSamples(Dataset):
    """Keeps every sample of ``base`` (resized, not augmented) in memory after its first read;
    augments each draw like `mvf.data.SynthDataset` (same generator from (seed, epoch, index)).

    Images are kept as uint8 and masks as bool (about 110 kB per 96 px triplet), so an epoch
    after the first skips PNG decoding and resizing. Each DataLoader worker has its own cache.
    """

    def __init__(self, base: Dataset, augment, seed: int):
        self.base, self.augment, self.seed = base, augment, seed
        self.epoch = 0
        self._cache: dict[int, dict] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        packed = self._cache.get(i)
        if packed is None:
            sample = self.base[i]
            packed = dict(sample)
            packed["images"] = (sample["images"] * 255.0).round().to(torch.uint8)
            packed["masks"] = sample["masks"] > 0.5
            self._cache[i] = packed
        sample = dict(packed)
        sample["images"] = packed["images"].float().div(255.0)
        sample["masks"] = packed["masks"].float()
        if self.augment is not None:
            sample = augment_sample(sample, self.augment, item_generator(self.seed, self.epoch, i))
        return sample


def supervised_terms(ctx: LossContext, out: dict, batch: dict) -> dict[str, torch.Tensor]:
    """Unweighted supervised terms for network outputs ``out`` against a labelled ``batch``.

    ``landmark`` px, ``pose`` normalised squared, ``params`` squared coefficients, ``vertex`` mm
    (face region), ``prior`` (see `mvf.losses.supervised`); ``landmark2d`` px when the network has a
    landmark head.
    """
    verts = ctx.face.decode(out["id"], out["exp"])
    gt_verts = ctx.face.decode(batch["id"], batch["exp"])
    lm = ctx.projector(verts, out["pose"])
    _, scale = ctx.pose_norm.tensors(out["pose"])
    terms = {
        "landmark": landmark_loss(lm, batch["landmarks"], batch["landmark_visible"]),
        "pose": pose_loss(out["pose"], batch["pose"], scale),
        "params": param_loss(out["id"], out["exp"], batch["id"], batch["exp"]),
        "vertex": vertex_loss(verts, gt_verts, ctx.region),
        "prior": coefficient_prior(out["id"], out["exp"]),
    }
    if "landmarks" in out:  # the landmark head: every labelled point, hidden ones included
        terms["landmark2d"] = landmark_loss(out["landmarks"], batch["landmarks"])
    return terms


def supervised_loss(ctx: LossContext, model: torch.nn.Module, batch: dict, weights: LossWeights,
                    stage: StageConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = detector_batch(ctx, batch)  # detector input: simulated detections, photo-like crops
    out = model(batch["images"], **network_inputs(batch))
    terms = supervised_terms(ctx, out, batch)
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, terms


SUPERVISED = StageKind(
    loss_terms=("landmark", "landmark2d", "pose", "params", "vertex", "prior"),
    make_dataset=supervised_dataset,
    compute_loss=supervised_loss,
)

GEOMETRY = StageKind(
    loss_terms=geometry_stage.LOSS_TERMS,
    make_dataset=geometry_stage.geometry_dataset,
    compute_loss=geometry_stage.geometry_loss,
    prepare=geometry_stage.fit_linear_geometry,
)

STAGE_KINDS: dict[str, StageKind] = {
    "geometry": GEOMETRY,
    "supervised": SUPERVISED,
    "self_supervised": StageKind(selfsup_stage.LOSS_TERMS, selfsup_stage.selfsup_dataset,
                                 selfsup_stage.selfsup_loss),
}
