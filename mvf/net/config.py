"""The network's configuration (`ModelConfig`, the ``model:`` section of a training config).

It lives beside the network so inference (`mvf.net.checkpoint`, `mvf.recon`) needs nothing from
`mvf.train`; `mvf.train.config.TrainConfig` embeds it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mvf.errors import MvfError
from renderer.views import VIEWS

BACKBONES = ("vgg", "resnet18", "mobilenet_v3_small")
FUSIONS = ("concat", "mean", "attention")


@dataclass
class ModelConfig:
    """The network (`mvf.net.network.MVFNet`)."""

    backbone: Literal["vgg", "resnet18", "mobilenet_v3_small"] = "resnet18"
    image_size: int = 128  # px, square input; other sizes are resized to it
    fusion: Literal["concat", "mean", "attention"] = "concat"
    views: list[str] = field(default_factory=lambda: list(VIEWS))  # fed views, in VIEWS order
    n_id: int = 100  # identity coefficients regressed (first K modes)
    n_exp: int = 53  # expression weights regressed
    hidden: int = 512  # width of the 3DMM head's hidden layer
    spatial: int = 32  # channels of the flattened spatial branch (keeps where the face is); 0 = off
    landmark_head: bool = False  # 68 stride-4 heat maps (feature pyramid) + soft-argmax, fed to both heads
    geometry_input: Literal["head", "detector"] = "head"  # what the geometry branch reads: the landmark
    # head's 68 points, or the detector's calibrated points (mediapipe's, `geometry_points` of them, given
    # to the network: real photos' detections; simulated with the detector's error model in training)
    geometry_points: int = 468  # K detector points (geometry_input: detector), as the calibrated set has
    geometry_linear: bool = False  # the geometry branch adds a linear map of the views' normalised
    # points (`LinearGeometry`) to id and exp, fitted in closed form (ridge regression) on simulated
    # faces by a geometry stage with `linear_fit_samples`
    refine: Literal["none", "landmarks"] = "none"  # landmarks: fit the 3DMM to the head's landmarks (mvf.recon.refine)
    refine_steps: int = 20  # the refinement's Levenberg-Marquardt iterations at most
    refine_w_net: float = 1.0  # its prior towards the network's coefficients (mean squared difference)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # bf16: the backbone and landmark head run
    # under bfloat16 autocast (weights stay float32): ~1.75x faster on CPUs with AVX512-BF16 and on
    # GPUs, ~20x *slower* on CPUs without it (AVX2 only); auto: bf16 where the device runs it fast
    pretrained: str | None = None  # local backbone state-dict file; never downloaded
    face_model: str | None = None  # face-model asset (default assets/face_model.npz)


def validate_model(m: ModelConfig) -> ModelConfig:
    """Check the rules the types can't express; raises `MvfError` naming the ``model.*`` key."""
    if not m.views:
        raise MvfError("config key 'model.views': needs at least one view")
    bad = [v for v in m.views if v not in VIEWS]
    if bad:
        raise MvfError(f"config key 'model.views': unknown view '{bad[0]}' (views: {', '.join(VIEWS)})")
    if list(m.views) != [v for v in VIEWS if v in m.views]:
        raise MvfError(f"config key 'model.views': must follow the order {list(VIEWS)}")
    if m.fusion == "concat" and list(m.views) != list(VIEWS):
        raise MvfError("config key 'model.fusion': concat needs exactly the views front, left, right")
    if m.image_size < 32:
        raise MvfError("config key 'model.image_size': must be at least 32 px")
    if not 1 <= m.n_id <= 100 or not 0 <= m.n_exp <= 53:
        raise MvfError("config keys 'model.n_id'/'model.n_exp': need 1..100 and 0..53")
    if m.geometry_input == "detector" and m.geometry_points < 3:
        raise MvfError("config key 'model.geometry_points': needs at least 3 points")
    if m.geometry_linear and m.geometry_input != "detector" and not m.landmark_head:
        raise MvfError("config key 'model.geometry_linear': needs a geometry branch "
                       "(model.geometry_input: detector or model.landmark_head: true)")
    if m.refine == "landmarks" and not m.landmark_head:
        raise MvfError("config key 'model.refine': landmarks needs model.landmark_head: true")
    if m.refine_steps < 1 or m.refine_w_net < 0:
        raise MvfError("config keys 'model.refine_steps'/'model.refine_w_net': need steps >= 1 and a weight >= 0")
    return m
