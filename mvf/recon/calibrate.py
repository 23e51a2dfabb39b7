"""Calibrated detector landmarks: where mediapipe's face-mesh points lie on the face model.

`build_mediapipe_set` learns, from `mvf synth` renders with exact geometry (their own seed,
disjoint from any benchmark set), a `mvf.face.landmarks.LandmarkSet` for mediapipe's 468 face-mesh
points (the 10 iris points are not on the model surface and are left out):

1. render ``n_subjects`` synthetic triplets per image size in memory and detect the 478 points;
2. back-project each detected point through the rasterizer onto that subject's mesh: among the
   pixels within `SEARCH_RADIUS_PX` of the point, the covering front-facing model triangle
   nearest to it (exact 2D barycentrics of the point in that triangle, clamped: weak perspective
   is affine, so they are the surface barycentrics); observations with the triangle facing the
   camera by less than ``min_facing_obs`` (silhouette, far side) are dropped;
3. map each observation to a common frame, the same triangle + barycentrics on the mean shape,
   take a robust average per point (median, then the mean of the observations within 2.5 MAD),
   snap it to the mean surface -> (triangle, barycentrics);
4. face-oval points (mediapipe's ``FACEMESH_FACE_OVAL``) more than `CONTOUR_MIN_X_MM` from the
   midline become contour points, with candidate lines at their height (as the jawline's,
   `build_point_contour_lines`);
5. noise scale: residuals of the calibration detections against the embedded points projected
   with the true shape and pose (contour search included), in model mm (px / f); per point
   ``sigma = median(|r|) / 1.1774`` (the per-axis sigma of a 2D Gaussian), separately for points
   on their embedding and contour points moved onto the silhouette; weights ``sigma_ref / sigma``.

Deterministic for a seed (mediapipe's CPU inference is deterministic); about a minute or two on
a 2-core CPU. Written to `DEFAULT_SET` (``assets/mediapipe_landmarks.npz``, git-ignored: derived
from the ICT model) with provenance (seeds, counts, version, model asset id) in ``meta``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mvf.data.config import SynthConfig
from mvf.data.synth import SynthGenerator
from mvf.errors import MvfError
from mvf.face.detector_error import build_error_model
from mvf.face.landmark_asset import DEFAULT_SET, save_landmark_set
from mvf.face.landmarks import LandmarkProjector, LandmarkSet
from mvf.face.model import FaceModel
from mvf.recon.detect import LandmarkDetector
from renderer import rasterize
from renderer.camera import project, view_directions

CALIBRATION_VERSION = 2  # 2: with the detector error model (error_* arrays)
CALIBRATION_SEED = 7013  # no benchmark or training set uses this seed
N_FACE_MESH = 468  # mediapipe points 468-477 are the irises
SEARCH_RADIUS_PX = 2
CONTOUR_MIN_X_MM = 12.0
SIGMA_FLOOR_MM = 0.25
# Mediapipe's points sit on different surface points in turned views (mean bias ~2 mm at 30 deg,
# 0.6 mm frontal), so the embedding is learnt per bin of the view's yaw (degrees).
YAW_EDGES_DEG = (-50.0, -40.0, -30.0, -20.0, -6.0, 6.0, 20.0, 30.0, 40.0, 50.0)
N_SUBJECTS = 100  # per image size (224 and 512): 600 views, ~4 min on 2 shared cores


def face_oval_indices() -> list[int]:
    """Mediapipe face-mesh indices on the face oval (from mediapipe's connection table)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    return sorted({int(i) for edge in FACEMESH_FACE_OVAL for i in edge})


# ----------------------------------------------------------------------------- geometry helpers
def snap_to_surface(points: np.ndarray, verts: np.ndarray, faces: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest surface point of each ``(K, 3)`` point: ``(K,)`` triangle ids, ``(K, 3)`` barycentrics
    (exact point-to-triangle search by point-cloud-utils)."""
    import point_cloud_utils as pcu  # building only: loading a set needs none of it

    _, tri, bary = pcu.closest_points_on_mesh(np.ascontiguousarray(points, np.float64),
                                              np.ascontiguousarray(verts, np.float64),
                                              np.ascontiguousarray(faces, np.int64))
    return np.asarray(tri, np.int64), np.asarray(bary, np.float64)


def build_point_contour_lines(mean: np.ndarray, faces: np.ndarray, points: np.ndarray,
                              band_mm: float = 3.0, step_deg: float = 2.0, beyond_deg: float = 10.0
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Candidate lines for contour points at ``points`` ``(C, 3)`` on the mean shape.

    Like `mvf.contour.build_contour_lines`: per point on side ``s = sign(x)``, per ``step_deg``
    bin of the angle round a vertical axis 20 mm behind the deepest point, the vertex of that side
    closest to the point's height (within ``band_mm``), from the midline to ``beyond_deg`` past the
    point, ordered front to back. Returns ``(C, L)`` long (-1 padded) and ``(C,)`` sides.
    """
    used = np.unique(faces)
    z0 = float(points[:, 2].min()) - 20.0
    angle = np.degrees(np.arctan2(np.abs(mean[:, 0]), mean[:, 2] - z0))
    lines, sides = [], []
    for p in points:
        side = 1.0 if p[0] > 0 else -1.0
        own_angle = float(np.degrees(np.arctan2(abs(p[0]), p[2] - z0)))
        cand = used[(np.sign(mean[used, 0]) == side) & (np.abs(mean[used, 1] - p[1]) < band_mm)]
        a = angle[cand]
        keep = a <= own_angle + beyond_deg
        cand, a = cand[keep], a[keep]
        bins = np.floor(a / step_deg).astype(np.int64)
        line = []
        for b in np.unique(bins):
            in_bin = cand[bins == b]
            line.append(int(in_bin[np.argmin(np.abs(mean[in_bin, 1] - p[1]))]))
        lines.append(line)
        sides.append(side)
    width = max(1, max(len(line) for line in lines))
    out = np.full((len(lines), width), -1, np.int64)
    for k, line in enumerate(lines):
        out[k, : len(line)] = line
    return out, np.asarray(sides, np.float32)


@torch.no_grad()
def back_project(points: np.ndarray, verts: torch.Tensor, faces: torch.Tensor, pose: torch.Tensor,
                 p2f: torch.Tensor, radius: int = SEARCH_RADIUS_PX) -> tuple[np.ndarray, ...]:
    """Surface point under each 2D point of one view.

    Args: points ``(K, 2)`` px; verts ``(N, 3)``; faces ``(F, 3)``; pose ``(6,)``; p2f ``(H, W)``
        model-face ids (-1 empty).
    Returns: triangle ids ``(K,)`` (-1: none), barycentrics ``(K, 3)``, 2D distance to the
        clamped point ``(K,)`` px, facing cosine ``(K,)``.
    """

    h, w = p2f.shape
    uv = project(verts, pose)  # (N, 2)

    dirs = view_directions(pose)
    pt = torch.as_tensor(points, dtype=torch.float32)
    k = pt.shape[0]
    off = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    px = torch.floor(pt[:, 0])[:, None] + dx.reshape(1, -1)
    py = torch.floor(pt[:, 1])[:, None] + dy.reshape(1, -1)
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    fid = p2f[py.clamp(0, h - 1).long(), px.clamp(0, w - 1).long()]
    fid = torch.where(inside, fid, torch.full_like(fid, -1))
    tri = faces[fid.clamp_min(0)]  # (K, P, 3)
    a, b, c = uv[tri[..., 0]], uv[tri[..., 1]], uv[tri[..., 2]]
    e1, e2, q = b - a, c - a, pt[:, None] - a
    det = e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]
    det = torch.where(det.abs() < 1e-9, torch.full_like(det, 1e-9), det)
    l1 = (q[..., 0] * e2[..., 1] - q[..., 1] * e2[..., 0]) / det
    l2 = (e1[..., 0] * q[..., 1] - e1[..., 1] * q[..., 0]) / det
    bary = torch.stack([1 - l1 - l2, l1, l2], -1).clamp_min(0)
    bary = bary / bary.sum(-1, keepdim=True).clamp_min(1e-9)
    proj = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    dist = (proj - pt[:, None]).norm(dim=-1)
    corners = verts[tri]  # (K, P, 3, 3)
    normal = torch.nn.functional.normalize(
        torch.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1), dim=-1)
    facing = normal @ dirs
    ok = (fid >= 0) & (facing > 0)
    dist = torch.where(ok, dist, torch.full_like(dist, float("inf")))
    best = dist.argmin(1)
    r = torch.arange(k)
    d_best = dist[r, best]
    found = torch.isfinite(d_best)
    out_tri = torch.where(found, fid[r, best], torch.full_like(fid[r, best], -1))
    return (out_tri.numpy(), bary[r, best].numpy(), d_best.numpy(), facing[r, best].numpy())


