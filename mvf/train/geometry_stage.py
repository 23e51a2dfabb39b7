"""The ``geometry`` stage kind: train the landmark-geometry branch on faces sampled from the 3DMM.

No images: each sample is a face (identity, expression) and three view poses drawn exactly as
`mvf synth` draws them (`mvf.data.sampling`, with the generator settings stored in the stage's
dataset ``index.json``, or the defaults when ``data.root`` holds no dataset). The views are
framed like the renders (the 68-landmark box fills the drawn fraction of the image, see
`frame_views`) and their 2D landmarks, plus Gaussian noise of ``landmark_noise_px`` (the
landmark head's future error), go into the network's geometry branch
(``net(None, landmarks=...)``). Losses, as in the supervised stage: ``vertex`` (mm), ``params``,
``pose`` (normalised) and ``landmark`` (reprojection against the clean landmarks, px).

A sample costs a 3DMM decode and a contour search, not a render, so this stage sees hundreds
of thousands of faces in minutes and the image stages start from a network that already turns
2D landmarks into shape and pose. Needs ``model.landmark_head: true``.

With ``model.geometry_input: detector`` the input is instead the detector's calibrated points,
simulated (`mvf.train.detector_sim`): the calibrated set projected at f = 1 px/mm plus the
detector's measured residuals (bias + structured noise per yaw bin, scaled by
``landmark_noise_px / 1.5``: 1.5 means the measured noise, 0 the bias alone), then framed as
`mvf reconstruct` crops photos (the box of the detector's 68 table points), so the branch learns
the inputs and framing it meets on photos; the pose targets are those of that crop.

With ``model.geometry_linear`` and ``linear_fit_samples``, the stage first fits the branch's linear
part in closed form (`fit_linear_geometry`: ridge regression of id and exp on the views'
normalised points, over that many simulated faces, in a minute or two); the MLP then learns
what the linear map leaves (freeze ``geo_linear`` to keep the closed-form solution).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mvf.config import from_dict
from mvf.data.config import SynthConfig
from mvf.data.format import INDEX_NAME, is_synth_dataset, read_index
from mvf.data.sampling import sample_expression, sample_identity, sample_views
from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.losses.supervised import coefficient_prior, landmark_loss, param_loss, pose_loss, vertex_loss
from mvf.train.detector_sim import crop_points, crop_poses, detector_sim
from renderer.views import VIEWS

LOSS_TERMS = ("vertex", "params", "pose", "landmark", "prior")
VIRTUAL_ITEMS = 1_000_000  # the stream of sampled faces is indexed 0 .. VIRTUAL_ITEMS - 1
MEASURED_NOISE_PX = 1.5  # landmark_noise_px that means "the detector's measured noise" (detector input)
LINEAR_FIT_BATCH = 256  # simulated faces per batch of `fit_linear_geometry`


def synth_config_for(root: str | Path):
    """The generator settings of the dataset at ``root`` (its index.json), else the defaults."""
    if not is_synth_dataset(root):
        return SynthConfig()
    settings = read_index(root)["generator"]  # names the file on problems
    try:
        return from_dict(SynthConfig, settings, "generator")
    except MvfError as e:
        raise MvfError(f"{Path(root) / INDEX_NAME}: unreadable generator settings ({e})") from None


class FaceDraws(Dataset):
    """Item ``i``: a face and view draw from ``SeedSequence([seed, i])``.

    Yields ``id`` (n_id,), ``exp`` (n_exp,), ``angles`` (V, 3) rad, ``fill`` (V,) and ``shift``
    (V, 2) for the requested views (of front, left, right).
    """

    def __init__(self, synth_cfg, n_id: int, exp_names: list[str], views=VIEWS, seed: int = 0,
                 length: int = VIRTUAL_ITEMS):
        self.cfg, self.n_id, self.exp_names = synth_cfg, n_id, list(exp_names)
        self.view_ids = [VIEWS.index(v) for v in views]
        self.seed, self.length = seed, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(i)]))
        idc = sample_identity(self.cfg.identity, self.n_id, rng)
        exp = sample_expression(self.cfg.expression, self.exp_names, rng)
        angles, fill, shift = sample_views(self.cfg, rng)
        v = self.view_ids
        return {"id": torch.from_numpy(idc), "exp": torch.from_numpy(exp),
                "angles": torch.from_numpy(angles[v]), "fill": torch.from_numpy(fill[v]),
                "shift": torch.from_numpy(shift[v])}


def frame_views(projector, verts: torch.Tensor, angles: torch.Tensor, fill: torch.Tensor,
                shift: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Poses and landmarks of views framed like the synthetic renders.

    The scale and offset put the square box around a view's 68 projected landmarks at
    ``fill`` of the ``size`` px image, its centre at ``size * (0.5 + shift)``.

    Args: verts ``(B, N, 3)`` mm; angles ``(B, V, 3)`` rad; fill ``(B, V)``; shift ``(B, V, 2)``.
    Returns: poses ``(B, V, 6)`` and landmarks ``(B, V, 68, 2)`` px.
    """
    b, v = angles.shape[:2]
    ones = torch.ones(b, v, 1, dtype=verts.dtype, device=verts.device)
    pose0 = torch.cat([ones, angles, torch.zeros_like(ones), torch.zeros_like(ones)], -1)
    lm0 = projector(verts, pose0)  # (B, V, 68, 2) with f = 1, t = 0
    lo, hi = lm0.min(2).values, lm0.max(2).values
    f = fill * size / (hi - lo).max(-1).values
    t = size * (0.5 + shift) - f[..., None] * (lo + hi) / 2
    poses = torch.cat([f[..., None], angles, t], -1)
    return poses, lm0 * f[..., None, None] + t[:, :, None]


