"""View-dependent jawline landmarks: the silhouette ("landmark marching") contour search.

iBUG-68 jawline points 0-16 follow the face's outline as seen in each view, not fixed vertices.
The face model carries ``contour_lines`` ``(17, L)``: per jawline landmark, candidate vertices at
its height on its side, ordered from the front of the cheek round to the back (-1 padded).

In a view, a line's *rim* candidates are front-facing vertices whose next candidate (further
back) faces away from the camera: the surface's occluding contour crosses the line there. When a
rim candidate in front of the landmark vertex projects further outwards than the landmark vertex,
the landmark is self-occluded and moves to that rim vertex (the outermost one); otherwise the
landmark keeps its own vertex. So on the side turned away from the camera the jawline slides onto
the silhouette, and on the side facing it (and in frontal views) it stays on the jaw, as in
300W-LP/3DDFA. The chin (8) never moves.
"""
from __future__ import annotations

import torch

from renderer.camera import project, view_directions
from renderer.rotations import euler_to_matrix
from mvf.face.mesh import vertex_normals  # noqa: F401  (re-exported: area-weighted unit normals)

CHIN = 8
N_JAW = 17


def build_contour_lines(mean: torch.Tensor, faces: torch.Tensor, landmarks: torch.Tensor,
                        band_mm: float = 3.0, step_deg: float = 2.0, beyond_deg: float = 10.0,
                        axis_z_mm: float | None = None) -> torch.Tensor:
    """Dense candidate lines for the contour search, in the asset's ``contour_lines`` format.

    For jawline landmark ``k`` on side ``s``, the line holds, per ``step_deg`` bin of the
    angle ``atan2(|x|, z - axis_z)`` round a vertical axis, the vertex of that side closest to
    the landmark's height (within ``band_mm``), from the face's midline round to ``beyond_deg``
    past the landmark, ordered front to back and always including the landmark's own vertex.
    The chin (8) gets its own vertex only.

    Args:
        mean: ``(N, 3)`` mean shape, mm. faces: ``(F, 3)``. landmarks: ``(68,)`` vertex ids.
        axis_z_mm: depth of the vertical axis (default 20 mm behind the outer jaw landmarks).
    Returns:
        ``(17, L)`` long, -1 padded.
    """
    mean = mean.detach().cpu().double()
    used = torch.unique(faces.cpu())
    lm = mean[landmarks.cpu()]
    z0 = float(lm[[0, 16], 2].mean()) - 20.0 if axis_z_mm is None else axis_z_mm
    angle = torch.rad2deg(torch.atan2(mean[:, 0].abs(), mean[:, 2] - z0))
    lines: list[list[int]] = []
    for k in range(N_JAW):
        own = int(landmarks[k])
        if k == CHIN:
            lines.append([own])
            continue
        side = 1.0 if float(lm[k, 0]) > 0 else -1.0
        cand = used[(torch.sign(mean[used, 0]) == side) & ((mean[used, 1] - lm[k, 1]).abs() < band_mm)]
        a = angle[cand]
        stop = float(angle[own]) + beyond_deg
        cand, a = cand[a <= stop], a[a <= stop]
        bins = torch.floor(a / step_deg).long()
        chosen: dict[int, int] = {}
        for b in torch.unique(bins).tolist():
            in_bin = cand[bins == b]
            chosen[b] = int(in_bin[(mean[in_bin, 1] - lm[k, 1]).abs().argmin()])
        chosen[int(float(angle[own]) // step_deg)] = own  # the landmark replaces its bin's pick
        lines.append([chosen[b] for b in sorted(chosen)])
    width = max(len(line) for line in lines)
    out = torch.full((N_JAW, width), -1, dtype=torch.long)
    for k, line in enumerate(lines):
        out[k, : len(line)] = torch.as_tensor(line)
    return out


def _landmark_positions(lines: torch.Tensor, jaw_ids: torch.Tensor) -> torch.Tensor:
    """Index of each jaw landmark's own vertex within its line ``(17,)`` (last valid if absent)."""
    hit = lines == jaw_ids[:, None]
    valid = lines >= 0
    last_valid = valid.long().cumsum(1).argmax(1)
    return torch.where(hit.any(1), hit.long().argmax(1), last_valid)


@torch.no_grad()
def jaw_vertex_ids(
    verts: torch.Tensor, poses: torch.Tensor, model, normals: torch.Tensor | None = None,
    lines: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view, the vertex that each jawline landmark sits on.

    Args:
        verts: ``(N, Nv, 3)`` decoded meshes, mm.
        poses: ``(N, 6)`` one pose per mesh (only the rotation matters).
        model: a `mvf.face.model.FaceModel` with ``contour_lines``, ``landmarks`` and ``faces``.
        normals: optional precomputed ``(N, Nv, 3)`` vertex normals.
        lines: candidate lines ``(17, L)`` (default ``model.contour_lines``).
    Returns:
        ``ids`` ``(N, 17)`` long vertex ids, and ``on_silhouette`` ``(N, 17)`` bool: True where
        the landmark moved onto the silhouette (a rim vertex other than its own).
    """
    lines = model.contour_lines if lines is None else lines
    if lines is None:
        ids = model.landmarks[:N_JAW].to(verts.device).expand(verts.shape[0], -1)
        return ids.clone(), torch.zeros_like(ids, dtype=torch.bool)
    lines = lines.to(verts.device)  # (17, L)
    jaw = model.landmarks[:N_JAW].to(verts.device)
    if normals is None:
        normals = vertex_normals(verts, model.faces.to(verts.device))
    n, (k, length) = verts.shape[0], lines.shape
    valid = lines >= 0
    safe = lines.clamp(min=0).reshape(-1)
    facing = (normals[:, safe] * view_directions(poses)[:, None]).sum(-1).reshape(n, k, length)
    # outward image coordinate: roll removed so that "outward" is along the line's own direction
    side = torch.sign(model.mean[jaw, 0].to(verts.device))  # -1 subject's right, +1 left, 0 chin
    rot = euler_to_matrix(poses[:, 1:4] * torch.tensor([1.0, 1.0, 0.0], device=poses.device))
    outward = (verts[:, safe] @ rot.transpose(1, 2))[..., 0].reshape(n, k, length) * side[:, None]

    lm_pos = _landmark_positions(lines, jaw)  # (17,)
    idx = torch.arange(length, device=verts.device)
    in_front = (idx[None] < lm_pos[:, None]) & valid  # candidates strictly before the landmark
    nxt_facing = torch.cat([facing[..., 1:], torch.full_like(facing[..., :1], -1.0)], -1)
    nxt_valid = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], -1)
    rim = (facing > 0) & (nxt_facing <= 0) & (in_front & nxt_valid)[None]
    score = torch.where(rim, outward, torch.full_like(outward, -torch.inf))
    best_score, best = score.max(-1)  # (N, 17)
    lm_outward = outward.gather(-1, lm_pos[None, :, None].expand(n, -1, 1)).squeeze(-1)
    moved = torch.isfinite(best_score) & (best_score > lm_outward) & (side != 0)[None]
    chosen = torch.where(moved, lines[torch.arange(k, device=verts.device), best], jaw[None])
    return chosen, moved


def landmark_vertex_ids_for_view(verts: torch.Tensor, poses: torch.Tensor, model,
                                 lines: torch.Tensor | None = None) -> torch.Tensor:
    """The 68 landmark vertex ids per view, jawline from the contour search: ``(N, 68)`` long."""
    jaw, _ = jaw_vertex_ids(verts, poses, model, lines=lines)
    rest = model.landmarks[N_JAW:].to(verts.device).expand(verts.shape[0], -1)
    return torch.cat([jaw, rest], 1)


def contour_landmarks(verts: torch.Tensor, poses: torch.Tensor, model,
                      lines: torch.Tensor | None = None) -> torch.Tensor:
    """2D iBUG-68 landmarks with a view-dependent jawline.

    Args:
        verts: ``(N, Nv, 3)`` mm. poses: ``(N, 6)``. model: `FaceModel`.
        lines: candidate lines (default ``model.contour_lines``).
    Returns:
        ``(N, 68, 2)`` pixels. Differentiable in ``verts`` and ``poses`` (the vertex choice is not).
    """
    ids = landmark_vertex_ids_for_view(verts, poses, model, lines=lines)
    pts = torch.gather(verts, 1, ids[..., None].expand(-1, -1, 3))
    return project(pts, poses)
