"""Test-time fitting: optimise id, exp and per-view poses against landmarks and the views' agreement.

Works without a trained model: the start is the network's prediction when one is given, else
the mean face with poses from a closed-form weak-perspective fit to the 2D landmarks
(`init_poses_from_landmarks`). Two phases with Adam:

1. landmarks (cheap, at the crop's resolution): per-view landmark reprojection with the jawline
   from the view-dependent contour search, plus coefficient priors. Each step decodes only the
   ~1.5k vertices the landmarks and contour candidates need (the compact mode of
   `mvf.face.landmarks.LandmarkProjector`), so a step costs milliseconds; it stops early on a plateau;
2. cross-view (optional, ``photo_steps > 0``): landmarks + priors + the self-supervised
   photometric and flow-alignment losses (`mvf.losses.selfsup`), rendered at ``photo_size`` pixels
   (images downsampled, poses scaled) to keep it affordable on a CPU, after ``photo_coarse_steps``
   at ``photo_coarse_size``; with ``fit_distance`` it also fits the pinhole camera's distance.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import Tensor

from renderer.camera import Pinhole, project, view_meshes
from renderer.rotations import euler_to_matrix, matrix_to_euler, rotation_derivatives
from mvf.errors import MvfError
from mvf.face.detector_error import DetectorErrorModel
from mvf.face.landmarks import LandmarkProjector, LandmarkSet
from mvf.losses.flow import FlowConfig, build_flow
from mvf.losses.selfsup import CrossViewConfig, cross_view_losses, inner_face_region
from mvf.losses.supervised import landmark_loss

NON_JAW = tuple(range(17, 68))
PAIR_SETS = ("all", "front")  # every ordered pair, or front <-> each side view only
REGIONS = ("inner_face", "all")
LANDMARK_CHOICES = ("auto", "calibrated", "ibug68")


@dataclass
class FitCrossViewConfig(CrossViewConfig):
    """`CrossViewConfig` for fitting photos: no erosion of the co-visible pixels (session 15); the
    robust "log_l1" colour distance (session 18: pixels no pose and shape can match weigh less);
    the "shading" colour match (session 22: each warped view's colours matched to the target's
    with a gain linear in the surface normal, so exposure, white balance and shading that changes
    between the views, a head turning under fixed lights or a flash, no longer read as
    misalignment; "affine" until then, with a 3 px high-pass in session 21). Chosen on
    tools/bench_real.py's tuning sets (lights fixed to the head and to the camera)."""

    normalise: str = "shading"
    erode_px: int = 0
    photometric: str = "log_l1"
    highpass_px: float = 0.0


MIN_DISTANCE_MM, MAX_DISTANCE_MM = 200.0, 100000.0


def valid_camera_distance(distance_mm) -> bool:
    """A fit's ``camera_distance_mm``: None or 0 (weak perspective) or a number in [200, 100000] mm."""
    if distance_mm is None:
        return True
    return (isinstance(distance_mm, (int, float)) and not isinstance(distance_mm, bool)
            and (distance_mm == 0 or MIN_DISTANCE_MM <= distance_mm <= MAX_DISTANCE_MM))


