"""Checkpoints: atomic save, validated load, RNG state capture.

A checkpoint is a ``torch.save`` dict (loaded with ``weights_only=True``)::

    format "mvf-checkpoint", version 1,
    config      the full training config (`mvf.config.to_dict`),
    model       network state dict,
    optimizer   Adam state dict of the running stage (or None), optimizer_stage: its index,
    step        global steps completed,
    best        {"metric": name, "value": float | None, "step": int | None},
    rng         torch / numpy / python RNG states,
    face_model  asset id of the face model the network was trained with,
    pose_norm   {"mean": [6], "scale": [6]} (documentation; rebuilt from the config)
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvf.errors import file_error
from mvf.fileio import atomic_path

FORMAT = "mvf-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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


def rng_state() -> dict[str, Any]:
    """The global torch, numpy and python RNG states (weights_only-safe types)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def load_model_state(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """Load a network state dict; `MvfError` naming ``path`` when it doesn't fit ``model``."""
    target = model.state_dict()
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
