"""The ``self_supervised`` stage kind: MVF-Net's view-consistency training on unlabelled triplets.

Data: `mvf.data.UnlabelledTriplets` over the stage's ``data.root``: a folder of real triplets
(``<subject>/{front,left,right}.png|jpg``, optional ``<view>.pts|.npy`` landmark files), or a
synthetic dataset whose labels are ignored except its 2D landmarks (they stand in for landmark
files). Images are resized to ``model.image_size``; no augmentation (the views must agree).

Loss of a batch: the network predicts ``id``, ``exp`` and a pose per view; the decoded mesh
``(B, N, 3)`` mm is rasterized in every view and `mvf.losses.selfsup.cross_view_losses` compares, on
the eroded co-visible pixels of every view pair (A, B) inside the stage's ``photo_region``:

* ``photometric``: robust ``|I_B - I_A→B|`` ([0, 1] colour units, `StageConfig.cross_view`);
* ``flow``: ``|F(I_B, I_A→B)| + |F(I_A→B, I_B)|`` px, F from `StageConfig.flow`;

plus ``landmark`` (mean px distance of the projected 68 landmarks, jawline on the silhouette,
to the given visible ones; skipped for batches without landmarks) and ``prior``
(`mvf.losses.supervised.coefficient_prior`: id ~ N(0, 1), exp near [0, 1]). Terms with weight 0 are not
computed. Gradients reach the network through the warp (each pixel's surface point projected
into view A, where A's image is sampled) and through the flow estimator (differentiable in both
images, never under ``no_grad``).

This module also builds the picture sheets (`cross_view_panels`, `training_sheets`): flow fields,
eroded co-visible masks and per-pair photometric error maps next to `renderer.pictures`' panels.
It does not import `mvf.train.stages` at module level (that module registers this kind).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.utils.data import Dataset, Subset

from mvf.data import UnlabelledTriplets
from mvf.errors import MvfError
from mvf.losses.flow import FlowEstimator, build_flow, flow_to_rgb
from mvf.losses.selfsup import CrossViewConfig, CrossViewResult, cross_view_losses, inner_face_region
from mvf.losses.supervised import coefficient_prior, landmark_loss
from mvf.train.context import DataRequest, LossContext
from mvf.train.schema import LossWeights, StageConfig
from renderer.pictures import heat, view_sheets

LOSS_TERMS = ("photometric", "flow", "landmark", "prior")


# ----------------------------------------------------------------------------- data
def selfsup_dataset(req: DataRequest) -> Dataset:
    """Unlabelled triplets of the stage's root at the model's views and size, minus the
    validation subjects when the root is the validation root."""
    st, m = req.stage, req.model_cfg
    if m.geometry_input == "detector":
        raise MvfError(f"stage '{st.name}': a self_supervised stage does not feed detector points yet "
                       "(model.geometry_input: detector); drop the stage or use geometry_input: head")
    if len(m.views) < 2:
        raise MvfError(f"stage '{st.name}': a self_supervised stage needs at least two views "
                       f"(model.views is {list(m.views)})")
    if st.photo_pairs == "front" and "front" not in m.views:
        raise MvfError(f"config key 'stages.{st.name}.photo_pairs': 'front' needs the front view in model.views")
    if st.data.augment is not None:
        raise MvfError(f"config key 'stages.{st.name}.data.augment': a self_supervised stage takes no "
                       "augmentation (the views of a triplet must stay consistent); use null")
    if not any(getattr(st.loss, k) for k in LOSS_TERMS):
        raise MvfError(f"config key 'stages.{st.name}.loss': every weight is 0 "
                       f"(set some of {', '.join(LOSS_TERMS)})")
    ds = UnlabelledTriplets(st.data.root, views=tuple(m.views), size=m.image_size, skip_bad=st.data.skip_bad)
    if st.loss.landmark and not ds.has_landmarks:
        warnings.warn(f"{st.data.root}: no landmark files, so stage '{st.name}' trains without its "
                      "landmark term", stacklevel=2)
    held = req.exclude.get(str(Path(st.data.root).resolve()), set())
    keep = [i for i, item in enumerate(ds.items) if item[0] not in held]
    if st.data.max_subjects is not None:
        keep = keep[: st.data.max_subjects]
    if not keep:
        raise MvfError(f"{st.data.root}: no training subjects left after holding out the validation split")
    return ds if len(keep) == len(ds) else Subset(ds, keep)


# ----------------------------------------------------------------------------- loss
@dataclass
class CrossViewTools:
    """What the cross-view losses of a stage reuse between steps."""

    pairs: list[tuple[int, int]]
    region: Tensor | None  # (F,) bool triangles, or None for all
    flow_net: FlowEstimator | None


def view_pairs(views: Sequence[str], which: str) -> list[tuple[int, int]]:
    """Ordered view-index pairs (a, b): ``"all"`` of them, or ``"front"`` <-> each other view."""
    n = len(views)
    if which == "all":
        return [(a, b) for a in range(n) for b in range(n) if a != b]
    if which == "front":
        f = list(views).index("front")
        return [p for o in range(n) if o != f for p in ((f, o), (o, f))]
    raise MvfError(f"photo_pairs {which!r}: use 'all' or 'front'")


def cross_view_tools(ctx: LossContext, stage: StageConfig, views: Sequence[str],
                     with_flow: bool) -> CrossViewTools:
    """Pairs, region and flow estimator of ``stage`` (cached in ``ctx.extras``)."""
    key = ("self_supervised", stage.photo_pairs, stage.photo_region, tuple(views), with_flow, repr(stage.flow))
    tools = ctx.extras.get(key)
    if tools is None:
        region = inner_face_region(ctx.face) if stage.photo_region == "inner_face" else None
        flow_net = build_flow(stage.flow).to(ctx.device) if with_flow else None
        tools = CrossViewTools(view_pairs(views, stage.photo_pairs), region, flow_net)
        ctx.extras[key] = tools
    return tools


def at_photo_size(images: Tensor, poses: Tensor, size: int | None) -> tuple[Tensor, Tensor]:
    """Resize ``(B, V, 3, S, S)`` images to ``size`` px and scale ``(B, V, 6)`` poses to match
    (f, tx, ty times size / S: the pixel frame's origin is the corner, so this is exact)."""
    s = images.shape[-1]
    if size is None or size == s:
        return images, poses
    k = size / s
    flat = tnf.interpolate(images.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False,
                           antialias=size < s)
    scale = poses.new_tensor([k, 1.0, 1.0, 1.0, k, k])
    return flat.unflatten(0, images.shape[:2]), poses * scale


def selfsup_terms(ctx: LossContext, out: dict, batch: dict, weights: LossWeights, stage: StageConfig,
                  views: Sequence[str]) -> tuple[dict[str, Tensor], CrossViewResult | None]:
    """Unweighted terms for network outputs ``out`` on an unlabelled ``batch`` (only those with
    a nonzero weight; ``photometric`` comes with ``flow``), and the cross-view result if run."""
    verts = ctx.face.decode(out["id"], out["exp"])
    terms: dict[str, Tensor] = {}
    res = None
    if weights.photometric or weights.flow:
        images, poses = at_photo_size(batch["images"], out["pose"], stage.photo_size)
        tools = cross_view_tools(ctx, stage, views, with_flow=bool(weights.flow))
        res = cross_view_losses(images, verts, ctx.face.faces, poses, stage.cross_view, flow_net=tools.flow_net,
                                pairs=tools.pairs, region=tools.region)
        terms["photometric"] = res.photometric
        if weights.flow:
            terms["flow"] = res.flow
    if weights.landmark and "landmarks" in batch:
        lm = ctx.projector(verts, out["pose"])
        terms["landmark"] = landmark_loss(lm, batch["landmarks"], batch["landmark_visible"])
    if weights.prior:
        terms["prior"] = coefficient_prior(out["id"], out["exp"])
    return terms, res


def selfsup_loss(ctx: LossContext, model: torch.nn.Module, batch: dict, weights: LossWeights,
                 stage: StageConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """`mvf.train.stages.StageKind.compute_loss` of the self_supervised kind."""
    out = model(batch["images"])
    terms, _ = selfsup_terms(ctx, out, batch, weights, stage, ctx.model_cfg.views)
    total = out["id"].new_zeros(())
    for k, v in terms.items():
        total = total + getattr(weights, k) * v
    return total, terms


# ----------------------------------------------------------------------------- pictures
def _masked_rgb(rgb: np.ndarray, mask: np.ndarray, fill: float = 0.15) -> np.ndarray:
    return np.where(mask[..., None] > 0, rgb, fill)


@torch.no_grad()
def cross_view_panels(res: CrossViewResult, view_names: Sequence[str]) -> list[list[tuple[str, np.ndarray]]]:
    """Extra picture panels per view ``b`` from the first subject of ``res``: for each pair
    (a, b) (titles use initials, e.g. ``F>L`` for front -> left):

    * ``mask F>L``: the eroded co-visible mask the losses use;
    * ``err F>L <mean>``: the photometric error map (`renderer.pictures.heat`, 0 to 0.25 in
      [0, 1] units; the title gives its mean over the mask in 1/255);
    * ``flow F>L <max>px`` (when computed): ``F(I_b, I_a→b)`` as `mvf.losses.flow.flow_to_rgb`
      (white = 0, saturated = the largest length in the mask), dark outside the mask.

    Pass as ``extra_panels`` to `renderer.pictures.view_sheets`."""
    n = len(view_names)
    panels: list[list[tuple[str, np.ndarray]]] = [[] for _ in range(n)]
    for p, (a, b) in enumerate(res.pairs):
        mask = res.covisible[0, p, 0].float().cpu().numpy()
        err = res.error[0, p, 0].float().cpu().numpy()
        name = f"{view_names[a][:1].upper()}>{view_names[b][:1].upper()}"  # short: panels may be 64 px
        mean = float((err * mask).sum() / max(mask.sum(), 1.0)) * 255.0
        panels[b].append((f"mask {name}", np.repeat(mask[..., None], 3, -1)))
        panels[b].append((f"err {name} {mean:.0f}", heat(err) * mask[..., None]))
        if res.flow_field is not None:
            field = res.flow_field[0, p:p + 1].float()
            top = float((field.norm(dim=1)[0].cpu().numpy() * mask).max())
            rgb = flow_to_rgb(field, max_magnitude=max(top, 1.0))[0].cpu().numpy()
            panels[b].append((f"flow {name} {top:.1f}px", _masked_rgb(rgb, mask)))
    return panels


@torch.no_grad()
def cross_view_sheets(images: Tensor, verts: Tensor, faces: Tensor, poses: Tensor,
                      view_names: Sequence[str], cfg: CrossViewConfig | None = None, flow_net=None,
                      pairs: list[tuple[int, int]] | None = None, region: Tensor | None = None,
                      backend: str = "auto") -> list[np.ndarray]:
    """`renderer.pictures.view_sheets` of one subject plus `cross_view_panels`.

    images ``(V, 3, H, W)`` in [0, 1]; verts ``(N, 3)`` mm, or ``(V, N, 3)`` one mesh per view (a
    pinhole camera's, `renderer.camera.view_meshes`); faces ``(F, 3)``; poses ``(V, 6)``.
    Returns one uint8 ``(rows, cols, 3)`` sheet per view.
    """
    res = cross_view_losses(images[None], verts[None], faces, poses[None], cfg or CrossViewConfig(),
                            flow_net=flow_net, pairs=pairs, backend=backend, region=region)
    extra = cross_view_panels(res, view_names)
    return view_sheets(images, verts, faces, poses, view_names, backend=backend, extra_panels=extra)


@torch.no_grad()
def training_sheets(ctx: LossContext, net: torch.nn.Module, images: Tensor, stage: StageConfig,
                    extra: dict | None = None) -> list[np.ndarray]:
    """Sheets of the network's prediction for one sample ``(V, 3, S, S)`` with ``stage``'s
    cross-view settings (at its ``photo_size``); the network runs in eval mode (restored after).
    ``extra``: further network inputs of the sample, batched (e.g. its ``detector_points``)."""
    was_training = net.training
    net.eval()
    try:
        out = net(images[None].to(ctx.device), **(extra or {}))
    finally:
        net.train(was_training)
    views = list(ctx.model_cfg.views)
    verts = ctx.face.decode(out["id"], out["exp"])
    imgs, poses = at_photo_size(images[None].to(ctx.device), out["pose"], stage.photo_size)
    tools = cross_view_tools(ctx, stage, views, with_flow=True)
    return cross_view_sheets(imgs[0], verts[0], ctx.face.faces, poses[0], views, stage.cross_view,
                             tools.flow_net, tools.pairs, tools.region)


__all__ = ["LOSS_TERMS", "CrossViewTools", "at_photo_size", "cross_view_panels", "cross_view_sheets",
           "cross_view_tools", "selfsup_dataset", "selfsup_loss", "selfsup_terms", "training_sheets",
           "view_pairs"]