@dataclass
class FitConfig:
    """Test-time fitting settings (``mvf fit --config``/``--set``; weights multiply losses).

    n_id: identity modes optimised (the rest stay 0; a start with more, such as a network's, is cut).
    landmark_steps: Levenberg-Marquardt iterations of the landmark phase (at most); it stops
        when the objective fell by less than ``landmark_tol`` (relative) in a step.
    lm_delta_mm: the landmark distance, in model millimetres (pixels / the initial mean f, so
        the balance with the priors does not depend on the image size), enters as Charbonnier
        ``sqrt(d² + δ²) - δ`` (robust: ≈ d beyond δ).
    contour_every: cross-view steps between jawline contour searches (reused in between).
    photo_steps, photo_lr, photo_size: the cross-view phase (0 steps skips it), rendered at
        ``photo_size`` px (the crops are downsampled, poses scaled), after ``photo_coarse_steps``
        at ``photo_coarse_size`` px (coarse to fine: the blurrier images' wider basin first, at
        half the cost a step; one cosine schedule over both); ``photo_pairs`` "all"
        (six ordered pairs) or "front" (front <-> side views only: four pairs); ``photo_region``
        "inner_face" (`mvf.losses.selfsup.inner_face_region`: no scalp, ears, neck, which hair and
        clothes cover in photos) or "all" triangles.
    w_landmark, w_jaw: landmark term (cross-view phase) and the relative weight of the jawline
        points.
    w_photo, w_flow: photometric (robust colour distance, [0, 1] units) and flow alignment (px).
    w_id_prior: times mean(id²) (N(0, 1) coefficients); w_exp_prior: times mean(|exp|).
    w_net_prior: times mean((c - c0)²) over the id and exp coefficients ``c``, ``c0`` the start
        given as ``init`` (a network's prediction; `mvf.recon.refine`), in the landmark phase; 0 is
        off. ``w_net_prior_cross_view``: the same prior's weight in the cross-view phase. (None:
        128 and 0.5 after a detector-input network, `mvf.recon.pipeline.NETWORK_FIT_DEFAULTS`:
        the landmarks fit the poses to the network's shape, the views' agreement moves it; else 0.)
    pose_step: scale of each pose entry's update per unit parameter (f relative to f, angles
        radians, t pixels), so one learning rate serves all.
    contour: jawline landmarks follow the silhouette (else fixed vertices).
    camera_distance_mm: the photos' camera distance (mm, [200, 100000]) for a pinhole camera
        (`renderer.camera.Pinhole`, centred on the face's landmarks) in the landmark and cross-view
        phases and the texture; 0: the weak-perspective camera of the paper and the network; None:
        the profile's (1000 for detected photos, else 0).
    fit_distance: the cross-view phase also fits the pinhole camera's distance (as its inverse,
        1000 / distance in mm, i.e. per metre, from ``camera_distance_mm``'s, kept within [200, 100000] mm; the
        views' agreement is exact only through the right camera); the landmark phase keeps
        ``camera_distance_mm``. No effect on a weak-perspective fit. The fitted distance is the
        result's camera (texture, overlays, params.json). ``distance_step``: the inverse
        distance's learning rate relative to ``photo_lr``.
    error_rank: the calibrated set's detector error model (`mvf.face.detector_error`) in the
        landmark objective: each view's points are matched as ``projected + f0 (bias + z @ basis)``
        with the leading ``error_rank`` structured-error components of the view's yaw bin and
        per-view latent ``z`` (standard normal, prior ``w_error_prior · mean(z²)``), so errors the
        detector makes together are explained by ``z`` rather than by the shape; 0: off (no bias).
        Landmark sets without an error model (the iBUG-68 set of landmark files) ignore it.
    landmarks: which landmarks detected photos are fitted with: "auto" (the calibrated mediapipe
        set, `mvf.recon.calibrate`, when the asset exists; else the iBUG-68 table), "calibrated"
        (required) or "ibug68". Landmark files (68 points) always use the iBUG-68 set.
    cross_view, flow: loss and flow-estimator settings of the cross-view phase.

    ``n_id``, ``landmark_steps``, ``photo_steps``, ``photo_coarse_steps``, ``w_photo``, ``w_exp_prior``,
    ``w_id_prior``, ``w_net_prior``, ``w_net_prior_cross_view``, ``camera_distance_mm`` and ``fit_distance``
    left unset (None) take the landmark profile's tuned value (`with_defaults`: the calibrated set's, a
    network start's), else `GENERIC_DEFAULTS` (60, 40, 0, 0, 100, 0.5, 0.5, 0, 0, 0, false); a value set
    explicitly is always kept.
    """

    n_id: int | None = None
    landmark_steps: int | None = None
    landmark_tol: float = 1e-5
    lm_delta_mm: float = 0.5
    contour_every: int = 5
    photo_steps: int | None = None
    photo_lr: float = 0.08
    photo_size: int = 160
    photo_coarse_steps: int | None = None
    photo_coarse_size: int = 112
    photo_pairs: str = "all"
    photo_region: str = "inner_face"
    w_landmark: float = 1.0
    w_jaw: float = 0.5
    w_photo: float | None = None
    w_flow: float = 0.0
    w_id_prior: float | None = None
    w_exp_prior: float | None = None
    w_net_prior: float | None = None
    w_net_prior_cross_view: float | None = None
    pose_step: tuple[float, ...] = (0.05, 0.05, 0.05, 0.05, 2.0, 2.0)
    contour: bool = True
    camera_distance_mm: float | None = None
    fit_distance: bool | None = None
    distance_step: float = 1.0
    error_rank: int = 12
    w_error_prior: float = 1.0
    landmarks: str = "auto"
    cross_view: "FitCrossViewConfig" = field(default_factory=lambda: FitCrossViewConfig())
    flow: FlowConfig = field(default_factory=FlowConfig)

    def __post_init__(self) -> None:
        for key in ("n_id", "landmark_steps", "photo_steps", "photo_coarse_steps", "error_rank"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise MvfError(f"config key '{key}': must be >= 0, got {getattr(self, key)}")
        for key in ("photo_size", "photo_coarse_size"):
            if getattr(self, key) < 32:
                raise MvfError(f"config key '{key}': must be >= 32 px, got {getattr(self, key)}")
        if self.photo_pairs not in PAIR_SETS:
            raise MvfError(f"config key 'photo_pairs': {self.photo_pairs!r} is not one of {list(PAIR_SETS)}")
        if self.photo_region not in REGIONS:
            raise MvfError(f"config key 'photo_region': {self.photo_region!r} is not one of {list(REGIONS)}")
        if self.landmarks not in LANDMARK_CHOICES:
            raise MvfError(f"config key 'landmarks': {self.landmarks!r} is not one of {list(LANDMARK_CHOICES)}")
        if not valid_camera_distance(self.camera_distance_mm):
            raise MvfError(f"config key 'camera_distance_mm': must be in [{MIN_DISTANCE_MM:g}, {MAX_DISTANCE_MM:g}] mm, 0 (weak "
                           f"perspective) or null, got {self.camera_distance_mm}")
        if self.distance_step < 0:
            raise MvfError(f"config key 'distance_step': must be >= 0, got {self.distance_step}")
        if len(self.pose_step) != 6:
            raise MvfError(f"config key 'pose_step': expected 6 numbers, got {len(self.pose_step)}")


# The settings a landmark profile tunes (the calibrated set's, a network's start): None in a
# `FitConfig` means "the profile's value", else these (`resolved`).
GENERIC_DEFAULTS = {"n_id": 60, "landmark_steps": 40, "photo_steps": 0, "photo_coarse_steps": 0, "w_photo": 100.0,
                    "w_exp_prior": 0.5, "w_id_prior": 0.5, "w_net_prior": 0.0, "w_net_prior_cross_view": 0.0,
                    "camera_distance_mm": 0.0, "fit_distance": False}


def with_defaults(cfg: FitConfig, defaults: dict) -> FitConfig:
    """``cfg`` with ``defaults`` (key -> value) for the profile keys it leaves unset (None): a
    profile's tuned settings that a user's explicit settings, even the generic values, override."""
    return dataclasses.replace(cfg, **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})


