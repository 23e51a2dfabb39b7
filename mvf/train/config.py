"""Training configuration: the dataclasses of `mvf.train.schema`, loaded from YAML and validated.

A config is a model, a validation set and an ordered list of stages. A stage is a name, a kind
(a key of `mvf.train.stages.STAGE_KINDS`: ``geometry``, ``supervised``, ``self_supervised``), its
data, loss weights, optimiser settings and a step budget (``steps`` or ``epochs``).

Unknown keys are errors; `load_train_config` also checks the cross-field rules (one budget per
stage, unique stage names, loss weights the stage kind does not use).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mvf.config import from_dict, load_config, to_dict
from mvf.data.augment import AugmentConfig
from mvf.errors import MvfError
from mvf.net.config import BACKBONES, FUSIONS, ModelConfig, validate_model
from mvf.train.schema import DataConfig, LossWeights, StageConfig, TrainConfig, ValidationConfig
from mvf.train.stages import STAGE_KINDS


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check the rules the types can't express; raises `MvfError` naming the key."""
    m = validate_model(cfg.model)
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
        if st.linear_fit_samples < 0 or st.linear_fit_lambda < 0:
            raise MvfError(f"config key '{where}': linear_fit_samples and linear_fit_lambda must be >= 0")
        if st.linear_fit_samples and (st.kind != "geometry" or not m.geometry_linear):
            raise MvfError(f"config key '{where}.linear_fit_samples': needs a geometry stage and "
                           "model.geometry_linear: true")
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
    return validate(from_dict(TrainConfig, data))


__all__ = [
    "BACKBONES", "FUSIONS", "AugmentConfig", "DataConfig", "LossWeights", "ModelConfig",
    "StageConfig", "TrainConfig", "ValidationConfig", "config_from_dict", "load_train_config",
    "to_dict", "validate",
]
