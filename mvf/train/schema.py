"""The training config's dataclasses: a model (`mvf.net.config.ModelConfig`), a validation set and
an ordered list of stages (name, kind, data, loss weights, optimiser settings, step budget).

Plain data: `mvf.train.stages` and the stage kinds use these types; `mvf.train.config` loads and
validates them (it needs the stage kinds, so the types live below it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mvf.data.augment import AugmentConfig
from mvf.losses.flow import FlowConfig
from mvf.losses.selfsup import CrossViewConfig
from mvf.net.config import ModelConfig


@dataclass
class DataConfig:
    """Where a stage's (or validation's) samples come from."""

    root: str = "data/synth"
    augment: AugmentConfig | None = None  # label-preserving augmentation (`mvf.data.augment`); null = off
    max_subjects: int | None = None  # use only the first N (after the train/val split)
    num_workers: int = 0
    cache: bool = False  # labelled data: keep resized samples in memory after their first read
    skip_bad: bool = False  # unlabelled data: skip broken subjects with a warning


@dataclass
class LossWeights:
    """Loss weights; 0 switches a term off. A stage kind rejects nonzero weights it doesn't use."""

    landmark: float = 0.0  # 2D landmark reprojection, px (visible landmarks only)
    landmark2d: float = 0.0  # the landmark head's 2D landmarks vs the labels, px (all 68; needs model.landmark_head)
    pose: float = 0.0  # pose parameter loss on normalised pose (paper: lambda_pose = 10)
    params: float = 0.0  # 3DMM parameter loss (id, exp), squared, per coefficient
    vertex: float = 0.0  # per-vertex distance predicted vs true shape, mm
    prior: float = 0.0  # coefficient prior (id ~ N(0,1), exp near [0,1])
    photometric: float = 0.0  # self_supervised: robust colour distance I_B vs I_A->B, [0, 1] units
    flow: float = 0.0  # self_supervised: flow alignment |F(I_B, I_A->B)| + |F(I_A->B, I_B)|, px


@dataclass
class StageConfig:
    """One training stage: data + loss weights + optimiser settings + step budget."""

    name: str = "supervised"
    kind: str = "supervised"
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    lr: float = 1e-5  # Adam learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_fraction: float = 0.0  # cosine decays to lr * this
    grad_clip: float | None = None  # max global grad norm
    batch_size: int = 12  # global batch (split across DDP ranks)
    steps: int | None = None
    epochs: float | None = None  # alternative to steps: passes over the stage's training data
    max_minutes: float | None = None  # also end the stage after this much training time; the
    # schedule then follows max(step fraction, time fraction). Not bit-reproducible (load-dependent).
    reset_optimizer: bool = True  # fresh Adam state when this stage starts
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes this stage leaves
    # unchanged, e.g. [geometry, geo_] (see `mvf.net.network.MVFNet`)
    landmark_noise_px: float = 1.5  # geometry stages: Gaussian noise on the input landmarks, px
    linear_fit_samples: int = 0  # geometry stages with model.geometry_linear: simulated faces the
    # linear part is fitted on, in closed form, when the stage starts (0: not fitted)
    linear_fit_lambda: float = 3.0e4  # its ridge penalty (on standardised features)
    # self_supervised stages only (`mvf.train.selfsup_stage`; other kinds ignore these):
    cross_view: CrossViewConfig = field(default_factory=CrossViewConfig)  # mask erosion, distance
    flow: FlowConfig = field(default_factory=FlowConfig)  # the flow estimator F (alignment loss)
    photo_pairs: Literal["all", "front"] = "all"  # six ordered view pairs, or front <-> sides (4)
    photo_region: Literal["inner_face", "all"] = "inner_face"  # triangles the losses use
    photo_size: int | None = None  # px the warp and flow run at (None: model.image_size)


@dataclass
class ValidationConfig:
    """Held-out subjects: split off `root` by subject, also excluded from stages on that root."""

    root: str = "data/synth"
    val_fraction: float = 0.1
    split_seed: int = 0
    max_subjects: int | None = None
    batch_size: int = 8
    every_steps: int | None = None  # None = at the end of each epoch of the running stage
    face_radius_mm: float = 95.0  # face region: vertices within this distance of the nose tip


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads (None = torch default)
    model: ModelConfig = field(default_factory=ModelConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    checkpoint_every: int = 200  # steps between step checkpoints (last.pt is always kept)
    keep_checkpoints: int = 2  # step-NNNNNN.pt files kept besides last.pt / best.pt
    log_every: int = 10  # steps between CSV/TensorBoard rows
    tensorboard: bool = True
    progress: bool = True  # tqdm bar on rank 0
    pictures_every: int | None = None  # steps between picture sheets of a fixed validation
    # sample (<run>/pictures/step_NNNNNN_<view>.png and TensorBoard); None = off
