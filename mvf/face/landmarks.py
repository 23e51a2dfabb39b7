"""The face model's 2D landmarks: landmark sets embedded on the surface and their one projector.

A `LandmarkSet` describes K landmarks by where they sit on the model:

* every point has an embedding ``faces[k]`` (3 vertex ids) + ``bary[k]`` (barycentric weights),
  so its 3D position on a decoded mesh is ``sum_j bary[k, j] * verts[faces[k, j]]`` (a vertex
  landmark is the degenerate triangle ``(i, i, i)`` with ``(1, 0, 0)``);
* *contour* points (``contour_lines[k]`` not all -1) carry a candidate line of vertices at their
  height, ordered from the front of the face round to the back (`mvf.face.contour`). In a view,
  a line's *rim* candidates are front-facing vertices whose next candidate (further back) faces
  away from the camera. When a rim candidate in front of the point projects further outwards
  than the point itself, the point is self-occluded and moves to that rim vertex (the outermost
  one): on the side turned away from the camera the jawline slides onto the silhouette, on the
  side facing it (and in frontal views) it stays on the jaw, as in 300W-LP/3DDFA;
* ``weights[k]`` (the point's weight on its embedding), ``rim_weights[k]`` (when on the
  silhouette); points whose triangle faces away (``cos < min_facing``) get weight 0 in that view;
* optional per-yaw-bin embeddings (``view_faces`` ...) for detectors whose points drift with yaw.

`LandmarkProjector` projects a set: from vertices ``(B, N, 3)`` mm (the full mesh, or the
compact subset it decodes itself) and poses ``(B, V, 6)`` it gives 2D points ``(B, V, K, 2)`` px,
weights ``(B, V, K)`` and the chosen triangles ``(B, V, K, 3)``, differentiable in the vertices
and poses (the discrete choice is not). The face model's iBUG-68 set is `ibug68_set`
(`mvf.face.model.FaceModel.landmark_set`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from renderer.camera import Pinhole, project, view_directions
from renderer.rotations import euler_to_matrix
from mvf.face.contour import N_JAW, build_contour_lines
from mvf.face.detector_error import DetectorErrorModel
from mvf.face.mesh import vertex_normals


@dataclass
class LandmarkSet:
    """K landmarks embedded on the model surface (see the module docstring).

    Attributes:
        faces: ``(K, 3)`` long vertex ids of the triangle each point lies in.
        bary: ``(K, 3)`` float barycentric weights (sum 1).
        weights: ``(K,)`` weight of each point on its embedding (0: unused).
        rim_weights: ``(K,)`` weight of a contour point moved onto the silhouette.
        contour_lines: ``(K, L)`` long candidate vertex ids, -1 padded (all -1: not a contour point).
        contour_side: ``(K,)`` +1 subject's left (model +x), -1 right, 0 none (never moves).
        source_index: ``(K,)`` index of each point in the detector's output (e.g. mediapipe's 478).
        min_facing: a non-moved point counts in a view only when its triangle's normal has at
            least this cosine with the direction to the camera (< -1: always).
        meta: provenance.
        view_faces, view_bary, view_weights: optional per-yaw-bin embeddings ``(Y, K, 3)``,
            ``(Y, K, 3)``, ``(Y, K)``; yaw_edges_deg ``(Y - 1,)`` the bins' edges in degrees.
        error_model: optional `DetectorErrorModel` of the detector's residuals against the set
            (calibrated sets; not carried over by `subset`).
    """

    faces: Tensor
    bary: Tensor
    weights: Tensor
    rim_weights: Tensor
    contour_lines: Tensor
    contour_side: Tensor
    source_index: Tensor
    min_facing: float = 0.0
    meta: dict = field(default_factory=dict)
    view_faces: Tensor | None = None
    view_bary: Tensor | None = None
    view_weights: Tensor | None = None
    yaw_edges_deg: Tensor | None = None
    error_model: DetectorErrorModel | None = None

    @property
    def n_points(self) -> int:
        return int(self.faces.shape[0])

    @property
    def is_contour(self) -> Tensor:
        """``(K,)`` bool: points with a candidate line."""
        return (self.contour_lines >= 0).any(1)

    def binned(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-yaw-bin faces ``(Y, K, 3)``, barycentrics ``(Y, K, 3)``, weights ``(Y, K)`` and the
        ``(Y - 1,)`` bin edges in degrees (one bin, the main embedding, when the set has none)."""
        if self.view_faces is None:
            return self.faces[None], self.bary[None], self.weights[None], torch.zeros(0)
        return self.view_faces, self.view_bary, self.view_weights, self.yaw_edges_deg

    def subset(self, keep: Tensor) -> "LandmarkSet":
        """The points where ``keep`` ``(K,)`` bool is true (candidate lines trimmed to fit)."""
        lines = self.contour_lines[keep]
        width = max(1, int((lines >= 0).sum(1).max())) if lines.numel() else 1
        out = LandmarkSet(self.faces[keep], self.bary[keep], self.weights[keep], self.rim_weights[keep],
                          lines[:, :width], self.contour_side[keep], self.source_index[keep],
                          self.min_facing, dict(self.meta))
        if self.view_faces is not None:
            out.view_faces, out.view_bary = self.view_faces[:, keep], self.view_bary[:, keep]
            out.view_weights, out.yaw_edges_deg = self.view_weights[:, keep], self.yaw_edges_deg
        return out

    def positions(self, verts: Tensor) -> Tensor:
        """3D points ``(..., K, 3)`` mm on decoded meshes ``(..., N, 3)`` (main embedding, no search)."""
        faces = self.faces.to(verts.device)
        corners = verts[..., faces.reshape(-1), :].reshape(*verts.shape[:-2], self.n_points, 3, 3)
        return (corners * self.bary.to(verts)[..., None]).sum(-2)