def detector_views(sim, projector, verts: torch.Tensor, angles: torch.Tensor, size: int,
                   noise_scale: float = 1.0, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulated detections of views at ``angles`` ``(B, V, 3)`` rad, cropped like photos.

    Returns the crops' poses ``(B, V, 6)``, the clean 68 model landmarks ``(B, V, 68, 2)`` px and
    the detections ``(B, V, K, 2)`` px in ``size`` px crops.
    """
    b, v = angles.shape[:2]
    ones = torch.ones(b, v, 1, dtype=verts.dtype, device=verts.device)
    pose0 = torch.cat([ones, angles, torch.zeros_like(ones), torch.zeros_like(ones)], -1)
    det = sim.points(verts, pose0, generator, noise_scale)  # f = 1 px/mm, t = 0
    det, crop = sim.crop_frame(det, size)
    return crop_poses(pose0, crop), crop_points(projector(verts, pose0), crop), det


def geometry_dataset(req) -> Dataset:
    """Sampled faces with the generator settings of the stage's data root."""
    if not req.model_cfg.landmark_head and req.model_cfg.geometry_input != "detector":
        raise MvfError(f"stage '{req.stage.name}': a geometry stage needs model.landmark_head: true "
                       "or model.geometry_input: detector")
    face = FaceModel.load(req.model_cfg.face_model)
    return FaceDraws(synth_config_for(req.stage.data.root), face.n_id, face.exp_names,
                     views=tuple(req.model_cfg.views), seed=req.seed)


@torch.no_grad()
def simulated_views(ctx, batch: dict, stage, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of `FaceDraws` as the geometry branch meets it: true vertices ``(B, N, 3)`` mm,
    poses ``(B, V, 6)``, clean 68 landmarks ``(B, V, 68, 2)`` px and the branch's noisy input
    points ``(B, V, K, 2)`` px (the head's landmarks plus noise, or simulated detections)."""
    size = ctx.model_cfg.image_size
    sim = detector_sim(ctx)
    gt_verts = ctx.face.decode(batch["id"], batch["exp"])
    if sim is None:
        poses, lm = frame_views(ctx.projector, gt_verts, batch["angles"], batch["fill"], batch["shift"], size)
        noise = torch.randn(lm.shape, generator=generator, dtype=lm.dtype, device=lm.device)
        return gt_verts, poses, lm, lm + stage.landmark_noise_px * noise
    poses, lm, det = detector_views(sim, ctx.projector, gt_verts, batch["angles"], size,
                                    stage.landmark_noise_px / MEASURED_NOISE_PX, generator)
    return gt_verts, poses, lm, det


class RidgeMoments:
    """Ridge regression of ``y`` ``(P,)`` on ``x`` ``(F,)`` from streamed batches (float64 sums,
    no stored samples). `solve` penalises the *standardised* features by ``lam`` (as ridge on
    ``(x - mean) / std``) and leaves the intercept free."""

    def __init__(self, n_features: int, n_out: int):
        self.n = 0
        self.sx = torch.zeros(n_features, dtype=torch.float64)
        self.sy = torch.zeros(n_out, dtype=torch.float64)
        self.sxx = torch.zeros(n_features, n_features, dtype=torch.float64)
        self.sxy = torch.zeros(n_features, n_out, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """A batch: ``x`` ``(B, F)``, ``y`` ``(B, P)``."""
        x, y = x.detach().cpu().double(), y.detach().cpu().double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y

    def solve(self, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``(F, P)`` and intercept ``(P,)`` with ``y ≈ x @ W + b``."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        cxx = self.sxx - n * torch.outer(mx, mx)
        cxy = self.sxy - n * torch.outer(mx, my)
        var = (torch.diagonal(cxx) / max(n - 1, 1)).clamp_min(1e-12)
        w = torch.linalg.solve(cxx + lam * torch.diag(var), cxy)
        return w, my - mx @ w


def fit_linear_geometry(ctx, net, stage, seed: int) -> dict | None:
    """Fit ``net.geo_linear`` (`mvf.net.network.LinearGeometry`) in closed form: ridge regression
    of the true id and exp on its features of ``stage.linear_fit_samples`` simulated faces
    (`simulated_views`, drawn from ``seed``: deterministic, the same on every rank). A stage
    without ``linear_fit_samples`` or a network without the linear part leaves it as it is.
    Returns the fit's summary or None."""
    lin, n = net.geo_linear, stage.linear_fit_samples
    if lin is None or n <= 0:
        return None
    t0 = time.perf_counter()
    draws = FaceDraws(synth_config_for(stage.data.root), ctx.face.n_id, ctx.face.exp_names,
                      views=tuple(ctx.model_cfg.views), seed=seed)
    gen = torch.Generator(device=ctx.face.device).manual_seed(seed % (2 ** 63))
    n_id = ctx.model_cfg.n_id
    moments = RidgeMoments(lin.n_features, lin.linear.out_features)
    for start in range(0, n, LINEAR_FIT_BATCH):
        batch = default_collate([draws[i] for i in range(start, min(n, start + LINEAR_FIT_BATCH))])
        batch = {k: v.to(ctx.face.device) for k, v in batch.items()}
        *_, points = simulated_views(ctx, batch, stage, gen)
        moments.add(lin.features(points), torch.cat([batch["id"][:, :n_id], batch["exp"]], -1))
    w, b = moments.solve(stage.linear_fit_lambda)
    with torch.no_grad():
        lin.linear.weight.copy_(w.T.to(lin.linear.weight))
        lin.linear.bias.copy_(b.to(lin.linear.bias))
    return {"samples": n, "lambda": stage.linear_fit_lambda, "seconds": time.perf_counter() - t0}


def geometry_loss(ctx, model: torch.nn.Module, batch: dict, weights, stage
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gt_verts, poses, lm, noisy = simulated_views(ctx, batch, stage)
    out = model(None, landmarks=noisy)
    verts = ctx.face.decode(out["id"], out["exp"])
    _, scale = ctx.pose_norm.tensors(out["pose"])
    terms = {
        "vertex": vertex_loss(verts, gt_verts, ctx.region),
        "params": param_loss(out["id"], out["exp"], batch["id"], batch["exp"]),
        "pose": pose_loss(out["pose"], poses, scale),
        "landmark": landmark_loss(ctx.projector(verts, out["pose"]), lm),
        "prior": coefficient_prior(out["id"], out["exp"]),
    }
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total, terms
