"""Supervised losses (landmark projection itself: `mvf.face.landmarks.LandmarkProjector`).

Every loss returns a scalar in a natural unit (pixels, millimetres, or squared normalised
parameters), is zero at the ground truth and differentiable in the prediction.
"""
from __future__ import annotations

import torch

from mvf.face.model import FaceModel

_EPS = 1e-10  # inside the square root of pixel distances (keeps gradients finite at 0)


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pixel distance over visible landmarks (the one landmark loss: training, fitting, metrics).

    Args:
        pred, target: ``(..., K, 2)`` px, e.g. ``(B, V, 68, 2)``. visible: ``(..., K)`` bool/float
            weights, or None (all).
    Returns:
        scalar px (0 when nothing is visible).
    """
    dist = torch.sqrt(((pred - target) ** 2).sum(-1) + _EPS) - _EPS ** 0.5
    if visible is None:
        return dist.mean()
    w = visible.to(dist.dtype)
    return (dist * w).sum() / w.sum().clamp(min=1.0)


def pose_loss(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean squared pose error in normalised units: ``((pred - target) / scale)**2``.

    Args: pred, target ``(B, V, 6)``; scale ``(6,)`` (`mvf.net.network.PoseNorm.scale`).
    """
    return (((pred - target) / scale) ** 2).mean()


def param_loss(pred_id: torch.Tensor, pred_exp: torch.Tensor,
               gt_id: torch.Tensor, gt_exp: torch.Tensor) -> torch.Tensor:
    """Mean squared 3DMM coefficient error on the first K predicted coefficients.

    ``pred_id (B, K_id)`` vs ``gt_id[:, :K_id]``, likewise for exp; the id and exp means add.
    """
    k_id, k_exp = pred_id.shape[1], pred_exp.shape[1]
    loss = ((pred_id - gt_id[:, :k_id]) ** 2).mean()
    if k_exp:
        loss = loss + ((pred_exp - gt_exp[:, :k_exp]) ** 2).mean()
    return loss


def vertex_loss(pred_verts: torch.Tensor, gt_verts: torch.Tensor,
                vertex_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-vertex Euclidean distance in mm, ``(B, N, 3)`` each, optionally on a subset."""
    if vertex_ids is not None:
        pred_verts = pred_verts.index_select(1, vertex_ids)
        gt_verts = gt_verts.index_select(1, vertex_ids)
    dist = torch.sqrt(((pred_verts - gt_verts) ** 2).sum(-1) + _EPS) - _EPS ** 0.5
    return dist.mean()


def coefficient_prior(id_coeffs: torch.Tensor, exp_coeffs: torch.Tensor) -> torch.Tensor:
    """Prior on coefficients: ``mean(id^2)`` (N(0, 1) modes) ``+ mean(exp^2)`` (sparse,
    neutral by default) ``+ mean(d^2)``, d = distance of exp outside [0, 1]."""
    prior = (id_coeffs ** 2).mean()
    if exp_coeffs.shape[1]:
        outside = torch.relu(-exp_coeffs) + torch.relu(exp_coeffs - 1.0)
        prior = prior + (exp_coeffs ** 2).mean() + (outside ** 2).mean()
    return prior


def face_region(model: FaceModel, radius_mm: float) -> torch.Tensor:
    """Vertex ids of the face region: mean-face vertices within ``radius_mm`` of the nose tip
    (iBUG point 30). ``(M,)`` long."""
    nose = model.mean[model.landmarks[30]]
    return torch.nonzero((model.mean - nose).norm(dim=-1) < radius_mm).squeeze(1)