def ibug68_set(model, contour: bool = True, w_jaw: float = 1.0) -> LandmarkSet:
    """The model's 68 iBUG landmark vertices as a `LandmarkSet`.

    With ``contour`` the jawline (0-16) follows the silhouette on ``model.contour_lines`` (built
    by `mvf.face.contour.build_contour_lines` when the asset has none); the chin (8) has only its
    own vertex, so it never moves. ``w_jaw``: the jawline points' weight (the others have 1).
    """
    lm = model.landmarks.cpu()
    k = lm.shape[0]
    faces = lm[:, None].expand(-1, 3).clone()
    bary = torch.tensor([1.0, 0.0, 0.0]).expand(k, 3).clone()
    weights = torch.ones(k)
    weights[:N_JAW] = w_jaw
    lines = torch.full((k, 1), -1, dtype=torch.long)
    side = torch.zeros(k)
    if contour:
        cl = model.contour_lines
        if cl is None:
            cl = build_contour_lines(model.mean, model.faces, model.landmarks)
        cl = cl.cpu()
        lines = torch.full((k, cl.shape[1]), -1, dtype=torch.long)
        lines[:N_JAW] = cl
        side[:N_JAW] = torch.sign(model.mean[model.landmarks[:N_JAW], 0].cpu())
    return LandmarkSet(faces, bary, weights, weights.clone(), lines, side, torch.arange(k),
                       min_facing=-2.0, meta={"kind": "ibug68", "contour": contour})


@dataclass
class LandmarkChoice:
    """The discrete part of a projection: each point's triangle per view (`LandmarkProjector.select`).

    tri ``(B, V, K, 3)`` long compact vertex ids (`LandmarkProjector.vertex_ids` maps them to the
    mesh); bary ``(B, V, K, 3)``; weight ``(B, V, K)``; on_silhouette ``(B, V, K)`` bool (contour
    points moved onto the silhouette).
    """

    tri: Tensor
    bary: Tensor
    weight: Tensor
    on_silhouette: Tensor


