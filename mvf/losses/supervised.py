"""Supervised losses and the geometry they share (landmark projection with a jawline contour).

Every loss returns a scalar in a natural unit (pixels, millimetres, or squared normalised
parameters), is zero at the ground truth and differentiable in the prediction.
"""
from __future__ import annotations

import torch

from renderer.camera import project
from mvf.face.model import FaceModel

_EPS = 1e-10  # inside the square root of pixel distances (keeps gradients finite at 0)


class LandmarkProjector:
    """Projects a face's 68 landmarks into views, the jawline following each view's silhouette.

    Points 17-67 are fixed vertices; the jawline (0-16) uses the contour search of
    `mvf.face.contour` on the dense candidate lines of `mvf.face.contour.build_contour_lines` (the same
    rule and candidates that label the synthetic data), so the projection of a ground-truth
    face with its true pose reproduces its landmarks. The vertex choice is discrete; the
    chosen points' positions stay differentiable in the shape and pose.
    """

    def __init__(self, model: FaceModel, contour: bool = True):
        from types import SimpleNamespace

        from mvf.face.contour import N_JAW, build_contour_lines

        self.model = model
        self.contour = contour
        if not contour:
            return
        lines = build_contour_lines(model.mean, model.faces, model.landmarks).to(model.device)
        self.full_lines = lines  # (17, L) vertex ids, as `mvf.data.synth` labels with
        # The search only reads the candidates' positions and normals: work on that subset
        # (a few hundred vertices and their adjacent triangles) instead of the whole mesh.
        self.subset = torch.unique(torch.cat([lines[lines >= 0], model.landmarks[:N_JAW]]))
        remap = torch.full((model.n_verts,), -1, dtype=torch.long, device=model.device)
        remap[self.subset] = torch.arange(len(self.subset), device=model.device)
        self.lines = torch.where(lines >= 0, remap[lines.clamp(min=0)], lines)
        touching = (remap[model.faces] >= 0).any(1)
        self.faces = model.faces[touching]  # triangles with a corner in the subset
        self.corner_slots = torch.where(remap[self.faces] >= 0, remap[self.faces], len(self.subset))
        self._proxy = SimpleNamespace(landmarks=remap[model.landmarks[:N_JAW]], mean=model.mean[self.subset],
                                      contour_lines=self.lines)

    def subset_normals(self, verts: torch.Tensor) -> torch.Tensor:
        """Area-weighted unit normals of the subset vertices: ``(B, N, 3)`` -> ``(B, M, 3)``
        (equal to `mvf.face.contour.vertex_normals` there)."""
        v0, v1, v2 = (verts[:, self.faces[:, i]] for i in range(3))
        fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
        acc = verts.new_zeros(verts.shape[0], len(self.subset) + 1, 3)  # last slot: other corners
        for i in range(3):
            acc.index_add_(1, self.corner_slots[:, i], fn)
        return torch.nn.functional.normalize(acc[:, :-1], dim=-1, eps=1e-12)

    def __call__(self, verts: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """``verts (B, N, 3)`` mm, ``pose (B, V, 6)`` -> landmarks ``(B, V, 68, 2)`` px."""
        from mvf.face.contour import N_JAW, jaw_vertex_ids

        b, v = pose.shape[:2]
        lm = self.model.landmarks.to(verts.device)
        if not self.contour:
            return project(verts.index_select(1, lm).unsqueeze(1), pose)
        with torch.no_grad():
            sub_v = verts.detach().index_select(1, self.subset)
            sub_n = self.subset_normals(verts.detach())
            flat_v = sub_v.unsqueeze(1).expand(b, v, -1, -1).reshape(b * v, -1, 3)
            flat_n = sub_n.unsqueeze(1).expand(b, v, -1, -1).reshape(b * v, -1, 3)
            jaw, _ = jaw_vertex_ids(flat_v, pose.detach().reshape(b * v, 6), self._proxy, normals=flat_n,
                                    lines=self.lines)
            jaw = self.subset[jaw]
        ids = torch.cat([jaw.reshape(b, v, N_JAW), lm[N_JAW:].expand(b, v, -1)], -1)  # (B, V, 68)
        pts = torch.gather(verts, 1, ids.reshape(b, -1, 1).expand(-1, -1, 3)).reshape(b, v, 68, 3)
        return project(pts, pose)


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pixel distance over visible landmarks.

    Args:
        pred, target: ``(B, V, 68, 2)`` px. visible: ``(B, V, 68)`` bool/float, or None (all).
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