def resolved(cfg: FitConfig) -> FitConfig:
    """``cfg`` with every profile key still unset at its `GENERIC_DEFAULTS` value."""
    return with_defaults(cfg, GENERIC_DEFAULTS)


@dataclass
class FitResult:
    """Fitted coefficients ``id`` (n_id,), ``exp`` (n_exp,), ``poses`` (V, 6) crop px; per-step
    ``history``, per-phase ``seconds``, the ``camera`` fitted through (None: weak perspective) and
    the rank of the detector error model used (`FitConfig.error_rank`; 0: none)."""

    id: Tensor
    exp: Tensor
    poses: Tensor
    history: list[dict]
    seconds: dict
    camera: Pinhole | None = None
    error_rank: int = 0


# ----------------------------------------------------------------------------- initialisation
def init_poses_from_landmarks(lm3: Tensor, lm2: Tensor, visible: Tensor | None = None,
                              use: tuple[int, ...] = NON_JAW) -> Tensor:
    """Closed-form weak-perspective poses from 3D-2D landmark correspondences.

    Solves the affine camera ``l = M L + t`` by least squares on centred points, then takes the
    nearest scaled rotation: ``diag(1, -1) M = s R[:2]``.

    Args:
        lm3: ``(K, 3)`` model landmarks (mm). lm2: ``(V, K, 2)`` pixels. visible: ``(V, K)``.
        use: landmark indices used (default: all but the jawline, which is view-dependent).
    Returns: ``(V, 6)`` poses.
    """
    idx = torch.as_tensor(use, dtype=torch.long, device=lm3.device)
    flip = torch.tensor([1.0, -1.0], dtype=torch.float64, device=lm3.device)
    poses = []
    for v in range(lm2.shape[0]):
        sel = idx
        if visible is not None:
            keep = visible[v, idx].bool()
            if int(keep.sum()) >= 6:
                sel = idx[keep]
        p3 = lm3[sel].double()
        p2 = lm2[v, sel].double()
        c3, c2 = p3.mean(0), p2.mean(0)
        m = torch.linalg.lstsq(p3 - c3, p2 - c2).solution.T * flip[:, None]  # (2, 3)
        u, sv, vh = torch.linalg.svd(m, full_matrices=False)
        rows = u @ vh  # nearest matrix with orthonormal rows
        r3 = torch.linalg.cross(rows[0], rows[1])
        rot = torch.stack([rows[0], rows[1], r3])
        scale = sv.mean()
        t = c2 - scale * (rot[:2] @ c3) * flip
        poses.append(torch.cat([scale[None], matrix_to_euler(rot), t]).float())
    return torch.stack(poses)


# ----------------------------------------------------------------------------- fitting
def _view_pairs(n_views: int, which: str) -> list[tuple[int, int]]:
    """Ordered view pairs: all, or only those involving the front view (index 0)."""
    if which == "front":
        return [(a, b) for a in range(n_views) for b in range(n_views) if a != b and 0 in (a, b)]
    return [(a, b) for a in range(n_views) for b in range(n_views) if a != b]


def scale_poses(poses: Tensor, factor: float) -> Tensor:
    """Poses ``(..., 6)`` for images resized by ``factor`` (f and t scale; angles unchanged)."""
    return poses * poses.new_tensor([factor, 1.0, 1.0, 1.0, factor, factor])


def robust_px(dist: Tensor, delta: float) -> Tensor:
    """Charbonnier penalty ``sqrt(d² + δ²) - δ`` of pixel distances (≈ d beyond δ, quadratic below)."""
    return torch.sqrt(dist.square() + delta * delta) - delta


