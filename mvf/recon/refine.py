"""Landmark refinement: the network's last, parameter-free stage (``model.refine: landmarks``).

The landmark head's 2D landmarks of every view are fitted by the 3DMM and the per-view weak
perspective poses (the Levenberg-Marquardt solver of `mvf.recon.fit`, the jawline following each
view's silhouette), starting from the network's regressed shape and poses, with a Gaussian
prior *centred on the network's prediction*: ``w_net · mean((c - c_net)²)`` over the id and
exp coefficients, next to the usual coefficient priors. So the regression decides what the
landmarks cannot see, and the landmarks the shape they pin down. In several views the 2D
landmarks fix the 3D positions of the points they mark (triangulation), which a regressor
trained for 30 CPU minutes recovers only roughly (`tools/bench_accuracy.py` reports both).

Nothing here is trained: training is unchanged, and validation, `mvf reconstruct` and the
benchmarks call `predict`, which runs the network and then this stage.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mvf.recon.fit import FitConfig, fit


@dataclass(frozen=True)
class RefineSettings:
    """The refinement's solver settings (`mvf.recon.fit.FitConfig` keys), from the model config."""

    steps: int = 20        # Levenberg-Marquardt iterations at most
    w_net: float = 1.0     # prior towards the network's coefficients, times mean((c - c_net)²)
    w_id_prior: float = 0.5
    w_exp_prior: float = 0.5
    w_jaw: float = 0.5


def refine_with_landmarks(face, out: dict[str, Tensor], settings: RefineSettings) -> dict[str, Tensor]:
    """Fit each sample's shape and poses to its predicted landmarks.

    Args:
        face: `mvf.face.model.FaceModel`. out: network outputs with ``id (B, n_id)``,
            ``exp (B, n_exp)``, ``pose (B, V, 6)`` and ``landmarks (B, V, 68, 2)`` px.
    Returns: a new dict, ``id``, ``exp``, ``pose`` refined (``landmarks`` kept).
    """
    cfg = FitConfig(n_id=out["id"].shape[1], landmark_steps=settings.steps, w_jaw=settings.w_jaw,
                    w_id_prior=settings.w_id_prior, w_exp_prior=settings.w_exp_prior,
                    w_net_prior=settings.w_net)
    ids, exps, poses = [], [], []
    empty = torch.zeros(0, device=out["id"].device)
    with torch.no_grad():
        for b in range(out["id"].shape[0]):
            init = {"id": out["id"][b], "exp": out["exp"][b], "pose": out["pose"][b]}
            r = fit(face, empty, out["landmarks"][b], cfg=cfg, init=init)
            ids.append(r.id[: out["id"].shape[1]])
            exps.append(r.exp)
            poses.append(r.poses)
    refined = dict(out)
    refined.update(id=torch.stack(ids).to(out["id"]), exp=torch.stack(exps).to(out["exp"]),
                   pose=torch.stack(poses).to(out["pose"]))
    return refined


def predict(net, face, images: Tensor, views: tuple[str, ...] | None = None,
            detector_points: Tensor | None = None) -> dict[str, Tensor]:
    """The network's outputs for ``images (B, V, 3, S, S)`` (and, for ``model.geometry_input:
    detector``, ``detector_points (B, V, K, 2)`` px in the network's input frame), refined when
    the model says so."""
    out = net(images, views=views, detector_points=detector_points)
    if net.cfg.refine == "landmarks" and "landmarks" in out:
        out = refine_with_landmarks(face, out, settings_for(net.cfg))
    return out


def settings_for(model_cfg) -> RefineSettings:
    """`RefineSettings` from a `mvf.train.config.ModelConfig`."""
    return RefineSettings(steps=model_cfg.refine_steps, w_net=model_cfg.refine_w_net)
