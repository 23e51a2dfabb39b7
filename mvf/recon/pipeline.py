"""Views in, a face out: the one reconstruction pipeline (network prediction and/or test-time fitting).

    views = detect_views(paths)                    # or framed_views(paths): mvf.recon.views
    rec = reconstruct(views, network, fit_config)  # predict, fit, texture
    write_outputs(rec, face, out_dir)              # mvf.recon.outputs

With a network its prediction is the result (``fit_config=None``) or the start of the fit;
without one the fit starts from the mean face with poses from the landmarks. Crops of any size
are resized to the network's input size and its poses scaled back to crop pixels.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import Tensor

from mvf.errors import MvfError
from mvf.face.model import FaceModel
from mvf.face.landmarks import LandmarkProjector, LandmarkSet
from mvf.face.params import check_params
from mvf.net.checkpoint import LoadedModel
from mvf.face.landmark_asset import DEFAULT_SET, load_landmark_set
from mvf.recon.crop import crop_image
from mvf.recon.fit import FitConfig, FitResult, fit, fitted_landmarks, scale_poses, with_defaults
from mvf.recon.refine import predict
from mvf.recon.texture import Texture, TextureConfig, texture_from_views, uv_layout
from mvf.recon.views import Views

# |yaw| (deg) of a side view's final pose past which the photo is at or beyond the 60 deg edge of the
# side views the detector was calibrated for and the network trained on (`views.side_yaw` 20-60). The
# fit reads real photos turned further as 58-60 deg: on a real scan (tools/render_scan.py, README) true
# 75 deg side views came out at -58 / +60 deg and gave 2.1 mm against 0.8 at 60 deg (mean face 1.6);
# a synthetic 58 deg view came out at 57.
WIDE_SIDE_YAW_DEG = 58.0
TEXTURE_SOURCE_MAX = 1024  # colours come from crops of the photo up to this size (px)


@dataclass
class Reconstruction:
    """A face for ``views``: coefficients ``id`` ``(K_id,)``, ``exp`` ``(K_exp,)``, ``poses``
    ``(V, 6)`` in crop px, ``verts`` ``(N, 3)`` mm of ``face``, model ``landmarks`` ``(V, 68, 2)``
    crop px, the ``texture``; ``fit`` (None without fitting), ``timing`` seconds per stage and ``info``
    (how it was made: init, fit steps, checkpoint)."""

    views: Views
    face: FaceModel
    id: Tensor
    exp: Tensor
    poses: Tensor
    verts: Tensor
    landmarks: Tensor
    texture: Texture
    fit: FitResult | None = None
    timing: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def poses_full(self) -> Tensor:
        """Poses ``(V, 6)`` in the input photos' pixels."""
        return torch.stack([tf.pose_to_full(p) for tf, p in zip(self.views.transforms, self.poses)])

    def wide_view_warnings(self) -> list[str]:
        """One line per side view whose final yaw is past `WIDE_SIDE_YAW_DEG`: a photo taken at or
        beyond the 60 deg the detector's calibration and the network's training cover."""
        out = []
        for name, path, pose in zip(self.views.names, self.views.paths, self.poses):
            yaw = float(np.degrees(pose[2]))
            if name != "front" and abs(yaw) > WIDE_SIDE_YAW_DEG:
                out.append(f"{path}: yaw {yaw:+.0f} deg, at the edge of the 20-60 deg side views the detector "
                           "was calibrated for; past it the detector's points mislead the fit and the mesh can be "
                           "worse than from the front photo alone (retake the view at 30-45 deg, or leave it out)")
        return out

    def landmark_errors(self) -> tuple[float | None, dict[str, float]]:
        """Mean distance (crop px) of the model's landmarks to the views' visible landmarks,
        overall and per view; ``(None, {})`` for views without landmarks."""
        if self.views.landmarks is None:
            return None, {}
        vis = self.views.visible.to(self.landmarks.device)
        dist = (self.landmarks - self.views.landmarks.to(self.landmarks.device)).norm(dim=-1)
        per_view = {v: float((dist[i] * vis[i]).sum() / vis[i].sum().clamp_min(1))
                    for i, v in enumerate(self.views.names)}
        return float((dist * vis).sum() / vis.sum().clamp_min(1)), per_view