# ----------------------------------------------------------------------------- data
def calibration_renders(model, seed: int, n_subjects: int, size: int, batch: int = 8):
    """Yield `mvf.data.synth.SubjectResult`s of a calibration set (in memory, deterministic)."""
    gen = SynthGenerator(SynthConfig(), model, size)
    for start in range(0, n_subjects, batch):
        draws = [gen.draw(seed, i) for i in range(start, min(n_subjects, start + batch))]
        yield from gen.render(draws)


def detect_calibration(model, seed: int, n_subjects: int, sizes: tuple[int, ...]) -> list[dict]:
    """Render and detect: per view a dict with raw ``(478, 3)``, verts, pose, size, p2f."""

    out: list[dict] = []
    with LandmarkDetector() as det:
        for si, size in enumerate(sizes):
            for subj in calibration_renders(model, seed + si, n_subjects, size):
                verts = torch.from_numpy(subj.verts).float()
                poses = torch.from_numpy(subj.labels["pose"]).float()
                frags = rasterize(verts[None].expand(poses.shape[0], -1, -1), model.faces, poses, (size, size))
                p2f = frags.pix_to_face[..., 0]
                nf = model.faces.shape[0]
                p2f = torch.where(p2f >= 0, p2f % nf, p2f)
                for v in range(poses.shape[0]):
                    try:
                        raw = det.detect_raw(subj.images[v])
                    except MvfError:
                        continue
                    out.append({"raw": raw, "verts": verts, "pose": poses[v], "size": size,
                                "p2f": p2f[v], "subject": (size, subj.index), "view": v})
    return out


