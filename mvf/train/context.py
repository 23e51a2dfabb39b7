"""What a stage kind's functions get: `LossContext` (built once per run) and `DataRequest`.

Plain data below `mvf.train.stages` so the stage kinds (`geometry_stage`, `selfsup_stage`) can
use the types without importing the table that lists them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mvf.face.landmarks import LandmarkProjector
from mvf.face.model import FaceModel
from mvf.net.config import ModelConfig
from mvf.net.network import PoseNorm
from mvf.train.schema import StageConfig


@dataclass
class LossContext:
    """What every loss function may need, built once per run on the training device.

    ``extras`` holds per-kind state a stage kind caches for itself (e.g. a renderer).
    """

    face: FaceModel
    projector: LandmarkProjector
    pose_norm: PoseNorm
    region: torch.Tensor  # face-region vertex ids (M,)
    model_cfg: ModelConfig
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataRequest:
    """What a stage's dataset builder gets: the stage, the model's views/size and held-out subjects."""

    stage: StageConfig
    model_cfg: ModelConfig
    exclude: dict[str, set[str]]  # resolved dataset root -> subjects reserved for validation
    seed: int = 0  # augmentation seed for the dataset (draws also depend on epoch and index)