# Fit settings for the calibrated mediapipe set (detected photos), chosen on the tuning set of
# tools/bench_real.py (seed 1000; w_id_prior on its 40 subjects, 1.5-2 flat there, scan-lps
# choosing 2: see README "Real photos"; a pinhole camera at 1 m, chosen on the tuning set rendered
# at 1 m and 0.5 m and on scan-lps: README "The camera"; the cross-view phase at 160 px
# (`FitConfig.photo_size`): README "The cross-view phase at 160 px"; `FitConfig.photo_lr` 0.08: README
# "The cross-view phase's step and weight"; w_photo 900 with the log_l1 colour distance: README "A robust
# colour distance"; all 100 identity modes: README "All identity modes"; 50 coarse + 50 fine cross-view
# steps: README "A longer cross-view phase"); `calibrated_fit_config` applies them where a `FitConfig`
# leaves them unset.
CALIBRATED_FIT_DEFAULTS = {"n_id": 100, "w_exp_prior": 4.0, "photo_steps": 50, "photo_coarse_steps": 50, "w_photo": 900.0,
                           "w_id_prior": 2.0, "camera_distance_mm": 1000.0, "fit_distance": True}


def calibrated_fit_config(cfg: FitConfig) -> FitConfig:
    """``cfg`` with `CALIBRATED_FIT_DEFAULTS` for the keys it leaves unset."""
    return with_defaults(cfg, CALIBRATED_FIT_DEFAULTS)


# `mvf reconstruct --checkpoint` with a detector-input network: the regression followed by this fit,
# chosen on the tuning set of tools/bench_real.py (see README "Real photos")
# (tuning set, 512 px: 20 landmark steps 2.31 mm in 3.2 s; 40 steps 2.29 mm in 3.6 s; the fit from
# the mean face 2.32 mm in 3.4 s; session 14, 40 subjects, 112 px / 20 cross-view steps: 10 / 5 steps 3.001 / 3.010 against 2.924
# for 20); a prior centred on the network's coefficients, `FitConfig.w_net_prior` 0.5 (session 19, 40
# subjects: 512 px 2.511 -> 2.475 mm, 224 px 2.460 -> 2.447, 1 m renders 2.489 -> 2.430; 1 / 2 / 8 at
# 512 px 2.480 / 2.483 / 2.499: README "The network's prediction as the fit's prior"); session 20: the
# landmark phase keeps the network's shape (`w_net_prior` 128: it fits the poses and the detector's errors
# to it) and the cross-view phase, 40 + 40 steps, moves it (`w_net_prior_cross_view` 0.5): tuning set,
# 512 px, 2.317 mm in 5.2 s against the fit from the mean face's 2.350 mm in 6.7 s (README "The network's
# shape through the landmark phase"); the rest of the cross-view phase is the calibrated set's
NETWORK_FIT_DEFAULTS = {"landmark_steps": 20, "w_net_prior": 128.0, "w_net_prior_cross_view": 0.5,
                        "photo_coarse_steps": 40, "photo_steps": 40}


def network_fit_config(network: LoadedModel, cfg: FitConfig, refine_steps: int | None) -> FitConfig | None:
    """The fit after ``network``'s prediction: None (the regression alone) for ``refine_steps`` 0,
    else ``refine_steps`` landmark steps when given. Detector-input networks fill the keys ``cfg``
    leaves unset from `NETWORK_FIT_DEFAULTS`; image-framing networks are not fitted by default."""
    if refine_steps is not None:
        if refine_steps <= 0:
            return None
        cfg = dataclasses.replace(cfg, landmark_steps=refine_steps)
    elif not network.net.detector_input:
        return None
    return with_defaults(cfg, NETWORK_FIT_DEFAULTS) if network.net.detector_input else cfg