class _Problem:
    """The landmark objective in one flat parameter vector ``θ = (id, exp, pose offsets)``.

    ``E(θ) = Σ a_vk ρ(|p_vk(θ) - l_vk| / f0) / Σ a_vk + w_id·mean(id²) + w_exp·mean(exp)`` with ρ
    the Charbonnier penalty (`robust_px`), ``f0`` the initial mean scale (px/mm: distances in
    model millimetres), ``a`` the landmark weights (visibility x jaw weight), and poses
    ``pose0 + offsets · step``. ``exp`` lies in [0, 1] (so |exp| = exp).

    ``compact``: the landmark projector (its compact decoding); ``weights`` ``(V, K)`` the given
    landmark weights (visibility), times the projector's per-view weights at each `search`;
    ``cfg`` `resolved` (every profile key set); ``camera`` a `Pinhole` the landmarks are projected
    through (None: weak perspective); ``error`` the set's `DetectorErrorModel` (used when
    ``cfg.error_rank > 0``: ``θ`` then ends with the per-view latents ``z`` ``(V, R)``).
    """

    def __init__(self, compact: LandmarkProjector, targets: Tensor, weights: Tensor, pose0: Tensor,
                 step: Tensor, n_exp: int, cfg: FitConfig, camera: Pinhole | None = None,
                 error: DetectorErrorModel | None = None):
        self.compact, self.targets, self.pose0, self.step, self.cfg = compact, targets, pose0, step, cfg
        self.camera = camera
        self.n_id, self.n_exp, self.n_views = compact.n_id, n_exp, pose0.shape[0]
        self.error = error.to(targets.device) if error is not None and cfg.error_rank > 0 else None
        self.rank = 0 if self.error is None else min(cfg.error_rank, int(self.error.basis.shape[1]))
        self.err_bias = targets.new_zeros(targets.shape)  # (V, K, 2) px, set by `search`
        self.err_basis = targets.new_zeros(self.n_views, self.rank, *targets.shape[1:])  # (V, R, K, 2) px
        self.base_weights = weights
        self.a = weights / weights.sum().clamp_min(1e-6)  # (V, K), set by `search`
        self.mm_per_px = 1.0 / float(pose0[:, 0].mean().clamp_min(1e-6))
        dev = targets.device
        self.exp_linear = torch.zeros(self.size, device=dev, dtype=torch.float64)
        self.exp_linear[self.n_id:self.n_id + n_exp] = cfg.w_exp_prior / max(n_exp, 1)
        self.centre: Tensor | None = None  # (n_id + n_exp,) the network prior's centre
        self.w_centre = cfg.w_net_prior  # its weight in the current phase (`fit` sets the cross-view phase's)
        # id and exp bases per compact vertex, (M, 3, P), for `search`'s gathers along M
        self.vertex_basis = torch.cat([compact.id_basis[:self.n_id], compact.exp_basis]).reshape(
            self.n_id + n_exp, -1, 3).permute(1, 2, 0).contiguous()

    @property
    def size(self) -> int:
        return self.n_id + self.n_exp + 6 * self.n_views + self.rank * self.n_views

    @property
    def z_start(self) -> int:
        return self.n_id + self.n_exp + 6 * self.n_views

    def latents(self, theta: Tensor) -> Tensor:
        """The detector-error latents ``(V, R)`` of ``θ``."""
        return theta[self.z_start:].reshape(self.n_views, self.rank)

    def offsets(self, theta: Tensor) -> Tensor:
        """The modelled detector errors ``(V, K, 2)`` px at ``θ`` (with an error model: ``rank > 0``)."""
        z = self.latents(theta).to(self.err_basis.dtype)
        return self.err_bias + torch.einsum("vr,vrkc->vkc", z, self.err_basis)

    def split(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``θ -> (id (n_id,), exp (n_exp,), poses (V, 6))``."""
        id_c = theta[: self.n_id]
        exp_c = theta[self.n_id:self.n_id + self.n_exp]
        poses = self.pose0 + theta[self.n_id + self.n_exp:self.z_start].reshape(self.n_views, 6) * self.step
        return id_c, exp_c, poses

    def search(self, theta: Tensor) -> None:
        """Choose each landmark's triangle per view for the current shape and poses (the jawline's
        contour search) and the landmark weights."""
        id_c, exp_c, poses = self.split(theta.detach().float())
        verts = self.compact.decode(id_c[None], exp_c[None])
        choice = self.compact.select(verts, poses[None], self.camera)
        tri, bary = choice.tri[0], choice.bary[0]  # (V, K, 3)
        corners = self.vertex_basis.index_select(0, tri.reshape(-1)).reshape(*tri.shape, 3, -1)  # (V, K, 3, 3, P)
        self.sel_basis = (corners * bary[..., None, None]).sum(2)  # (V, K, 3, P)
        self.sel_mean = (self.compact.mean[tri] * bary[..., None]).sum(-2)  # (V, K, 3)
        w = self.base_weights * choice.weight[0]
        self.a = w / w.sum().clamp_min(1e-6)
        if self.rank:  # the error model of each view's yaw bin, in px (times the start's f)
            b = self.error.bins(poses[:, 2])
            f0 = self.pose0[:, 0, None, None]
            self.err_bias = self.error.bias[b] * f0
            basis = self.error.basis[b, : self.rank].reshape(self.n_views, self.rank, -1, 2)
            self.err_basis = basis * f0[..., None]

    def project(self, theta: Tensor) -> Tensor:
        """Landmarks ``(V, 68, 2)`` px for ``θ`` with the current jawline choice (the model's own,
        without the detector's modelled errors: `matched`)."""
        id_c, exp_c, poses = self.split(theta)
        coeff = torch.cat([id_c, exp_c]).to(self.sel_basis.dtype)
        pts = self.sel_mean + self.sel_basis @ coeff
        poses = poses.to(pts.dtype)
        if self.camera is not None:
            pts = self.camera.view_verts(pts, poses)
        return project(pts, poses)

    def matched(self, theta: Tensor) -> Tensor:
        """What the detector is expected to give ``(V, K, 2)`` px: `project` + the modelled errors."""
        uv = self.project(theta)
        return uv + self.offsets(theta) if self.rank else uv

    def objective(self, theta: Tensor) -> Tensor:
        """``E(θ)`` (scalar) with the current jawline choice."""
        id_c, exp_c, _ = self.split(theta)
        dist = (self.matched(theta) - self.targets).norm(dim=-1) * self.mm_per_px
        e = (self.a * robust_px(dist, self.cfg.lm_delta_mm)).sum()
        e = e + self.cfg.w_id_prior * id_c.square().mean() + self.cfg.w_exp_prior * exp_c.abs().mean()
        if self.centre is not None and self.w_centre > 0:
            c = theta[: self.n_id + self.n_exp]
            e = e + self.w_centre * (c - self.centre.to(c)).square().mean()
        if self.rank:
            e = e + self.cfg.w_error_prior * self.latents(theta).square().mean()
        return e

    def jacobian(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """`matched` landmarks ``(V, 68, 2)`` px and their analytic Jacobian ``(V, 68, 2, P)`` w.r.t. ``θ``.

        ``uv = f diag(1, -1) s q + t`` with ``q = (R p)_xy``; ``s = 1`` for the weak camera, else
        the pinhole's ``D / (D - (z - z0))`` (`renderer.camera.pinhole_scale`), ``z = (R p)_z``,
        ``z0 = (R c)_z``, so ``ds = s² / D (dz - dz0)``.
        """
        id_c, exp_c, poses = self.split(theta)
        coeff = torch.cat([id_c, exp_c]).to(self.sel_basis.dtype)
        pts = self.sel_mean + self.sel_basis @ coeff  # (V, 68, 3)
        rot = euler_to_matrix(poses[:, 1:4])  # (V, 3, 3)
        d_rot = rotation_derivatives(poses[:, 1:4])  # (V, 3 angles, 3, 3)
        f = poses[:, 0, None, None]
        sign = pts.new_tensor([1.0, -1.0])
        rv = pts @ rot.transpose(1, 2)  # (V, 68, 3)
        v, k = pts.shape[:2]
        if self.camera is None:
            s, ds = pts.new_ones(v, k), pts.new_zeros(v, k)
            dz0 = pts.new_zeros(v, 3)
        else:
            dist = float(self.camera.distance_mm)
            c = pts.new_tensor(self.camera.centre)
            s = dist / (dist - (rv[..., 2] - (rot @ c)[:, 2, None]))  # (V, 68)
            ds = s.square() / dist  # ds / d(z - z0)
            dz0 = (d_rot @ c)[..., 2]  # (V, 3 angles)
        q = rv[..., :2] * s[..., None]
        uv = f * q * sign + poses[:, None, 4:6]
        jac = pts.new_zeros(v, k, 2, self.size)
        # shape: d rv / d coeff = R B; d q = s d rv_xy + rv_xy ds d rv_z
        d_rv = rot[:, None] @ self.sel_basis  # (V, 68, 3, P)
        d_q = s[..., None, None] * d_rv[:, :, :2] + (rv[..., :2] * ds[..., None])[..., None] * d_rv[:, :, 2:3]
        jac[..., : self.n_id + self.n_exp] = f[..., None] * sign[:, None] * d_q
        base = self.n_id + self.n_exp
        for view in range(v):
            cols = slice(base + 6 * view, base + 6 * view + 6)
            block = pts.new_zeros(k, 2, 6)
            block[:, :, 0] = q[view] * sign
            d_ra = torch.einsum("aij,kj->kai", d_rot[view], pts[view])  # (68, 3 angles, 3)
            d_qa = (s[view, :, None, None] * d_ra[..., :2]
                    + (rv[view, :, None, :2] * ds[view, :, None, None]) * (d_ra[..., 2] - dz0[view])[..., None])
            block[:, :, 1:4] = (poses[view, 0] * d_qa * sign).transpose(1, 2)
            block[:, 0, 4] = 1.0
            block[:, 1, 5] = 1.0
            jac[view, :, :, cols] = block * self.step
        if self.rank:
            uv = uv + self.offsets(theta).to(uv.dtype)
            for view in range(v):
                cols = slice(self.z_start + self.rank * view, self.z_start + self.rank * (view + 1))
                jac[view, :, :, cols] = self.err_basis[view].permute(1, 2, 0).to(jac.dtype)
        return uv, jac

    def linearise(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Gauss-Newton system of the IRLS surrogate at ``θ``: ``(H (P, P), g (P,))`` float64.

        Landmark residuals are weighted by ``a ρ'(d) / d`` (iteratively reweighted least squares
        for the Charbonnier penalty); the id prior is a residual, the exp prior a linear term.
        """
        with torch.no_grad():
            uv, jac = self.jacobian(theta)
            res = (uv - self.targets) * self.mm_per_px
            jac = jac * self.mm_per_px
            dist = res.norm(dim=-1)
            omega = 1.0 / torch.sqrt(dist.square() + self.cfg.lm_delta_mm ** 2)  # ρ'(d) / d
            w = (self.a * omega)[..., None].double()  # (V, 68, 1)
            j = jac.double().reshape(-1, self.size)
            wj = (jac.double() * w[..., None]).reshape(-1, self.size)
            h = j.T @ wj
            g = wj.T @ res.double().reshape(-1)
            prior = 2.0 * self.cfg.w_id_prior / max(self.n_id, 1)
            idx = torch.arange(self.n_id, device=h.device)
            h[idx, idx] += prior
            g[: self.n_id] += prior * theta[: self.n_id].double()
            if self.centre is not None and self.w_centre > 0:
                n = self.n_id + self.n_exp
                w = 2.0 * self.w_centre / n
                idx = torch.arange(n, device=h.device)
                h[idx, idx] += w
                g[:n] += w * (theta[:n].double() - self.centre.double())
            if self.rank:
                w = 2.0 * self.cfg.w_error_prior / (self.rank * self.n_views)
                idx = torch.arange(self.z_start, self.size, device=h.device)
                h[idx, idx] += w
                g[self.z_start:] += w * theta[self.z_start:].double()
        return h, g + self.exp_linear

    def free(self, theta: Tensor, grad: Tensor) -> Tensor:
        """``(P,)`` bool: parameters not held at a bound (exp at 0 with ``grad > 0``, or at 1 with
        ``grad < 0``: the projected-Newton active set)."""
        out = torch.ones(self.size, dtype=torch.bool, device=theta.device)
        sl = slice(self.n_id, self.n_id + self.n_exp)
        e, ge = theta[sl], grad[sl]
        out[sl] = ~(((e <= 0.0) & (ge > 0)) | ((e >= 1.0) & (ge < 0)))
        return out

    def clamp(self, theta: Tensor) -> Tensor:
        """Project ``exp`` into [0, 1]."""
        out = theta.clone()
        out[self.n_id:self.n_id + self.n_exp] = out[self.n_id:self.n_id + self.n_exp].clamp(0.0, 1.0)
        return out


def solve_landmarks(problem: _Problem, theta: Tensor, iterations: int, tol: float,
                    history: list[dict]) -> Tensor:
    """Levenberg-Marquardt (IRLS) on `_Problem` from ``θ``; the jawline is re-searched each step.

    Steps that do not lower ``E`` are rejected and the damping raised. Stops after
    ``iterations`` or when ``E`` fell by less than ``tol`` (relative) in an accepted step.
    """
    lam = 1e-3
    problem.search(theta)
    with torch.no_grad():
        e = float(problem.objective(theta))
    for it in range(iterations):
        h, g = problem.linearise(theta)
        free = problem.free(theta, g)  # exp at a bound with the gradient pushing out stays there
        h, g = h[free][:, free], g[free]
        eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        diag = torch.diagonal(h).clamp_min(1e-9)
        accepted = False
        for _ in range(8):
            delta = torch.zeros_like(theta)
            delta[free] = torch.linalg.solve(h + lam * torch.diag(diag) + 1e-9 * eye, -g).to(theta.dtype)
            cand = problem.clamp(theta + delta)
            with torch.no_grad():
                e_new = float(problem.objective(cand))
            if e_new < e:
                accepted = True
                break
            lam *= 4.0
        if not accepted:
            break
        lam = max(lam / 3.0, 1e-7)
        theta, e_old, e = cand, e, e_new
        problem.search(theta)  # the jawline may move to other vertices with the new shape/pose
        with torch.no_grad():
            e = float(problem.objective(theta))
            px = float(((problem.matched(theta) - problem.targets).norm(dim=-1) * problem.a).sum())
        history.append({"step": len(history), "phase": "landmarks", "loss": e, "landmark_px": px})
        if e_old - e < tol * max(e_old, 1e-9) and e <= e_old:
            break
    return theta


def face_camera(model, distance_mm: float | None) -> Pinhole | None:
    """The pinhole camera fits look through: ``distance_mm`` from the mean face's landmark centre
    (a pose's ``f`` is the magnification there); None for 0 / None (weak perspective). Whatever
    redraws a fit (overlays, `mvf visualize`) rebuilds it from the distance alone."""
    if not distance_mm:
        return None
    return Pinhole(float(distance_mm), tuple(float(x) for x in model.landmarks_3d(model.mean).mean(0).tolist()))


def fit(model, images: Tensor, landmarks: Tensor, visible: Tensor | None = None,
        cfg: FitConfig | None = None, init: dict | None = None, backend: str = "auto",
        progress: bool = False, landmark_set: LandmarkSet | None = None) -> FitResult:
    """Fit the face model to one subject's views.

    Args:
        model: `mvf.face.model.FaceModel`. images: ``(V, 3, S, S)`` crops in [0, 1] (only the
            cross-view phase reads them). landmarks: ``(V, 68, 2)`` crop pixels.
        visible: ``(V, 68)`` landmark weights (None: all).
        cfg: `FitConfig`. init: optional ``{"id": (k,), "exp": (k,), "pose": (V, 6)}`` start in
            crop pixels (e.g. the network's prediction; its first ``cfg.n_id`` identity modes);
            otherwise the mean face and `init_poses_from_landmarks`.
        progress: show a progress bar over the cross-view steps (on a terminal).
        landmark_set: the K points ``landmarks`` ``(V, K, 2)`` and ``visible`` ``(V, K)`` are of
            (e.g. the calibrated mediapipe set); default the model's iBUG-68 set.
    Returns:
        `FitResult` with poses in crop pixels.
    """
    cfg = resolved(cfg or FitConfig())
    dev = model.device
    images, landmarks = images.to(dev), landmarks.to(dev).float()
    n_views = landmarks.shape[0]
    vis = torch.ones(landmarks.shape[:2], device=dev) if visible is None else visible.to(dev).float()
    n_id = cfg.n_id  # a start with more modes (a network's) is cut to them: more overfit the landmarks
    lset = model.landmark_set(cfg.contour, cfg.w_jaw) if landmark_set is None else landmark_set
    compact = LandmarkProjector(model, lset, n_id)
    n_id, n_exp = compact.n_id, model.n_exp
    id0 = torch.zeros(n_id, device=dev)
    exp0 = torch.zeros(n_exp, device=dev)
    if init is not None:
        given_id = torch.as_tensor(init["id"], dtype=torch.float32, device=dev).reshape(-1)[:n_id]
        given_exp = torch.as_tensor(init["exp"], dtype=torch.float32, device=dev).reshape(-1)[:n_exp]
        id0[: given_id.numel()] = given_id
        exp0[: given_exp.numel()] = given_exp.clamp(0.0, 1.0)
        pose0 = torch.as_tensor(init["pose"], dtype=torch.float32, device=dev).reshape(n_views, 6)
    elif landmark_set is not None:  # the closed-form start from the points that never move
        fixed = tuple(torch.nonzero(~landmark_set.is_contour).squeeze(1).tolist())
        pose0 = init_poses_from_landmarks(landmark_set.positions(model.mean.cpu()).to(dev), landmarks, vis,
                                          use=fixed).to(dev)
    else:
        pose0 = init_poses_from_landmarks(model.landmarks_3d(model.mean), landmarks, vis).to(dev)
    step = torch.tensor(cfg.pose_step, device=dev, dtype=torch.float32)
    step = torch.cat([step[:1] * pose0[:, :1].mean(), step[1:]])  # f step relative to f
    camera = face_camera(model, cfg.camera_distance_mm)
    problem = _Problem(compact, landmarks, vis, pose0, step, n_exp, cfg, camera,
                       None if landmark_set is None else landmark_set.error_model)
    if init is not None:
        problem.centre = torch.cat([id0, exp0])
    theta = torch.cat([id0, exp0, torch.zeros(6 * n_views + problem.rank * n_views, device=dev)])
    history: list[dict] = []
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if cfg.landmark_steps > 0:
        theta = solve_landmarks(problem, theta, cfg.landmark_steps, cfg.landmark_tol, history)
    seconds["landmarks"] = time.perf_counter() - t0

    if cfg.photo_steps > 0 and (cfg.w_photo > 0 or cfg.w_flow > 0) and n_views > 1:  # needs view pairs
        t0 = time.perf_counter()
        problem.w_centre = cfg.w_net_prior_cross_view
        theta = _cross_view_phase(model, problem, theta, images, cfg, backend, history, progress)
        seconds["cross_view"] = time.perf_counter() - t0
    with torch.no_grad():
        id_c, exp_c, poses = problem.split(theta)
    return FitResult(id_c.clone(), exp_c.clone(), poses.clone(), history, seconds, problem.camera, problem.rank)


class TensorAdam:
    """Adam (PyTorch's defaults: betas 0.9 / 0.999, eps 1e-8, no weight decay) on one tensor.

    The same update as `torch.optim.Adam`, which costs a reconstruction ~2 s more: its first use
    imports ``torch._dynamo``. ``lr`` can change between steps (the cosine schedule).
    """

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0

    @torch.no_grad()
    def step(self) -> None:
        """One update from ``param.grad``; the gradient is then cleared."""
        b1, b2 = self.betas
        g = self.param.grad
        self.t += 1
        self.m.mul_(b1).add_(g, alpha=1.0 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (self.v.sqrt() / math.sqrt(1.0 - b2 ** self.t)).add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1.0 - b1 ** self.t))
        self.param.grad = None


def _cross_view_phase(model, problem: _Problem, theta: Tensor, images: Tensor, cfg: FitConfig,
                      backend: str, history: list[dict], progress: bool) -> Tensor:
    """Adam on landmarks + priors + photometric/flow losses: ``photo_coarse_steps`` at
    ``photo_coarse_size`` px, then ``photo_steps`` at ``photo_size`` px (one cosine schedule)."""
    dev = theta.device
    size = images.shape[-1]
    stages = [(cfg.photo_coarse_size, cfg.photo_coarse_steps)] if cfg.photo_coarse_steps > 0 else []
    stages.append((cfg.photo_size, cfg.photo_steps))
    schedule = [px for px, steps in stages for _ in range(steps)]
    smalls = {px: images if px == size else tnf.interpolate(
        images, size=(px, px), mode="bilinear", align_corners=False, antialias=True) for px, _ in stages}
    flow_net = build_flow(cfg.flow).to(dev) if cfg.w_flow > 0 else None
    pairs = _view_pairs(problem.n_views, cfg.photo_pairs)
    region = inner_face_region(model) if cfg.photo_region == "inner_face" else None
    param = theta.clone().requires_grad_(True)
    opt = TensorAdam(param, lr=cfg.photo_lr)
    inverse = None  # 1000 / the camera distance (per metre), fitted with ``fit_distance``
    if cfg.fit_distance and problem.camera is not None:
        inverse = torch.tensor(1000.0 / problem.camera.distance_mm, device=dev, requires_grad=True)
        inverse_opt = TensorAdam(inverse, lr=cfg.photo_lr)
        camera0 = problem.camera

    def fitted_camera() -> Pinhole:  # a float within the bounds (float32 rounding could step past them)
        distance = min(max(1000.0 / float(inverse.detach()), MIN_DISTANCE_MM), MAX_DISTANCE_MM)
        return dataclasses.replace(camera0, distance_mm=distance)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(schedule), desc="cross-view fit", unit="step", leave=False, disable=None)
    for it, px in enumerate(schedule):
        opt.lr = cfg.photo_lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * it / len(schedule))))  # cosine to 10 %
        if it % max(1, cfg.contour_every) == 0:
            if inverse is not None:  # the contour choice is not differentiated
                problem.camera = fitted_camera()
            problem.search(param.detach())
        if inverse is not None:
            problem.camera = dataclasses.replace(camera0, distance_mm=1000.0 / inverse)
        loss_lm = problem.objective(param)
        id_c, exp_c, poses = problem.split(param)
        verts = model.decode(id_c[None], exp_c[None])  # (1, N, 3); per view (1, V, N, 3) for a pinhole
        if problem.camera is not None:
            verts = view_meshes(verts[0], poses, problem.camera)[None]
        res = cross_view_losses(smalls[px][None], verts, model.faces, scale_poses(poses, px / size)[None],
                                cfg.cross_view, flow_net=flow_net, pairs=pairs, backend=backend,
                                region=region)
        loss = cfg.w_landmark * loss_lm + cfg.w_photo * res.photometric + cfg.w_flow * res.flow
        loss.backward()
        opt.step()
        if inverse is not None:
            inverse_opt.lr = opt.lr * cfg.distance_step
            inverse_opt.step()
            with torch.no_grad():
                inverse.clamp_(1000.0 / MAX_DISTANCE_MM, 1000.0 / MIN_DISTANCE_MM)
        with torch.no_grad():
            param.copy_(problem.clamp(param))
        history.append({"step": len(history), "phase": "cross_view", "px": px, "loss": float(loss.detach()),
                        "camera_distance_mm": None if problem.camera is None
                        else float(torch.as_tensor(problem.camera.distance_mm).detach()),
                        "landmark_objective": float(loss_lm.detach()),
                        "photometric": float(res.photometric.detach()), "flow": float(res.flow.detach())})
        if bar is not None:
            bar.set_postfix(photo=f"{history[-1]['photometric']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if inverse is not None:
        problem.camera = fitted_camera()
    return param.detach()


def fitted_landmarks(model, result: FitResult, contour: bool = True) -> Tensor:
    """Projected landmarks ``(V, 68, 2)`` crop px of a fit, through its camera."""
    compact = LandmarkProjector(model, model.landmark_set(contour), result.id.numel())
    with torch.no_grad():
        verts = compact.decode(result.id[None], result.exp[None])
        return compact.project(verts, result.poses[None], camera=result.camera).uv[0]


def landmark_error_px(model, result: FitResult, landmarks: Tensor, visible: Tensor | None = None,
                      contour: bool = True) -> float:
    """Mean landmark reprojection error (px, crop frame) of a fit over visible landmarks."""
    lm2 = fitted_landmarks(model, result, contour)
    vis = None if visible is None else visible.to(lm2.device)
    return float(landmark_loss(lm2, landmarks.to(lm2.device), vis))


def decode_result(model, result: FitResult) -> Tensor:
    """The fitted mesh ``(N, 3)`` mm."""
    with torch.no_grad():
        return model.decode(result.id[None], result.exp[None])[0]


def numpy_params(result: FitResult) -> dict:
    """JSON-ready fitted parameters."""
    return {"id": result.id.cpu().numpy().astype(np.float64).tolist(),
            "exp": result.exp.cpu().numpy().astype(np.float64).tolist(),
            "pose": result.poses.cpu().numpy().astype(np.float64).tolist()}


def pose_degrees(poses: Tensor) -> list[list[float]]:
    """Pitch, yaw, roll in degrees per view, for messages."""
    return [[math.degrees(float(a)) for a in p[1:4]] for p in poses]
