"""Training configuration: dataclasses loaded from YAML by `mvf.config.load_config`.

A config is a model, a validation set and an ordered list of stages. A stage is a name, a kind
(a key of `mvf.train.stages.STAGE_KINDS`: ``geometry``, ``supervised``, ``self_supervised``), its
data, loss weights, optimiser settings and a step budget (``steps`` or ``epochs``).

Unknown keys are errors; `load_train_config` also checks the cross-field rules (one budget per
stage, unique stage names, loss weights the stage kind does not use).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mvf.config import load_config, to_dict
from mvf.data.augment import AugmentConfig
from mvf.errors import MvfError
from mvf.losses.flow import FlowConfig
from mvf.losses.selfsup import CrossViewConfig
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
    refine: Literal["none", "landmarks"] = "none"  # landmarks: fit the 3DMM to the head's landmarks (mvf.recon.refine)
    refine_steps: int = 20  # the refinement's Levenberg-Marquardt iterations at most
    refine_w_net: float = 1.0  # its prior towards the network's coefficients (mean squared difference)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the backbone and landmark head run under
    # bfloat16 autocast (weights stay float32): ~1.75x faster on CPUs with AVX512-BF16 and on GPUs
    pretrained: str | None = None  # local backbone state-dict file; never downloaded
    face_model: str | None = None  # face-model asset (default assets/face_model.npz)


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


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check the rules the types can't express; raises `MvfError` naming the key."""
    from mvf.train.stages import STAGE_KINDS

    m = cfg.model
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
    if not cfg.stages:
        raise MvfError("config key 'stages': needs at least one stage")
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        raise MvfError(f"config key 'stages': stage names must be unique, got {names}")
    for i, st in enumerate(cfg.stages):
        where = f"stages.{i}"
        if st.kind not in STAGE_KINDS:
            raise MvfError(f"config key '{where}.kind': unknown stage kind '{st.kind}' "
                           f"(known: {', '.join(STAGE_KINDS)})")
        if (st.steps is None) == (st.epochs is None):
            raise MvfError(f"config key '{where}': give exactly one of 'steps' and 'epochs'")
        if (st.steps is not None and st.steps < 0) or (st.epochs is not None and st.epochs < 0):
            raise MvfError(f"config key '{where}': the step budget must be >= 0")
        if st.landmark_noise_px < 0:
            raise MvfError(f"config key '{where}.landmark_noise_px': must be >= 0")
        if st.max_minutes is not None and st.max_minutes <= 0:
            raise MvfError(f"config key '{where}.max_minutes': must be > 0")
        if st.batch_size < 1 or st.lr <= 0 or len(st.betas) != 2:
            raise MvfError(f"config key '{where}': need batch_size >= 1, lr > 0 and two betas")
        used = STAGE_KINDS[st.kind].loss_terms
        for f in dataclasses.fields(LossWeights):
            w = getattr(st.loss, f.name)
            if w < 0:
                raise MvfError(f"config key '{where}.loss.{f.name}': weights must be >= 0")
            if w and f.name not in used:
                raise MvfError(f"config key '{where}.loss.{f.name}': a {st.kind} stage does not use it "
                               f"(uses: {', '.join(used)})")
        if st.kind == "self_supervised":
            try:
                st.flow.validate()
            except MvfError as e:
                raise MvfError(str(e).replace("config key '", f"config key '{where}.", 1)) from None
            if st.photo_size is not None and st.photo_size < 32:
                raise MvfError(f"config key '{where}.photo_size': must be at least 32 px")
    if m.refine == "landmarks" and not m.landmark_head:
        raise MvfError("config key 'model.refine': landmarks needs model.landmark_head: true")
    if m.refine_steps < 1 or m.refine_w_net < 0:
        raise MvfError("config keys 'model.refine_steps'/'model.refine_w_net': need steps >= 1 and a weight >= 0")
    if not m.landmark_head and any(st.loss.landmark2d for st in cfg.stages):
        raise MvfError("config key 'loss.landmark2d': needs model.landmark_head: true")
    v = cfg.validation
    if not 0.0 <= v.val_fraction < 1.0:
        raise MvfError("config key 'validation.val_fraction': must be in [0, 1)")
    if cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise MvfError("config keys 'checkpoint_every'/'log_every': must be >= 1")
    if cfg.pictures_every is not None and cfg.pictures_every < 1:
        raise MvfError("config key 'pictures_every': must be >= 1 (or null: off)")
    if cfg.pictures_every is not None and len(m.views) < 2:
        raise MvfError("config key 'pictures_every': the picture sheets show cross-view warps, which need "
                       "two or more views (set it to null)")
    return cfg


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load and validate a training config (YAML at ``path`` plus ``key=value`` overrides)."""
    cfg = load_config(path, TrainConfig, overrides)
    try:
        return validate(cfg)
    except MvfError as e:
        raise (MvfError(f"{path}: {e}") if path else e) from None


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuild a config from its `to_dict` form (as stored in checkpoints)."""
    from mvf.config import from_dict

    return validate(from_dict(TrainConfig, data))


__all__ = [
    "BACKBONES", "FUSIONS", "AugmentConfig", "DataConfig", "LossWeights", "ModelConfig",
    "StageConfig", "TrainConfig", "ValidationConfig", "config_from_dict", "load_train_config",
    "to_dict", "validate",
]