def network_points(views: Views, network: LoadedModel) -> Tensor | None:
    """The detector points ``(V, K, 2)`` crop px a ``geometry_input: detector`` network reads (the
    calibrated set's points, `mvf.recon.calibrate`), or None for other networks."""
    if not network.net.detector_input:
        return None
    if views.detector_points is None:
        raise MvfError(f"{network.path}: this network reads the detector's points; give photos with "
                       "--crop detect and no landmark files")
    lset = load_landmark_set(None, network.face)
    if lset is None or lset.n_points != network.net.geometry_points:
        raise MvfError(f"{DEFAULT_SET}: calibrated landmark set missing or not the one {network.path} "
                       "was trained with; run `mvf build-model --landmarks-only`")
    return views.detector_points[:, lset.source_index]


@torch.no_grad()
def predict_views(network: LoadedModel, crops: Tensor, names: tuple[str, ...],
                  points: Tensor | None = None) -> dict[str, Tensor]:
    """The network's ``id (K,)``, ``exp (K,)``, ``pose (V, 6)`` for crops ``(V, 3, S, S)``, poses
    in the crops' pixels (the crops are resized to the network's input size). ``points``: the
    detector points ``(V, K, 2)`` crop px of a detector-input network (`network_points`)."""
    net = network.net
    try:
        net.check_views(names, len(names))
    except MvfError as e:
        raise MvfError(f"{network.path}: {e}") from None
    device = next(net.parameters()).device
    size, s = net.cfg.image_size, crops.shape[-1]
    x = crops.to(device)
    if s != size:
        x = tnf.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    pts = None if points is None else (points.to(device) * (size / s))[None]
    out = predict(net, network.face, x[None], views=names, detector_points=pts)
    check_params(f"{network.path} (network output)", out["id"][0], out["exp"][0], out["pose"][0])
    return {"id": out["id"][0], "exp": out["exp"][0], "pose": scale_poses(out["pose"][0], s / size)}


def texture_sources(views: Views, poses: Tensor, max_size: int = TEXTURE_SOURCE_MAX
                    ) -> tuple[list[Tensor], Tensor]:
    """Images to take colours from and their poses: per view, the crop box cut again from the photo
    at its native resolution (capped at ``max_size``), or the crop itself if that is not larger.

    ``poses`` ``(V, 6)`` crop px. Returns (V images ``(3, T, T)`` in [0, 1], poses ``(V, 6)``).
    """
    images, out_poses = [], []
    for i, tf in enumerate(views.transforms):
        crop = views.crops[i]
        size = crop.shape[-1]
        target = min(max_size, int(round(tf.out_size / tf.scale)))  # the crop box's side in photo px
        if not views.cropped or target <= size:
            images.append(crop)
            out_poses.append(poses[i])
            continue
        big, _ = crop_image(views.photos[i], views.photo_landmarks[i], out_size=target)
        images.append(torch.from_numpy(np.array(big)).permute(2, 0, 1).float().div(255.0).to(crop.device))
        out_poses.append(scale_poses(poses[i], target / size))
    return images, torch.stack(out_poses)


