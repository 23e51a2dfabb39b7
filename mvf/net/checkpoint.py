"""Reading a checkpoint for inference: validated load, the network's weights and model config.

`mvf.train.checkpoint` writes checkpoints (and reuses this reading to resume); inference
(`load_model`) needs nothing from `mvf.train`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mvf.config import from_dict
from mvf.errors import MvfError, file_error
from mvf.face.model import FaceModel
from mvf.net.config import ModelConfig, validate_model
from mvf.net.network import MVFNet, build_network

FORMAT = "mvf-checkpoint"
VERSION = 1


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; `MvfError` naming the file if missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:
        raise file_error(path, "corrupt or unreadable checkpoint (not a PyTorch file written by mvf train)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise file_error(path, "not an mvf checkpoint")
    if ckpt.get("version") != VERSION:
        raise file_error(path, f"checkpoint version {ckpt.get('version')} is not supported (need {VERSION})")
    missing = [k for k in ("config", "model", "step") if k not in ckpt]
    if missing:
        raise file_error(path, f"incomplete checkpoint (missing '{missing[0]}')")
    return ckpt


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """Load a network state dict; `MvfError` naming ``path`` when it doesn't fit ``model`` or holds
    non-finite weights."""
    target = model.state_dict()
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise file_error(path, f"checkpoint weights '{k}' hold NaN or infinite values")
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        key = missing[0] if missing else unexpected[0]
        raise file_error(path, f"checkpoint does not match the network ({'missing' if missing else 'unexpected'} "
                               f"'{key}'; {len(missing)} missing, {len(unexpected)} unexpected keys)")
    for k, v in target.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise file_error(path, f"checkpoint does not match the network (shape of '{k}': "
                                   f"{tuple(state[k].shape)} vs {tuple(v.shape)})")
    model.load_state_dict(state)


@dataclass
class LoadedModel:
    """A trained network ready for inference: ``cfg`` its model config, ``config`` the checkpoint's
    whole training config (plain data), ``step`` the training steps it had."""

    net: MVFNet
    face: FaceModel
    cfg: ModelConfig
    config: dict
    step: int
    path: Path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Network + face model from a checkpoint; `MvfError` if corrupt or it doesn't fit."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    try:
        cfg = validate_model(from_dict(ModelConfig, (ckpt["config"] or {}).get("model"), "model"))
    except (MvfError, AttributeError) as e:
        raise file_error(path, f"checkpoint carries an invalid config ({e})") from None
    face = FaceModel.load(cfg.face_model, device=device)
    trained_on = ckpt.get("face_model")
    if trained_on and face.asset_id != "unknown" and trained_on != face.asset_id:
        raise file_error(path, f"trained with face model {trained_on}, but the asset is {face.asset_id}")
    cfg = dataclasses.replace(cfg, pretrained=None)  # weights come from the checkpoint
    net = build_network(cfg, face)
    load_model_state(net, ckpt["model"], path)
    return LoadedModel(net.to(device).eval(), face, cfg, ckpt["config"], int(ckpt["step"]), path)
