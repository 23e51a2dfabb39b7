"""The MICC Florence evaluation protocol: align a predicted mesh to a ground-truth scan, report RMSE.

Steps (`evaluate_meshes`):

1. **Initial alignment** of the prediction to the scan: a similarity (Umeyama) on corresponding
   3D landmarks when both are given; otherwise the nose tips are matched (the vertex with the
   largest z after centring, or a given vertex index) and a coarse grid of rotations about the
   nose tip is searched (yaw +-40, pitch +-30, roll +-20 degrees in 10 degree steps) for the
   smallest truncated nearest-neighbour distance. The initial scale is 1 (both meshes in mm)
   unless the bounding boxes differ by more than 2x, then their diagonal ratio.
2. **Crop** the scan to the points within `CROP_RADIUS_MM` (95 mm) of its nose tip: the given
   vertex index, else the scan vertex nearest landmark 30 when 68 (iBUG) scan landmarks are
   given, else the largest-z vertex after centring.
3. **Scaled ICP** of the prediction onto the cropped scan: each cropped scan point is paired
   with its closest point on the predicted *surface*; each iteration solves a linearised
   point-to-plane similarity step (or, with ``icp_method="point"``, the closed-form
   point-to-point Umeyama fit); pairs landing on the prediction's open boundary or further than
   ``max(3 x median, 2 mm)`` are dropped; it stops after ``icp_iters`` iterations, when no
   predicted vertex moves more than ``tol_mm`` (1e-3) or when the inlier RMS changes by less
   than 1e-4 (relative). ``scale=False`` makes it rigid.
4. **Error**: for every cropped scan point, the distance to the closest point on the aligned
   predicted triangles (scan -> prediction direction, exact point-to-triangle distances from
   point-cloud-utils' ``closest_points_on_mesh``);
   RMSE, mean and median in the scan's units (mm).

Sanity bounds (an `MvfError`, not a score): the prediction needs at least `MIN_PRED_TRIANGLES`
triangles (a face mesh, not a fragment; the face model has 18,460), the cropped scan at least
`MIN_SCAN_POINTS` points (about one per 6 mm of a face; MICC scans hold tens of thousands), and
scaled ICP may change the initial alignment's scale by at most a factor `MAX_ICP_SCALE_CHANGE`
(both meshes are faces in mm; a larger change means they don't match).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import point_cloud_utils as pcu
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from mvf.align import Similarity, umeyama
from mvf.errors import MvfError, file_error
from mvf.io import Mesh
from renderer.rotations import euler_deg_to_matrix_np, matrix_to_euler_deg_np

CROP_RADIUS_MM = 95.0
MIN_PRED_TRIANGLES = 500
MIN_SCAN_POINTS = 600  # about one point per 6 mm over a face-sized crop
MAX_ICP_SCALE_CHANGE = 2.0
IBUG_NOSE_TIP = 30


# ----------------------------------------------------------------------------- closest points
class SurfaceQuery:
    """Exact closest points on a triangle mesh (point-cloud-utils, libigl's AABB tree) and the
    mesh's open boundary (edges used by one triangle only)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, boundary: tuple | None = None):
        self.vertices = np.ascontiguousarray(vertices, np.float64)
        self.faces = np.ascontiguousarray(faces, np.int64)
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or len(self.faces) == 0:
            raise ValueError("SurfaceQuery needs a mesh with triangles")
        self._boundary = boundary

    def query(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Closest surface points of ``(Q, 3)`` queries.

        Returns ``(dist (Q,), closest (Q, 3), face (Q,), bary (Q, 3))``.
        """
        pts = np.ascontiguousarray(points, np.float64)
        dist, face, bary = pcu.closest_points_on_mesh(pts, self.vertices, self.faces)
        closest = np.einsum("qk,qkj->qj", bary, self.vertices[self.faces[face]])
        return dist, closest, face, bary

    def _boundary_data(self) -> tuple[np.ndarray, np.ndarray]:
        """(boundary vertex mask (N,), sorted codes ``min * N + max`` of boundary edges)."""
        if self._boundary is None:
            n = len(self.vertices)
            e = np.sort(self.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), 1)
            codes, cnt = np.unique(e[:, 0] * n + e[:, 1], return_counts=True)
            edge_codes = codes[cnt == 1]
            mask = np.zeros(n, bool)
            mask[edge_codes // n] = True
            mask[edge_codes % n] = True
            self._boundary = (mask, edge_codes)
        return self._boundary

    @property
    def boundary_vertices(self) -> np.ndarray:
        """``(N,)`` bool: the vertex lies on an edge used by exactly one triangle."""
        return self._boundary_data()[0]

    def on_boundary(self, face: np.ndarray, bary: np.ndarray, eps: float = 1e-9) -> np.ndarray:
        """``(Q,)`` bool: the closest point lies on the open boundary, i.e. on an edge used by one
        triangle only, or at a vertex of such an edge."""
        mask, edge_codes = self._boundary_data()
        corners = self.faces[face]
        zero = bary <= eps
        n_zero = zero.sum(1)
        out = np.zeros(len(face), bool)
        at_vertex = n_zero == 2
        out[at_vertex] = mask[corners[at_vertex][~zero[at_vertex]]]
        on_edge = np.flatnonzero(n_zero == 1)
        if len(on_edge):
            ends = np.sort(corners[on_edge][~zero[on_edge]].reshape(-1, 2), 1)
            code = ends[:, 0] * len(self.vertices) + ends[:, 1]
            pos = np.clip(np.searchsorted(edge_codes, code), 0, max(len(edge_codes) - 1, 0))
            out[on_edge] = (edge_codes[pos] == code) if len(edge_codes) else False
        return out


# ----------------------------------------------------------------------------- protocol pieces
def nose_tip_index(vertices: np.ndarray) -> int:
    """The vertex with the largest z after centring (the face looks along +z)."""
    v = np.asarray(vertices, np.float64)
    return int(np.argmax(v[:, 2] - v[:, 2].mean()))


def coarse_rotation_search(pred_pts: np.ndarray, pred_nose: np.ndarray, gt_pts: np.ndarray,
                           gt_nose: np.ndarray, scale: float, truncate_mm: float = 10.0
                           ) -> Similarity:
    """Best rotation about the nose tip over a grid; returns the similarity pred -> gt.

    ``pred_pts`` (N, 3) and ``gt_pts`` (M, 3) are (subsampled) point sets; the score is the
    mean of ``min(distance to the nearest gt point, truncate_mm)`` over the pred points.
    """
    tree = cKDTree(gt_pts)
    centred = (pred_pts - pred_nose) * scale
    grid = [(pitch, yaw, roll) for yaw in range(-40, 41, 10) for pitch in range(-30, 31, 10)
            for roll in range(-20, 21, 10)]
    best, best_rot = np.inf, np.eye(3)
    for rot in euler_deg_to_matrix_np(grid):
        d, _ = tree.query(centred @ rot.T + gt_nose, k=1, distance_upper_bound=truncate_mm)
        score = np.minimum(d, truncate_mm).mean()
        if score < best - 1e-12:
            best, best_rot = score, rot
    return Similarity(scale, best_rot, gt_nose - scale * best_rot @ pred_nose)


@dataclass
class IcpResult:
    transform: Similarity
    iterations: int
    converged: bool
    inlier_rms: float
    n_inliers: int


def _plane_step(y: np.ndarray, n: np.ndarray, g: np.ndarray, scale: bool,
                damping: float = 1e-3) -> Similarity:
    """Linearised point-to-plane similarity increment moving surface points ``y`` (normals ``n``)
    towards scan points ``g``: minimises ``sum (n . (y' - g))^2`` over a small rotation,
    translation and (if ``scale``) log-scale about the centroid of ``y``, plus
    ``damping * N * |increment|^2`` with rotation and scale measured as the displacement they
    cause at the points' RMS radius. The damping only slows the step; the fixed point is
    unchanged. It keeps directions the data cannot see (e.g. rotating a sphere) at zero."""
    c = y.mean(0)
    yc = y - c
    cols = [np.cross(yc, n), n]
    if scale:
        cols.append((n * yc).sum(1, keepdims=True))
    a = np.concatenate(cols, 1)
    rhs = -(n * (y - g)).sum(1)
    rad2 = float((yc * yc).sum(1).mean())
    reg = np.r_[np.full(3, rad2), np.ones(3), np.full(a.shape[1] - 6, rad2)]
    x = np.linalg.solve(a.T @ a + damping * len(y) * np.diag(reg), a.T @ rhs)
    rot = Rotation.from_rotvec(x[:3]).as_matrix()
    sc = float(np.exp(x[6])) if scale else 1.0
    return Similarity(sc, rot, c + x[3:6] - sc * rot @ c)


def scaled_icp(pred: Mesh, gt_pts: np.ndarray, init: Similarity, scale: bool = True,
               iters: int = 50, tol_mm: float = 1e-3, rms_tol: float = 1e-4, method: str = "plane",
               trim: float = 3.0,
               min_trim_mm: float = 2.0, max_points: int = 20000, seed: int = 0) -> IcpResult:
    """ICP of the predicted mesh onto scan points; see the module docstring (step 3).

    ``method="plane"``: linearised point-to-plane steps (pred face normals); ``"point"``:
    closed-form point-to-point (Umeyama) fits. At most ``max_points`` scan points (a fixed random
    subset) are used for the fit. ``scale=False`` keeps the scale of ``init``. Stops when no
    predicted vertex moves more than ``tol_mm`` or the inlier RMS changes by at most
    ``rms_tol`` (relative; at least 1e-5 absolute) between iterations.
    """
    if method not in ("plane", "point"):
        raise ValueError(f"method must be 'plane' or 'point', got {method!r}")
    rng = np.random.default_rng(seed)
    pts = gt_pts if len(gt_pts) <= max_points else gt_pts[rng.choice(len(gt_pts), max_points, replace=False)]
    verts = np.asarray(pred.vertices, np.float64)
    faces = np.asarray(pred.faces, np.int64)
    lo, hi = verts.min(0), verts.max(0)
    box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cur = init
    rms, prev_rms, n_in, it, converged = float("nan"), float("inf"), 0, 0, False
    boundary = SurfaceQuery(verts, faces)._boundary_data()  # topology only: reuse every iteration
    for it in range(1, iters + 1):
        moved_verts = cur.apply(verts)
        query = SurfaceQuery(moved_verts, faces, boundary)
        d, cp, f, bary = query.query(pts)
        keep = ~query.on_boundary(f, bary)
        if keep.sum() < 7:
            raise MvfError("ICP: the prediction does not overlap the cropped scan")
        thr = max(trim * float(np.median(d[keep])), min_trim_mm)
        keep &= d <= thr
        if keep.sum() < 7:
            raise MvfError("ICP: too few matching points between the prediction and the scan")
        rms = float(np.sqrt(np.mean(d[keep] ** 2)))
        n_in = int(keep.sum())
        try:
            if method == "plane":
                tri = moved_verts[faces[f[keep]]]
                nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
                nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-300)
                new = _plane_step(cp[keep], nrm, pts[keep], scale).compose(cur)
            else:
                src = np.einsum("qk,qkj->qj", bary[keep], verts[faces[f[keep]]])  # unaligned frame
                if scale:
                    new = umeyama(src, pts[keep], with_scale=True)
                else:
                    rigid = umeyama(init.s * src, pts[keep], with_scale=False)
                    new = Similarity(init.s, rigid.R, rigid.t)
        except (ValueError, np.linalg.LinAlgError):
            raise MvfError("ICP: degenerate correspondences between the prediction and the scan") from None
        moved = float(np.abs(new.apply(box) - cur.apply(box)).max())
        cur = new
        if moved < tol_mm or abs(prev_rms - rms) <= max(rms_tol * rms, 1e-5):
            converged = True
            break
        prev_rms = rms
    return IcpResult(cur, it, converged, rms, n_in)


# ----------------------------------------------------------------------------- landmarks
def read_landmarks_3d(path: str | os.PathLike, vertices: np.ndarray) -> np.ndarray:
    """3D landmarks ``(K, 3)`` for a mesh from a file.

    Formats: ``.npy``/``.txt``/``.csv``/``.xyz`` holding either ``(K, 3)`` coordinates (mesh
    units) or ``K`` integer vertex indices (0-based) into ``vertices``; MeshLab picked points
    ``.pp`` (XML ``<point x= y= z=>``). `MvfError` naming the file on any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "landmark file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".pp":
            import xml.etree.ElementTree as ET

            root = ET.parse(path).getroot()
            arr = np.array([[float(p.get(k)) for k in "xyz"] for p in root.iter("point")
                            if p.get("active", "1") != "0"])
        elif suffix in (".txt", ".csv", ".xyz"):
            rows = [ln.replace(",", " ").split() for ln in path.read_text().splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#")]
            arr = np.array([[float(x) for x in r] for r in rows])
        else:
            raise file_error(path, f"unsupported landmark file type '{path.suffix}' (.npy, .txt, .csv, .xyz, .pp)")
    except MvfError:
        raise
    except Exception as e:
        raise file_error(path, f"unreadable landmark file ({type(e).__name__})") from None
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 1:
        if arr.size and np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
            raise file_error(path, "a 1-D landmark list must hold integer vertex indices")
        idx = arr.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(vertices)):
            raise file_error(path, f"vertex index out of range (the mesh has {len(vertices)} vertices)")
        arr = np.asarray(vertices, np.float64)[idx]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise file_error(path, f"expected (K, 3) coordinates or K vertex indices, got shape {arr.shape}")
    if len(arr) < 3:
        raise file_error(path, f"need at least 3 landmarks, got {len(arr)}")
    if not np.isfinite(arr).all():
        raise file_error(path, "landmarks contain NaN or infinite values")
    return arr.astype(np.float64)


# ----------------------------------------------------------------------------- the protocol
@dataclass
class EvalResult:
    """Outcome of `evaluate_meshes`; distances in the scan's units (mm)."""

    rmse: float
    mean: float
    median: float
    p95: float
    n_gt_points: int
    boundary_fraction: float
    transform: Similarity
    init: str
    icp_iterations: int
    icp_converged: bool
    crop_radius: float
    gt_nose: np.ndarray
    seconds: float
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        pitch, yaw, roll = matrix_to_euler_deg_np(self.transform.R).tolist()
        return {
            "rmse_mm": self.rmse, "mean_mm": self.mean, "median_mm": self.median, "p95_mm": self.p95,
            "n_gt_points": self.n_gt_points, "boundary_fraction": self.boundary_fraction,
            "direction": "scan points -> predicted surface",
            "crop_radius_mm": self.crop_radius, "gt_nose_tip": self.gt_nose.tolist(),
            "init": self.init, "icp_iterations": self.icp_iterations, "icp_converged": self.icp_converged,
            "transform_pred_to_gt": {**self.transform.to_dict(),
                                     "pitch_yaw_roll_deg": [pitch, yaw, roll]},
            "seconds": self.seconds, "timings_s": self.timings,
        }


def evaluate_meshes(pred: Mesh, gt: Mesh, pred_landmarks: np.ndarray | None = None,
                    gt_landmarks: np.ndarray | None = None, crop_radius: float = CROP_RADIUS_MM,
                    pred_nose_index: int | None = None, gt_nose_index: int | None = None,
                    scale: bool = True, icp_iters: int = 50, tol_mm: float = 1e-3,
                    icp_method: str = "plane") -> EvalResult:
    """Run the protocol (module docstring) and return the errors and the pred -> gt transform.

    Args:
        pred: predicted mesh (needs triangles). gt: scan (its vertices are the points).
        pred_landmarks, gt_landmarks: optional corresponding ``(K, 3)`` landmarks (both or none).
        crop_radius: scan crop radius around its nose tip, in scan units.
        pred_nose_index, gt_nose_index: optional nose-tip vertex indices.
        scale: scaled (True) or rigid ICP. icp_method: ``"plane"`` or ``"point"``.
    """
    t0 = time.perf_counter()
    if len(pred.faces) == 0:
        raise MvfError("--pred: the predicted mesh has no triangles")
    if len(pred.faces) < MIN_PRED_TRIANGLES:
        raise MvfError(f"--pred: {len(pred.faces)} triangles: not a face mesh (at least {MIN_PRED_TRIANGLES})")
    pv = np.asarray(pred.vertices, np.float64)
    gv = np.asarray(gt.vertices, np.float64)
    if (pred_landmarks is None) != (gt_landmarks is None):
        raise MvfError("give both --pred-landmarks and --gt-landmarks, or neither")
    for name, idx, n in (("pred", pred_nose_index, len(pv)), ("gt", gt_nose_index, len(gv))):
        if idx is not None and not 0 <= idx < n:
            raise MvfError(f"--{name}-nose-index {idx}: out of range (the mesh has {n} vertices)")

    # GT nose tip (crop centre)
    if gt_nose_index is not None:
        gt_nose = gv[gt_nose_index]
    elif gt_landmarks is not None and len(gt_landmarks) == 68:
        gt_nose = gv[int(np.argmin(np.linalg.norm(gv - gt_landmarks[IBUG_NOSE_TIP], axis=1)))]
    else:
        gt_nose = gv[nose_tip_index(gv)]
    crop = gv[np.linalg.norm(gv - gt_nose, axis=1) <= crop_radius]
    if len(crop) < MIN_SCAN_POINTS:
        raise MvfError(f"--gt: only {len(crop)} scan points within {crop_radius:g} of the nose tip, "
                       f"at least {MIN_SCAN_POINTS} needed (too sparse a scan, wrong units or nose tip?)")

    # 1) initial alignment
    if pred_landmarks is not None:
        if len(pred_landmarks) != len(gt_landmarks):
            raise MvfError(f"--pred-landmarks has {len(pred_landmarks)} points but --gt-landmarks "
                           f"has {len(gt_landmarks)}")
        try:
            init = umeyama(pred_landmarks, gt_landmarks, with_scale=scale)
        except ValueError:
            raise MvfError("landmarks are degenerate (collinear or coincident)") from None
        init_name = "landmarks"
    else:
        p_nose = pv[pred_nose_index if pred_nose_index is not None else nose_tip_index(pv)]
        s0 = 1.0
        if scale:
            ratio = float(np.linalg.norm(np.ptp(gv, 0)) / max(np.linalg.norm(np.ptp(pv, 0)), 1e-12))
            s0 = ratio if not 0.5 <= ratio <= 2.0 else 1.0
        rng = np.random.default_rng(0)
        near = pv[np.linalg.norm(pv - p_nose, axis=1) * s0 <= crop_radius]
        sub_p = near[rng.choice(len(near), min(len(near), 600), replace=False)]
        sub_g = crop[rng.choice(len(crop), min(len(crop), 8000), replace=False)]
        init = coarse_rotation_search(sub_p, p_nose, sub_g, gt_nose, s0)
        init_name = "nose tip + coarse rotation search"

    t_init = time.perf_counter()
    # 3) ICP
    icp = scaled_icp(pred, crop, init, scale=scale, iters=icp_iters, tol_mm=tol_mm, method=icp_method)
    change = icp.transform.s / init.s
    if not 1.0 / MAX_ICP_SCALE_CHANGE <= change <= MAX_ICP_SCALE_CHANGE:
        raise MvfError(f"ICP changed the scale by {change:.3g}x (limit {MAX_ICP_SCALE_CHANGE:g}x): "
                       "the prediction and the scan are not the same kind of face mesh")

    t_icp = time.perf_counter()
    # 4) errors, scan -> aligned predicted surface
    query = SurfaceQuery(icp.transform.apply(pv), pred.faces)
    d, _, f, bary = query.query(crop)
    boundary = query.on_boundary(f, bary)
    t_end = time.perf_counter()
    return EvalResult(
        rmse=float(np.sqrt(np.mean(d ** 2))), mean=float(d.mean()), median=float(np.median(d)),
        p95=float(np.percentile(d, 95)), n_gt_points=int(len(crop)),
        boundary_fraction=float(boundary.mean()), transform=icp.transform, init=init_name,
        icp_iterations=icp.iterations, icp_converged=icp.converged, crop_radius=float(crop_radius),
        gt_nose=gt_nose, seconds=t_end - t0,
        timings={"crop_and_init": t_init - t0, "icp": t_icp - t_init, "distances": t_end - t_icp})


def format_table(res: EvalResult) -> str:
    """A small text table of the result."""
    pitch, yaw, roll = matrix_to_euler_deg_np(res.transform.R).tolist()
    rows = [
        ("RMSE (scan -> pred surface)", f"{res.rmse:.4f} mm"),
        ("mean / median / p95", f"{res.mean:.4f} / {res.median:.4f} / {res.p95:.4f} mm"),
        ("scan points in crop", f"{res.n_gt_points} (radius {res.crop_radius:g} mm)"),
        ("on pred boundary", f"{100 * res.boundary_fraction:.1f} %"),
        ("initial alignment", res.init),
        ("ICP", f"{res.icp_iterations} iterations, {'converged' if res.icp_converged else 'not converged'}"),
        ("pred -> scan scale", f"{res.transform.s:.5f}"),
        ("pred -> scan rotation", f"pitch {pitch:.2f}, yaw {yaw:.2f}, roll {roll:.2f} deg"),
        ("time", f"{res.seconds:.2f} s"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
