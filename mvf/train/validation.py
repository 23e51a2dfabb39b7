"""Validation metrics on labelled held-out subjects.

* ``landmark_px``: mean 2D distance (px) over visible landmarks, predicted shape + pose;
* ``rmse_mm``: per-subject vertex RMSE (mm) on the face region after rigid alignment
  (rotation + translation) of the predicted mesh to the ground truth; ``rmse_sim_mm`` after a
  similarity alignment (plus scale: absolute size is ambiguous under weak perspective);
* ``pose_deg``: angle (degrees) of the rotation between predicted and true view rotations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mvf.align import aligned_rmse
from mvf.recon.refine import predict
from mvf.train.detector_sim import VALIDATION_SEED, detector_batch, network_inputs
from renderer.rotations import euler_to_matrix


@dataclass
class EvalResult:
    """Per-subject arrays: rmse_mm, rmse_sim_mm, landmark_px (mean over its visible points),
    pose_deg (mean over its views); plus subject ids."""

    subjects: list[str]
    rmse_mm: np.ndarray
    rmse_sim_mm: np.ndarray
    landmark_px: np.ndarray
    pose_deg: np.ndarray

    def summary(self) -> dict[str, float]:
        def stat(a: np.ndarray, fn) -> float:
            return float(fn(a)) if len(a) else float("nan")

        return {
            "rmse_mm": stat(self.rmse_mm, np.mean),
            "rmse_median_mm": stat(self.rmse_mm, np.median),
            "rmse_p90_mm": stat(self.rmse_mm, lambda a: np.percentile(a, 90)),
            "rmse_sim_mm": stat(self.rmse_sim_mm, np.mean),
            "landmark_px": stat(self.landmark_px, np.mean),
            "pose_deg": stat(self.pose_deg, np.mean),
            "n_subjects": float(len(self.subjects)),
        }


def rotation_error_deg(pred_pose: torch.Tensor, gt_pose: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of ``R_pred R_gt^T`` for ``(..., 6)`` poses: ``(...)``."""
    rel = euler_to_matrix(pred_pose[..., 1:4]) @ euler_to_matrix(gt_pose[..., 1:4]).transpose(-1, -2)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


@torch.no_grad()
def batch_metrics(ctx, out: dict, batch: dict) -> dict[str, torch.Tensor]:
    """Per-sample metrics ``(B,)`` for outputs ``out`` of a labelled ``batch`` (on one device)."""
    verts = ctx.face.decode(out["id"], out["exp"])
    gt = ctx.face.decode(batch["id"], batch["exp"])
    lm = ctx.projector(verts, out["pose"])
    dist = (lm - batch["landmarks"]).norm(dim=-1)  # (B, V, 68)
    vis = batch["landmark_visible"].to(dist.dtype)
    return {
        "rmse_mm": aligned_rmse(verts, gt, ctx.region, "rigid"),
        "rmse_sim_mm": aligned_rmse(verts, gt, ctx.region, "similarity"),
        "landmark_px": (dist * vis).sum((1, 2)) / vis.sum((1, 2)).clamp(min=1.0),
        "pose_deg": rotation_error_deg(out["pose"], batch["pose"]).mean(1),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, ctx, max_batches: int | None = None,
             refine: bool = False) -> EvalResult:
    """Run ``model`` (eval mode, restored afterwards) over a loader of labelled batches.

    ``refine``: score the model's full prediction, its ``model.refine`` stage included
    (`mvf.recon.refine.predict`); otherwise the network's regression alone (cheaper, for training).
    """
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("rmse_mm", "rmse_sim_mm", "landmark_px", "pose_deg")}
    subjects: list[str] = []
    gen = torch.Generator(ctx.device).manual_seed(VALIDATION_SEED)  # the same simulated detections each time
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = detector_batch(ctx, to_device(batch, ctx.device), gen)
            extra = network_inputs(batch)
            out = (predict(model, ctx.face, batch["images"], **extra) if refine
                   else model(batch["images"], **extra))
            for k, v in batch_metrics(ctx, out, batch).items():
                parts[k].append(v.double().cpu().numpy())
            subjects += list(batch["subject"])
    finally:
        model.train(was_training)
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    return EvalResult(subjects=subjects, **cat)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch's tensors to ``device`` (non-tensors are kept)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def is_finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