def fit_targets(views: Views, face: FaceModel, cfg: FitConfig
                ) -> tuple[Tensor, Tensor | None, LandmarkSet | None, FitConfig]:
    """What the fit matches: ``(landmarks, visible, landmark_set, cfg)`` for `mvf.recon.fit.fit`.

    Detected views use the calibrated mediapipe set (`mvf.recon.calibrate`, its points
    ``(V, K, 2)`` crop px) and its tuned settings (`calibrated_fit_config`) unless
    ``cfg.landmarks`` is "ibug68"; landmark files (and a missing asset under "auto") use the
    68-point set ``(V, 68, 2)``.
    """
    if cfg.landmarks != "ibug68" and views.detector_points is not None:
        lset = load_landmark_set(None, face)
        if lset is not None:
            return views.detector_points[:, lset.source_index], None, lset, calibrated_fit_config(cfg)
        if cfg.landmarks == "calibrated":
            raise MvfError(f"{DEFAULT_SET}: calibrated landmark set missing or built for another face "
                           "model; run `mvf build-model`")
    return views.landmarks, views.visible, None, cfg


def reconstruct(views: Views, network: LoadedModel | None = None, fit_config: FitConfig | None = None,
                face: FaceModel | None = None, texture_config: TextureConfig | None = None,
                backend: str = "auto", progress: bool = False) -> Reconstruction:
    """Predict (with ``network``) and/or fit (with ``fit_config``), then texture, one subject's views.

    Args:
        views: `mvf.recon.views.Views`; fitting needs its landmarks.
        network: a `LoadedModel` or None. fit_config: `FitConfig`, or None to keep the network's
            prediction (then a network is required).
        face: the face model (default: the network's, else `FaceModel.load()`).
    """
    if network is None and fit_config is None:
        raise MvfError("nothing to reconstruct with: give a checkpoint or fitting settings")
    face = face or (network.face if network is not None else FaceModel.load())
    timing: dict[str, float] = {}
    info: dict = {"checkpoint": None if network is None else str(network.path),
                  "checkpoint_step": None if network is None else network.step}
    init = None
    if network is not None:
        t = time.perf_counter()
        init = predict_views(network, views.crops, views.names, network_points(views, network))
        timing["network"] = time.perf_counter() - t
    result = None
    if fit_config is not None:
        if views.landmarks is None:
            raise MvfError(f"{views.paths[0]}: fitting needs landmarks (detect them: --crop detect)")
        t = time.perf_counter()
        targets, target_vis, lset, fit_config = fit_targets(views, face, fit_config)
        result = fit(face, views.crops, targets, target_vis, fit_config, init=init,
                     backend=backend, progress=progress, landmark_set=lset)
        for phase, sec in result.seconds.items():
            timing[f"fit_{phase}"] = sec
        timing["fit_setup"] = time.perf_counter() - t - sum(result.seconds.values())  # around the phases
        ids, exps, poses = result.id, result.exp, result.poses
        check_params(f"{views.paths[0]} (fitted face)", ids, exps, poses)
        landmarks = fitted_landmarks(face, result, fit_config.contour)
    else:
        ids, exps, poses = init["id"], init["exp"], init["pose"]
    with torch.no_grad():
        verts = face.decode(ids[None], exps[None])[0]
        if result is None:
            landmarks = LandmarkProjector(face)(verts[None], poses[None])[0]
    info.update(init="network" if init is not None else "mean face + landmark poses",
                landmarks=None if result is None else (
                    "ibug68" if lset is None else f"calibrated {lset.meta.get('kind', '')} ({lset.n_points} points)"),
                fit_steps=0 if result is None else len(result.history),
                camera_distance_mm=None if result is None or result.camera is None else result.camera.distance_mm,
                detector_error_rank=0 if result is None else result.error_rank)

    t = time.perf_counter()
    tex_cfg = texture_config or TextureConfig()
    layout = uv_layout(face.verts_uvs, face.faces_uvs, tex_cfg.size) if face.verts_uvs is not None else None
    sources, source_poses = texture_sources(views, poses)
    texture = texture_from_views(verts, face.faces, poses, tuple(views.crops.shape[-2:]), sources,
                                 source_poses, tex_cfg, layout, backend,
                                 None if result is None else result.camera)
    timing["texture"] = time.perf_counter() - t
    return Reconstruction(views, face, ids, exps, poses, verts, landmarks, texture, result, timing, info)