@dataclass
class ProjectedLandmarks:
    """uv ``(B, V, K, 2)`` px; weight ``(B, V, K)``; vertex_ids ``(B, V, K, 3)`` full-mesh ids of
    each point's triangle; bary ``(B, V, K, 3)``; on_silhouette ``(B, V, K)`` bool."""

    uv: Tensor
    weight: Tensor
    vertex_ids: Tensor
    bary: Tensor
    on_silhouette: Tensor


class LandmarkProjector:
    """Projects a `LandmarkSet` of a face model into views (the one landmark projector).

    It keeps the *compact* vertex set the set needs: the embedding triangles' corners, every
    contour candidate and all vertices of the triangles around the candidates (so their normals
    are exact). Inputs may be full meshes ``(B, N, 3)`` or compact ones ``(B, M, 3)`` from
    `decode` (fitting: a step decodes ~1.6k vertices, not the mesh).

    Attributes: ``lset``; ``vertex_ids`` ``(M,)`` full-mesh ids of the compact set; ``mean``
    ``(M, 3)``, ``id_basis`` ``(n_id, 3M)``, ``exp_basis`` ``(n_exp, 3M)`` (compact bases);
    ``n_id``.
    """

    def __init__(self, model, lset: LandmarkSet | None = None, n_id: int | None = None):
        dev = model.device
        self.lset = model.landmark_set() if lset is None else lset
        lset = self.lset
        self.n_verts = model.n_verts
        lines = lset.contour_lines.to(dev)
        cand = torch.unique(lines[lines >= 0])
        around = model.faces[torch.isin(model.faces, cand).any(1)] if cand.numel() else model.faces[:0]
        vf, vb, vw, edges = lset.binned()
        keep = torch.unique(torch.cat([lset.faces.reshape(-1).to(dev), vf.reshape(-1).to(dev), cand,
                                       around.reshape(-1)]))
        remap = torch.full((model.n_verts,), -1, dtype=torch.long, device=dev)
        remap[keep] = torch.arange(keep.numel(), device=dev)
        self.vertex_ids = keep
        self.n_id = model.n_id if n_id is None else min(n_id, model.n_id)
        self.mean = model.mean[keep]
        self.id_basis = model.id_basis[: self.n_id, keep].reshape(self.n_id, -1)
        self.exp_basis = model.exp_basis[:, keep].reshape(model.n_exp, -1)
        self.bin_tri = remap[vf.to(dev)]  # (Y, K, 3)
        self.bin_bary = vb.to(dev).float()
        self.bin_weights = vw.to(dev).float()
        self.yaw_edges = torch.deg2rad(edges.to(dev).float())
        self.rim_weights = lset.rim_weights.to(dev).float()
        self.min_facing = float(lset.min_facing)
        self.around = remap[around]  # triangles around the candidates, compact ids
        self.contour_rows = torch.nonzero(lset.is_contour.to(dev)).squeeze(1)  # (C,)
        cl = lines[self.contour_rows]
        self.lines = torch.where(cl >= 0, remap[cl.clamp_min(0)], -1)  # (C, L) compact ids
        self.side = lset.contour_side.to(dev).float()[self.contour_rows]
        self._own_place(model, cl)

    def _own_place(self, model, cl: Tensor) -> None:
        """Each contour point's place in its line: the index of its own vertex when it is a vertex
        of the line, else the number of candidates in front of it (angle round a vertical axis)."""
        dev = cl.device
        rows = self.contour_rows
        self.own_in_line = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        self.own_pos = torch.zeros(rows.numel(), dtype=torch.long, device=dev)
        if not rows.numel():
            return
        faces, bary = self.lset.faces.to(dev)[rows], self.lset.bary.to(dev)[rows]
        vertex_point = (faces == faces[:, :1]).all(1) | (bary[:, 0] == 1.0)
        hit = (cl == faces[:, :1]) & vertex_point[:, None]
        self.own_in_line = hit.any(1)
        pts = self.lset.positions(model.mean)[rows]
        z0 = float(pts[:, 2].min()) - 20.0
        ang = torch.atan2(pts[:, 0].abs(), pts[:, 2] - z0)
        lv = model.mean[cl.clamp_min(0)]
        lang = torch.where(cl >= 0, torch.atan2(lv[..., 0].abs(), lv[..., 2] - z0), torch.full_like(lv[..., 0], torch.inf))
        self.own_pos = torch.where(self.own_in_line, hit.long().argmax(1), (lang < ang[:, None]).sum(1))

    @property
    def n_points(self) -> int:
        return int(self.bin_tri.shape[1])

    def decode(self, id_coeffs: Tensor, exp_coeffs: Tensor) -> Tensor:
        """``(B, M, 3)`` mm compact vertices of ``(B, k_id)``, ``(B, n_exp)`` coefficients."""
        k = id_coeffs.shape[-1]
        flat = self.mean.reshape(1, -1) + id_coeffs @ self.id_basis[:k] + exp_coeffs @ self.exp_basis
        return flat.reshape(id_coeffs.shape[0], -1, 3)

    def _is_compact(self, verts: Tensor) -> bool:
        return verts.shape[-2] == self.vertex_ids.numel()

    def compact(self, verts: Tensor) -> Tensor:
        """The compact vertices ``(B, M, 3)`` of full ``(B, N, 3)`` (or already compact) meshes."""
        return verts if self._is_compact(verts) else verts.index_select(-2, self.vertex_ids)

    @torch.no_grad()
    def select(self, verts: Tensor, poses: Tensor, camera: Pinhole | None = None) -> LandmarkChoice:
        """Each point's triangle, barycentrics and weight per view (the discrete choice).

        Args: verts ``(B, N, 3)`` or ``(B, M, 3)`` mm; poses ``(B, V, 6)`` (only rotations matter);
        ``camera``: a `Pinhole` the views are seen through (the facing test and the contour search
        run on each view's pre-warped mesh, `Pinhole.view_verts`, so the jawline follows the
        pinhole silhouette), None for the weak-perspective camera.
        """
        vc = self.compact(verts.detach())
        poses = poses.detach()
        b, v = poses.shape[:2]
        m = vc.shape[1]
        per_view = vc[:, None].expand(b, v, m, 3)
        if camera is not None:
            per_view = camera.view_verts(per_view, poses)
        flat_v = per_view.reshape(b * v, m, 3)  # one mesh per view
        bins = torch.bucketize(poses[..., 2].contiguous(), self.yaw_edges)  # (B, V) yaw bin of each view
        tri = self.bin_tri[bins].clone()  # (B, V, K, 3)
        bary = self.bin_bary[bins].clone()
        weight = self.bin_weights[bins].clone()
        if self.min_facing >= -1.0:
            corners = torch.gather(flat_v, 1, tri.reshape(b * v, -1, 1).expand(-1, -1, 3)).reshape(*tri.shape, 3)
            normal = torch.nn.functional.normalize(torch.cross(
                corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1), dim=-1)
            facing = (normal * view_directions(poses)[:, :, None]).sum(-1)  # (B, V, K)
            weight = torch.where(facing >= self.min_facing, weight, torch.zeros_like(weight))
        moved = torch.zeros(b, v, self.n_points, dtype=torch.bool, device=vc.device)
        if self.contour_rows.numel():
            rows = self.contour_rows
            if camera is None:  # one mesh for all views: its normals once
                flat_n = vertex_normals(vc, self.around)[:, None].expand(b, v, m, 3).reshape(b * v, m, 3)
            else:
                flat_n = vertex_normals(flat_v, self.around)
            own = None
            if not bool(self.own_in_line.all()):
                ids = tri[:, :, rows].reshape(b * v, -1)
                own = (torch.gather(flat_v, 1, ids[..., None].expand(-1, -1, 3)).reshape(b * v, rows.numel(), 3, 3)
                       * bary[:, :, rows].reshape(b * v, -1, 3)[..., None]).sum(-2)
            best, mv = rim_search(flat_v, flat_n, poses.reshape(b * v, 6), self.lines, self.side,
                                  self.own_pos, self.own_in_line, own)
            rim_vertex = self.lines[torch.arange(rows.numel(), device=vc.device)[None], best].reshape(b, v, -1)
            mv = mv.reshape(b, v, -1)
            tri[:, :, rows] = torch.where(mv[..., None], rim_vertex[..., None].expand(-1, -1, -1, 3), tri[:, :, rows])
            bary[:, :, rows] = torch.where(mv[..., None], bary.new_tensor([1.0, 0.0, 0.0]), bary[:, :, rows])
            weight[:, :, rows] = torch.where(mv, self.rim_weights[rows], weight[:, :, rows])
            moved[:, :, rows] = mv
        return LandmarkChoice(tri, bary, weight, moved)

    def points(self, verts: Tensor, choice: LandmarkChoice) -> Tensor:
        """3D landmark positions ``(B, V, K, 3)`` mm of ``(B, N | M, 3)`` vertices for a choice."""
        ids = choice.tri if self._is_compact(verts) else self.vertex_ids[choice.tri]
        b, v, k = ids.shape[:3]
        corners = torch.gather(verts, 1, ids.reshape(b, -1, 1).expand(-1, -1, 3)).reshape(b, v, k, 3, 3)
        return (corners * choice.bary[..., None]).sum(-2)

    def project(self, verts: Tensor, poses: Tensor, choice: LandmarkChoice | None = None,
                camera: Pinhole | None = None) -> ProjectedLandmarks:
        """2D landmarks of ``(B, N | M, 3)`` mm vertices in views ``(B, V, 6)``, with weights and
        the chosen triangles (``choice``: reuse an earlier `select`; default: select now), through
        ``camera`` (a `Pinhole`; None: weak perspective)."""
        choice = self.select(verts, poses, camera) if choice is None else choice
        pts = self.points(verts, choice)
        if camera is not None:
            pts = camera.view_verts(pts, poses)
        uv = project(pts, poses)
        return ProjectedLandmarks(uv, choice.weight, self.vertex_ids[choice.tri], choice.bary, choice.on_silhouette)

    def __call__(self, verts: Tensor, poses: Tensor) -> Tensor:
        """``(B, V, K, 2)`` px: `project`'s points only."""
        return self.project(verts, poses).uv


