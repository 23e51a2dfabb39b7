"""Simulated detector points for training a network with ``model.geometry_input: detector``.

The network's geometry branch reads, on photos, the calibrated mediapipe points of each view
(`mvf.recon.calibrate`, `mvf.recon.pipeline`). In training they are simulated from the true
shape and pose: the calibrated `LandmarkSet` projected with the one `LandmarkProjector`
(per-yaw-bin embedding, contour search), plus the detector's measured residuals drawn from the
set's `mvf.face.detector_error.DetectorErrorModel` (per-point, per-yaw-bin bias and low-rank +
diagonal noise, in mm, scaled by the view's f px/mm).

`crop_frame` frames simulated views the way `mvf reconstruct` crops photos (`mvf.recon.crop`: the
square box 1.5x the extent of the detector's 68 table points, `MEDIAPIPE_TO_IBUG68`), so the
geometry stage sees the inputs inference will give it; `detector_batch` re-frames labelled renders
(images, poses, landmarks) the same way for the image stages and validation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mvf.errors import MvfError
from mvf.face.detector_error import DetectorErrorModel
from mvf.face.landmarks import LandmarkProjector
from mvf.face.landmark_asset import DEFAULT_SET, load_landmark_set
from mvf.recon.crop import crop_box
from mvf.recon.detect import MEDIAPIPE_TO_IBUG68

EXTRAS_KEY = "detector_sim"
VALIDATION_SEED = 90210  # validation's simulated detections are the same every time


@dataclass
class DetectorSim:
    """The calibrated set's projector, its error model and the rows of the 68 crop points."""

    projector: LandmarkProjector
    error: DetectorErrorModel
    crop_rows: Tensor  # (68,) rows of the set for `MEDIAPIPE_TO_IBUG68`
    noise_scale: float = 1.0

    @property
    def n_points(self) -> int:
        return self.projector.n_points

    def points(self, verts: Tensor, poses: Tensor, generator: torch.Generator | None = None,
               noise_scale: float | None = None) -> Tensor:
        """Simulated detections ``(B, V, K, 2)`` px of meshes ``(B, N, 3)`` mm in views ``(B, V, 6)``;
        ``noise_scale`` (default the simulator's) multiplies the random part of the error."""
        uv = self.projector(verts, poses)
        scale = self.noise_scale if noise_scale is None else noise_scale
        res = self.error.sample(poses[..., 2].detach(), generator, scale)
        return uv + poses[..., :1, None] * res

    def crop_frame(self, points: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """The `mvf.recon.crop` framing of detections: ``(B, V, K, 2)`` px -> the points in an
        ``size`` px crop and the similarity ``(B, V, 3)`` (scale, x0, y0): crop = (p - x0y0) * scale."""
        lm = points[:, :, self.crop_rows].detach().cpu().double().numpy()
        boxes = np.array([[crop_box(v) for v in b] for b in lm])  # (B, V, 3): x0, y0, side
        box = torch.as_tensor(boxes, dtype=points.dtype, device=points.device)
        scale = size / box[..., 2]
        sim = torch.stack([scale, box[..., 0], box[..., 1]], -1)
        return crop_points(points, sim), sim


def crop_points(points: Tensor, crop: Tensor) -> Tensor:
    """Points ``(B, V, K, 2)`` px moved into the crops ``(B, V, 3)`` (scale, x0, y0) of `crop_frame`."""
    return (points - crop[:, :, None, 1:]) * crop[:, :, None, :1]


def crop_poses(poses: Tensor, crop: Tensor) -> Tensor:
    """Weak-perspective poses ``(B, V, 6)`` moved into the crops ``(B, V, 3)``: f and t scale, t shifts."""
    scale, offset = crop[..., :1], crop[..., 1:]
    return torch.cat([poses[..., :1] * scale, poses[..., 1:4], (poses[..., 4:6] - offset) * scale], -1)


def load_detector_sim(model, n_id: int | None = None, path=None, noise_scale: float = 1.0) -> DetectorSim:
    """The simulator of the calibrated set at ``path`` (default `DEFAULT_SET`); `MvfError` without one."""
    lset = load_landmark_set(path, model)
    where = path or DEFAULT_SET
    if lset is None:
        raise MvfError(f"{where}: calibrated landmark set missing or built for another face model; "
                       "run `mvf build-model --landmarks-only`")
    if lset.error_model is None:
        raise MvfError(f"{where}: the calibrated set has no detector error model (built before it); "
                       "run `mvf build-model --landmarks-only`")
    src = lset.source_index.tolist()
    missing = [i for i in MEDIAPIPE_TO_IBUG68 if i not in src]
    if missing:
        raise MvfError(f"{where}: the calibrated set lacks mediapipe points {missing[:5]} used for cropping")
    rows = torch.tensor([src.index(i) for i in MEDIAPIPE_TO_IBUG68])
    return DetectorSim(LandmarkProjector(model, lset, n_id), lset.error_model.to(model.device), rows.to(model.device),
                       noise_scale)


def detector_sim(ctx) -> DetectorSim | None:
    """The run's simulator (cached in ``ctx.extras``), or None for ``model.geometry_input: head``."""
    if ctx.model_cfg.geometry_input != "detector":
        return None
    sim = ctx.extras.get(EXTRAS_KEY)
    if sim is None:
        sim = load_detector_sim(ctx.face)
        if sim.n_points != ctx.model_cfg.geometry_points:
            raise MvfError(f"config key 'model.geometry_points': {ctx.model_cfg.geometry_points}, but the "
                           f"calibrated set has {sim.n_points} points")
        ctx.extras[EXTRAS_KEY] = sim
    return sim


def crop_images(images: Tensor, crop: Tensor) -> Tensor:
    """Resample square images ``(B, V, C, S, S)`` to the crops ``(B, V, 3)`` (scale, x0, y0) of
    `DetectorSim.crop_frame`: crop pixel ``c`` shows image point ``c / scale + (x0, y0)``; outside the
    image is black, as `mvf.recon.crop` pads photos. Bilinear; same size out."""
    b, v, c, s, _ = images.shape
    inv = 1.0 / crop[..., 0].reshape(-1)
    x0, y0 = crop[..., 1].reshape(-1), crop[..., 2].reshape(-1)
    zero = torch.zeros_like(inv)
    theta = torch.stack([torch.stack([inv, zero, inv + 2.0 * x0 / s - 1.0], -1),
                         torch.stack([zero, inv, inv + 2.0 * y0 / s - 1.0], -1)], -2)
    grid = torch.nn.functional.affine_grid(theta.to(images.dtype), [b * v, c, s, s], align_corners=False)
    out = torch.nn.functional.grid_sample(images.reshape(b * v, c, s, s), grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return out.reshape(b, v, c, s, s)


def detector_batch(ctx, batch: dict, generator: torch.Generator | None = None) -> dict:
    """A labelled batch as `mvf reconstruct` feeds a detector-input network (unchanged for head input).

    Simulates the detections of its ``id``, ``exp`` and ``pose`` (in the images' pixels), then
    re-frames the sample the way photos are cropped (`DetectorSim.crop_frame`: the box of the
    simulated 68 table points): ``images`` ``(B, V, 3, S, S)`` (and ``masks`` ``(B, V, S, S)``) resampled
    to that crop, ``pose`` and ``landmarks`` moved into it, and ``detector_points`` ``(B, V, K, 2)`` px
    added in it. So the image branch is trained on the framing it meets on photos, and the
    geometry branch gets the inputs the geometry stage trained it on.
    """
    sim = detector_sim(ctx)
    if sim is None:
        return batch
    with torch.no_grad():
        verts = ctx.face.decode(batch["id"], batch["exp"])
        size = batch["images"].shape[-1]
        det, crop = sim.crop_frame(sim.points(verts, batch["pose"], generator), size)
        out = dict(batch)
        out["detector_points"] = det
        out["images"] = crop_images(batch["images"], crop)
        if "masks" in batch:
            out["masks"] = (crop_images(batch["masks"][:, :, None], crop)[:, :, 0] > 0.5).to(batch["masks"].dtype)
        out["pose"] = crop_poses(batch["pose"], crop)
        if "landmarks" in batch:
            out["landmarks"] = crop_points(batch["landmarks"], crop)
        return out


def network_inputs(batch: dict) -> dict[str, Tensor]:
    """The network's extra inputs in a `detector_batch`: ``{"detector_points": ...}`` or ``{}``."""
    return {"detector_points": batch["detector_points"]} if "detector_points" in batch else {}