# ----------------------------------------------------------------------------- building
def view_yaw_deg(item: dict) -> float:
    """Yaw (degrees) of a calibration view."""
    return float(np.degrees(float(item["pose"][2])))


def embed_points(model, views: list[dict], min_facing_obs: float = 0.3, max_dist_px: float = 1.0,
                 min_obs: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust surface embedding of the 468 face-mesh points from the calibration views.

    Returns triangle ids ``(468,)``, barycentrics ``(468, 3)`` and observation counts ``(468,)``.
    """
    faces = model.faces
    mean = model.mean.double().numpy()
    fnp = faces.numpy()
    obs: list[list[np.ndarray]] = [[] for _ in range(N_FACE_MESH)]
    for item in views:
        tri, bary, dist, facing = back_project(item["raw"][:N_FACE_MESH, :2], item["verts"], faces,
                                               item["pose"], item["p2f"])
        px_tol = max_dist_px * item["size"] / 224.0
        ok = (tri >= 0) & (dist <= px_tol) & (facing >= min_facing_obs)
        for k in np.nonzero(ok)[0]:
            obs[k].append((bary[k][:, None] * mean[fnp[tri[k]]]).sum(0))
    centres = np.zeros((N_FACE_MESH, 3))
    counts = np.zeros(N_FACE_MESH, np.int64)
    for k in range(N_FACE_MESH):
        if len(obs[k]) < max(1, min_obs):
            centres[k] = np.nan
            counts[k] = len(obs[k])
            continue
        p = np.stack(obs[k])
        med = np.median(p, 0)
        d = np.linalg.norm(p - med, axis=1)
        mad = np.median(d) + 1e-6
        keep = d <= 2.5 * mad
        centres[k] = p[keep].mean(0)
        counts[k] = len(p)
    missing = ~np.isfinite(centres).all(1)
    tri = np.full(N_FACE_MESH, -1, np.int64)
    barys = np.zeros((N_FACE_MESH, 3))
    if (~missing).any():
        t, b = snap_to_surface(centres[~missing], mean, fnp)
        tri[~missing], barys[~missing] = t, b
    return tri, barys, counts


def residual_vectors(model, lset: LandmarkSet, views: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residuals of the calibration detections against the set projected with the true shapes and
    poses, in mm (px / f): ``(n_views, K, 2)`` detected - projected, weights>0 masks, moved masks."""
    proj = LandmarkProjector(model, lset, model.n_id)
    res, valid, moved_all = [], [], []
    for item in views:
        pose = item["pose"][None, None]  # (1, 1, 6)
        out = proj.project(item["verts"][None], pose)
        det = torch.as_tensor(item["raw"][lset.source_index.numpy(), :2], dtype=torch.float32)
        res.append(((det - out.uv[0, 0]) / float(pose[0, 0, 0])).numpy())
        valid.append((out.weight[0, 0] > 0).numpy())
        moved_all.append(out.on_silhouette[0, 0].numpy())
    return np.stack(res), np.stack(valid), np.stack(moved_all)


def point_residuals(model, lset: LandmarkSet, views: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`residual_vectors` as distances ``(n_views, K)`` mm, with the same masks."""
    res, valid, moved = residual_vectors(model, lset, views)
    return np.linalg.norm(res, axis=-1), valid, moved


def robust_sigma(d: np.ndarray) -> float:
    """Per-axis sigma of a 2D Gaussian from distances: median / sqrt(2 ln 2)."""
    return float(np.median(d) / 1.1774) if len(d) else float("nan")


def build_mediapipe_set(model, seed: int = CALIBRATION_SEED, n_subjects: int = N_SUBJECTS,
                        sizes: tuple[int, ...] = (224, 512), min_facing: float = 0.0,
                        views: list[dict] | None = None, verbose: bool = False,
                        yaw_edges_deg: tuple[float, ...] = YAW_EDGES_DEG, min_bin_obs: int = 5,
                        rim_weight: float | None = 0.0) -> tuple[LandmarkSet, dict]:
    """Build the calibrated mediapipe `LandmarkSet` (module docstring). Returns (set, stats)."""
    t0 = time.perf_counter()
    if views is None:
        views = detect_calibration(model, seed, n_subjects, sizes)
    t_detect = time.perf_counter() - t0
    tri, bary, counts = embed_points(model, views)
    ok = tri >= 0
    faces = model.faces.numpy()
    k_all = np.arange(N_FACE_MESH)
    mean = model.mean.double().numpy()
    pos = (bary[:, :, None] * mean[faces[tri.clip(0)]]).sum(1)
    oval = np.zeros(N_FACE_MESH, bool)
    oval[face_oval_indices()] = True
    contour = oval & ok & (np.abs(pos[:, 0]) > CONTOUR_MIN_X_MM)
    lines = np.full((N_FACE_MESH, 1), -1, np.int64)
    side = np.zeros(N_FACE_MESH, np.float32)
    if contour.any():
        cl, cs = build_point_contour_lines(mean, faces, pos[contour])
        lines = np.full((N_FACE_MESH, cl.shape[1]), -1, np.int64)
        lines[contour], side[contour] = cl, cs
    keep = ok
    lset = LandmarkSet(
        faces=torch.from_numpy(faces[tri.clip(0)][keep]), bary=torch.from_numpy(bary[keep]).float(),
        weights=torch.ones(int(keep.sum())), rim_weights=torch.ones(int(keep.sum())),
        contour_lines=torch.from_numpy(lines[keep]), contour_side=torch.from_numpy(side[keep]),
        source_index=torch.from_numpy(k_all[keep]), min_facing=min_facing)
    # per-yaw-bin embeddings (points seen too rarely in a bin get weight 0 there)
    edges = np.asarray(yaw_edges_deg, np.float64)
    yaws = np.array([view_yaw_deg(v) for v in views])
    bins = np.searchsorted(edges, yaws, side="left")  # torch.bucketize(right=False) convention
    n_bins = len(edges) + 1
    kk = int(keep.sum())
    vf = np.repeat(faces[tri.clip(0)][keep][None], n_bins, 0)
    vb = np.repeat(bary[keep][None], n_bins, 0)
    vw = np.zeros((n_bins, kk), np.float32)
    bin_counts = []
    for bi in range(n_bins):
        sub = [v for v, b in zip(views, bins) if b == bi]
        t_b, b_b, c_b = embed_points(model, sub, min_obs=min_bin_obs)
        got = (t_b >= 0)[keep]
        vf[bi][got] = faces[t_b[keep][got]]
        vb[bi][got] = b_b[keep][got]
        vw[bi][got] = 1.0
        bin_counts.append(int(len(sub)))
    lset.view_faces, lset.view_bary = torch.from_numpy(vf), torch.from_numpy(vb).float()
    lset.view_weights = torch.from_numpy(vw)
    lset.yaw_edges_deg = torch.from_numpy(edges.astype(np.float32))
    # noise scales per bin (on the embedding) and for contour points moved onto the silhouette
    res, valid, moved = residual_vectors(model, lset, views)
    dist = np.linalg.norm(res, axis=-1)
    sig_bin = np.full((n_bins, kk), np.nan)
    for bi in range(n_bins):
        rows = bins == bi
        for k in range(kk):
            sig_bin[bi, k] = robust_sigma(dist[rows & valid[:, k] & ~moved[:, k], k])
    sig_rim = np.array([robust_sigma(dist[valid[:, k] & moved[:, k], k]) for k in range(kk)])
    if not np.isfinite(sig_bin).any():
        raise MvfError(f"calibration: {len(views)} views are too few to estimate any point's noise "
                       "(each point needs 5 observations in a yaw bin)")
    ref = float(np.nanmedian(sig_bin))
    sig_c = np.nan_to_num(np.maximum(sig_bin, SIGMA_FLOOR_MM), nan=np.inf)
    lset.view_weights = torch.from_numpy(vw * (ref / sig_c)).float()
    sig_all = np.nanmedian(sig_bin, 0)
    lset.weights = torch.from_numpy(np.nan_to_num(ref / np.maximum(sig_all, SIGMA_FLOOR_MM))).float()
    sig_rim_c = np.nan_to_num(np.maximum(sig_rim, SIGMA_FLOOR_MM), nan=np.inf)
    rim = ref / sig_rim_c if rim_weight is None else np.full(kk, rim_weight)
    lset.rim_weights = torch.from_numpy(rim).float()
    sig = sig_all
    # the detector's error model (bias + low-rank noise per yaw bin), for training the network
    lset.error_model = build_error_model(res, yaws, yaw_edges_deg, meta={"seed": seed, "asset_id": model.asset_id})
    lset.meta = {
        "kind": "mediapipe_face_mesh", "version": CALIBRATION_VERSION, "seed": seed,
        "n_subjects_per_size": n_subjects, "sizes": list(sizes), "n_views": len(views),
        "n_points": lset.n_points, "n_contour": int(contour[keep].sum()),
        "sigma_ref_mm": ref, "sigma_mm": np.nan_to_num(sig, nan=-1).tolist(),
        "sigma_rim_mm": np.nan_to_num(sig_rim, nan=-1).tolist(),
        "observations": counts[keep].tolist(), "asset_id": model.asset_id,
        "yaw_edges_deg": list(yaw_edges_deg), "views_per_bin": bin_counts, "min_bin_obs": min_bin_obs,
        "sigma_bin_mm": np.nan_to_num(sig_bin, nan=-1).tolist(), "rim_weight": rim_weight,
        "min_facing_obs": 0.3, "search_radius_px": SEARCH_RADIUS_PX, "contour_min_x_mm": CONTOUR_MIN_X_MM,
        "seconds": time.perf_counter() - t0, "seconds_detect": t_detect,
    }
    if verbose:
        print(f"calibration: {len(views)} views, {lset.n_points} points ({lset.meta['n_contour']} contour), "
              f"sigma median {ref:.3f} mm, {lset.meta['seconds']:.0f} s")
    return lset, lset.meta


def main(argv: list[str] | None = None) -> int:
    """``python -m mvf.recon.calibrate [--out PATH] [--subjects N] [--seed S]``: build the asset."""

    ap = argparse.ArgumentParser(description="build the calibrated mediapipe landmark set")
    ap.add_argument("--out", default=str(DEFAULT_SET))
    ap.add_argument("--subjects", type=int, default=N_SUBJECTS, help="subjects per image size")
    ap.add_argument("--seed", type=int, default=CALIBRATION_SEED)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = FaceModel.load()
    lset, meta = build_mediapipe_set(model, args.seed, args.subjects, tuple(args.sizes), verbose=True)
    save_landmark_set(lset, args.out)
    print(f"wrote {args.out}: {json.dumps({k: meta[k] for k in ('n_points', 'n_contour', 'sigma_ref_mm', 'n_views')})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