@torch.no_grad()
def rim_search(verts: Tensor, normals: Tensor, poses: Tensor, lines: Tensor, side: Tensor,
               own_pos: Tensor, own_in_line: Tensor, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The silhouette ("landmark marching") search of contour points, one pose per mesh.

    Args:
        verts, normals: ``(N, M, 3)`` vertices (mm) and unit vertex normals.
        poses: ``(N, 6)`` (only the rotation matters). lines: ``(C, L)`` candidate ids, -1 padded.
        side: ``(C,)`` +1 / -1 the outward direction in the image (model x), 0 never moves.
        own_pos: ``(C,)`` the point's place in its line (candidates before it are in front).
        own_in_line: ``(C,)`` bool, the point is the line's vertex at ``own_pos``.
        own: ``(N, C, 3)`` the points' positions, needed where ``own_in_line`` is false.
    Returns:
        ``best`` ``(N, C)`` index in the line of the outermost rim candidate in front, and
        ``moved`` ``(N, C)`` bool: it projects further outwards than the point (self-occluded).
    """
    n, (c, length) = verts.shape[0], lines.shape
    valid = lines >= 0
    safe = lines.clamp(min=0).reshape(-1)
    facing = (normals[:, safe] * view_directions(poses)[:, None]).sum(-1).reshape(n, c, length)
    # outward image coordinate: roll removed so that "outward" is along the line's own direction
    rot = euler_to_matrix(poses[:, 1:4] * torch.tensor([1.0, 1.0, 0.0], device=poses.device))
    outward = (verts[:, safe] @ rot.transpose(1, 2))[..., 0].reshape(n, c, length) * side[:, None]
    idx = torch.arange(length, device=verts.device)
    in_front = (idx[None] < own_pos[:, None]) & valid  # candidates strictly before the point
    nxt_facing = torch.cat([facing[..., 1:], torch.full_like(facing[..., :1], -1.0)], -1)
    nxt_valid = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], -1)
    rim = (facing > 0) & (nxt_facing <= 0) & (in_front & nxt_valid)[None]
    score = torch.where(rim, outward, torch.full_like(outward, -torch.inf))
    best_score, best = score.max(-1)  # (N, C)
    own_out = outward.gather(-1, own_pos.clamp(max=length - 1)[None, :, None].expand(n, -1, 1)).squeeze(-1)
    if own is not None:
        own_out = torch.where(own_in_line, own_out, (own @ rot.transpose(1, 2))[..., 0] * side)
    moved = torch.isfinite(best_score) & (best_score > own_out) & (side != 0)[None]
    return best, moved


def landmark_set_to_numpy(lset: LandmarkSet) -> dict[str, np.ndarray]:
    """Arrays for an ``.npz`` (see `landmark_set_from_arrays`)."""
    return {"faces": lset.faces.numpy().astype(np.int64), "bary": lset.bary.numpy().astype(np.float32),
            "weights": lset.weights.numpy().astype(np.float32),
            "rim_weights": lset.rim_weights.numpy().astype(np.float32),
            "contour_lines": lset.contour_lines.numpy().astype(np.int64),
            "contour_side": lset.contour_side.numpy().astype(np.float32),
            "source_index": lset.source_index.numpy().astype(np.int64),
            "min_facing": np.float32(lset.min_facing), "meta_json": np.asarray(json.dumps(lset.meta)),
            **({} if lset.view_faces is None else {
                "view_faces": lset.view_faces.numpy().astype(np.int64),
                "view_bary": lset.view_bary.numpy().astype(np.float32),
                "view_weights": lset.view_weights.numpy().astype(np.float32),
                "yaw_edges_deg": lset.yaw_edges_deg.numpy().astype(np.float32)}),
            **({} if lset.error_model is None else lset.error_model.to_arrays())}


def landmark_set_from_arrays(arrays: dict) -> LandmarkSet:
    """Inverse of `landmark_set_to_numpy`."""
    opt = {k: torch.as_tensor(np.asarray(arrays[k]), dtype=dt) for k, dt in (
        ("view_faces", torch.long), ("view_bary", torch.float32), ("view_weights", torch.float32),
        ("yaw_edges_deg", torch.float32)) if k in arrays}
    return LandmarkSet(
        **opt,
        faces=torch.as_tensor(np.asarray(arrays["faces"]), dtype=torch.long),
        bary=torch.as_tensor(np.asarray(arrays["bary"]), dtype=torch.float32),
        weights=torch.as_tensor(np.asarray(arrays["weights"]), dtype=torch.float32),
        rim_weights=torch.as_tensor(np.asarray(arrays["rim_weights"]), dtype=torch.float32),
        contour_lines=torch.as_tensor(np.asarray(arrays["contour_lines"]), dtype=torch.long),
        contour_side=torch.as_tensor(np.asarray(arrays["contour_side"]), dtype=torch.float32),
        source_index=torch.as_tensor(np.asarray(arrays["source_index"]), dtype=torch.long),
        min_facing=float(arrays["min_facing"]),
        error_model=DetectorErrorModel.from_arrays(arrays),
        meta=json.loads(str(arrays["meta_json"])) if "meta_json" in arrays else {})
